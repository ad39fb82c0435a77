"""Flash access as software on the chip does it: partitions through the engine.

ESP-IDF treats app, otadata and nvs_keys partitions as encrypted whenever flash
encryption is on; writes erase whole sectors, then program 4 KB at a time, so a power
cut damages at most what was being written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from espfleet.device.image_check import SECTOR, SecurityState
from espfleet.formats import otadata, partition_table
from espfleet.formats.partition_table import Partition, PartitionTable

if TYPE_CHECKING:
    from espfleet.device.chip import VirtualChip

__all__ = [
    "SECTOR",
    "erase_and_write",
    "otadata_partition",
    "partition_is_encrypted",
    "read_partition",
    "write_otadata",
]

#: A multiple of every engine's block (32 bytes on ESP32, 16 with XTS).
_ENGINE_BLOCK = 32


def partition_is_encrypted(part: Partition, security: SecurityState) -> bool:
    """ESP-IDF treats app, otadata and nvs_keys partitions as encrypted whenever flash
    encryption is on, whatever their flag says; others follow their flag."""
    if not security.flash_encryption:
        return False
    always = part.type == partition_table.APP or part.is_("data", "ota") or part.is_(
        "data", "nvs_keys"
    )
    return always or part.encrypted


def read_partition(
    chip: VirtualChip, part: Partition, security: SecurityState, length: int | None = None
) -> bytes:
    """Read a partition as software on the chip would (through the engine if encrypted)."""
    size = part.size if length is None else min(length, part.size)
    if partition_is_encrypted(part, security):
        return chip.read_decrypted(part.offset, size)
    return chip.flash.read(part.offset, size)


def otadata_partition(table: PartitionTable) -> Partition | None:
    """The table's otadata partition (data/ota), if any."""
    found = table.by_type("data", "ota")
    return found[0] if found else None


def write_otadata(
    chip: VirtualChip, part: Partition, security: SecurityState, old: bytes, new: bytes
) -> None:
    """Rewrite only the otadata sectors that changed: erase, then program (through the
    engine when encrypted), one sector at a time as ESP-IDF does, so a power cut can
    damage at most the sector being written."""
    for start in range(0, otadata.OTADATA_SIZE, SECTOR):
        block = new[start:start + SECTOR]
        if block == old[start:start + SECTOR]:
            continue
        erase_and_write(chip, part, security, part.offset + start, block)


def erase_and_write(
    chip: VirtualChip, part: Partition, security: SecurityState, addr: int, data: bytes
) -> None:
    """Erase the sectors under ``data`` and program it in 4 KB chunks, as software on the
    chip writes a partition (``esp_partition_write``)."""
    chip.flash.erase(addr, _align(len(data), SECTOR))
    encrypted = partition_is_encrypted(part, security)
    if encrypted:  # the engine encrypts whole blocks: pad the tail as esp_ota_end does
        data = data + b"\xff" * (-len(data) % _ENGINE_BLOCK)
    for pos in range(0, len(data), SECTOR):
        chunk = data[pos:pos + SECTOR]
        if encrypted:
            chip.write_encrypted(addr + pos, chunk)
        else:
            chip.flash.program(addr + pos, chunk)


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to
