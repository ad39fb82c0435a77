"""otadata: CRC as the ROM computes it, boot-slot choice and rollback as ESP-IDF does."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from espfleet.errors import FormatError, InputError
from espfleet.formats import otadata as od
from espfleet.formats.otadata import OtaData, OtaSelectEntry, OtaState


def rom_crc32_le(crc: int, data: bytes) -> int:
    """ESP32 ROM crc32_le, bit by bit (independent of zlib): ~update(~crc)."""
    crc = ~crc & 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return ~crc & 0xFFFFFFFF


@pytest.mark.parametrize("seq", [0, 1, 2, 7, 0x12345678, 0xFFFFFFFE])
def test_crc_is_crc32_le_of_seq_with_uint32_max(seq: int) -> None:
    assert od.seq_crc(seq) == rom_crc32_le(0xFFFFFFFF, struct.pack("<I", seq))


def test_entry_layout_is_esp_ota_select_entry_t() -> None:
    entry = OtaSelectEntry(5, OtaState.VALID, b"label".ljust(20, b"\x00"))
    raw = entry.encode()
    assert len(raw) == 32
    assert raw[:4] == struct.pack("<I", 5)
    assert raw[4:24] == b"label".ljust(20, b"\x00")
    assert raw[24:28] == struct.pack("<I", 2)
    assert raw[28:] == struct.pack("<I", rom_crc32_le(0xFFFFFFFF, raw[:4]))


def test_blank_is_erased_and_boots_default() -> None:
    blank = od.blank()
    assert blank.encode() == b"\xff" * 0x2000
    assert od.decode(blank.encode()) == blank
    assert od.boot_slot(blank, 2) is None


def test_select_places_entries_like_esp_rewrite_ota_data() -> None:
    ota = od.select(od.blank(), 0, 2)
    assert ota.entries == (OtaSelectEntry(1, OtaState.NEW), None)
    ota = od.select(ota, 1, 2)
    assert ota.entries[1] == OtaSelectEntry(2, OtaState.NEW)
    assert od.boot_slot(ota, 2) == 1
    ota = od.select(ota, 0, 2)  # goes to the sector not holding the max (sector 0)
    assert ota.entries[0] == OtaSelectEntry(3, OtaState.NEW)
    assert od.boot_slot(ota, 2) == 0
    again = od.select(ota, 0, 2, OtaState.VALID)  # same slot: only the state changes
    assert again.entries == (OtaSelectEntry(3, OtaState.VALID), ota.entries[1])


def test_select_with_three_slots_skips_to_the_next_matching_seq() -> None:
    ota = od.select(od.blank(), 2, 3)
    assert ota.entries[0] is not None and ota.entries[0].seq == 3
    ota = od.select(ota, 1, 3)
    assert ota.entries[1] is not None and ota.entries[1].seq == 5
    assert od.boot_slot(ota, 3) == 1


def test_select_rejects_missing_slot() -> None:
    with pytest.raises(InputError, match="slot 2 does not exist"):
        od.select(od.blank(), 2, 2)


def test_confirmed_update_keeps_booting_new_slot() -> None:
    ota = od.set_state(od.select(od.blank(), 0, 2), OtaState.VALID)
    ota = od.select(ota, 1, 2)
    slot, ota = od.bootloader_step(ota, 2)
    assert slot == 1
    assert ota.active() == OtaSelectEntry(2, OtaState.PENDING_VERIFY)
    ota = od.set_state(ota, OtaState.VALID)
    for _ in range(3):
        slot, ota = od.bootloader_step(ota, 2)
        assert slot == 1


def test_rollback_after_unconfirmed_update() -> None:
    ota = od.set_state(od.select(od.blank(), 0, 2), OtaState.VALID)
    ota = od.select(ota, 1, 2)
    slot, ota = od.bootloader_step(ota, 2)
    assert slot == 1  # new image boots once, PENDING_VERIFY
    slot, ota = od.bootloader_step(ota, 2)  # it reset without confirming
    assert slot == 0
    assert ota.entries[1] == OtaSelectEntry(2, OtaState.ABORTED)
    assert od.decode(ota.encode()) == ota


def test_app_marking_itself_invalid_rolls_back() -> None:
    ota = od.set_state(od.select(od.blank(), 0, 2), OtaState.VALID)
    ota = od.select(ota, 1, 2)
    _, ota = od.bootloader_step(ota, 2)
    ota = od.set_state(ota, OtaState.INVALID)
    assert od.boot_slot(ota, 2) == 0


def test_rollback_with_no_previous_entry_falls_back_to_default() -> None:
    ota = od.select(od.blank(), 1, 2)
    slot, ota = od.bootloader_step(ota, 2)
    assert slot == 1
    slot, ota = od.bootloader_step(ota, 2)
    assert slot is None  # factory, else ota_0


def test_set_state_without_active_entry_is_refused() -> None:
    with pytest.raises(InputError, match="no active entry"):
        od.set_state(od.blank(), OtaState.VALID)


def test_tampered_otadata_seq_is_ignored_like_the_bootloader_does() -> None:
    ota = od.select(od.set_state(od.select(od.blank(), 0, 2), OtaState.VALID), 1, 2)
    raw = bytearray(ota.encode())
    raw[0x1000] ^= 0x04  # attacker bumps sector 1's seq without fixing the CRC
    decoded = od.decode(bytes(raw))
    assert decoded.entries[1] is None
    assert od.boot_slot(decoded, 2) == 0


def test_undefined_state_counts_as_usable() -> None:
    ota = od.select(od.blank(), 1, 2, OtaState.UNDEFINED)
    assert od.boot_slot(ota, 2) == 1
    assert od.bootloader_step(ota, 2) == (1, ota)


def test_truncated_otadata_names_offset() -> None:
    with pytest.raises(FormatError, match="truncated at offset 0x1010") as info:
        od.decode(b"\xff" * 0x1010)
    assert info.value.offset == 0x1010


def test_unknown_state_names_offset() -> None:
    raw = bytearray(od.select(od.blank(), 0, 2).encode())
    raw[24:28] = struct.pack("<I", 9)
    with pytest.raises(FormatError, match="entry 0 at offset 0x18: unknown ota_state 0x9"):
        od.decode(bytes(raw))


def test_entry_validation() -> None:
    with pytest.raises(InputError):
        OtaSelectEntry(0xFFFFFFFF, OtaState.NEW)
    with pytest.raises(InputError):
        OtaSelectEntry(1, OtaState.NEW, b"short")
    with pytest.raises(ValueError):
        OtaSelectEntry(1, 7)  # type: ignore[arg-type]


entries = st.one_of(
    st.none(),
    st.builds(
        OtaSelectEntry,
        st.integers(0, 0xFFFFFFFE),
        st.sampled_from(list(OtaState)),
        st.binary(min_size=20, max_size=20),
    ),
)
otadatas = st.builds(lambda a, b: OtaData((a, b)), entries, entries)


@settings(max_examples=200, deadline=None)
@given(otadatas)
def test_round_trip(ota: OtaData) -> None:
    assert od.decode(ota.encode()) == ota


small_entries = st.one_of(
    st.none(),
    st.builds(OtaSelectEntry, st.integers(0, 1 << 30), st.sampled_from(list(OtaState))),
)


@settings(max_examples=200, deadline=None)
@given(
    st.builds(lambda a, b: OtaData((a, b)), small_entries, small_entries),
    st.integers(1, 16),
    st.data(),
)
def test_select_always_boots_the_selected_slot(
    ota: OtaData, slots: int, data: st.DataObject
) -> None:
    slot = data.draw(st.integers(0, slots - 1))
    before = ota.active()
    after = od.select(ota, slot, slots)
    assert od.boot_slot(after, slots) == slot
    new = after.active()
    assert new is not None
    if before is not None:
        assert new.seq >= before.seq
    booted, stepped = od.bootloader_step(after, slots)
    assert booted == slot
    assert stepped.active() is not None
    assert stepped.active().state == OtaState.PENDING_VERIFY  # type: ignore[union-attr]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=0x2100))
def test_random_bytes_raise_only_format_errors(data: bytes) -> None:
    try:
        od.decode(data)
    except FormatError as error:
        assert error.offset is not None
