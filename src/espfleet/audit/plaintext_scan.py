"""On-flash structures that are readable only when flash encryption is off.

A partition table, a bootloader or app image header, or an NVS entry with a valid
CRC cannot survive encryption: finding one in a read-out proves the region is
plaintext. NVS is special: its page headers stay plaintext even with encrypted NVS,
so an NVS page counts as readable only when its *entries* check out.
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from espfleet.audit.findings import Finding, Severity
from espfleet.chips import CHIPS

__all__ = ["NvsEntry", "nvs_entries", "scan_plaintext_structures"]

_FIX_FLASH_ENCRYPTION = (
    "flash encryption is off for this region: provision the device in release mode "
    "(espfleet provision + espfleet flash) so every partition except nvs is encrypted"
)
_FIX_NVS = (
    "use encrypted NVS (an nvs_keys partition, itself flash-encrypted): espfleet provision "
    "builds it; move every credential into it"
)

PAGE = 4096
_PT_ENTRY = struct.Struct("<2sBBII16sI")
_PT_MAGIC = b"\xaa\x50"
_PT_MD5_MARKER = b"\xeb\xeb" + b"\xff" * 14
_PT_MAX_ENTRIES = 95  # 0xC00 bytes of table, one row for the MD5

_IMAGE_MAGIC = 0xE9
_APP_DESC_MAGIC = 0xABCD5432
_APP_ALIGN = 0x10000
_KNOWN_CHIP_IDS = {facts.image_chip_id for facts in CHIPS.values()}

_NVS_ACTIVE_STATES = {0xFFFFFFFE, 0xFFFFFFFC, 0xFFFFFFF8}
_NVS_ENTRIES = 126
_NVS_STRING, _NVS_BLOB_DATA, _NVS_BLOB_INDEX = 0x21, 0x42, 0x48
_NVS_TYPES = {0x01, 0x11, 0x02, 0x12, 0x04, 0x14, 0x08, 0x18, 0x21, 0x41, 0x42, 0x48}
_SECRET_KEY_NAME = re.compile(
    rb"(?i)pass|pswd|pwd|psk|secret|token|priv|key|cert|recovery|cred|auth"
)


def _crc(data: bytes) -> int:
    return zlib.crc32(data, 0xFFFFFFFF) & 0xFFFFFFFF


def scan_plaintext_structures(data: bytes, bootloader_offsets: Sequence[int]) -> list[Finding]:
    """Partition tables, image headers and readable NVS pages in ``data``."""
    return [
        *_partition_tables(data),
        *_images(data, bootloader_offsets),
        *_nvs(data),
    ]


def _partition_tables(data: bytes) -> Iterator[Finding]:
    for offset in range(0, len(data) - 32, PAGE):
        if data[offset : offset + 2] != _PT_MAGIC:
            continue
        names = []
        row = offset
        while row + 32 <= len(data) and data[row : row + 2] == _PT_MAGIC:
            names.append(_PT_ENTRY.unpack_from(data, row)[5].rstrip(b"\x00").decode(
                "ascii", "replace"))
            row += 32
            if len(names) > _PT_MAX_ENTRIES:
                break
        md5_ok = (
            data[row : row + 16] == _PT_MD5_MARKER
            and data[row + 16 : row + 32] == hashlib.md5(data[offset:row]).digest()
        )
        if not md5_ok and len(names) < 2:
            continue  # one stray AA 50 in ciphertext is chance; a table has rows or an MD5
        yield Finding(
            Severity.HIGH,
            "plaintext-partition-table",
            offset,
            row - offset + (32 if md5_ok else 0),
            f"plaintext partition table ({len(names)} partitions: {', '.join(names)}"
            f"{'; MD5 row valid' if md5_ok else '; no valid MD5 row'})",
            _FIX_FLASH_ENCRYPTION,
        )


def _image_header_ok(data: bytes, offset: int) -> bool:
    if offset + 32 > len(data) or data[offset] != _IMAGE_MAGIC:
        return False
    segments, spi_mode, _size_freq, entry = struct.unpack_from("<BBBI", data, offset + 1)
    chip_id, _min_rev = struct.unpack_from("<HB", data, offset + 12)
    hash_appended = data[offset + 23]
    load_addr, seg_len = struct.unpack_from("<II", data, offset + 24)
    return (
        1 <= segments <= 16
        and spi_mode <= 5
        and 0x40000000 <= entry < 0x60000000
        and chip_id in _KNOWN_CHIP_IDS
        and hash_appended in (0, 1)
        and 0x3C000000 <= load_addr < 0x60000000
        and seg_len < 0x1000000
    )


def _image_length(data: bytes, offset: int) -> int:
    """Header plus segments, as far as the dump holds them (checksum/hash not counted)."""
    segments = data[offset + 1]
    pos = offset + 24
    for _ in range(segments):
        if pos + 8 > len(data):
            break
        pos += 8 + struct.unpack_from("<I", data, pos + 4)[0]
    return min(pos, len(data)) - offset


def _app_name(data: bytes, offset: int) -> str:
    """Project name and version from the app descriptor (first thing in DROM)."""
    desc = offset + 0x20
    if len(data) < desc + 80 or struct.unpack_from("<I", data, desc)[0] != _APP_DESC_MAGIC:
        return "no app descriptor"
    version = data[desc + 16 : desc + 48].split(b"\x00")[0].decode("ascii", "replace")
    project = data[desc + 48 : desc + 80].split(b"\x00")[0].decode("ascii", "replace")
    return f"project {project!r} version {version!r}"


def _images(data: bytes, bootloader_offsets: Sequence[int]) -> Iterator[Finding]:
    offsets = sorted({*bootloader_offsets, *range(0, len(data), _APP_ALIGN)})
    for offset in offsets:
        if not _image_header_ok(data, offset):
            continue
        is_bootloader = offset in bootloader_offsets
        what = "bootloader" if is_bootloader else f"app image ({_app_name(data, offset)})"
        yield Finding(
            Severity.HIGH,
            "plaintext-bootloader" if is_bootloader else "plaintext-app",
            offset,
            _image_length(data, offset),
            f"plaintext {what}: its code and every string in it can be read and "
            "disassembled",
            _FIX_FLASH_ENCRYPTION,
        )


@dataclass(frozen=True)
class NvsEntry:
    """One plaintext NVS entry whose CRC checks out, with its value if it has one."""

    offset: int
    namespace: int
    type: int
    key: str
    value: bytes

    @property
    def looks_secret(self) -> bool:
        return bool(_SECRET_KEY_NAME.search(self.key.encode()))


def _nvs_page_ok(data: bytes, offset: int) -> bool:
    state, stored_crc = struct.unpack_from("<I24xI", data, offset)
    return state in _NVS_ACTIVE_STATES and stored_crc == _crc(data[offset + 4 : offset + 28])


def nvs_entries(data: bytes, page: int) -> list[NvsEntry]:
    """The written entries of the NVS page at ``page`` whose entry CRC is valid.

    Encrypted NVS keeps its page header plaintext but encrypts each entry, so none of
    its entries pass; a plaintext NVS page gives its keys and values away.
    """
    bitmap = data[page + 32 : page + 64]
    entries: list[NvsEntry] = []
    index = 0
    while index < _NVS_ENTRIES:
        state = (bitmap[index // 4] >> ((index % 4) * 2)) & 3
        base = page + 64 + 32 * index
        raw = data[base : base + 32]
        if state != 2 or len(raw) < 32:
            index += 1
            continue
        ns, etype, span = raw[0], raw[1], raw[2]
        crc_ok = struct.unpack_from("<I", raw, 4)[0] == _crc(raw[0:4] + raw[8:32])
        if not crc_ok or etype not in _NVS_TYPES or not 1 <= span <= _NVS_ENTRIES - index:
            index += 1
            continue
        key = raw[8:24].split(b"\x00")[0].decode("ascii", "replace")
        value = raw[24:32]
        if etype in (_NVS_STRING, _NVS_BLOB_DATA):
            size = struct.unpack_from("<H", raw, 24)[0]
            value = data[base + 32 : base + 32 + min(size, 32 * (span - 1))]
        entries.append(NvsEntry(base, ns, etype, key, value))
        index += span
    return entries


def _nvs(data: bytes) -> Iterator[Finding]:
    region_start: int | None = None
    region_entries: list[NvsEntry] = []

    def close(end: int) -> Iterator[Finding]:
        assert region_start is not None
        secrets = [e for e in region_entries if e.looks_secret and e.type != _NVS_BLOB_INDEX]
        yield Finding(
            Severity.HIGH,
            "plaintext-nvs",
            region_start,
            end - region_start,
            f"NVS readable without keys: {len(region_entries)} entries in plaintext"
            + (f", {len(secrets)} of them look secret" if secrets else ""),
            _FIX_NVS,
        )
        for entry in secrets:
            yield Finding(
                Severity.CRITICAL,
                "nvs-secret",
                entry.offset,
                32 + len(entry.value),
                f"plaintext NVS entry {entry.key!r} (type 0x{entry.type:02x}, "
                f"{len(entry.value)} bytes) holds what its name says is a secret",
                _FIX_NVS,
            )

    offset = 0
    for offset in range(0, len(data) - PAGE + 1, PAGE):
        readable = _nvs_page_ok(data, offset) and nvs_entries(data, offset)
        if readable:
            if region_start is None:
                region_start, region_entries = offset, []
            region_entries.extend(readable)
        elif region_start is not None and not _nvs_page_ok(data, offset):
            yield from close(offset)
            region_start = None
    if region_start is not None:
        yield from close(offset + PAGE)
