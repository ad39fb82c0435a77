"""On-flash structures that are readable only when flash encryption is off.

A partition table, a bootloader or app image header, or an NVS entry with a valid
CRC cannot survive encryption: finding one in a read-out proves the region is
plaintext. NVS is special: its page headers stay plaintext even with encrypted NVS,
so an NVS page counts as readable only when its *entries* check out.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from espfleet.audit.findings import Finding, Severity
from espfleet.audit.secrets_scan import redact
from espfleet.chips import CHIPS
from espfleet.errors import FormatError
from espfleet.formats import app_image, nvs, partition_table

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
_PT_MAGIC = b"\xaa\x50"  # partition_table.MAGIC
_PT_MD5_ROW = b"\xeb\xeb"

_IMAGE_MAGIC = 0xE9
_APP_ALIGN = 0x10000


def _image_chip_ids() -> frozenset[int]:
    """Every chip id esptool knows: a plaintext image of any ESP chip is a finding."""
    import esptool.targets

    ids = {getattr(c, "IMAGE_CHIP_ID", None) for c in esptool.targets.CHIP_DEFS.values()}
    return frozenset({i for i in ids if isinstance(i, int)} | {
        facts.image_chip_id for facts in CHIPS.values()})


_KNOWN_CHIP_IDS = _image_chip_ids()

_NVS_ACTIVE_STATES = {0xFFFFFFFE, 0xFFFFFFFC, 0xFFFFFFF8}
_NVS_ENTRIES = 126
_NVS_STRING, _NVS_BLOB_DATA, _NVS_BLOB_INDEX = 0x21, 0x42, 0x48
_NVS_TYPES = {0x01, 0x11, 0x02, 0x12, 0x04, 0x14, 0x08, 0x18, 0x21, 0x41, 0x42, 0x48}
_SECRET_KEY_NAME = re.compile(
    rb"(?i)pass|pswd|pwd|psk|secret|token|priv|key|recovery|cred|auth"
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


def _table_rows_end(data: bytes, offset: int) -> int:
    """End of the AA 50 rows at ``offset`` plus an MD5 row right after them, if any."""
    end = offset
    limit = min(len(data), offset + partition_table.TABLE_LENGTH)
    while end + 32 <= limit and data[end : end + 2] == _PT_MAGIC:
        end += 32
    if end + 32 <= limit and data[end : end + 2] == _PT_MD5_ROW:
        end += 32
    return end


def _partition_tables(data: bytes) -> Iterator[Finding]:
    for offset in range(0, len(data) - 32, PAGE):
        if data[offset : offset + 2] != _PT_MAGIC:
            continue
        end = _table_rows_end(data, offset)
        # What follows the table (0xFF, or garbage in a tampered dump) is not decoded.
        try:
            table = partition_table.decode(data[offset:end])
        except FormatError as error:
            if "MD5 mismatch" not in str(error):
                continue
            detail = f"corrupt: {error}"
        else:
            md5 = data[end - 32 : end - 30] == _PT_MD5_ROW
            if len(table.entries) < 2 and not md5:
                continue  # one stray AA 50 row in ciphertext is chance, not a table
            names = ", ".join(p.name for p in table.entries)
            detail = f"{len(table.entries)} partitions: {names}" + (
                "; MD5 row valid" if md5 else "; no MD5 row"
            )
        yield Finding(
            Severity.HIGH,
            "plaintext-partition-table",
            offset,
            end - offset,
            f"plaintext partition table ({detail})",
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


def _describe_image(data: bytes, offset: int, at_bootloader_offset: bool) -> tuple[
    str, str, int
]:
    """Kind, description and length of the plaintext image at ``offset``."""
    try:
        image = app_image.parse(data[offset:])
    except FormatError as error:
        kind = "plaintext-bootloader" if at_bootloader_offset else "plaintext-app"
        return kind, f"image header (the rest does not parse: {error})", 32
    if image.is_bootloader or at_bootloader_offset:
        return "plaintext-bootloader", "bootloader", image.image_length
    desc = image.app_desc
    what = (f"project {desc.project_name!r} version {desc.version!r}" if desc
            else "no app descriptor")
    return "plaintext-app", f"app image ({what})", image.image_length


def _images(data: bytes, bootloader_offsets: Sequence[int]) -> Iterator[Finding]:
    offsets = sorted({*bootloader_offsets, *range(0, len(data), _APP_ALIGN)})
    for offset in offsets:
        if not _image_header_ok(data, offset):
            continue
        kind, what, length = _describe_image(data, offset, offset in bootloader_offsets)
        yield Finding(
            Severity.HIGH,
            kind,
            offset,
            length,
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


def _strict_read(region: bytes) -> str:
    """What espfleet's strict NVS reader makes of the region, for the report."""
    try:
        namespaces = nvs.read(region)
    except FormatError as error:
        return f"the strict reader stops: {error}"
    return "namespaces: " + ", ".join(
        f"{name} ({len(keys)} keys)" for name, keys in namespaces.items()
    )


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
            + (f", {len(secrets)} of them look secret" if secrets else "")
            + f" ({_strict_read(data[region_start:end])})",
            _FIX_NVS,
        )
        for entry in secrets:
            yield Finding(
                Severity.CRITICAL,
                "nvs-secret",
                entry.offset,
                32 + len(entry.value),
                f"plaintext NVS entry {entry.key!r} (type 0x{entry.type:02x}, "
                f"{len(entry.value)} bytes) holds what its name says is a secret"
                + (f": {redact(entry.value.rstrip(bytes(1)))}"
                   if entry.type == _NVS_STRING else ""),
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
