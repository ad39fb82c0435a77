"""On-flash structures that are readable only when flash encryption is off.

A partition table or a bootloader or app image header cannot survive encryption:
finding one in a read-out proves the region is plaintext. NVS has its own rules
(:mod:`espfleet.audit.nvs_scan`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

from espfleet.audit.findings import Finding, Severity
from espfleet.audit.nvs_scan import scan_nvs
from espfleet.chips import CHIPS
from espfleet.errors import FormatError
from espfleet.formats import app_image, partition_table

__all__ = ["scan_plaintext_structures"]

_FIX_FLASH_ENCRYPTION = (
    "flash encryption is off for this region: provision the device in release mode "
    "(espfleet provision + espfleet flash) so every partition except nvs is encrypted"
)

PAGE = 4096
_PT_MD5_ROW = partition_table.MD5_ROW_PREFIX[:2]
_APP_ALIGN = 0x10000


def _image_chip_ids() -> frozenset[int]:
    """Every chip id esptool knows: a plaintext image of any ESP chip is a finding."""
    import esptool.targets

    ids = {getattr(c, "IMAGE_CHIP_ID", None) for c in esptool.targets.CHIP_DEFS.values()}
    return frozenset({i for i in ids if isinstance(i, int)} | {
        facts.image_chip_id for facts in CHIPS.values()})


_KNOWN_CHIP_IDS = _image_chip_ids()


def scan_plaintext_structures(data: bytes, bootloader_offsets: Sequence[int]) -> list[Finding]:
    """Partition tables, image headers and readable NVS pages in ``data``."""
    return [
        *_partition_tables(data),
        *_images(data, bootloader_offsets),
        *scan_nvs(data),
    ]


def _table_rows_end(data: bytes, offset: int) -> int:
    """End of the AA 50 rows at ``offset`` plus an MD5 row right after them, if any."""
    end = offset
    limit = min(len(data), offset + partition_table.TABLE_LENGTH)
    while end + 32 <= limit and data[end : end + 2] == partition_table.MAGIC:
        end += 32
    if end + 32 <= limit and data[end : end + 2] == _PT_MD5_ROW:
        end += 32
    return end


def _partition_tables(data: bytes) -> Iterator[Finding]:
    for offset in range(0, len(data) - 32, PAGE):
        if data[offset : offset + 2] != partition_table.MAGIC:
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
    if offset + 32 > len(data) or data[offset] != app_image.IMAGE_MAGIC:
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
