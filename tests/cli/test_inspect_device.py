"""`espfleet inspect FILE --device ID`: a bundle artifact decrypted with its device's vault keys."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from espfleet.cli import main
from espfleet.provisioning.demo_firmware import demo_firmware
from espfleet.workspace import Workspace

DEVICE = "esp32-24a1600a1b2c"


def _inspect(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["inspect", *map(str, args)])


@pytest.fixture
def bundle(fleet_workspace: Path, tmp_path: Path) -> Path:
    """A release bundle for DEVICE, as `espfleet provision --device-id` leaves it."""
    key = Workspace.open(fleet_workspace).signing_key(os.environ["ESPFLEET_PASSPHRASE"].encode())
    firmware = demo_firmware("esp32", key, version="2.1.0", app_payload_size=0x4000)
    (tmp_path / "app.bin").write_bytes(firmware.app)
    (tmp_path / "bl.bin").write_bytes(firmware.bootloader)
    result = CliRunner().invoke(main, [
        "provision", "--device-id", DEVICE, "--firmware", str(tmp_path / "app.bin"),
        "--bootloader", str(tmp_path / "bl.bin"), "--wifi-ssid", "plant-7",
    ], env={"ESPFLEET_WIFI_PASSWORD": "hunter2hunter2"})
    assert result.exit_code == 0, result.output
    return fleet_workspace / "bundles" / DEVICE


def test_encrypted_app_of_a_bundle_decodes_with_the_device_vault_key(bundle: Path) -> None:
    plain = _inspect(bundle / "ota_0.bin", "--as", "image", "--json")
    assert plain.exit_code == 2  # ciphertext: no image header without the key
    result = _inspect(bundle / "ota_0.bin", "--as", "image", "--device", DEVICE, "--json")
    assert result.exit_code == 0, result.output
    image = json.loads(result.output)
    assert image["app_desc"]["version"] == "2.1.0"


def test_nvs_of_a_bundle_reads_with_the_device_nvs_keys(bundle: Path) -> None:
    result = _inspect(bundle / "nvs.bin", "--as", "nvs", "--device", DEVICE, "--json")
    assert result.exit_code == 0, result.output
    ns = json.loads(result.output)["namespaces"]["espfleet"]
    assert ns["device_cert"]["type"] == "string"
    assert ns["device_cert"]["value"].startswith("-----BEGIN CERTIFICATE-----")
    assert ns["wifi_ssid"]["value"] == "plant-7"


def test_partition_table_of_a_bundle_decrypts_at_its_manifest_offset(bundle: Path) -> None:
    result = _inspect(bundle / "partition_table.bin", "--as", "partitions", "--device", DEVICE,
                      "--json")
    assert result.exit_code == 0, result.output
    names = [p["name"] for p in json.loads(result.output)["partitions"]]
    assert {"nvs", "nvs_keys", "otadata", "ota_0", "ota_1"} <= set(names)


def test_file_outside_the_bundle_is_bad_input(bundle: Path, tmp_path: Path) -> None:
    stray = tmp_path / "stray.bin"
    stray.write_bytes(b"\xff" * 4096)
    result = _inspect(stray, "--as", "nvs", "--device", DEVICE)
    assert result.exit_code == 2
    assert "not an artifact of esp32-24a1600a1b2c's bundle" in result.output


def test_wrong_passphrase_is_refused_without_traceback(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESPFLEET_PASSPHRASE", "not the fleet passphrase")
    result = _inspect(bundle / "nvs.bin", "--as", "nvs", "--device", DEVICE)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_device_with_explicit_keys_is_a_usage_error(bundle: Path) -> None:
    result = _inspect(bundle / "ota_0.bin", "--as", "image", "--device", DEVICE,
                      "--address", "0x20000")
    assert result.exit_code == 2 and "--device takes the keys" in result.output
