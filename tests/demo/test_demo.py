"""`espfleet demo` end to end: the README's main job must work from a clean install.

It runs the real esptool/espefuse against virtual chips over socket://, so it is the
slowest test of the default suite (~20 s for one device).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from espfleet.cli import main
from espfleet.demo import run_demo


@pytest.mark.slow
def test_demo_provisions_flashes_boots_audits_and_refuses_a_tampered_app(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESPFLEET_")}
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "espfleet", "demo", "--devices", "1", "--json"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    assert all(step["ok"] for step in report["steps"])
    [device] = report["devices"]
    assert device["device_id"].startswith("esp32-")
    assert device["booted_slot"] == "ota_0"
    assert device["fw_version"] == "1.0.0"
    assert device["images_written"] >= 5  # bootloader, table, otadata, nvs_keys, nvs, app
    assert device["locks_burned"] >= 1
    attack = report["attack"]
    assert attack["refused"] is True and attack["stage"] == "bootloader"
    assert "refused" in attack["reason"] or "invalid" in attack["reason"]
    # The temporary workspace (with its keys) is gone afterwards.
    assert report["workspace"] is None
    assert not any(tmp_path.glob("espfleet-demo-*/fleet"))


def test_demo_refuses_a_non_empty_workspace(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    result = CliRunner().invoke(main, ["--workspace", str(tmp_path), "demo"])
    assert result.exit_code == 2
    assert "is not empty" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["something"]


def test_demo_reports_the_failed_step_and_exits_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing command stops the run; the report names it and the CLI exits 1."""
    import espfleet.demo as demo

    def broken_firmware(tool: object, chip: str) -> dict[str, object]:
        raise demo.DemoError("firmware build exploded")

    monkeypatch.setattr(demo, "_write_demo_firmware", broken_firmware)
    report = run_demo(workspace=tmp_path / "fleet", devices=1)
    assert not report.ok
    assert [s.name for s in report.steps] == ["init fleet workspace", "build demo firmware"]
    assert report.steps[-1].error == "firmware build exploded"
    assert (tmp_path / "fleet" / "fleet.toml").exists()  # a given workspace is kept
    monkeypatch.delenv("ESPFLEET_WORKSPACE", raising=False)
    workspace = tmp_path / "fleet2"
    result = CliRunner().invoke(main, ["--workspace", str(workspace), "demo", "--devices", "1"])
    assert result.exit_code == 1
    assert (
        f"error: the demo failed at 'build demo firmware'; the workspace is kept at {workspace}"
        in result.output.replace("\n", "")
    )

