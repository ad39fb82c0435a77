"""NOR flash semantics: erase to 0xFF by sector, program only clears bits, power cuts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from espfleet.device.flash import SECTOR_SIZE, NorFlash, PowerCut, parse_flash_size
from espfleet.errors import DeviceError, InputError


def test_fresh_flash_is_erased() -> None:
    flash = NorFlash(64 * 1024)
    assert flash.read(0, flash.size) == b"\xff" * flash.size


def test_program_only_clears_bits() -> None:
    flash = NorFlash(SECTOR_SIZE * 4)
    flash.program(0x100, b"\x0f\xf0")
    flash.program(0x100, b"\xf3\x3f")
    assert flash.read(0x100, 2) == b"\x03\x30"


def test_erase_restores_whole_sectors_only() -> None:
    flash = NorFlash(SECTOR_SIZE * 4)
    flash.program(0, b"\x00" * (SECTOR_SIZE * 2))
    flash.erase(SECTOR_SIZE, SECTOR_SIZE)
    assert flash.read(0, SECTOR_SIZE) == b"\x00" * SECTOR_SIZE
    assert flash.read(SECTOR_SIZE, SECTOR_SIZE) == b"\xff" * SECTOR_SIZE


@pytest.mark.parametrize(("addr", "length"), [(0x800, 0x1000), (0, 0x800), (0x1000, 1)])
def test_unaligned_erase_is_refused_and_changes_nothing(addr: int, length: int) -> None:
    flash = NorFlash(SECTOR_SIZE * 4)
    flash.program(0, b"\x00" * 16)
    before = flash.snapshot()
    with pytest.raises(DeviceError, match="sector aligned"):
        flash.erase(addr, length)
    assert flash.snapshot() == before


def test_access_past_the_end_is_refused() -> None:
    flash = NorFlash(SECTOR_SIZE)
    with pytest.raises(DeviceError, match="outside"):
        flash.read(SECTOR_SIZE - 4, 8)
    with pytest.raises(DeviceError, match="outside"):
        flash.program(SECTOR_SIZE - 4, b"\x00" * 8)


def test_power_cut_during_program_leaves_the_prefix_programmed() -> None:
    flash = NorFlash(SECTOR_SIZE * 2)
    flash.arm_power_cut(100)
    with pytest.raises(PowerCut, match="after 100 bytes"):
        flash.program(0, b"\x00" * 300)
    assert flash.read(0, 100) == b"\x00" * 100
    assert flash.read(100, 200) == b"\xff" * 200
    flash.program(0, b"\x00" * 300)  # the cut is spent: the next write completes
    assert flash.read(0, 300) == b"\x00" * 300


def test_power_cut_during_erase_leaves_a_partially_erased_sector() -> None:
    flash = NorFlash(SECTOR_SIZE * 2)
    flash.program(0, b"\x00" * SECTOR_SIZE)
    flash.arm_power_cut(10)
    with pytest.raises(PowerCut):
        flash.erase(0, SECTOR_SIZE)
    assert flash.read(0, 10) == b"\xff" * 10
    assert flash.read(10, SECTOR_SIZE - 10) == b"\x00" * (SECTOR_SIZE - 10)


def test_power_cut_counts_bytes_across_operations() -> None:
    flash = NorFlash(SECTOR_SIZE * 2)
    flash.arm_power_cut(20)
    flash.program(0, b"\x00" * 16)
    with pytest.raises(PowerCut, match="after 4 bytes"):
        flash.program(16, b"\x00" * 16)


def test_flash_size_must_be_a_power_of_two() -> None:
    with pytest.raises(InputError, match="power of two"):
        NorFlash(3 * SECTOR_SIZE)
    with pytest.raises(InputError, match="unsupported flash size"):
        parse_flash_size("3MB")
    assert parse_flash_size("4mb") == 4 << 20


@given(
    old=st.binary(min_size=1, max_size=64),
    new=st.binary(min_size=1, max_size=64),
    addr=st.integers(0, SECTOR_SIZE - 64),
)
def test_program_is_bitwise_and(old: bytes, new: bytes, addr: int) -> None:
    n = min(len(old), len(new))
    flash = NorFlash(SECTOR_SIZE)
    flash.program(addr, old[:n])
    flash.program(addr, new[:n])
    expected = bytes(a & b for a, b in zip(old[:n], new[:n], strict=True))
    assert flash.read(addr, n) == expected
