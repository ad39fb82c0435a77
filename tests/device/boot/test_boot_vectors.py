"""Espressif's own images through the virtual ROM: their encrypted bootloaders with
their keys and their signed bootloaders with their key digests pass the ROM stage;
altered copies do not.

These vectors are bootloaders alone (no partition table behind them), so a boot that
passes the ROM stops in the second stage: the assertion is on the ROM's verdict.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bootkit import burn_digest, burn_key_block
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from espfleet.device.boot import BootResult, boot
from espfleet.device.chip import VirtualChip
from espfleet.formats import app_image, flash_encryption, secure_boot
from espfleet.formats.partition_table import APP, Partition, PartitionTable

ENCRYPTED = {
    0xF: "bootloader-encrypted.bin",
    0x0: "bootloader-encrypted-conf0.bin",
    0x3: "bootloader-encrypted-conf3.bin",
    0x9: "bootloader-encrypted-conf9.bin",
    0xC: "bootloader-encrypted-confc.bin",
}


def _passed_rom(result: BootResult) -> bool:
    return result.stage != "rom" and "entry 0x400805e4" in result.log


def _encrypted_chip(vectors: Path, conf: int, image: bytes) -> VirtualChip:
    chip = VirtualChip.new("esp32")
    burn_key_block(chip, "BLOCK1", (vectors / "256bit_key.bin").read_bytes(), read_protect=True)
    chip.burn_efuse("FLASH_CRYPT_CONFIG", conf)
    chip.burn_efuse("FLASH_CRYPT_CNT", 1)
    chip.flash.program(0x1000, image)
    chip.reset()
    return chip


@pytest.mark.parametrize("conf", sorted(ENCRYPTED))
def test_espressif_encrypted_bootloader_passes_the_rom(vectors: Path, conf: int) -> None:
    chip = _encrypted_chip(vectors, conf, (vectors / ENCRYPTED[conf]).read_bytes())
    result = boot(chip)
    assert _passed_rom(result), result.log
    plain = app_image.parse((vectors / "bootloader.bin").read_bytes())
    assert f"load:0x3fff0030,len:{plain.image_length}" in result.log


@pytest.mark.parametrize("conf", [0x0, 0x3, 0xC])
def test_encrypted_bootloader_under_another_crypt_config_is_refused(
    vectors: Path, conf: int
) -> None:
    """conf 0xF ciphertext on a chip whose FLASH_CRYPT_CONFIG differs: other tweaks."""
    chip = _encrypted_chip(vectors, conf, (vectors / ENCRYPTED[0xF]).read_bytes())
    assert boot(chip).stage == "rom"


@pytest.mark.parametrize("offset", [0x0, 0x18, 0x100, 0x2000, 0x5000])
def test_altered_encrypted_bootloader_is_refused(vectors: Path, offset: int) -> None:
    image = bytearray((vectors / "bootloader-encrypted.bin").read_bytes())
    image[offset] ^= 0x10
    result = boot(_encrypted_chip(vectors, 0xF, bytes(image)))
    assert result.stage == "rom" and not result.started, result.log


def test_espressif_encrypted_bootloader_with_another_key_is_refused(vectors: Path) -> None:
    chip = VirtualChip.new("esp32")
    burn_key_block(chip, "BLOCK1", (vectors / "ef-flashencryption-key.bin").read_bytes(),
                   read_protect=True)
    chip.burn_efuse("FLASH_CRYPT_CONFIG", 0xF)
    chip.burn_efuse("FLASH_CRYPT_CNT", 1)
    chip.flash.program(0x1000, (vectors / "bootloader-encrypted.bin").read_bytes())
    result = boot(chip)
    assert result.stage == "rom"


def _signed_chip(vectors: Path, image: bytes, pubkey_file: str) -> VirtualChip:
    chip = VirtualChip.new("esp32", revision=300)
    public = load_pem_public_key((vectors / pubkey_file).read_bytes())
    burn_digest(chip, 0, secure_boot.public_key_digest(public))  # type: ignore[arg-type]
    chip.burn_efuse("ABS_DONE_1", 1)
    chip.flash.program(0x1000, image)
    chip.reset()
    return chip


def test_espressif_signed_bootloader_passes_the_rom(vectors: Path) -> None:
    image = (vectors / "bootloader_signed_v2_rsa.bin").read_bytes()
    result = boot(_signed_chip(vectors, image, "rsa_secure_boot_signing_pubkey.pem"))
    assert _passed_rom(result), result.log
    assert any("key digest slot 0" in line for line in result.log)


def test_espressif_multi_signed_bootloader_passes_with_its_first_key(vectors: Path) -> None:
    image = (vectors / "bootloader_multi_signed_v2_rsa.bin").read_bytes()
    result = boot(_signed_chip(vectors, image, "rsa_secure_boot_signing_pubkey.pem"))
    assert _passed_rom(result), result.log


def test_esp32_rom_ignores_the_second_signature_of_a_multi_signed_bootloader(
    vectors: Path, tmp_path: Path
) -> None:
    """ESP32 has one digest slot and reads one block: key 2's digest does not help."""
    key2 = secure_boot.load_private_key((vectors / "rsa_secure_boot_signing_key2.pem").read_bytes())
    chip = VirtualChip.new("esp32", revision=300)
    burn_digest(chip, 0, secure_boot.public_key_digest(key2))
    chip.burn_efuse("ABS_DONE_1", 1)
    chip.flash.program(0x1000, (vectors / "bootloader_multi_signed_v2_rsa.bin").read_bytes())
    assert boot(chip).stage == "rom"


@pytest.mark.parametrize("offset", [0x20, 0x4000, 0x8000 + 36, 0x8000 + 1100])
def test_altered_espressif_signed_bootloader_is_refused(vectors: Path, offset: int) -> None:
    """Image bytes, the public key in the block, the signature: any change is refused."""
    image = bytearray((vectors / "bootloader_signed_v2_rsa.bin").read_bytes())
    image[offset] ^= 0x01
    chip = _signed_chip(vectors, bytes(image), "rsa_secure_boot_signing_pubkey.pem")
    result = boot(chip)
    assert result.stage == "rom" and not result.started, result.log


def test_espressif_unsigned_v2_bootloader_is_refused(vectors: Path) -> None:
    image = (vectors / "bootloader_unsigned_v2.bin").read_bytes()
    chip = _signed_chip(vectors, image, "rsa_secure_boot_signing_pubkey.pem")
    assert boot(chip).stage == "rom"


def test_espressif_ecdsa_signed_bootloader_is_refused_on_esp32(vectors: Path) -> None:
    """ESP32 secure boot V2 is RSA-3072 only (the chip table lists no ECDSA for any
    supported chip): an ECDSA block is refused even with its digest burned."""
    image = (vectors / "bootloader_signed_v2_ecdsa256.bin").read_bytes()
    chip = _signed_chip(vectors, image, "ecdsa256_secure_boot_signing_pubkey.pem")
    result = boot(chip)
    assert result.stage == "rom", result.log
    assert "rsa3072 only" in (result.reason or "")


def test_secure_boot_on_a_pre_v3_esp32_is_refused(vectors: Path) -> None:
    chip = VirtualChip.new("esp32", revision=100)
    public = load_pem_public_key((vectors / "rsa_secure_boot_signing_pubkey.pem").read_bytes())
    burn_digest(chip, 0, secure_boot.public_key_digest(public))  # type: ignore[arg-type]
    chip.burn_efuse("ABS_DONE_1", 1)
    chip.flash.program(0x1000, (vectors / "bootloader_signed_v2_rsa.bin").read_bytes())
    assert "revision" in (boot(chip).reason or "")


def _chip_with_espressif_encrypted_app(vectors: Path, app: bytes) -> VirtualChip:
    """ESP32, flash encryption on with Espressif's key; our bootloader and a table with
    a factory app at 0x20000 (encrypted on the host); Espressif's encrypted app there."""
    key = (vectors / "ef-flashencryption-key.bin").read_bytes()
    chip = VirtualChip.new("esp32")
    burn_key_block(chip, "BLOCK1", key, read_protect=True)
    chip.burn_efuse("FLASH_CRYPT_CONFIG", 0xF)
    chip.burn_efuse("FLASH_CRYPT_CNT", 1)
    table = PartitionTable((Partition("factory", APP, 0x00, 0x20000, 0x100000),))
    for offset, plain in ((0x1000, app_image.build_bootloader("esp32")), (0x8000, table.encode())):
        plain += b"\xff" * (-len(plain) % 32)
        chip.flash.program(offset, flash_encryption.encrypt(plain, key, offset, "esp32", 0xF))
    chip.flash.program(0x20000, app)
    chip.reset()
    return chip


def test_espressif_encrypted_app_passes_the_bootloader(vectors: Path) -> None:
    """hello-world-signed-encrypted.bin (ESP-IDF hello_world, encrypted by espsecure at
    0x20000) is decrypted by the engine and accepted by the second stage; the simulated
    app then stops for lack of an NVS identity, past the bootloader."""
    app = (vectors / "hello-world-signed-encrypted.bin").read_bytes()
    result = boot(_chip_with_espressif_encrypted_app(vectors, app))
    assert any("Loaded app from partition at offset 0x20000" in line for line in result.log)
    assert result.stage == "app" and result.slot == "factory"
    assert "nvs_keys" in (result.reason or "")


@pytest.mark.parametrize("offset", [0x10, 0x100, 0x10000, 0x2FF00])
def test_altered_espressif_encrypted_app_is_refused(vectors: Path, offset: int) -> None:
    app = bytearray((vectors / "hello-world-signed-encrypted.bin").read_bytes())
    app[offset] ^= 0x04
    result = boot(_chip_with_espressif_encrypted_app(vectors, bytes(app)))
    assert result.stage == "bootloader" and result.slot is None, result.log


@pytest.mark.parametrize("chip_name", ["esp32s3", "esp32c3"])
def test_xts_bootloader_vector_is_refused_where_the_xts_rom_looks(
    vectors: Path, chip_name: str
) -> None:
    """bootloader-encrypted-aes-xts.bin was made for 0x1000, but S3/C3 load their
    bootloader from 0x0. At 0x1000 the engine decrypts it (right key, right address);
    the ROM finds nothing at 0x0. Copied to 0x0, the address tweak differs: garbage."""
    key = (vectors / "256bit_key.bin").read_bytes()
    cipher = (vectors / "bootloader-encrypted-aes-xts.bin").read_bytes()
    plain = (vectors / "bootloader.bin").read_bytes()
    n = len(cipher) - len(cipher) % 32
    for offset in (0x1000, 0x0):
        chip = VirtualChip.new(chip_name)
        burn_key_block(chip, "BLOCK_KEY0", key, read_protect=True)
        chip.burn_efuse("KEY_PURPOSE_0", 4)  # XTS_AES_128_KEY
        chip.burn_efuse("SPI_BOOT_CRYPT_CNT", 1)
        chip.flash.program(offset, cipher[:n])
        chip.reset()
        decrypted = chip.read_decrypted(offset, n)
        assert (decrypted == plain[:n]) is (offset == 0x1000)
        result = boot(chip)
        assert result.stage == "rom" and not result.started, result.log
        assert any(line.startswith("invalid header: 0x") for line in result.log)
