"""The real esptool (--no-stub) against the virtual chip's ROM loader over socket://."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from espfleet.device.chip import VirtualChip
from espfleet.device.server import LoaderServer

pytestmark = pytest.mark.slow

MAC = bytes.fromhex("24a1600a1b2c")
CHIPS = ["esp32", "esp32s3", "esp32c3"]


def esptool(url: str, *args: str, chip: str = "auto") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esptool", "--chip", chip, "--port", url,
         "--before", "no-reset", "--after", "no-reset", "--no-stub", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "image.bin"
    path.write_bytes(os.urandom(3000) + bytes(range(256)) * 40 + b"\xc0\xdb" * 300)
    return path


def _served(chip: VirtualChip) -> Iterator[LoaderServer]:
    with LoaderServer(chip) as server:
        yield server


@pytest.fixture(params=CHIPS)
def served(request: pytest.FixtureRequest) -> Iterator[LoaderServer]:
    yield from _served(VirtualChip.new(request.param, mac=MAC))


def test_identity_commands(served: LoaderServer) -> None:
    chip = served.chip
    mac = esptool(served.url, "read-mac")
    assert mac.returncode == 0, mac.stderr
    assert "MAC:                24:a1:60:0a:1b:2c" in mac.stdout
    assert f"Connected to {chip.facts.description.split(' ')[0]}" in mac.stdout
    flash = esptool(served.url, "flash-id")
    assert flash.returncode == 0, flash.stderr
    assert "Detected flash size: 4MB" in flash.stdout and "Manufacturer: ef" in flash.stdout
    ident = esptool(served.url, "chip-id")
    assert ident.returncode == 0, ident.stderr


def test_write_read_verify_plain_and_compressed(served: LoaderServer, image: Path) -> None:
    chip, url, data = served.chip, served.url, image.read_bytes()
    assert esptool(url, "write-flash", "0x10000", str(image)).returncode == 0
    done = esptool(url, "write-flash", "-z", "0x21000", str(image))
    assert done.returncode == 0, done.stderr
    assert "Hash of data verified" in done.stdout
    assert chip.flash.read(0x10000, len(data)) == data
    assert chip.flash.read(0x21000, len(data)) == data
    out = image.with_suffix(".read")
    # -b makes esptool send CHANGE_BAUDRATE first (ESP32: after reading its RTC calibration).
    read = esptool(url, "-b", "921600", "read-flash", "0x21000", str(len(data)), str(out))
    assert read.returncode == 0, read.stderr
    assert "Changed." in read.stdout
    assert out.read_bytes() == data
    assert esptool(url, "verify-flash", "0x10000", str(image)).returncode == 0
    chip.flash.program(0x10010, b"\x00")  # a bit flip on the flash
    bad = esptool(url, "verify-flash", "0x10000", str(image))
    assert bad.returncode != 0 and "Verification failed" in bad.stdout + bad.stderr


def test_erase_region_works_and_erase_flash_needs_the_stub(tmp_path: Path) -> None:
    chip = VirtualChip.new("esp32")
    chip.flash.program(0, b"\x00" * 0x3000)
    with LoaderServer(chip) as server:
        done = esptool(server.url, "erase-region", "0x1000", "0x1000")
        assert done.returncode == 0, done.stderr
        assert chip.flash.read(0x1000, 0x1000) == b"\xff" * 0x1000
        assert chip.flash.read(0, 0x1000) == b"\x00" * 0x1000
        assert chip.flash.read(0x2000, 0x1000) == b"\x00" * 0x1000
        # The ROM has no chip-erase command: esptool itself says so (the stub has one).
        whole = esptool(server.url, "erase-flash")
        assert whole.returncode != 0
        assert "ROM does not support function erase_flash" in whole.stdout + whole.stderr
        assert chip.flash.read(0, 0x1000) == b"\x00" * 0x1000


def _release_esp32(key: bytes) -> VirtualChip:
    """ESP32 in release mode, flashed, hardened, but not yet download-locked."""
    chip = VirtualChip.new("esp32")
    chip.burn_efuse("BLOCK1", int.from_bytes(key, "big"))
    chip.burn_efuse("RD_DIS", 1)
    chip.burn_efuse("FLASH_CRYPT_CONFIG", 0xF)
    chip.burn_efuse("FLASH_CRYPT_CNT", 0x7F)
    for name in ("DISABLE_DL_ENCRYPT", "DISABLE_DL_DECRYPT", "DISABLE_DL_CACHE"):
        chip.burn_efuse(name, 1)
    return chip


def test_read_flash_with_download_decrypt_disabled_returns_ciphertext(
    vectors: Path, tmp_path: Path
) -> None:
    key = (vectors / "256bit_key.bin").read_bytes()
    plain = (vectors / "bootloader.bin").read_bytes()[:0x1000]
    chip = _release_esp32(key)
    chip.flash.erase(0x1000, 0x1000)
    chip.write_encrypted(0x1000, plain)
    out = tmp_path / "dump.bin"
    with LoaderServer(chip) as server:
        done = esptool(server.url, "read-flash", "0x1000", "0x1000", str(out))
    assert done.returncode == 0, done.stderr
    dumped = out.read_bytes()
    assert dumped == (vectors / "bootloader-encrypted.bin").read_bytes()[:0x1000]
    assert dumped != plain and plain[:64] not in dumped
    assert chip.read_decrypted(0x1000, 0x1000) == plain  # only the engine can read it


def test_plaintext_image_written_to_release_chip_stays_plaintext_on_flash(
    vectors: Path, image: Path
) -> None:
    chip = _release_esp32((vectors / "256bit_key.bin").read_bytes())
    data = image.read_bytes()
    with LoaderServer(chip) as server:
        refused = esptool(server.url, "write-flash", "0x10000", str(image))
        assert refused.returncode != 0
        assert "download manual encrypt disabled" in refused.stdout + refused.stderr
        assert chip.flash.read(0x10000, 64) == b"\xff" * 64
        forced = esptool(server.url, "write-flash", "--force", "0x10000", str(image))
        assert forced.returncode == 0, forced.stderr
        # esptool may not encrypt through the ROM: the bytes land as sent...
        assert chip.flash.read(0x10000, len(data)) == data
        # ...and the cache decrypts them into garbage, so such an image never boots.
        assert chip.read_decrypted(0x10000, 4096) != data[:4096]


def test_s3_rom_encrypts_writes_in_development_mode(vectors: Path, image: Path) -> None:
    key = (vectors / "256bit_key.bin").read_bytes()
    chip = VirtualChip.new("esp32s3")
    chip.burn_efuse("BLOCK_KEY0", int.from_bytes(key, "big"))
    chip.burn_efuse("KEY_PURPOSE_0", 4)
    chip.burn_efuse("RD_DIS", 1)
    chip.burn_efuse("SPI_BOOT_CRYPT_CNT", 1)
    data = image.read_bytes()
    with LoaderServer(chip) as server:
        done = esptool(server.url, "write-flash", "--encrypt", "0x20000", str(image))
        assert done.returncode == 0, done.stderr
        assert chip.flash.read(0x20000, 64) != data[:64]
        assert chip.read_decrypted(0x20000, len(data)) == data
        chip.burn_efuse("DIS_DOWNLOAD_MANUAL_ENCRYPT", 1)
        refused = esptool(server.url, "write-flash", "--encrypt", "0x40000", str(image))
        assert refused.returncode != 0
        assert chip.flash.read(0x40000, 64) == b"\xff" * 64


def test_uart_download_disabled_chip_never_answers(image: Path) -> None:
    chip = VirtualChip.new("esp32")
    chip.burn_efuse("UART_DOWNLOAD_DIS", 1)
    with LoaderServer(chip) as server:
        done = esptool(server.url, "write-flash", "0x10000", str(image))
    assert done.returncode != 0
    assert chip.flash.read(0x10000, 64) == b"\xff" * 64
    assert "download mode is disabled by eFuse (UART_DOWNLOAD_DIS)" in chip.console[-1]


def test_secure_download_mode_writes_but_does_not_read(image: Path, tmp_path: Path) -> None:
    chip = VirtualChip.new("esp32c3")
    chip.burn_efuse("ENABLE_SECURITY_DOWNLOAD", 1)
    with LoaderServer(chip) as server:
        done = esptool(server.url, "write-flash", "0x10000", str(image))
        assert done.returncode == 0, done.stderr
        assert chip.flash.read(0x10000, 64) == image.read_bytes()[:64]
        read = esptool(server.url, "read-flash", "0x10000", "0x100", str(tmp_path / "x.bin"))
    assert read.returncode != 0
    assert not (tmp_path / "x.bin").exists()


def test_power_cut_during_esptool_write_is_survived_by_reconnecting(image: Path) -> None:
    chip = VirtualChip.new("esp32")
    data = image.read_bytes()
    with LoaderServer(chip) as server:
        chip.flash.arm_power_cut(0x4000 + 1500)  # the erase, then 1500 bytes of data
        done = esptool(server.url, "write-flash", "0x10000", str(image))
        assert server.sessions == 2
    # The UART went silent mid-write; esptool reconnected after power-on and rewrote.
    assert "power cut while programming" in " ".join(chip.console)
    assert done.returncode == 0, done.stderr
    assert "Lost connection, retrying" in done.stdout
    assert chip.flash.read(0x10000, len(data)) == data


def test_esp32_revision_comes_from_efuse_and_the_apb_date_bit() -> None:
    with LoaderServer(VirtualChip.new("esp32", revision=100)) as server:
        old = esptool(server.url, "chip-id")
    assert "(revision v1.0)" in old.stdout
    with LoaderServer(VirtualChip.new("esp32", revision=301)) as server:
        eco3 = esptool(server.url, "chip-id")
    assert "(revision v3.1)" in eco3.stdout
