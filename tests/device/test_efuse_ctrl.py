"""The device-side eFuse controller: espefuse's file format, protections, hidden shadow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from espfleet.device.chip import VirtualChip, parse_mac
from espfleet.device.efuse import EfuseController
from espfleet.errors import DeviceError, InputError

MAC = bytes.fromhex("24a1600a1b2c")


def _espefuse_virt_summary(chip: str, efuse_file: Path) -> dict[str, dict[str, object]]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "espefuse",
            "--chip",
            chip,
            "--virt",
            "--path-efuse-file",
            str(efuse_file),
            "summary",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, dict[str, object]] = json.loads(out[out.index("{") :])
    return result


@pytest.mark.parametrize(
    ("chip_name", "revision", "size"),
    [("esp32", 300, 288), ("esp32s3", 2, 512), ("esp32c3", 4, 512)],
)
def test_efuse_file_is_what_espefuse_virt_reads(
    tmp_path: Path, chip_name: str, revision: int, size: int
) -> None:
    chip = VirtualChip.new(chip_name, revision=revision, mac=MAC)
    data = chip.efuse_bytes()
    assert len(data) == size == chip.facts.efuse_file_size
    (tmp_path / "efuse.bin").write_bytes(data)
    summary = _espefuse_virt_summary(chip_name, tmp_path / "efuse.bin")
    assert str(summary["MAC"]["value"]).startswith("24:a1:60:0a:1b:2c")
    assert "invalid" not in str(summary["MAC"]["value"])  # ESP32's MAC_CRC is right
    assert chip.mac == MAC and chip.device_id == f"{chip_name}-24a1600a1b2c"
    assert chip.efuse.chip_revision() == revision


def test_burn_is_write_once_or() -> None:
    chip = VirtualChip.new("esp32")
    chip.burn_efuse("FLASH_CRYPT_CNT", 0b001)
    chip.burn_efuse("FLASH_CRYPT_CNT", 0b110)
    assert chip.efuse.get("FLASH_CRYPT_CNT") == 0b111
    assert chip.flash_encryption_enabled()


def test_write_protected_field_refuses_a_burn_and_keeps_its_value() -> None:
    chip = VirtualChip.new("esp32")
    chip.burn_efuse("FLASH_CRYPT_CNT", 1)
    chip.burn_efuse("WR_DIS", 1 << 2)  # write-protects FLASH_CRYPT_CNT (and UART_DOWNLOAD_DIS)
    before = chip.efuse_bytes()
    with pytest.raises(DeviceError, match="write-protected"):
        chip.burn_efuse("FLASH_CRYPT_CNT", 0b10)
    with pytest.raises(DeviceError, match="write-protected"):
        chip.burn_efuse("UART_DOWNLOAD_DIS", 1)
    assert chip.efuse_bytes() == before


def test_write_protected_key_block_refuses_a_burn() -> None:
    chip = VirtualChip.new("esp32s3")
    chip.burn_efuse("WR_DIS", 1 << 23)  # BLOCK_KEY0
    with pytest.raises(DeviceError, match="write-protected"):
        chip.burn_efuse("BLOCK_KEY0", 1)


def test_read_protected_key_is_zeros_to_software_but_kept_by_the_silicon() -> None:
    key = bytes(range(1, 33))
    chip = VirtualChip.new("esp32")
    chip.burn_efuse("BLOCK1", int.from_bytes(key, "big"))
    assert chip.efuse.block_bytes("BLOCK1") == key[::-1]
    chip.burn_efuse("RD_DIS", 1)
    assert chip.efuse.block_bytes("BLOCK1") == b"\x00" * 32
    assert chip.efuse.is_read_protected("BLOCK1")
    assert key not in chip.efuse_bytes() and key[::-1] not in chip.efuse_bytes()
    assert chip.hardware_key() == key
    # The shadow survives a reload from the stored files.
    again = EfuseController("esp32", chip.efuse_bytes(), chip.efuse.hardware_bytes())
    assert again.block_bytes("BLOCK1") == b"\x00" * 32
    assert again.block_bytes("BLOCK1", hardware=True) == key[::-1]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(InputError, match="no eFuse named"):
        VirtualChip.new("esp32").burn_efuse("NO_SUCH_FUSE", 1)
    with pytest.raises(InputError, match="does not fit"):
        VirtualChip.new("esp32").burn_efuse("FLASH_CRYPT_CNT", 0x80)
    with pytest.raises(InputError, match="eFuse window"):
        EfuseController("esp32", b"\x00" * 100)
    with pytest.raises(InputError, match="multicast"):
        parse_mac("25:00:00:00:00:01")
    with pytest.raises(InputError, match="6 hex bytes"):
        parse_mac("24:a1:60")
    with pytest.raises(InputError, match="revision"):
        VirtualChip.new("esp32", revision=450)


def test_download_mode_follows_efuses_after_reset_only() -> None:
    chip = VirtualChip.new("esp32")
    chip.burn_efuse("UART_DOWNLOAD_DIS", 1)
    assert chip.download_mode == "normal"  # latched at the last reset
    chip.reset()
    assert str(chip.download_mode) == "disabled"
    s3 = VirtualChip.new("esp32s3")
    s3.burn_efuse("ENABLE_SECURITY_DOWNLOAD", 1)
    s3.reset()
    assert s3.download_mode == "secure"


def test_uart_download_dis_is_ignored_by_an_esp32_below_v3() -> None:
    """esp_efuse_disable_rom_download_mode: ESP32 before v3.0 cannot disable its ROM
    download mode; the bit burns but the ROM still answers (no false assurance)."""
    for revision, expected in ((100, "normal"), (300, "disabled")):
        chip = VirtualChip.new("esp32", revision=revision)
        chip.burn_efuse("UART_DOWNLOAD_DIS", 1)
        chip.reset()
        assert chip.efuse.get("UART_DOWNLOAD_DIS") == 1
        assert chip.download_mode == expected


_UINT_FIELDS = {
    "esp32": ["FLASH_CRYPT_CNT", "FLASH_CRYPT_CONFIG", "SPI_PAD_CONFIG_HD", "CLK8M_FREQ", "WR_DIS"],
    "esp32s3": ["SPI_BOOT_CRYPT_CNT", "KEY_PURPOSE_1", "SECURE_VERSION", "WDT_DELAY_SEL"],
}


@pytest.mark.parametrize("chip_name", sorted(_UINT_FIELDS))
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_field_reads_match_espefuse_own_decoder(chip_name: str, data: st.DataObject) -> None:
    ctl = EfuseController(chip_name)
    name = data.draw(st.sampled_from(_UINT_FIELDS[chip_name]))
    width = ctl.field(name).bit_len
    first = data.draw(st.integers(0, (1 << width) - 1))
    second = data.draw(st.integers(0, (1 << width) - 1))
    ctl.burn(name, first)
    if name != "WR_DIS":
        ctl.burn(name, second)
        first |= second
    assert ctl.get(name) == first
    assert int(ctl._ctl.read_field(name, bitstring=False)) == first
