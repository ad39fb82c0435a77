"""The factory path end to end, then the field: `espfleet provision` (release) ->
`espfleet flash` through the real esptool/espefuse over socket:// into a fresh virtual
ESP32 -> reset -> the app reads its identity from encrypted NVS -> a signed OTA update
is written through the engine, confirmed, and raises the anti-rollback eFuse."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from bootkit import running_app
from click.testing import CliRunner

from espfleet.cli import main
from espfleet.device.boot import boot
from espfleet.device.chip import VirtualChip
from espfleet.device.image_check import BootRefused, security_state
from espfleet.device.server import LoaderServer
from espfleet.formats import app_image, secure_boot
from espfleet.provisioning.demo_firmware import demo_firmware
from espfleet.workspace import Workspace


@pytest.mark.slow
def test_provisioned_and_flashed_device_boots_and_takes_a_signed_update(
    fleet_workspace: Path, tmp_path: Path
) -> None:
    key = Workspace.open(fleet_workspace).signing_key(
        os.environ["ESPFLEET_PASSPHRASE"].encode()
    )
    firmware = demo_firmware("esp32", key, app_payload_size=0x4000)
    app, bootloader = tmp_path / "app.bin", tmp_path / "bootloader.bin"
    app.write_bytes(firmware.app)
    bootloader.write_bytes(firmware.bootloader)
    runner = CliRunner()
    provisioned = runner.invoke(main, [
        "provision", "--count", "1", "--firmware", str(app), "--bootloader", str(bootloader),
        "--mode", "release", "--jobs", "1", "--json"])
    assert provisioned.exit_code == 0, provisioned.output
    device = json.loads(provisioned.output)["devices"][0]
    device_id = device["device_id"]

    chip = VirtualChip.new("esp32", revision=300, mac=bytes.fromhex(device_id.split("-")[1]))
    with LoaderServer(chip) as server:
        flashed = runner.invoke(main, ["flash", device_id, "--port", server.url, "--yes",
                                       "--json"])
    assert flashed.exit_code == 0, flashed.output
    chip.reset()

    result = boot(chip)
    assert result.started, "\n".join(result.log)
    assert result.app is not None
    assert result.app.device_id == device_id
    assert result.app.fw_version == "1.0.0"
    assert result.app.project_name == "espfleet-demo"
    state = security_state(chip)
    assert state.flash_encryption and state.secure_boot

    # The field: a signed v2 (secure_version 1) arrives over OTA.
    fw = running_app(chip)
    update = app_image.build_app("esp32", version="2.0.0", project_name="espfleet-demo",
                                 secure_version=1, payload=b"v2" * 0x800)
    with pytest.raises(BootRefused, match="signature"):
        fw.write_ota(update)  # unsigned: refused before otadata changes
    assert boot(chip).slot == "ota_0"
    fw = running_app(chip)
    fw.write_ota(secure_boot.sign(update, [key]))
    updated = boot(chip)
    assert updated.started and updated.slot == "ota_1", "\n".join(updated.log)
    assert updated.app is not None and updated.app.confirmed_update
    assert security_state(chip).secure_version == 1


@pytest.mark.slow
def test_esp_idf_build_with_moved_partition_table_boots_on_a_matching_chip(
    fleet_workspace: Path, tmp_path: Path, vectors: Path
) -> None:
    """An ESP-IDF build dir (Espressif's 32 KB Secure Boot V2 bootloader, so
    CONFIG_PARTITION_TABLE_OFFSET=0xf000): provision -> flash with the real esptool and
    espefuse -> the chip whose bootloader reads 0xf000 starts the app."""
    from espfleet.formats.partition_table import default_secure_table

    key = Workspace.open(fleet_workspace).signing_key(os.environ["ESPFLEET_PASSPHRASE"].encode())
    build = tmp_path / "build"
    build.mkdir()
    (build / "app.bin").write_bytes(demo_firmware("esp32", key, app_payload_size=0x2000).app)
    (build / "bootloader.bin").write_bytes((vectors / "bootloader_unsigned_v2.bin").read_bytes())
    (build / "pt.bin").write_bytes(default_secure_table(0x400000, 0xF000).encode())
    (build / "flasher_args.json").write_text(json.dumps({
        "app": {"offset": "0x20000", "file": "app.bin"},
        "bootloader": {"offset": "0x1000", "file": "bootloader.bin"},
        "partition-table": {"offset": "0xf000", "file": "pt.bin"},
        "flash_settings": {"flash_size": "4MB"},
        "extra_esptool_args": {"chip": "esp32"},
    }))  # fmt: skip
    runner = CliRunner()
    device_id = "esp32-24a1600a1b2c"
    provisioned = runner.invoke(main, ["provision", "--device-id", device_id, "--firmware",
                                       str(build), "--jobs", "1"])
    assert provisioned.exit_code == 0, provisioned.output
    chip = VirtualChip.new("esp32", mac=bytes.fromhex("24a1600a1b2c"),
                           partition_table_offset=0xF000)
    with LoaderServer(chip) as server:
        flashed = runner.invoke(main, ["flash", device_id, "--port", server.url, "--yes"])
    assert flashed.exit_code == 0, flashed.output
    result = boot(chip)
    assert result.started, "\n".join(result.log)
    assert result.app is not None and result.app.device_id == device_id
    assert any("nvs              01   02 00010000" in line for line in result.log)
