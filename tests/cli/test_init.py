from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from espfleet.cli import main
from espfleet.workspace import Workspace

Snapshot = Callable[[Path], dict[str, str]]
PASS = "correct horse battery staple"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("ESPFLEET_PASSPHRASE", PASS)
    monkeypatch.delenv("ESPFLEET_WORKSPACE", raising=False)
    return CliRunner()


def test_init_json(runner: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "fleet"
    result = runner.invoke(
        main,
        [
            "init",
            str(target),
            "--org",
            "Acme",
            "--chip",
            "esp32c3",
            "--broker-host",
            "mqtt.acme.io",
            "--broker-host",
            "10.0.0.5",
            "--key-policy",
            "destroy",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["workspace"] == str(target)
    assert (info["org"], info["chip"], info["key_policy"]) == ("Acme", "esp32c3", "destroy")
    assert info["servers"]["broker"]["hosts"] == ["mqtt.acme.io", "10.0.0.5"]
    assert info["servers"]["ota"]["hosts"] == ["mqtt.acme.io", "10.0.0.5"]
    ws = Workspace.open(target)
    assert info["secure_boot"]["public_key_digest_sha256"] == ws.secure_boot_digest().hex()
    assert info["root_ca"]["fingerprint_sha256"] and info["crl"]["number"] == 1
    toml = tomllib.loads((target / "fleet.toml").read_text())
    assert toml["hosts"]["broker"] == ["mqtt.acme.io", "10.0.0.5"]


def test_init_defaults_and_summary(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["init", str(tmp_path / "fleet"), "--org", "Acme"])
    assert result.exit_code == 0, result.output
    assert "Created fleet workspace" in result.output and "localhost, 127.0.0.1" in result.output
    config = Workspace.open(tmp_path / "fleet").config
    assert (config.chip, config.key_policy) == ("esp32", "escrow")
    assert config.broker_hosts == config.ota_hosts == ("localhost", "127.0.0.1")


def test_init_over_existing_workspace_is_refused(
    runner: CliRunner, fleet_workspace: Path, snapshot: Snapshot
) -> None:
    before = snapshot(fleet_workspace)
    result = runner.invoke(main, ["init", str(fleet_workspace), "--org", "Other"])
    assert result.exit_code == 2  # bad input: the user named an existing workspace
    assert "already an espfleet workspace" in result.output
    assert "Traceback" not in result.output
    assert snapshot(fleet_workspace) == before


def test_init_with_bad_host_is_usage_error_and_writes_nothing(
    runner: CliRunner, tmp_path: Path
) -> None:
    result = runner.invoke(
        main, ["init", str(tmp_path / "f"), "--org", "A", "--broker-host", "a b"]
    )
    assert result.exit_code == 2
    assert "neither a DNS name nor an IP" in result.output
    assert list(tmp_path.iterdir()) == []


def test_init_with_short_passphrase_writes_nothing(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESPFLEET_PASSPHRASE", "short")
    result = runner.invoke(main, ["init", str(tmp_path / "f"), "--org", "A"])
    assert result.exit_code == 2 and "shorter than 8" in result.output
    assert list(tmp_path.iterdir()) == []


def test_init_unknown_chip_is_a_usage_error(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["init", str(tmp_path / "f"), "--org", "A", "--chip", "esp8266"])
    assert result.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_init_under_a_file_is_an_error_without_traceback(runner: CliRunner, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"x")
    result = runner.invoke(main, ["init", str(blocker / "fleet"), "--org", "A"])
    assert result.exit_code == 1, result.output
    assert "cannot create the workspace" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
