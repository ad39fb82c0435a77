"""otadata: the two-sector record that tells the bootloader which OTA slot to boot.

Each 4 KB sector starts with an ``esp_ota_select_entry_t``: ota_seq (u32), seq_label
(20 bytes), ota_state (u32), crc (u32 = ``crc32_le(UINT32_MAX, &ota_seq, 4)``, i.e.
zlib's crc32 of the 4 seq bytes with initial value 0xFFFFFFFF). The rest of each sector
is erased (0xFF). The selection rules below are ESP-IDF's
(``bootloader_utility_get_selected_boot_partition``, ``esp_rewrite_ota_data``,
``esp_ota_current_ota_is_workable``) with CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, replace
from enum import IntEnum

from espfleet.errors import FormatError, InputError

__all__ = [
    "OTADATA_SIZE",
    "SECTOR_SIZE",
    "OtaData",
    "OtaSelectEntry",
    "OtaState",
    "blank",
    "boot_slot",
    "bootloader_step",
    "decode",
    "select",
    "set_state",
]

SECTOR_SIZE = 0x1000
OTADATA_SIZE = 2 * SECTOR_SIZE
ENTRY = struct.Struct("<I20sII")
ERASED_LABEL = b"\xff" * 20
UINT32_MAX = 0xFFFFFFFF
MAX_SLOTS = 16


class OtaState(IntEnum):
    """``esp_ota_img_states_t``."""

    NEW = 0
    PENDING_VERIFY = 1
    VALID = 2
    INVALID = 3
    ABORTED = 4
    UNDEFINED = 0xFFFFFFFF


def seq_crc(seq: int) -> int:
    """The CRC ESP-IDF stores for ``seq``."""
    return zlib.crc32(struct.pack("<I", seq), UINT32_MAX)


@dataclass(frozen=True)
class OtaSelectEntry:
    """One sector's selection record (only entries with a good CRC are represented)."""

    seq: int
    state: OtaState
    label: bytes = ERASED_LABEL

    def __post_init__(self) -> None:
        if not 0 <= self.seq < UINT32_MAX:
            raise InputError(
                f"ota_seq {self.seq:#x} is out of range: 0..0xfffffffe (0xffffffff means erased)"
            )
        if len(self.label) != 20:
            raise InputError(f"seq_label must be 20 bytes, got {len(self.label)}")
        object.__setattr__(self, "state", OtaState(self.state))

    @property
    def usable(self) -> bool:
        """Neither INVALID nor ABORTED (``!bootloader_common_ota_select_invalid``)."""
        return self.state not in (OtaState.INVALID, OtaState.ABORTED)

    def slot(self, num_ota_slots: int) -> int:
        return (self.seq - 1) % num_ota_slots

    def encode(self) -> bytes:
        return ENTRY.pack(self.seq, self.label, int(self.state), seq_crc(self.seq))


@dataclass(frozen=True)
class OtaData:
    """Both sectors; ``None`` is an erased sector or one whose CRC does not match."""

    entries: tuple[OtaSelectEntry | None, OtaSelectEntry | None]

    def __post_init__(self) -> None:
        if len(self.entries) != 2:
            raise InputError(f"otadata has exactly two entries, got {len(self.entries)}")
        object.__setattr__(self, "entries", tuple(self.entries))

    def encode(self) -> bytes:
        """The 0x2000-byte partition image."""
        out = bytearray(b"\xff" * OTADATA_SIZE)
        for index, entry in enumerate(self.entries):
            if entry is not None:
                out[index * SECTOR_SIZE : index * SECTOR_SIZE + ENTRY.size] = entry.encode()
        return bytes(out)

    def active_index(self) -> int | None:
        """The sector holding the highest usable seq (``bootloader_common_get_active_otadata``)."""
        best: int | None = None
        for index, entry in enumerate(self.entries):
            if entry is None or not entry.usable:
                continue
            current = self.entries[best] if best is not None else None
            if current is None or entry.seq > current.seq:
                best = index
        return best

    def active(self) -> OtaSelectEntry | None:
        index = self.active_index()
        return None if index is None else self.entries[index]

    def with_entry(self, index: int, entry: OtaSelectEntry | None) -> OtaData:
        pair = list(self.entries)
        pair[index] = entry
        return OtaData((pair[0], pair[1]))


def blank() -> OtaData:
    """Erased otadata: the bootloader boots factory, else ota_0."""
    return OtaData((None, None))


def decode(data: bytes) -> OtaData:
    """Parse the two sectors. An erased sector or one with a bad CRC becomes ``None``,
    as the bootloader ignores it; a short image or an unknown state is a FormatError."""
    data = bytes(data)
    if len(data) < SECTOR_SIZE + ENTRY.size:
        raise FormatError(
            f"otadata is {len(data)} bytes: it needs two 4 KB sectors (0x2000 bytes); "
            f"truncated at offset {len(data):#x}",
            len(data),
        )
    entries: list[OtaSelectEntry | None] = []
    for index in range(2):
        offset = index * SECTOR_SIZE
        seq, label, state, crc = ENTRY.unpack_from(data, offset)
        if seq == UINT32_MAX or crc != seq_crc(seq):
            entries.append(None)
            continue
        try:
            entries.append(OtaSelectEntry(seq, OtaState(state), label))
        except ValueError:
            raise FormatError(
                f"otadata entry {index} at offset {offset + 24:#x}: unknown ota_state "
                f"{state:#x} (known: {', '.join(s.name for s in OtaState)})",
                offset + 24,
            ) from None
    return OtaData((entries[0], entries[1]))


def _check_slots(num_ota_slots: int) -> None:
    if not 1 <= num_ota_slots <= MAX_SLOTS:
        raise InputError(f"number of OTA slots must be 1..{MAX_SLOTS}, got {num_ota_slots}")


def boot_slot(ota: OtaData, num_ota_slots: int) -> int | None:
    """The OTA slot the bootloader picks, or None (no usable entry: factory, else ota_0)."""
    _check_slots(num_ota_slots)
    active = ota.active()
    return None if active is None else active.slot(num_ota_slots)


def _seq_for_slot(current_seq: int, slot: int, num_ota_slots: int) -> int:
    """Smallest seq >= current_seq that maps to ``slot`` (compute_ota_seq_for_target_slot)."""
    base = (slot + 1) % num_ota_slots
    steps = max(0, -(-(current_seq - base) // num_ota_slots))
    return base + steps * num_ota_slots


def select(ota: OtaData, slot: int, num_ota_slots: int, state: OtaState = OtaState.NEW) -> OtaData:
    """What ``esp_ota_set_boot_partition(ota_<slot>)`` writes.

    If the active entry already maps to ``slot`` only its state changes; otherwise the
    next seq that maps to ``slot`` goes into the other sector (the one not holding the
    current maximum), so a power cut leaves the old selection intact.
    """
    _check_slots(num_ota_slots)
    if not 0 <= slot < num_ota_slots:
        raise InputError(f"OTA slot {slot} does not exist: the table has {num_ota_slots} slots")
    index = ota.active_index()
    if index is None:
        target, seq = 0, slot + 1
    else:
        active = ota.entries[index]
        assert active is not None
        if active.slot(num_ota_slots) == slot:
            target, seq = index, active.seq
        else:
            target, seq = 1 - index, _seq_for_slot(active.seq, slot, num_ota_slots)
    if seq >= UINT32_MAX:
        raise InputError(
            f"otadata sequence number would pass 0xfffffffe (current {seq - num_ota_slots:#x}): "
            "erase otadata and select the slot again"
        )
    old = ota.entries[target]
    label = old.label if old is not None else ERASED_LABEL
    return ota.with_entry(target, OtaSelectEntry(seq, state, label))


def set_state(ota: OtaData, state: OtaState) -> OtaData:
    """Set the state of the current (active) entry, as ``esp_ota_mark_app_valid_cancel_
    rollback`` (VALID) or ``esp_ota_mark_app_invalid_rollback`` (INVALID) do."""
    index = ota.active_index()
    if index is None:
        raise InputError(
            "otadata has no active entry (the running app is factory or ota_0 by default): "
            "select a slot first"
        )
    entry = ota.entries[index]
    assert entry is not None
    return ota.with_entry(index, replace(entry, state=OtaState(state)))


def bootloader_step(ota: OtaData, num_ota_slots: int) -> tuple[int | None, OtaData]:
    """One boot with app rollback enabled: returns (slot to boot or None, new otadata).

    An entry still PENDING_VERIFY at boot means the app it selected never confirmed
    itself: it becomes ABORTED, and the previous usable entry wins. The chosen entry,
    if NEW, becomes PENDING_VERIFY until the app marks it VALID.
    """
    _check_slots(num_ota_slots)
    for number, pending in enumerate(ota.entries):
        if pending is not None and pending.state == OtaState.PENDING_VERIFY:
            ota = ota.with_entry(number, replace(pending, state=OtaState.ABORTED))
    index = ota.active_index()
    if index is None:
        return None, ota
    entry = ota.entries[index]
    assert entry is not None
    if entry.state == OtaState.NEW:
        ota = ota.with_entry(index, replace(entry, state=OtaState.PENDING_VERIFY))
    return entry.slot(num_ota_slots), ota
