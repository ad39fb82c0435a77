"""The boot chain on release-mode virtual chips: ROM, second stage, OTA, rollback."""

from __future__ import annotations

import pytest
from bootkit import Device, clone, make_device, running_app

from espfleet.device.boot import HandOff, boot
from espfleet.device.firmware import AppReport
from espfleet.device.image_check import security_state
from espfleet.errors import DeviceError
from espfleet.formats import otadata
from espfleet.formats.secure_boot import PrivateKey


@pytest.mark.parametrize("chip_name", ["esp32", "esp32s3", "esp32c3"])
def test_release_device_boots_its_app_and_reports_identity(
    chip_name: str, keys: list[PrivateKey]
) -> None:
    dev = make_device(chip_name, signing_keys=keys[:1])
    result = boot(dev.chip)
    assert result.started, result.log
    assert (result.stage, result.reason, result.slot) == ("app", None, "ota_0")
    assert result.app is not None
    assert result.app.device_id == dev.chip.device_id
    assert result.app.fw_version == "1.0.0"
    assert result.app.running_slot == "ota_0"
    assert result.app.broker_uri == "mqtts://127.0.0.1:8883"
    log = "\n".join(result.log)
    assert "2nd stage bootloader" in log
    assert "Signature verified successfully" in log
    assert "flash encryption is enabled" in log
    assert "Pro cpu start user code" in log
    # The log went to the chip's console too, line for line.
    assert dev.chip.console[-len(result.log):] == list(result.log)


def test_esp32s3_with_an_xts_aes_256_key_boots(keys: list[PrivateKey]) -> None:
    dev = make_device("esp32s3", signing_keys=keys[:1], fe_key_length=64)
    result = boot(dev.chip)
    assert result.started, result.log
    assert dev.chip.hardware_key() == dev.fe_key


def test_boot_log_is_deterministic(device: Device) -> None:
    twin = clone(device.chip)
    assert boot(device.chip).log == boot(twin).log


def test_certificate_serial_comes_from_nvs(device: Device) -> None:
    from cryptography import x509

    report = boot(device.chip).app
    assert report is not None
    cert = x509.load_pem_x509_certificate(device.cert_pem.encode())
    assert report.cert_serial == f"{cert.serial_number:x}"


def test_plain_development_chip_boots_without_security(keys: list[PrivateKey]) -> None:
    dev = make_device("esp32", signing_keys=[], encryption=False, secure_boot_on=False)
    state = security_state(dev.chip)
    assert not state.flash_encryption and not state.secure_boot
    result = boot(dev.chip)
    assert result.started, result.log
    assert any("Flash encryption is not enabled" in line for line in result.log)


def test_ota_update_is_pending_then_confirmed_and_burns_secure_version(device: Device) -> None:
    fw = running_app(device.chip)
    target = fw.write_ota(device.app("2.0.0", secure_version=2))
    assert target.name == "ota_1"
    entry = device.otadata().active()
    assert entry is not None and entry.state == otadata.OtaState.NEW
    result = boot(device.chip)
    assert result.started and result.slot == "ota_1", result.log
    assert result.app is not None
    assert result.app.fw_version == "2.0.0"
    assert result.app.confirmed_update
    assert result.app.efuse_secure_version == 2
    entry = device.otadata().active()
    assert entry is not None and entry.state == otadata.OtaState.VALID
    # Next boot: nothing left to confirm, same slot, the eFuse stays where it is.
    again = boot(device.chip)
    assert again.slot == "ota_1" and again.app is not None
    assert not again.app.confirmed_update
    assert security_state(device.chip).secure_version == 2


def _crashing_app(handoff: HandOff) -> AppReport:
    raise DeviceError("self-test failed: cannot reach the broker")


def test_update_that_never_confirms_is_rolled_back(device: Device) -> None:
    fw = running_app(device.chip)
    fw.write_ota(device.app("2.0.0", secure_version=1))
    crashed = boot(device.chip, _crashing_app)
    assert not crashed.started and crashed.stage == "app"
    assert crashed.slot == "ota_1"
    assert "abort()" in crashed.log[-1]
    # The bootloader finds ota_1 still pending verify: ABORTED, back to ota_0.
    result = boot(device.chip)
    assert result.started and result.slot == "ota_0", result.log
    assert any("ABORTED" in line for line in result.log)
    assert security_state(device.chip).secure_version == 0
    states = {e.slot(2): e.state for e in device.otadata().entries if e is not None}
    assert states[1] == otadata.OtaState.ABORTED


def test_bootloader_raises_secure_version_for_a_valid_app(device: Device) -> None:
    """CONFIG_BOOTLOADER_APP_ANTI_ROLLBACK: a VALID app with a higher secure_version
    makes the bootloader burn the eFuse counter before the app runs."""
    device.write_app("ota_1", device.app("3.0.0", secure_version=3))
    device.write_otadata(otadata.select(otadata.blank(), 1, 2, otadata.OtaState.VALID))
    result = boot(device.chip, _crashing_app)
    assert result.slot == "ota_1"
    assert security_state(device.chip).secure_version == 3
    assert any("Anti-rollback" in line for line in result.log)


def test_erased_flash_does_not_boot() -> None:
    from espfleet.device.chip import VirtualChip

    result = boot(VirtualChip.new("esp32"))
    assert not result.started and result.stage == "rom"
    assert "invalid header: 0xffffffff" in result.log



@pytest.mark.parametrize("chip_name", ["esp32", "esp32c3"])
def test_erased_flash_under_flash_encryption_says_nothing_was_written(
    keys: list[PrivateKey], chip_name: str
) -> None:
    """eFuses burned, Ctrl-C before the first image: erased flash read through the
    decryption is garbage, and the reason blamed a plaintext or foreign-key bootloader."""
    dev = make_device(chip_name, signing_keys=keys[:1])
    dev.chip.flash.erase_all()
    result = boot(dev.chip)
    assert not result.started and result.stage == "rom"
    assert "the flash is erased there: no bootloader was written" in (result.reason or "")
    assert "plaintext" not in (result.reason or "")


def test_development_mode_chip_boots_and_says_flashes_are_left(keys: list[PrivateKey]) -> None:
    dev = make_device("esp32", signing_keys=keys[:1], release=False)
    result = boot(dev.chip)
    assert result.started, result.log
    assert any("(3 plaintext flashes left)" in line for line in result.log)
    release = boot(make_device("esp32", signing_keys=keys[:1]).chip)
    assert any("(0 plaintext flashes left)" in line for line in release.log)


def test_crypt_counter_without_a_key_cannot_boot(device: Device) -> None:
    from espfleet.device.chip import VirtualChip

    chip = VirtualChip.new("esp32")
    chip.flash.program(0, device.chip.flash.snapshot())
    chip.burn_efuse("FLASH_CRYPT_CNT", 1)
    result = boot(chip)
    assert result.stage == "rom"
    assert "flash read err, 1000" in result.log


def test_app_built_for_a_newer_revision_is_refused(device: Device) -> None:
    from espfleet.formats import app_image, secure_boot

    image = app_image.build_app("esp32", version="1.0.0", payload=b"x", min_rev_full=301)
    device.write_app("ota_0", secure_boot.sign(image, list(device.signing_keys)))
    result = boot(device.chip)
    assert result.stage == "bootloader"
    assert any("requires chip rev >= v3.1, but chip is v3.0" in line for line in result.log)


def test_ota_image_larger_than_the_slot_is_refused(device: Device) -> None:
    from espfleet.device.image_check import BootRefused

    fw = running_app(device.chip)
    before = device.chip.flash.snapshot()
    with pytest.raises(BootRefused, match="does not fit"):
        fw.write_ota(b"\xe9" * (fw.passive_slot().size + 1))
    assert device.chip.flash.snapshot() == before


def test_identity_of_another_device_fails_the_self_test(keys: list[PrivateKey]) -> None:
    """Development-mode clone: another chip's NVS identity (re-encrypted for this chip by
    someone holding this chip's key) is not this chip's; the app refuses to run."""
    from bootkit import write_identity

    dev = make_device("esp32", signing_keys=keys[:1])
    write_identity(dev, "esp32-24a1600a1b2c")
    result = boot(dev.chip)
    assert not result.started and result.stage == "app"
    assert "esp32-24a1600a1b2c" in (result.reason or "")
    assert dev.chip.device_id in (result.reason or "")


def test_report_carries_the_certificate_expiry(device: Device) -> None:
    from cryptography import x509

    report = boot(device.chip).app
    assert report is not None
    cert = x509.load_pem_x509_certificate(device.cert_pem.encode())
    assert report.cert_not_after == cert.not_valid_after_utc.isoformat()


def test_first_boot_records_the_default_slot_in_otadata(keys: list[PrivateKey]) -> None:
    """Erased otadata, no factory app: ESP-IDF boots ota_0 and writes ota_seq=1 VALID
    (and raises the anti-rollback eFuse to the app's secure_version)."""
    dev = make_device("esp32", signing_keys=keys[:1], secure_version=2)
    assert dev.otadata() == otadata.blank()
    result = boot(dev.chip)
    assert result.started and result.slot == "ota_0"
    assert "I (" in result.log[-1]
    assert any("Set actual ota_seq=1 in otadata[0]" in line for line in result.log)
    entry = dev.otadata().entries[0]
    assert entry is not None and (entry.seq, entry.state) == (1, otadata.OtaState.VALID)
    assert security_state(dev.chip).secure_version == 2


def test_application_hand_off_is_replaceable(device: Device) -> None:
    """The bootloader hands any Application the chip, table, booted slot and image."""
    seen: list[HandOff] = []

    def agent(handoff: HandOff) -> AppReport:
        seen.append(handoff)
        raise DeviceError("agent stops here")

    result = boot(device.chip, agent)
    assert result.stage == "app" and result.slot == "ota_0"
    (handoff,) = seen
    assert handoff.partition == device.part("ota_0")
    assert handoff.app_desc.version == "1.0.0"
    assert handoff.security.flash_encryption and handoff.security.secure_boot
    assert handoff.chip is device.chip


def test_rejected_update_rolls_back_on_next_reset(device: Device) -> None:
    from espfleet.device.firmware import Firmware

    running_app(device.chip).write_ota(device.app("2.0.0", secure_version=1))

    def failing_self_test(handoff: HandOff) -> AppReport:
        Firmware(handoff).reject_update()
        raise DeviceError("self-test failed: rebooting")

    assert boot(device.chip, failing_self_test).slot == "ota_1"
    result = boot(device.chip)
    assert result.started and result.slot == "ota_0", result.log
    states = {e.slot(2): e.state for e in device.otadata().entries if e is not None}
    assert states[1] == otadata.OtaState.INVALID
    assert security_state(device.chip).secure_version == 0
    with pytest.raises(DeviceError, match="already confirmed"):
        running_app(device.chip).reject_update()


def test_partition_table_is_read_where_the_bootloader_was_built_to_read_it(
    keys: list[PrivateKey],
) -> None:
    """CONFIG_PARTITION_TABLE_OFFSET=0xf000 (a large SBV2 + flash-encryption bootloader):
    the device boots; the same flash under a bootloader built for 0x8000 does not."""
    from espfleet.device.chip import VirtualChip

    dev = make_device("esp32", signing_keys=keys[:1], table_offset=0xF000)
    assert dev.part("nvs").offset > 0xF000
    result = boot(dev.chip)
    assert result.started and result.slot == "ota_0", result.log
    twin = clone(dev.chip)
    default = VirtualChip(twin.chip, revision=twin.revision, flash=twin.flash, efuse=twin.efuse)
    refused = boot(default)
    assert refused.stage == "bootloader"
    assert "partition table at 0x8000 refused" in (refused.reason or "")
    # the rehearsal mistake is named, with the chip to create instead
    assert "a valid partition table is at 0xf000" in (refused.reason or "")
    assert "--partition-table-offset 0xf000" in (refused.reason or "")


def test_boot_is_a_reset_that_latches_the_download_lock(device: Device) -> None:
    """The app (or a factory step) burned UART_DOWNLOAD_DIS: it takes effect at the next
    reset, which every boot is; afterwards the ROM loader no longer answers."""
    device.chip.burn_efuse("UART_DOWNLOAD_DIS", 1)
    assert device.chip.download_mode == "normal"
    assert boot(device.chip).started
    assert str(device.chip.download_mode) == "disabled"
