"""The layout rules a partition table must follow (ESP-IDF's, and a secure fleet's).

Each rule returns human-readable problems instead of raising, so that
:meth:`PartitionTable.validate` can report every problem of a table at once.
"""

from __future__ import annotations

from espfleet.formats.partition_table import (
    APP,
    DATA,
    DATA_ALIGN,
    NVS_KEYS_MIN_SIZE,
    OTADATA_SIZE,
    SUBTYPES,
    TABLE_SECTOR,
    Partition,
    PartitionTable,
    alignment,
)

__all__ = ["entry_problems", "layout_problems", "secure_problems"]


def layout_problems(table: PartitionTable, flash_size: int, table_offset: int) -> list[str]:
    out: list[str] = []
    if table_offset % TABLE_SECTOR:
        out.append(f"table offset {table_offset:#x} is not aligned to {TABLE_SECTOR:#x}")
    table_end = table_offset + TABLE_SECTOR
    if not any(p.type == APP for p in table.entries):
        out.append("no app partition: the bootloader would have nothing to boot")
    seen: set[str] = set()
    for p in table.entries:
        if p.name in seen:
            out.append(f"duplicate partition name {p.name!r}")
        seen.add(p.name)
        out.extend(entry_problems(p, flash_size, table_offset, table_end))
    ordered = sorted(table.entries, key=lambda p: p.offset)
    for i, b in enumerate(ordered):
        out.extend(
            f"{b.describe()} overlaps {a.describe()}" for a in ordered[:i] if b.offset < a.end
        )
    otadata = table.by_type(DATA, SUBTYPES[DATA]["ota"])
    if len(otadata) > 1:
        out.append("more than one otadata partition (data/ota)")
    for p in otadata:
        if p.size != OTADATA_SIZE:
            out.append(f"{p.describe()}: otadata must be exactly {OTADATA_SIZE:#x} bytes")
    slots = [p.ota_slot for p in table.app_slots()]
    if slots != list(range(len(slots))):
        out.append(
            "OTA app slots must be ota_0..ota_N without gaps or duplicates, found "
            + ", ".join(f"ota_{n}" for n in slots)
        )
    if slots and not otadata:
        out.append("OTA app slots need an otadata partition (data/ota) to choose between them")
    return out


def entry_problems(p: Partition, flash_size: int, table_offset: int, table_end: int) -> list[str]:
    out: list[str] = []
    align = alignment(p.type)
    if p.offset % align:
        out.append(f"{p.describe()}: offset is not aligned to {align:#x}")
    if p.size == 0:
        out.append(f"{p.describe()}: size is zero")
    elif p.size % DATA_ALIGN:
        out.append(f"{p.describe()}: size is not a multiple of the {DATA_ALIGN:#x} sector")
    if p.offset < table_end and p.end > table_offset:
        out.append(
            f"{p.describe()} overlaps the partition table at {table_offset:#x}-{table_end - 1:#x}"
        )
    elif p.offset < table_end:
        out.append(f"{p.describe()} lies below the partition table end {table_end:#x}")
    if p.end > flash_size:
        out.append(f"{p.describe()} ends at {p.end:#x}, beyond the {flash_size:#x}-byte flash")
    if p.is_("data", "nvs") and p.encrypted:
        out.append(
            f"{p.describe()} is flagged encrypted: NVS encrypts its own entries with the "
            "nvs_keys partition and cannot live under flash encryption"
        )
    if p.readonly and (p.type == APP or p.is_("data", "ota") or p.is_("data", "coredump")):
        out.append(f"{p.describe()} cannot be readonly: it is written at run time")
    return out


def secure_problems(table: PartitionTable, app_size: int | None) -> list[str]:
    out: list[str] = []
    slots = table.app_slots()
    if len(slots) < 2:
        out.append(f"a secure fleet needs two OTA app slots (ota_0, ota_1), found {len(slots)}")
    if app_size is not None:
        out.extend(
            f"{p.describe()} is smaller than the {app_size:#x}-byte app"
            for p in slots
            if p.size < app_size
        )
    for sub, minimum in (("ota", OTADATA_SIZE), ("nvs_keys", NVS_KEYS_MIN_SIZE)):
        found = table.by_type(DATA, SUBTYPES[DATA][sub])
        if not found:
            out.append(f"no {sub} partition (data/{sub})")
        for p in found:
            if not p.encrypted:
                out.append(f"{p.describe()} must be flagged encrypted")
            if p.size < minimum:
                out.append(f"{p.describe()} must be at least {minimum:#x} bytes")
    if not table.by_type(DATA, SUBTYPES[DATA]["nvs"]):
        out.append("no nvs partition (data/nvs) for the device identity")
    return out
