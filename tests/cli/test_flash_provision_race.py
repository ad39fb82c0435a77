"""`espfleet provision` rebuilding a bundle while `espfleet flash` of the same device runs:
the chip would get the old key while bundle and vault get new ones (the key is lost, a
release chip bricked). Both hold the device's lock (``bundles/<id>/``); each order is
driven deterministically here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from espfleet.cli import flash_cmd, main
from espfleet.device.chip import VirtualChip
from espfleet.device.server import LoaderServer
from espfleet.provisioning import batch as batch_module
from espfleet.provisioning.bundle import Bundle, load_bundle
from espfleet.provisioning.demo_firmware import demo_firmware
from espfleet.provisioning.flash_journal import JOURNAL_NAME, FlashJournal
from espfleet.provisioning.vault import Vault
from espfleet.workspace import Workspace

PASS = b"correct horse battery staple"
MAC = bytes.fromhex("24a1600a1b2c")
DEVICE = f"esp32-{MAC.hex()}"


@pytest.fixture
def apps(fleet_workspace: Path, tmp_path: Path) -> dict[str, Path]:
    """The bootloader, app 1.0.0 and app 1.1.0 (another app version: a rebuild)."""
    key = Workspace.open(fleet_workspace).signing_key(PASS)
    paths = {}
    for version in ("1.0.0", "1.1.0"):
        firmware = demo_firmware("esp32", key, version=version, app_payload_size=0x8000)
        paths[version] = tmp_path / f"app-{version}.bin"
        paths[version].write_bytes(firmware.app)
        paths["bootloader"] = tmp_path / "bootloader.bin"
        paths["bootloader"].write_bytes(firmware.bootloader)
    return paths


@pytest.fixture
def chip() -> Iterator[tuple[VirtualChip, str]]:
    vchip = VirtualChip.new("esp32", revision=300, mac=MAC)
    with LoaderServer(vchip) as server:
        yield vchip, server.url


def _provision(apps: dict[str, Path], version: str) -> Result:
    return CliRunner().invoke(main, [
        "provision", "--device-id", DEVICE, "--firmware", str(apps[version]),
        "--bootloader", str(apps["bootloader"]), "--jobs", "1",
    ])


def _flash(url: str) -> Result:
    return CliRunner().invoke(main, ["flash", DEVICE, "--port", url, "--yes"])


def _state(workspace: Path) -> tuple[str, str | None, bytes]:
    """The bundle's app version, the registry's bundle hash, the vault's key."""
    ws = Workspace.open(workspace)
    with ws.registry() as registry:
        record = registry.get_device(DEVICE)
        assert record is not None
        recorded = record.bundle_sha256
    key = Vault.open(ws.vault_dir, PASS, create=False).load(DEVICE).flash_encryption_key
    return load_bundle(ws.bundles_dir / DEVICE).manifest.firmware.version, recorded, key


def test_rebuild_of_a_device_being_flashed_is_refused_and_writes_nothing(
    fleet_workspace: Path,
    apps: dict[str, Path],
    snapshot: Callable[[Path], dict[str, str]],
) -> None:
    """Flash holds the device's lock (it may be burning the bundle's key): a provision
    run with another app version must not replace the bundle and the vault key."""
    assert _provision(apps, "1.0.0").exit_code == 0
    bundle_dir = fleet_workspace / "bundles" / DEVICE
    before, state = snapshot(fleet_workspace), _state(fleet_workspace)
    with FlashJournal(bundle_dir / JOURNAL_NAME, DEVICE).exclusive():
        result = _provision(apps, "1.1.0")
        assert result.exit_code == 1, result.output
        assert "being flashed by another espfleet process" in result.output
        assert "run provision again after it finishes" in result.output
        assert "Traceback" not in result.output
        assert snapshot(fleet_workspace) == before
        assert _state(fleet_workspace) == state
    # once the flash is over (here: it never burned), the rebuild goes through
    rebuilt = _provision(apps, "1.1.0")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert _state(fleet_workspace)[0] == "1.1.0"


def test_device_being_flashed_with_this_runs_settings_is_skipped_not_refused(
    fleet_workspace: Path, apps: dict[str, Path]
) -> None:
    assert _provision(apps, "1.0.0").exit_code == 0
    bundle_dir = fleet_workspace / "bundles" / DEVICE
    with FlashJournal(bundle_dir / JOURNAL_NAME, DEVICE).exclusive():
        result = _provision(apps, "1.0.0")
    assert result.exit_code == 0, result.output
    assert "0 built, 1 already done" in result.output


def test_flash_during_a_rebuild_of_its_bundle_is_refused_and_burns_nothing(
    fleet_workspace: Path,
    apps: dict[str, Path],
    chip: tuple[VirtualChip, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Provision takes the device's lock before it decides to rebuild, and holds it: a
    flash started while the old bundle is still in place is refused before it touches
    the chip."""
    assert _provision(apps, "1.0.0").exit_code == 0
    vchip, url = chip
    efuses = vchip.efuse_bytes()
    flashes: list[Result] = []
    done_devices = batch_module.done_devices

    def flash_while_deciding(*args: Any, **kwargs: Any) -> Any:
        flashes.append(_flash(url))
        return done_devices(*args, **kwargs)

    monkeypatch.setattr(batch_module, "done_devices", flash_while_deciding)
    rebuilt = _provision(apps, "1.1.0")
    assert rebuilt.exit_code == 0, rebuilt.output
    [flash] = flashes
    assert flash.exit_code == 1, flash.output
    assert "is running" in flash.output and "nothing was changed" in flash.output
    assert vchip.efuse_bytes() == efuses
    assert _state(fleet_workspace)[0] == "1.1.0"


def test_bundle_rebuilt_between_flash_load_and_lock_is_refused_and_burns_nothing(
    fleet_workspace: Path,
    apps: dict[str, Path],
    chip: tuple[VirtualChip, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Flash loaded the bundle, then provision rebuilt it (bundle, vault key and registry
    row committed) before flash took its lock: flash must not burn the key of the bundle
    it loaded, which nothing holds any more."""
    assert _provision(apps, "1.0.0").exit_code == 0
    vchip, url = chip
    efuses = vchip.efuse_bytes()
    rebuilds: list[Result] = []

    def load_then_rebuild(path: Path) -> Bundle:
        bundle = load_bundle(path)
        rebuilds.append(_provision(apps, "1.1.0"))
        return bundle

    monkeypatch.setattr(flash_cmd, "load_bundle", load_then_rebuild)
    result = _flash(url)
    [rebuild] = rebuilds
    assert rebuild.exit_code == 0, rebuild.output
    assert result.exit_code == 1, result.output
    assert "changed while this run started" in result.output
    assert "nothing was burned" in result.output
    assert vchip.efuse_bytes() == efuses
    version, recorded, _key = _state(fleet_workspace)
    assert version == "1.1.0"
    assert recorded == batch_module.bundle_sha256(fleet_workspace / "bundles" / DEVICE)
    with Workspace.open(fleet_workspace).registry() as registry:
        record = registry.get_device(DEVICE)
        assert record is not None and record.status == "provisioned"
