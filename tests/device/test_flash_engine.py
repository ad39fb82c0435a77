"""The flash-encryption engine against Espressif's encrypted vectors."""

from __future__ import annotations

from pathlib import Path

import pytest

from espfleet.device.chip import VirtualChip
from espfleet.errors import DeviceError


def _burn_key(chip: VirtualChip, block: str, key: bytes, *, read_protect: bool = True) -> None:
    # espefuse stores a key byte-reversed in the block's registers.
    chip.burn_efuse(block, int.from_bytes(key, "big"))
    if read_protect:
        bit = 0 if block == "BLOCK1" else int(block[-1])
        chip.burn_efuse("RD_DIS", 1 << bit)


def _esp32_with_key(key: bytes) -> VirtualChip:
    chip = VirtualChip.new("esp32")
    _burn_key(chip, "BLOCK1", key)
    chip.burn_efuse("FLASH_CRYPT_CONFIG", 0xF)
    chip.burn_efuse("FLASH_CRYPT_CNT", 1)
    return chip


def _aligned(data: bytes) -> bytes:
    return data[: len(data) - len(data) % 32]


def test_esp32_engine_matches_espsecure_vector(vectors: Path) -> None:
    key = (vectors / "256bit_key.bin").read_bytes()
    plain = _aligned((vectors / "bootloader.bin").read_bytes())
    cipher = (vectors / "bootloader-encrypted.bin").read_bytes()[: len(plain)]
    chip = _esp32_with_key(key)
    assert chip.efuse.block_bytes("BLOCK1") == b"\x00" * 32  # read-protected
    chip.flash.erase(0x1000, 0x10000)
    chip.write_encrypted(0x1000, plain)
    assert chip.flash.read(0x1000, len(plain)) == cipher
    assert chip.read_decrypted(0x1000, len(plain)) == plain
    assert chip.read_decrypted(0x1003, 5) == plain[3:8]


@pytest.mark.parametrize("chip_name", ["esp32s3", "esp32c3"])
def test_xts_engine_matches_espsecure_vector(vectors: Path, chip_name: str) -> None:
    key = (vectors / "256bit_key.bin").read_bytes()
    plain = _aligned((vectors / "bootloader.bin").read_bytes())
    cipher = (vectors / "bootloader-encrypted-aes-xts.bin").read_bytes()[: len(plain)]
    chip = VirtualChip.new(chip_name)
    _burn_key(chip, "BLOCK_KEY2", key)
    chip.burn_efuse("KEY_PURPOSE_2", 4)  # XTS_AES_128_KEY
    chip.burn_efuse("SPI_BOOT_CRYPT_CNT", 1)
    chip.flash.program(0x1000, cipher)
    assert chip.hardware_key() == key
    assert chip.read_decrypted(0x1000, len(plain)) == plain


def test_s3_xts_256_key_spans_two_blocks(vectors: Path) -> None:
    key = (vectors / "512bit_key.bin").read_bytes()
    cipher = (vectors / "hello-world-signed-encrypted-aes-xts-256.bin").read_bytes()
    plain = (vectors / "hello-world-signed.bin").read_bytes()
    n = len(plain) - len(plain) % 64
    chip = VirtualChip.new("esp32s3")
    _burn_key(chip, "BLOCK_KEY0", key[:32])
    _burn_key(chip, "BLOCK_KEY1", key[32:])
    chip.burn_efuse("KEY_PURPOSE_0", 2)
    chip.burn_efuse("KEY_PURPOSE_1", 3)
    chip.burn_efuse("SPI_BOOT_CRYPT_CNT", 1)
    chip.flash.program(0x10000, cipher[:n])
    assert chip.hardware_key() == key
    assert chip.read_decrypted(0x10000, n) == plain[:n]


def test_reads_are_raw_when_the_crypt_counter_is_even(vectors: Path) -> None:
    chip = _esp32_with_key((vectors / "256bit_key.bin").read_bytes())
    chip.burn_efuse("FLASH_CRYPT_CNT", 0b11)
    assert not chip.flash_encryption_enabled()
    chip.flash.program(0, b"\x12" * 32)
    assert chip.read_decrypted(0, 32) == b"\x12" * 32


def test_wrong_key_decrypts_to_garbage(vectors: Path) -> None:
    plain = _aligned((vectors / "bootloader.bin").read_bytes())[:4096]
    chip = _esp32_with_key((vectors / "ef-flashencryption-key.bin").read_bytes())
    chip.flash.program(0x1000, (vectors / "bootloader-encrypted.bin").read_bytes()[:4096])
    assert chip.read_decrypted(0x1000, 4096) != plain


def test_engine_without_a_key_refuses() -> None:
    chip = VirtualChip.new("esp32")
    with pytest.raises(DeviceError, match="no flash-encryption key"):
        chip.write_encrypted(0, b"\x00" * 32)


def test_unaligned_encrypted_write_is_refused(vectors: Path) -> None:
    chip = _esp32_with_key((vectors / "256bit_key.bin").read_bytes())
    with pytest.raises(DeviceError, match="aligned"):
        chip.write_encrypted(0x10, b"\x00" * 32)
    assert chip.flash.read(0, 64) == b"\xff" * 64


@pytest.mark.parametrize("chip_name", ["esp32s3", "esp32c3"])
def test_xts_key_in_block_key5_is_not_used_by_the_engine(chip_name: str) -> None:
    """SOC_EFUSE_BLOCK9_KEY_PURPOSE_QUIRK: espefuse refuses an XTS purpose on KEY5 and
    the AES engine never takes a key from it; a raw register burn must not make one work."""
    chip = VirtualChip.new(chip_name)
    _burn_key(chip, "BLOCK_KEY5", bytes(range(32)))
    chip.burn_efuse("KEY_PURPOSE_5", 4)  # XTS_AES_128_KEY, as espefuse would not allow
    chip.burn_efuse("SPI_BOOT_CRYPT_CNT", 1)
    assert chip.hardware_key() is None
    with pytest.raises(DeviceError, match="no flash-encryption key"):
        chip.read_decrypted(0, 32)


def test_c3_has_no_xts_aes_256_key_purposes() -> None:
    """Purposes 2/3 are XTS-AES-256 halves on S3 only; on C3 they are reserved."""
    key = bytes(range(64))
    chips = {name: VirtualChip.new(name) for name in ("esp32s3", "esp32c3")}
    for chip in chips.values():
        _burn_key(chip, "BLOCK_KEY0", key[:32])
        _burn_key(chip, "BLOCK_KEY1", key[32:])
        chip.burn_efuse("KEY_PURPOSE_0", 2)
        chip.burn_efuse("KEY_PURPOSE_1", 3)
    assert chips["esp32s3"].hardware_key() == key
    assert chips["esp32c3"].hardware_key() is None
