"""End to end: `espfleet provision` (release) -> `espfleet flash` through the real
esptool/espefuse into a virtual ESP32 over socket:// -> read out its flash and eFuses
as an attacker with a clip would -> the audits find nothing at high or above."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from espfleet.audit.findings import Severity
from espfleet.cli import main
from espfleet.device.chip import VirtualChip
from espfleet.device.server import LoaderServer
from espfleet.provisioning.demo_firmware import demo_firmware
from espfleet.workspace import Workspace

WIFI_PASS = "fleet-wifi-passw0rd"


@pytest.mark.slow
def test_release_provisioned_virtual_device_readout_gives_nothing(
    fleet_workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = Workspace.open(fleet_workspace)
    firmware = demo_firmware(
        "esp32", workspace.signing_key(os.environ["ESPFLEET_PASSPHRASE"].encode())
    )
    app, bootloader = tmp_path / "app.bin", tmp_path / "bootloader.bin"
    app.write_bytes(firmware.app)
    bootloader.write_bytes(firmware.bootloader)
    monkeypatch.setenv("ESPFLEET_WIFI_PASSWORD", WIFI_PASS)
    runner = CliRunner()
    provisioned = runner.invoke(main, [
        "provision", "--count", "1", "--firmware", str(app), "--bootloader", str(bootloader),
        "--mode", "release", "--wifi-ssid", "HomeNet", "--jobs", "1", "--json"])
    assert provisioned.exit_code == 0, provisioned.output
    device_id = json.loads(provisioned.output)["devices"][0]["device_id"]

    chip = VirtualChip.new("esp32", revision=300, mac=bytes.fromhex(device_id.split("-")[1]))
    with LoaderServer(chip) as server:
        flashed = runner.invoke(main, ["flash", device_id, "--port", server.url, "--yes",
                                       "--json"])
    assert flashed.exit_code == 0, flashed.output
    dump, efuses = tmp_path / "readout.bin", tmp_path / "efuse.bin"
    dump.write_bytes(chip.flash.snapshot())
    efuses.write_bytes(chip.efuse_bytes())

    flash_audit = runner.invoke(main, [
        "audit", "flash", str(dump), "--chip", "esp32", "--workspace", str(fleet_workspace),
        "--device", device_id, "--json"])
    assert flash_audit.exit_code == 0, flash_audit.output
    report = json.loads(flash_audit.output)
    assert report["passed"] and report["known_secrets_searched"] >= 8
    assert not [f for f in report["findings"] if f["severity"] in ("high", "critical")]
    assert report["entropy"]["counts"]["ciphertext"] > 0

    efuse_audit = runner.invoke(main, [
        "audit", "efuse", str(efuses), "--chip", "esp32", "--mode", "release",
        "--workspace", str(fleet_workspace), "--json"])
    assert efuse_audit.exit_code == 0, efuse_audit.output
    assert json.loads(efuse_audit.output)["findings"] == []

    # Control: the workspace really knows this device's secrets, and the same read-out
    # with one of them in plaintext fails.
    from espfleet.audit.flash_scan import scan_flash
    from espfleet.audit.workspace_secrets import workspace_secrets
    from espfleet.chips import chip_facts

    known = workspace_secrets(workspace, os.environ["ESPFLEET_PASSPHRASE"].encode(),
                              [device_id])
    labels = {s.label for s in known.secrets}
    assert {f"flash-encryption key of {device_id}", f"Wi-Fi password of {device_id}",
            f"TLS private key of {device_id} (PEM)"} <= labels
    tls = next(s for s in known.secrets if s.label == f"TLS private key of {device_id} (DER)")
    leaked = bytearray(dump.read_bytes())
    leaked[0x300000 : 0x300000 + len(tls.value)] = tls.value
    report_leaked = scan_flash(bytes(leaked), chip=chip_facts("esp32"),
                               known_secrets=known.secrets)
    assert {(f.kind, f.offset) for f in report_leaked.failing(Severity.HIGH)} >= {
        ("known-secret", 0x300000), ("der-private-key", 0x300000)}


@pytest.mark.slow
def test_destroy_policy_secrets_come_from_the_unflashed_bundle(
    fleet_workspace: Path, tmp_path: Path
) -> None:
    """Under the destroy policy an unflashed device's keys live sealed in its bundle,
    not in the vault: the audit still knows them (and its TLS key, from the same bundle)."""
    from espfleet.audit.workspace_secrets import workspace_secrets

    config = fleet_workspace / "fleet.toml"
    text = config.read_text(encoding="utf-8")
    assert 'policy = "escrow"' in text
    config.write_text(text.replace('policy = "escrow"', 'policy = "destroy"'), encoding="utf-8")
    resealed = CliRunner().invoke(main, ["ca", "reseal"])
    assert resealed.exit_code == 0, resealed.output
    workspace = Workspace.open(fleet_workspace)
    passphrase = os.environ["ESPFLEET_PASSPHRASE"].encode()
    firmware = demo_firmware("esp32", workspace.signing_key(passphrase))
    app, bootloader = tmp_path / "app.bin", tmp_path / "bootloader.bin"
    app.write_bytes(firmware.app)
    bootloader.write_bytes(firmware.bootloader)
    provisioned = CliRunner().invoke(main, [
        "provision", "--count", "1", "--firmware", str(app), "--bootloader", str(bootloader),
        "--mode", "release", "--jobs", "1", "--json"])
    assert provisioned.exit_code == 0, provisioned.output
    device_id = json.loads(provisioned.output)["devices"][0]["device_id"]
    assert not any(workspace.vault_dir.glob(f"{device_id}*"))

    labels = {s.label for s in workspace_secrets(workspace, passphrase, [device_id]).secrets}
    assert {f"flash-encryption key of {device_id}", f"NVS keys of {device_id}",
            f"TLS private key of {device_id} (PEM)"} <= labels
