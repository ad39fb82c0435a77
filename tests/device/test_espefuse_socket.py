"""The real espefuse against the virtual chip's ROM loader over socket://."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from espfleet.device.chip import VirtualChip
from espfleet.device.server import LoaderServer

pytestmark = pytest.mark.slow


def espefuse(url: str, chip: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "espefuse", "--chip", chip, "--port", url,
         "--before", "no-reset", "--do-not-confirm", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def summary(url: str, chip: str) -> dict[str, dict[str, object]]:
    done = espefuse(url, chip, "summary", "--format", "json")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    result: dict[str, dict[str, object]] = json.loads(out[out.index("{") : out.rindex("}") + 1])
    return result


def _key(tmp_path: Path, size: int = 32) -> tuple[bytes, Path]:
    key = os.urandom(size)
    path = tmp_path / f"key{size}.bin"
    path.write_bytes(key)
    return key, path


def test_esp32_factory_burns_through_the_loader(vectors: Path, tmp_path: Path) -> None:
    chip = VirtualChip.new("esp32")
    key, key_file = _key(tmp_path)
    pem = vectors / "rsa_secure_boot_signing_key.pem"
    with LoaderServer(chip) as server:
        url = server.url
        assert summary(url, "esp32")["FLASH_CRYPT_CNT"]["value"] == 0
        steps = [
            ("burn-key", "flash_encryption", str(key_file)),
            ("burn-efuse", "FLASH_CRYPT_CONFIG", "0xF", "FLASH_CRYPT_CNT", "0x7F"),
            ("burn-key-digest", str(pem)),
            ("burn-efuse", "ABS_DONE_1", "1"),
            ("read-protect-efuse", "BLOCK3"),
            ("write-protect-efuse", "DISABLE_DL_ENCRYPT"),
        ]
        for step in steps:
            done = espefuse(url, "esp32", *step)
            assert done.returncode == 0, f"{step}: {done.stdout[-400:]} {done.stderr[-400:]}"
        after = summary(url, "esp32")
    assert after["FLASH_CRYPT_CNT"]["value"] == 0x7F
    assert after["ABS_DONE_1"]["value"] is True
    assert chip.flash_encryption_enabled()
    assert chip.efuse.is_read_protected("BLOCK3")
    assert chip.efuse.is_write_protected("DISABLE_DL_ENCRYPT")
    digest_block = chip.efuse.block_bytes("BLOCK2")[::-1]
    assert any(digest_block) and chip.efuse.is_write_protected("BLOCK2")
    assert chip.hardware_key() == key


def test_reading_flash_encryption_key_after_read_protection_gives_zeros(
    tmp_path: Path,
) -> None:
    chip = VirtualChip.new("esp32")
    key, key_file = _key(tmp_path)
    with LoaderServer(chip) as server:
        done = espefuse(server.url, "esp32", "burn-key", "flash_encryption", str(key_file))
        assert done.returncode == 0, done.stderr
        seen = summary(server.url, "esp32")
        dumped = espefuse(server.url, "esp32", "dump")
    assert seen["BLOCK1"]["readable"] is False
    assert seen["BLOCK1"]["raw_value"] == "0x" + "00" * 32
    assert key.hex() not in dumped.stdout.replace(" ", "")
    assert key not in chip.efuse_bytes() and key[::-1] not in chip.efuse_bytes()
    # The engine still holds the key: what it encrypts, it decrypts.
    assert chip.hardware_key() == key
    chip.burn_efuse("FLASH_CRYPT_CNT", 1)
    chip.flash.erase(0x10000, 0x1000)
    chip.write_encrypted(0x10000, b"secret app code!" * 4)
    assert chip.read_decrypted(0x10000, 64) == b"secret app code!" * 4


@pytest.mark.parametrize("chip_name", ["esp32s3", "esp32c3"])
def test_xts_chip_burns_key_and_digest(vectors: Path, tmp_path: Path, chip_name: str) -> None:
    chip = VirtualChip.new(chip_name)
    key, key_file = _key(tmp_path)
    pem = vectors / "rsa_secure_boot_signing_key.pem"
    with LoaderServer(chip) as server:
        url = server.url
        for step in (
            ("burn-key", "BLOCK_KEY0", str(key_file), "XTS_AES_128_KEY"),
            ("burn-key-digest", "BLOCK_KEY1", str(pem), "SECURE_BOOT_DIGEST0"),
            ("burn-efuse", "SPI_BOOT_CRYPT_CNT", "7", "SECURE_BOOT_EN", "1"),
            ("write-protect-efuse", "DIS_DOWNLOAD_MODE"),
        ):
            done = espefuse(url, chip_name, *step)
            assert done.returncode == 0, f"{step}: {done.stdout[-400:]} {done.stderr[-400:]}"
        after = summary(url, chip_name)
    assert after["KEY_PURPOSE_0"]["value"] == "XTS_AES_128_KEY"
    assert after["SPI_BOOT_CRYPT_CNT"]["value"] in (7, "Enable")
    assert chip.hardware_key() == key
    assert chip.efuse.is_read_protected("BLOCK_KEY0")
    assert chip.efuse.is_write_protected("DIS_DOWNLOAD_MODE")


@pytest.mark.parametrize(
    ("chip_name", "lock", "next_burn"),
    [
        ("esp32", "UART_DOWNLOAD_DIS", "JTAG_DISABLE"),
        ("esp32s3", "ENABLE_SECURITY_DOWNLOAD", "DIS_PAD_JTAG"),
        ("esp32c3", "DIS_DOWNLOAD_MODE", "DIS_PAD_JTAG"),
    ],
)
def test_espefuse_burn_after_download_disable_is_refused(
    chip_name: str, lock: str, next_burn: str
) -> None:
    chip = VirtualChip.new(chip_name)
    with LoaderServer(chip) as server:
        done = espefuse(server.url, chip_name, "burn-efuse", lock, "1")
        assert done.returncode == 0, done.stderr
        assert chip.efuse.get(lock) == 1
        before = chip.efuse_bytes()
        # The lock applies from the next reset (each connection is one).
        refused = espefuse(server.url, chip_name, "burn-efuse", next_burn, "1")
    assert refused.returncode != 0
    assert chip.efuse_bytes() == before
    assert chip.efuse.get(next_burn) == 0
