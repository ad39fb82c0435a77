"""`espfleet vdev boot` on a provisioned-like device: exit 0 only when the app starts,
and what the boot wrote (otadata, anti-rollback eFuse) is kept in the workspace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bootkit import make_device
from click.testing import CliRunner

from espfleet.cli import main
from espfleet.device.image_check import security_state
from espfleet.device.store import load_vdev, save_vdev
from espfleet.formats import otadata
from espfleet.formats.secure_boot import PrivateKey


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "fleet"
    root.mkdir()
    (root / "fleet.toml").write_text('org = "test"\n')
    return root


def _boot(workspace: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--workspace", str(workspace), "vdev", "boot", *args])
    return result.exit_code, result.stdout, result.stderr


def test_vdev_boot_exits_0_when_the_app_starts_and_persists_the_boot(
    workspace: Path, keys: list[PrivateKey]
) -> None:
    dev = make_device("esp32", signing_keys=keys[:1], secure_version=2)
    save_vdev(dev.chip, workspace / "vdevs" / "dev1")

    code, out, _ = _boot(workspace, "dev1", "--json")
    assert code == 0, out
    result = json.loads(out)
    assert (result["started"], result["stage"], result["slot"]) == (True, "app", "ota_0")
    assert result["app"]["device_id"] == dev.chip.device_id
    assert "Set actual ota_seq=1 in otadata[0]" in "\n".join(result["log"])
    stored = load_vdev(workspace / "vdevs" / "dev1")
    raw = stored.read_decrypted(dev.part("otadata").offset, otadata.OTADATA_SIZE)
    assert otadata.decode(raw).entries[0] == otadata.OtaSelectEntry(1, otadata.OtaState.VALID)
    assert security_state(stored).secure_version == 2


def test_vdev_boot_of_a_tampered_app_exits_1_with_the_reason(
    workspace: Path, keys: list[PrivateKey]
) -> None:
    dev = make_device("esp32", signing_keys=keys[:1])
    dev.write_app("ota_0", dev.app("6.6.6", keys=[keys[1]]))
    save_vdev(dev.chip, workspace / "vdevs" / "dev1")

    code, out, err = _boot(workspace, "dev1")
    assert code == 1
    assert "secure_boot_v2" in out and "not bootable" in out
    assert "boot stopped in bootloader: no bootable app" in err
