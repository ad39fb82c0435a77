"""Attack and fault scenarios against the boot chain, each named after the attack.

Each test starts from a release-mode device (flash encryption + Secure Boot V2) and
does what an attacker with a clip on the flash chip, or a bad update, would do.
"""

from __future__ import annotations

import os
import random

import pytest
from bootkit import Device, make_device, running_app

from espfleet.device.boot import boot
from espfleet.device.image_check import BootRefused
from espfleet.formats import app_image, flash_encryption, otadata
from espfleet.formats.partition_table import Partition, PartitionTable
from espfleet.formats.secure_boot import PrivateKey


def _refused_at(device: Device, stage: str) -> str:
    result = boot(device.chip)
    assert not result.started, result.log
    assert result.stage == stage, result.log
    assert result.app is None and result.reason
    return result.reason


# --- ROM: the bootloader ------------------------------------------------------------


@pytest.mark.parametrize("chip_name", ["esp32", "esp32s3", "esp32c3"])
def test_unsigned_bootloader_is_refused(chip_name: str, keys: list[PrivateKey]) -> None:
    dev = make_device(chip_name, signing_keys=keys[:1])
    dev.write_bootloader(dev.bootloader(keys=[]))
    reason = _refused_at(dev, "rom")
    assert "not signed" in reason
    assert any("verification failed" in line or "secure boot check fail" in line
               for line in dev.chip.console)


@pytest.mark.parametrize("chip_name", ["esp32", "esp32s3"])
def test_bootloader_signed_with_another_key_is_refused(
    chip_name: str, keys: list[PrivateKey]
) -> None:
    dev = make_device(chip_name, signing_keys=keys[:1])
    dev.write_bootloader(dev.bootloader(keys=[keys[1]]))
    assert "unknown key" in _refused_at(dev, "rom")


@pytest.mark.parametrize("chip_name", ["esp32s3", "esp32c3"])
def test_revoked_digest_slot_is_refused(chip_name: str, keys: list[PrivateKey]) -> None:
    dev = make_device(chip_name, signing_keys=keys[:1], revoke=[0])
    assert "revoked" in _refused_at(dev, "rom")


@pytest.mark.parametrize("chip_name", ["esp32s3", "esp32c3"])
def test_revoked_slot_still_boots_with_the_second_signature(
    chip_name: str, keys: list[PrivateKey]
) -> None:
    """Key rotation: images signed by keys 0 and 1, slot 0 revoked: slot 1 carries on."""
    dev = make_device(chip_name, signing_keys=keys[:2], revoke=[0])
    result = boot(dev.chip)
    assert result.started, result.log
    assert any("key digest slot 1" in line for line in result.log)


def test_esp32_reads_only_the_first_signature_block(keys: list[PrivateKey]) -> None:
    """ESP32 has one digest slot: a second signature cannot rescue an unknown first."""
    dev = make_device("esp32", signing_keys=keys[:1])
    dev.write_bootloader(dev.bootloader(keys=[keys[1], keys[0]]))
    reason = _refused_at(dev, "rom")
    assert "block 0: its key is not in any eFuse digest slot" in reason


def test_tampered_signed_bootloader_is_refused(device: Device) -> None:
    image = bytearray(device.bootloader())
    image[0x40] ^= 0x01  # inside the first segment, before the checksum: re-fix nothing
    device.write_bootloader(bytes(image))
    assert "checksum/SHA-256 mismatch" in _refused_at(device, "rom")


def test_plaintext_image_on_release_chip_does_not_boot(device: Device) -> None:
    """A plaintext bootloader read through the engine decrypts to garbage."""
    device.write_bootloader(device.bootloader(), encrypted=False)
    reason = _refused_at(device, "rom")
    assert "invalid header" in reason
    assert any(line.startswith("invalid header: 0x") for line in device.chip.console)


def test_plaintext_app_on_release_chip_does_not_boot(device: Device) -> None:
    device.write(device.part("ota_0").offset, device.app("6.6.6"), encrypted=False)
    _refused_at(device, "bootloader")
    assert any("invalid magic byte" in line for line in device.chip.console)


def test_image_encrypted_with_another_devices_key_does_not_boot(device: Device) -> None:
    """Cloning: flash contents from another device (its own key) are garbage here."""
    other = flash_encryption.encrypt(
        device.bootloader(), os.urandom(32), 0x1000, "esp32", 0xF
    )
    device.chip.flash.erase(0x1000, 0x7000)
    device.chip.flash.program(0x1000, other)
    assert "invalid header" in _refused_at(device, "rom")


# --- second stage: partition table ---------------------------------------------------


def test_tampered_partition_table_is_refused(device: Device) -> None:
    """An attacker who knows the layout moves ota_0 (no MD5 fix-up possible blind,
    so the table's MD5 row no longer matches)."""
    table = device.table.encode()
    forged = bytearray(table)
    entry = next(i for i, p in enumerate(device.table.entries) if p.name == "ota_0")
    forged[entry * 32 + 8] ^= 0x01  # offset field
    device.write(0x8000, bytes(forged))
    reason = _refused_at(device, "bootloader")
    assert "MD5" in reason
    assert "load partition table error!" in "\n".join(device.chip.console)


def test_bit_flip_in_encrypted_partition_table_is_refused(device: Device) -> None:
    raw = device.chip.flash.read(0x8000, 0x20)
    where = next(i for i, byte in enumerate(raw) if byte)
    flipped = raw[where] & (raw[where] - 1)  # clear the lowest set bit: NOR needs no erase
    device.chip.flash.program(0x8000 + where, bytes([flipped]))
    reason = _refused_at(device, "bootloader")
    assert reason.startswith("partition table at 0x8000 refused")
    # the blank otadata at 0x1d000 decodes as an empty table: no hint to "rehearse" there
    assert "a valid partition table is at" not in reason


# --- second stage: the app ------------------------------------------------------------


def test_app_signed_with_another_key_falls_back_or_refuses(
    device: Device, keys: list[PrivateKey]
) -> None:
    # An OTA slot with a foreign-signed app, selected in otadata: the bootloader skips
    # it and boots the previous app.
    device.write_app("ota_1", device.app("9.9.9", keys=[keys[2]]))
    device.write_otadata(otadata.select(otadata.blank(), 1, 2))
    result = boot(device.chip)
    assert result.started
    assert result.slot == "ota_0", result.log
    assert any("ota_1 at 0x" in line and "not bootable" in line for line in result.log)
    # With no good app left anywhere, it stops.
    device.write_app("ota_0", device.app("9.9.9", keys=[keys[2]]))
    assert "no bootable app" in _refused_at(device, "bootloader")


def test_unsigned_app_is_refused(device: Device) -> None:
    slot = device.part("ota_0")
    device.chip.flash.erase(slot.offset, slot.size)
    device.write_app("ota_0", device.app("1.0.1", keys=[]))
    _refused_at(device, "bootloader")
    assert any("secure_boot_v2" in line and "not signed" in line for line in device.chip.console)


def test_unsigned_app_over_a_signed_one_is_refused(device: Device) -> None:
    """esptool erases only the sectors it writes: the old signature sector may survive
    behind a shorter unsigned image; it signs the old content, not this one."""
    device.write_app("ota_0", device.app("1.0.1", keys=[]))
    _refused_at(device, "bootloader")
    assert any("secure_boot_v2" in line for line in device.chip.console)


def test_app_downgraded_below_efuse_secure_version_is_refused(keys: list[PrivateKey]) -> None:
    dev = make_device("esp32", signing_keys=keys[:1], secure_version=1, efuse_secure_version=2)
    _refused_at(dev, "bootloader")
    assert any("anti-rollback" in line for line in dev.chip.console)


def test_ota_downgrade_is_refused_before_the_slot_switch(keys: list[PrivateKey]) -> None:
    dev = make_device("esp32", signing_keys=keys[:1], secure_version=3, efuse_secure_version=3)
    fw = running_app(dev.chip)
    before = dev.otadata()
    with pytest.raises(BootRefused, match="anti-rollback"):
        fw.write_ota(dev.app("0.9.0", secure_version=2))
    assert dev.otadata() == before
    assert boot(dev.chip).slot == "ota_0"


def test_app_for_another_chip_is_refused(device: Device) -> None:
    device.write_app("ota_0", device.app("1.0.0", chip="esp32s3"))
    _refused_at(device, "bootloader")
    assert any("mismatch chip ID" in line for line in device.chip.console)


def test_one_bit_flipped_in_encrypted_app_is_refused(device: Device) -> None:
    offset = device.part("ota_0").offset
    image_length = len(device.app())  # signed: a multiple of 4 KB
    rng = random.Random(5)
    pristine = device.chip.flash.snapshot()
    for _ in range(6):
        where = offset + rng.randrange(image_length)
        bit = rng.randrange(8)
        byte = pristine[where]
        if not byte >> bit & 1:
            continue  # NOR programming can only clear bits
        device.chip.flash.program(where, bytes([byte & ~(1 << bit) & 0xFF]))
        _refused_at(device, "bootloader")
        device.chip.flash.erase(offset, image_length)
        device.chip.flash.program(offset, pristine[offset:offset + image_length])
        assert boot(device.chip).started


def test_app_with_partition_table_pointing_elsewhere_still_needs_signature(
    device: Device, keys: list[PrivateKey]
) -> None:
    """A forged but well-formed table (MD5 fixed up) aimed at attacker data: the data
    there is not a signed app, so nothing boots from it."""
    entries = [
        Partition(p.name, p.type, p.subtype, p.offset + 0x10000 if p.name == "ota_0" else p.offset,
                  p.size - 0x10000 if p.name == "ota_0" else p.size, p.encrypted, p.readonly)
        for p in device.table.entries
    ]
    device.write(0x8000, PartitionTable(tuple(entries)).encode())
    device.write(device.part("ota_0").offset + 0x10000, device.app("6.6.6", keys=[keys[1]]))
    assert "no bootable app" in _refused_at(device, "bootloader")
    assert any(
        line.startswith("E (") and "secure_boot_v2: signature verification failed" in line
        for line in device.chip.console
    )


@pytest.mark.parametrize("chip_name", ["esp32", "esp32s3"])
def test_tampered_bootloader_with_fixed_hash_is_refused_by_the_signature(
    chip_name: str, keys: list[PrivateKey]
) -> None:
    """Secure boot without flash encryption: the attacker rewrites the bootloader's code
    in plaintext, fixes its checksum and SHA-256 and keeps the original signature
    sector. Only the RSA-PSS signature can catch it, and does."""
    dev = make_device(chip_name, signing_keys=keys[:1], encryption=False)
    signed = dev.bootloader()
    forged = dev.bootloader(keys=[])  # same size, other code, valid checksum and hash
    assert app_image.parse(forged).sha256_ok and len(forged) <= len(signed) - 0x1000
    body = forged + b"\xff" * (-len(forged) % 0x1000)
    dev.write_bootloader(body + signed[len(body):])
    reason = _refused_at(dev, "rom")
    assert "secure boot refused the bootloader: signature verification failed" in reason
    dev.write_bootloader(signed)  # control: the genuine one, same chip, boots
    assert boot(dev.chip).started
