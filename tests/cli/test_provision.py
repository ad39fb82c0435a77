"""`espfleet provision` through click: bundles, registry, vault, resume, and every bad
input refused with a clear message and nothing written."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from espfleet.cli import main
from espfleet.formats import app_image, secure_boot
from espfleet.formats.partition_table import from_csv
from espfleet.provisioning import batch as batch_module
from espfleet.provisioning.bundle import load_bundle
from espfleet.provisioning.demo_firmware import demo_firmware, with_min_revision
from espfleet.provisioning.flash_journal import FlashJournal
from espfleet.provisioning.identity import verify_recovery_secret
from espfleet.provisioning.vault import Vault
from espfleet.workspace import Workspace

PASS = b"correct horse battery staple"
Snapshot = Callable[[Path], dict[str, str]]


@pytest.fixture
def fw(fleet_workspace: Path, tmp_path: Path) -> dict[str, Path]:
    key = Workspace.open(fleet_workspace).signing_key(PASS)
    firmware = demo_firmware("esp32", key, app_payload_size=0x8000)
    paths = {"app": tmp_path / "app.bin", "bootloader": tmp_path / "bootloader.bin"}
    paths["app"].write_bytes(firmware.app)
    paths["bootloader"].write_bytes(firmware.bootloader)
    return paths


def _provision(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["provision", *map(str, args)])


def _firmware_args(fw: dict[str, Path]) -> list[str | Path]:
    return ["--firmware", fw["app"], "--bootloader", fw["bootloader"]]


def _registry(ws_path: Path) -> Any:
    return Workspace.open(ws_path).registry()


def test_count_builds_bundles_registers_devices_and_escrows_keys(
    fleet_workspace: Path, fw: dict[str, Path]
) -> None:
    result = _provision("--count", 3, *_firmware_args(fw), "--jobs", 2, "--json", "--merged")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["built"], report["skipped"], report["failed"]) == (3, 0, 0)
    ws = Workspace.open(fleet_workspace)
    vault = Vault.open(ws.vault_dir, PASS, create=False)
    with ws.registry() as registry:
        for entry in report["devices"]:
            device_id = entry["device_id"]
            bundle = load_bundle(ws.bundles_dir / device_id)
            assert bundle.manifest.mode == "release" and bundle.merged is not None
            assert bundle.sealed_secrets is None  # escrow: secrets live in the vault
            record = registry.get_device(device_id)
            assert record.status == "provisioned" and record.mode == "release"
            assert record.bundle_sha256 == entry["bundle_sha256"]
            secrets = vault.load(device_id)
            assert verify_recovery_secret(secrets.recovery_secret, record.recovery_secret_hash)
            cert = registry.active_certificate(device_id)
            assert cert.serial == bundle.manifest.certificate.serial == entry["serial"]
            assert bytes.fromhex(record.mac)[0] & 0x02  # locally administered


def test_count_never_builds_for_a_board_registered_by_cert_issue(
    fleet_workspace: Path, fw: dict[str, Path]
) -> None:
    """`cert issue` registers a real board's MAC as "allocated"; --count resumes only
    MACs of its own range, so it must not build a bundle for (and re-key) that board."""
    issued = CliRunner().invoke(main, ["cert", "issue", "esp32-24a1600a1b2c", "--json"])
    assert issued.exit_code == 0, issued.output
    result = _provision("--count", "1", *_firmware_args(fw), "--jobs", "1", "--json")
    assert result.exit_code == 0, result.output
    [device] = json.loads(result.output)["devices"]
    assert device["device_id"].startswith("esp32-02e5f1")
    with _registry(fleet_workspace) as registry:
        cert = registry.active_certificate("esp32-24a1600a1b2c")
        # not superseded
        assert cert is not None and cert.serial == json.loads(issued.output)["serial"]


def test_rerun_skips_done_devices_and_changes_nothing(
    fleet_workspace: Path, fw: dict[str, Path], snapshot: Snapshot
) -> None:
    args = ["--device-id", "esp32-24a1600a1b2c", *_firmware_args(fw), "--jobs", 1]
    assert _provision(*args).exit_code == 0
    before = snapshot(fleet_workspace)
    again = _provision(*args)
    assert again.exit_code == 0, again.output
    assert "0 built, 1 already done" in again.output
    assert snapshot(fleet_workspace) == before


def test_macs_list_with_wifi_and_development_mode_warns(
    fleet_workspace: Path, fw: dict[str, Path], tmp_path: Path
) -> None:
    macs = tmp_path / "macs.csv"
    macs.write_text("mac,wifi_ssid,wifi_pass\n24:a1:60:0a:1b:2c,lab,pw-123456\n24a1600a1b30\n")
    result = _provision("--macs", macs, *_firmware_args(fw), "--mode", "development")
    assert result.exit_code == 0, result.output
    assert "development mode on esp32 leaves open" in result.output
    assert "JTAG stays enabled" in result.output
    bundle = load_bundle(fleet_workspace / "bundles" / "esp32-24a1600a1b2c")
    assert bundle.manifest.mode == "development"
    assert all(b"pw-123456" not in data for data in bundle.images.values())



def test_development_mode_with_platformio_bootloader_says_the_app_is_not_verified(
    fleet_workspace: Path, fw: dict[str, Path], tmp_path: Path
) -> None:
    """Development mode accepts PlatformIO's plain bootloader and burns SECURE_BOOT_EN:
    the warning listed what the eFuses leave open, not that no app is ever verified."""
    build = _pio_dir(tmp_path, fw, _GOOD_CSV)
    (build / "bootloader.bin").write_bytes(app_image.build_bootloader("esp32"))
    plain = _provision("--device-id", "esp32-24a1600a1b2c", "--firmware", build,
                       "--mode", "development")
    assert plain.exit_code == 0, plain.output
    assert "the bootloader from the PlatformIO build is not a Secure Boot V2" in plain.output
    assert "does not verify the app" in plain.output
    secure = _provision("--device-id", "esp32-24a1600a1b30", *_firmware_args(fw),
                        "--mode", "development")
    assert secure.exit_code == 0, secure.output
    assert "JTAG stays enabled" in secure.output
    assert "does not verify the app" not in secure.output



def test_release_bundles_for_a_localhost_broker_are_warned_about(
    fleet_workspace: Path, fw: dict[str, Path]
) -> None:
    """`init` without --broker-host writes localhost: release bundles silently told every
    device to find its MQTT broker at mqtts://localhost:8883 (itself)."""
    result = _provision("--device-id", "esp32-24a1600a1b2c", *_firmware_args(fw))
    assert result.exit_code == 0, result.output
    assert "devices get broker mqtts://localhost:8883: localhost is the device itself" \
        in result.output
    dev = _provision("--device-id", "esp32-24a1600a1b30", *_firmware_args(fw),
                     "--mode", "development")
    assert dev.exit_code == 0 and "is the device itself" not in dev.output
    again = _provision("--device-id", "esp32-24a1600a1b2c", *_firmware_args(fw), "--json")
    assert "is the device itself" in json.loads(again.output)["warnings"][0]


def test_destroy_policy_seals_secrets_into_the_bundle_not_the_vault(
    fleet_workspace: Path, fw: dict[str, Path]
) -> None:
    toml = fleet_workspace / "fleet.toml"
    toml.write_text(re.sub(r'policy = "escrow"', 'policy = "destroy"', toml.read_text()))
    result = CliRunner().invoke(main, ["ca", "reseal"])
    assert result.exit_code == 0, result.output
    result = _provision("--device-id", "esp32-24a1600a1b2c", *_firmware_args(fw))
    assert result.exit_code == 0, result.output
    ws = Workspace.open(fleet_workspace)
    assert ws.config.key_policy == "destroy"
    bundle = load_bundle(ws.bundles_dir / "esp32-24a1600a1b2c")
    vault = Vault.open(ws.vault_dir, PASS, create=False)
    assert not vault.contains("esp32-24a1600a1b2c")
    assert bundle.sealed_secrets is not None
    secrets = vault.unseal("esp32-24a1600a1b2c", bundle.sealed_secrets)
    assert bundle.manifest.key_fingerprints.flash_encryption_key_sha256 == __import__(
        "hashlib").sha256(secrets.flash_encryption_key).hexdigest()


def test_esp_idf_build_dir_with_espressif_sbv2_bootloader_and_moved_table(
    fleet_workspace: Path, fw: dict[str, Path], tmp_path: Path, vectors: Path
) -> None:
    from espfleet.formats.partition_table import default_secure_table

    build = tmp_path / "build"
    build.mkdir()
    (build / "app.bin").write_bytes(fw["app"].read_bytes())
    (build / "bootloader.bin").write_bytes((vectors / "bootloader_unsigned_v2.bin").read_bytes())
    (build / "pt.bin").write_bytes(default_secure_table(0x400000, 0xF000).encode())
    (build / "flasher_args.json").write_text(json.dumps({
        "app": {"offset": "0x20000", "file": "app.bin"},
        "bootloader": {"offset": "0x1000", "file": "bootloader.bin"},
        "partition-table": {"offset": "0xf000", "file": "pt.bin"},
        "flash_settings": {"flash_size": "4MB"},
        "extra_esptool_args": {"chip": "esp32"},
    }))
    result = _provision("--device-id", "esp32-24a1600a1b2c", "--firmware", build)
    assert result.exit_code == 0, result.output
    bundle = load_bundle(fleet_workspace / "bundles" / "esp32-24a1600a1b2c")
    assert bundle.manifest.artifact("partition_table").offset == 0xF000
    assert bundle.manifest.artifact("bootloader").size == 0x9000  # 32 KB + signature sector


# --- bad input: a clear message, exit 2, nothing written ------------------------------


def _pio_dir(tmp_path: Path, fw: dict[str, Path], csv: str) -> Path:
    build = tmp_path / ".pio" / "build" / "esp32dev"
    build.mkdir(parents=True)
    (build / "firmware.bin").write_bytes(fw["app"].read_bytes())
    (build / "partitions.bin").write_bytes(from_csv(csv).encode())
    return build


_GOOD_CSV = (
    "nvs,data,nvs,0x9000,0x6000,\nnvs_keys,data,nvs_keys,0xf000,0x1000,encrypted\n"
    "otadata,data,ota,0x10000,0x2000,encrypted\nota_0,app,ota_0,0x20000,0x180000,\n"
    "ota_1,app,ota_1,0x1a0000,0x180000,\n"
)


def _bad_case(name: str, fleet_workspace: Path, fw: dict[str, Path],
              tmp_path: Path) -> tuple[list[str | Path], str]:
    key = Workspace.open(fleet_workspace).signing_key(PASS)
    other_key = secure_boot.generate_signing_key()
    one = ["--device-id", "esp32-24a1600a1b2c"]

    def write(file: str, data: bytes) -> Path:
        path = tmp_path / file
        path.write_bytes(data)
        return path

    if name == "bootloader_for_another_chip":
        other = demo_firmware("esp32c3", key, app_payload_size=0x1000).bootloader
        return [*one, "--firmware", fw["app"], "--bootloader", write("c3.bin", other)], \
            "bootloader from --bootloader is for esp32c3"
    if name == "unsigned_plain_bootloader_in_release":
        plain = app_image.build_bootloader("esp32")
        return [*one, "--firmware", fw["app"], "--bootloader", write("plain.bin", plain)], \
            "unsigned and not built for Secure Boot V2"
    if name == "platformio_bootloader_in_release":
        build = _pio_dir(tmp_path, fw, _GOOD_CSV)
        (build / "bootloader.bin").write_bytes(app_image.build_bootloader("esp32"))
        return [*one, "--firmware", build], "Arduino/PlatformIO cannot build one"
    if name == "bootloader_signed_by_another_key":
        boot = with_min_revision(app_image.build_bootloader("esp32"), "esp32", 300)
        signed = secure_boot.sign(boot, [other_key])
        return [*one, "--firmware", fw["app"], "--bootloader", write("bl.bin", signed)], \
            "not with this fleet's Secure Boot V2 key"
    if name == "bootloader_below_v3_revision":
        signed = secure_boot.sign(app_image.build_bootloader("esp32"), [key])
        return [*one, "--firmware", fw["app"], "--bootloader", write("old.bin", signed)], \
            r"chip revision v0.0, but Secure Boot V2 on esp32 needs v3.0"
    if name == "app_for_another_chip":
        app = app_image.build_app("esp32s3", version="1")
        return [*one, "--firmware", write("s3.bin", app), "--bootloader", fw["bootloader"]], \
            "app image .* is for esp32s3"
    if name == "app_larger_than_its_slot":
        big = app_image.build_app("esp32", version="1", payload=os.urandom(0x100000))
        return [*one, "--firmware", write("big.bin", big), "--bootloader", fw["bootloader"],
                "--flash-size", "2MB"], "is smaller than the .*-byte app"
    if name == "table_without_otadata":
        csv = "\n".join(line for line in _GOOD_CSV.splitlines() if "otadata" not in line)
        return [*one, "--firmware", _pio_dir(tmp_path, fw, csv), "--bootloader",
                fw["bootloader"]], "no ota partition"
    if name == "table_without_nvs_keys":
        csv = "\n".join(line for line in _GOOD_CSV.splitlines() if "nvs_keys" not in line)
        return [*one, "--firmware", _pio_dir(tmp_path, fw, csv), "--bootloader",
                fw["bootloader"]], "no nvs_keys partition"
    if name == "table_with_nvs_flagged_encrypted":
        csv = _GOOD_CSV.replace("0x6000,\n", "0x6000,encrypted\n", 1)
        return [*one, "--firmware", _pio_dir(tmp_path, fw, csv), "--bootloader",
                fw["bootloader"]], "nvs.* encrypted"
    if name == "duplicate_mac_in_list":
        macs = write("dup.csv", b"24:a1:60:0a:1b:2c\n24:a1:60:0a:1b:30\n24a1600a1b2c\n")
        return ["--macs", macs, *_firmware_args(fw)], \
            r"line 3: duplicate MAC 24:a1:60:0a:1b:2c \(also on line 1\)"
    if name == "duplicate_device_id":
        return [*one, *one, *_firmware_args(fw)], "listed twice"
    if name == "malformed_mac_line":
        macs = write("bad.csv", b"# lot 1\n24:a1:60:0a:1b:2c\n24:a1:60:0a:1b\n")
        return ["--macs", macs, *_firmware_args(fw)], "bad.csv line 3: .* is not a MAC"
    if name == "wifi_ssid_longer_than_32_bytes":
        return [*one, *_firmware_args(fw), "--wifi-ssid", "s" * 33], \
            r"--wifi-ssid / \$ESPFLEET_WIFI_PASSWORD: .* an SSID has at most 32"
    if name == "wifi_password_longer_than_wpa_allows_in_list":
        macs = write("wifi.csv", b"mac,ssid,password\n24:a1:60:0a:1b:2c,lab," + b"p" * 64)
        return ["--macs", macs, *_firmware_args(fw)], "wifi.csv line 2: .* at most 63"
    if name == "nvs_partition_too_small_for_the_identity":
        csv = _GOOD_CSV.replace("nvs,data,nvs,0x9000,0x6000,", "nvs,data,nvs,0x9000,0x2000,")
        return ["--count", "3", "--firmware", _pio_dir(tmp_path, fw, csv), "--bootloader",
                fw["bootloader"]], r"partition nvs \(data/nvs, 0x2000 bytes\) is too small"
    if name == "macs_list_not_utf8":
        macs = write("ansi.csv", b"mac,ssid,password\n24:a1:60:0a:1b:2c,Caf\xe9,pw-123456\n")
        return ["--macs", macs, *_firmware_args(fw)], \
            r"ansi.csv line 2: byte 0xe9 is not UTF-8 .* \"CSV UTF-8\""
    if name == "two_device_selectors":
        return [*one, "--count", "2", *_firmware_args(fw)], "exactly one of"
    raise AssertionError(name)


BAD_CASES = [
    "bootloader_for_another_chip", "unsigned_plain_bootloader_in_release",
    "platformio_bootloader_in_release", "bootloader_signed_by_another_key",
    "bootloader_below_v3_revision",
    "app_for_another_chip", "app_larger_than_its_slot", "table_without_otadata",
    "table_without_nvs_keys", "table_with_nvs_flagged_encrypted", "duplicate_mac_in_list",
    "duplicate_device_id", "malformed_mac_line", "two_device_selectors",
    "wifi_ssid_longer_than_32_bytes", "wifi_password_longer_than_wpa_allows_in_list",
    "macs_list_not_utf8", "nvs_partition_too_small_for_the_identity",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_refused_and_writes_nothing(
    case: str, fleet_workspace: Path, fw: dict[str, Path], tmp_path: Path, snapshot: Snapshot
) -> None:
    args, message = _bad_case(case, fleet_workspace, fw, tmp_path)
    before = snapshot(fleet_workspace)
    result = _provision(*args)
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output), result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output
    assert snapshot(fleet_workspace) == before


def test_wrong_signing_key_passphrase_is_refused_and_writes_nothing(
    fleet_workspace: Path, fw: dict[str, Path], snapshot: Snapshot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ESPFLEET_PASSPHRASE", "not the fleet passphrase")
    before = snapshot(fleet_workspace)
    result = _provision("--count", 2, *_firmware_args(fw))
    assert result.exit_code == 2, result.output
    assert "passphrase" in result.output
    assert snapshot(fleet_workspace) == before


def test_revoked_device_is_never_provisioned_again(
    fleet_workspace: Path, fw: dict[str, Path], snapshot: Snapshot
) -> None:
    args = ["--device-id", "esp32-24a1600a1b2c", *_firmware_args(fw)]
    assert _provision(*args).exit_code == 0
    with _registry(fleet_workspace) as registry:
        registry.update_device("esp32-24a1600a1b2c", status="revoked")
    before = snapshot(fleet_workspace)
    result = _provision(*args)
    assert result.exit_code == 2, result.output
    assert "is revoked in the registry" in result.output
    assert snapshot(fleet_workspace) == before


# --- crash safety -------------------------------------------------------------------


def test_failure_inside_bundle_write_leaves_no_bundle_vault_or_row(
    fleet_workspace: Path, fw: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = batch_module.write_bundle
    calls = {"n": 0}

    def power_cut_on_second(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        real(*args, **kwargs)
        if calls["n"] == 2:
            raise RuntimeError("power cut while writing the bundle")

    monkeypatch.setattr(batch_module, "write_bundle", power_cut_on_second)
    result = _provision("--count", 3, *_firmware_args(fw), "--jobs", 1)
    assert isinstance(result.exception, RuntimeError)
    ws = Workspace.open(fleet_workspace)
    bundles = sorted(p.name for p in ws.bundles_dir.iterdir())
    assert bundles == ["esp32-02e5f1000000"], "only the first device finished"
    with ws.registry() as registry:
        statuses = {r.device_id: r.status for r in registry.list_devices()}
    assert statuses == {"esp32-02e5f1000000": "provisioned", "esp32-02e5f1000004": "allocated",
                        "esp32-02e5f1000008": "allocated"}
    assert not Vault.open(ws.vault_dir, PASS).contains("esp32-02e5f1000004")
    monkeypatch.setattr(batch_module, "write_bundle", real)
    resumed = _provision("--count", 2, *_firmware_args(fw), "--jobs", 1)
    assert resumed.exit_code == 0, resumed.output
    assert "2 built" in resumed.output
    with ws.registry() as registry:
        assert {r.status for r in registry.list_devices()} == {"provisioned"}
        assert len(registry.list_devices()) == 3


def test_crash_after_rename_before_registry_rebuilds_the_orphan_bundle(
    fleet_workspace: Path, fw: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("killed before the registry transaction")

    monkeypatch.setattr(batch_module, "_record", crash)
    # As under kill -9: no chance to clean up after the crash.
    monkeypatch.setattr(batch_module, "clean_leftovers", lambda *_a: [])
    args = ["--device-id", "esp32-24a1600a1b2c", *_firmware_args(fw), "--jobs", 1]
    assert isinstance(_provision(*args).exception, RuntimeError)
    ws = Workspace.open(fleet_workspace)
    orphan = load_bundle(ws.bundles_dir / "esp32-24a1600a1b2c")
    monkeypatch.undo()
    monkeypatch.setenv("ESPFLEET_PASSPHRASE", PASS.decode())
    monkeypatch.setenv("ESPFLEET_WORKSPACE", str(fleet_workspace))
    result = _provision(*args)
    assert result.exit_code == 0, result.output
    rebuilt = load_bundle(ws.bundles_dir / "esp32-24a1600a1b2c")
    assert rebuilt.manifest.certificate.serial != orphan.manifest.certificate.serial
    with ws.registry() as registry:
        assert registry.get_device("esp32-24a1600a1b2c").status == "provisioned"


def _interrupt_on_second_record(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Ctrl-C while the batch records its second device; returns the real recorder."""
    real: Callable[..., None] = batch_module._record
    calls = {"n": 0}

    def interrupted_on_second(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real(*args, **kwargs)

    monkeypatch.setattr(batch_module, "_record", interrupted_on_second)
    return real


def test_ctrl_c_mid_batch_leaves_only_recorded_devices(
    fleet_workspace: Path, fw: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _interrupt_on_second_record(monkeypatch)
    result = _provision("--count", 4, *_firmware_args(fw), "--jobs", 2)
    assert result.exit_code != 0
    ws = Workspace.open(fleet_workspace)
    with ws.registry() as registry:
        provisioned = {r.device_id for r in registry.list_devices() if r.status == "provisioned"}
    assert len(provisioned) == 1
    assert {p.name for p in ws.bundles_dir.iterdir()} == provisioned
    assert {p.stem for p in ws.vault_dir.glob("*.sealed")} == provisioned



def test_ctrl_c_mid_count_batch_names_the_count_that_finishes_it(
    fleet_workspace: Path, fw: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-running `--count 4` after a Ctrl-C built the 3 unfinished devices AND allocated
    1 more (the fleet grew by a device nobody asked for) while printing '4 built'; the
    interruption now names `--count 3`, which finishes the batch and nothing more."""
    real = _interrupt_on_second_record(monkeypatch)
    result = _provision("--count", 4, *_firmware_args(fw), "--jobs", 1)
    assert result.exit_code == 1, result.output
    assert "interrupted (Ctrl-C)" in result.output
    assert "3 allocated MAC(s) have no bundle yet: `espfleet provision --count 3`" in result.output
    monkeypatch.setattr(batch_module, "_record", real)
    again = _provision("--count", 3, *_firmware_args(fw), "--jobs", 1)
    assert again.exit_code == 0, again.output
    assert "3 built (3 of them allocated by an interrupted run)" in again.output
    with _registry(fleet_workspace) as registry:
        records = registry.list_devices()
    assert len(records) == 4 and {r.status for r in records} == {"provisioned"}


def test_flashed_device_is_never_rebuilt(
    fleet_workspace: Path, fw: dict[str, Path], snapshot: Snapshot
) -> None:
    args = ["--device-id", "esp32-24a1600a1b2c", *_firmware_args(fw)]
    assert _provision(*args).exit_code == 0
    with _registry(fleet_workspace) as registry:
        registry.update_device("esp32-24a1600a1b2c", status="flashed")
    (fleet_workspace / "bundles" / "esp32-24a1600a1b2c" / "manifest.json").write_text("{}")
    before = snapshot(fleet_workspace)
    result = _provision(*args)
    assert result.exit_code == 0, result.output
    assert "0 built, 1 already done" in result.output
    assert snapshot(fleet_workspace) == before



def test_flashed_device_kept_with_an_older_app_says_so(
    fleet_workspace: Path, fw: dict[str, Path]
) -> None:
    """A run with app 1.1.0 over a device flashed with 1.0.0 printed only "1 already done",
    as if the device had the new app."""
    device_id = "esp32-24a1600a1b2c"
    assert _provision("--device-id", device_id, *_firmware_args(fw)).exit_code == 0
    with _registry(fleet_workspace) as registry:
        registry.update_device(device_id, status="flashed")
    key = Workspace.open(fleet_workspace).signing_key(PASS)
    newer = fw["app"].with_name("app-1.1.0.bin")
    newer.write_bytes(demo_firmware("esp32", key, version="1.1.0", app_payload_size=0x8000).app)
    result = _provision("--device-id", device_id, "--firmware", newer,
                        "--bootloader", fw["bootloader"])
    assert result.exit_code == 0, result.output
    assert "0 built, 1 already done" in result.output
    assert (f"{device_id}: already flashed with another app version than this run's: kept "
            "(a flashed device changes only by OTA)") in result.output
    same = _provision("--device-id", device_id, *_firmware_args(fw), "--json")
    assert json.loads(same.output)["devices"][0]["note"] is None


def test_rerun_with_other_settings_rebuilds_an_unflashed_device_never_a_flashed_one(
    fleet_workspace: Path, fw: dict[str, Path], snapshot: Snapshot
) -> None:
    """A re-run used to report a development bundle as "already done" in a release run
    (and ignore a new --flash-size or app): the device then shipped in the old mode."""
    device_id = "esp32-24a1600a1b2c"
    args = ["--device-id", device_id, *_firmware_args(fw)]
    bundle_dir = fleet_workspace / "bundles" / device_id
    assert _provision(*args, "--mode", "development").exit_code == 0
    first = load_bundle(bundle_dir).manifest
    result = _provision(*args)
    assert result.exit_code == 0, result.output
    assert "1 built, 0 already done" in result.output
    rebuilt = load_bundle(bundle_dir).manifest
    assert rebuilt.mode == "release" and rebuilt.certificate.serial != first.certificate.serial
    result = _provision(*args, "--flash-size", "8MB")
    assert "1 built, 0 already done" in result.output, result.output
    assert load_bundle(bundle_dir).manifest.flash_size == "8MB"
    key = Workspace.open(fleet_workspace).signing_key(PASS)
    newer = fw["app"].with_name("app-1.1.0.bin")
    newer.write_bytes(demo_firmware("esp32", key, version="1.1.0", app_payload_size=0x8000).app)
    result = _provision("--device-id", device_id, "--firmware", newer, "--bootloader",
                        fw["bootloader"], "--flash-size", "8MB")
    assert "1 built, 0 already done" in result.output, result.output
    assert load_bundle(bundle_dir).manifest.firmware.version == "1.1.0"
    with _registry(fleet_workspace) as registry:
        registry.update_device(device_id, status="flashed")
    before = snapshot(fleet_workspace)
    result = _provision(*args, "--flash-size", "8MB", "--mode", "development")
    assert result.exit_code == 2, result.output
    assert "already flashed in release mode" in result.output
    assert snapshot(fleet_workspace) == before



def test_rerun_with_merged_builds_the_merged_image_it_was_asked_for(
    fleet_workspace: Path, fw: dict[str, Path]
) -> None:
    """`provision --merged` after a run without it said "1 already done" and wrote no
    merged image; a later run without --merged keeps the one built."""
    args = ["--device-id", "esp32-24a1600a1b2c", *_firmware_args(fw)]
    bundle_dir = fleet_workspace / "bundles" / "esp32-24a1600a1b2c"
    assert _provision(*args).exit_code == 0
    assert load_bundle(bundle_dir).manifest.merged is None
    result = _provision(*args, "--merged")
    assert result.exit_code == 0, result.output
    assert "1 built, 0 already done" in result.output
    merged = load_bundle(bundle_dir).manifest.merged
    assert merged is not None and (bundle_dir / merged.file).is_file()
    again = _provision(*args)
    assert "0 built, 1 already done" in again.output, again.output
    assert load_bundle(bundle_dir).manifest.merged == merged


def test_damaged_bundle_whose_flash_began_is_not_rebuilt_over_the_burned_key(
    fleet_workspace: Path, fw: dict[str, Path], snapshot: Snapshot
) -> None:
    """A flash that burned the key then failed leaves the registry at ``provisioned``;
    rebuilding its bundle would replace the vault's only copy of the key in the chip."""
    device_id = "esp32-24a1600a1b2c"
    args = ["--device-id", device_id, *_firmware_args(fw)]
    assert _provision(*args).exit_code == 0
    bundle_dir = fleet_workspace / "bundles" / device_id
    journal = FlashJournal.load(bundle_dir, device_id)
    journal.begin(port="socket://127.0.0.1:1", mac="24:a1:60:0a:1b:2c")
    journal.mark_burn_started("24:a1:60:0a:1b:2c")
    journal.finish("failed", "link lost during pre_flash")
    (bundle_dir / "manifest.json").write_text("{}")
    before = snapshot(fleet_workspace)
    result = _provision(*args)
    assert result.exit_code == 2, result.output
    assert "the bundle changed" in result.output and "began burning its eFuses" in result.output
    assert snapshot(fleet_workspace) == before
    assert Vault.open(fleet_workspace / "vault", PASS, create=False).contains(device_id)


def test_second_concurrent_provision_in_a_workspace_is_refused_and_writes_nothing(
    fleet_workspace: Path, fw: dict[str, Path], snapshot: Snapshot
) -> None:
    """Two runs at once would allocate the same MACs and delete each other's partial
    bundles as leftovers (seen: a traceback from the rename of a removed directory)."""
    before = snapshot(fleet_workspace)
    with batch_module.batch_lock(fleet_workspace / "bundles"):
        result = _provision("--count", 2, *_firmware_args(fw))
    assert result.exit_code == 1, result.output
    assert "another `espfleet provision` is running" in result.output
    assert "Traceback" not in result.output
    assert snapshot(fleet_workspace) == before
    assert _provision("--count", 2, *_firmware_args(fw)).exit_code == 0


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_completes_consistently(
    fleet_workspace: Path, fw: dict[str, Path]
) -> None:
    ws = Workspace.open(fleet_workspace)
    count = 24
    cmd = [sys.executable, "-c", "from espfleet.cli import main; main()", "provision",
           "--count", str(count), *map(str, _firmware_args(fw)), "--jobs", "2", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if ws.bundles_dir.exists() and len(
                [p for p in ws.bundles_dir.iterdir() if not p.name.startswith(".")]) >= 3:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with ws.registry() as registry:
        records = registry.list_devices()
        done = [r for r in records if r.status == "provisioned"]
        for record in done:
            assert batch_module.bundle_sha256(ws.bundles_dir / record.device_id) \
                == record.bundle_sha256
    remaining = count - len(done)
    assert remaining > 0, "the run finished before the kill: make it longer"
    result = _provision("--count", remaining, *_firmware_args(fw), "--jobs", 2)
    assert result.exit_code == 0, result.output
    assert not [p for p in ws.bundles_dir.iterdir() if ".partial-" in p.name]
    with ws.registry() as registry:
        records = registry.list_devices()
        assert len(records) == count and {r.status for r in records} == {"provisioned"}
        for record in records:
            assert load_bundle(ws.bundles_dir / record.device_id).manifest.device_id \
                == record.device_id
            assert batch_module.bundle_sha256(ws.bundles_dir / record.device_id) \
                == record.bundle_sha256
