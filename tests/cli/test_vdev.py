"""`espfleet vdev`: create, dump, efuse, boot through CliRunner; serve as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from espfleet.cli import main
from espfleet.device.store import load_vdev


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "fleet"
    root.mkdir()
    (root / "fleet.toml").write_text('org = "test"\n')
    return root


def run(workspace: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--workspace", str(workspace), "vdev", *args])
    return result.exit_code, result.stdout, result.stderr


def test_create_json(workspace: Path) -> None:
    code, out, _ = run(
        workspace, "create", "dev1", "--chip", "esp32", "--mac", "24:a1:60:0a:1b:2c", "--json"
    )
    assert code == 0
    info = json.loads(out)
    assert info["device_id"] == "esp32-24a1600a1b2c"
    assert info["revision"] == 300 and info["flash_size"] == 4 << 20
    assert info["path"] == str(workspace / "vdevs" / "dev1")
    assert load_vdev(workspace / "vdevs" / "dev1").mac == bytes.fromhex("24a1600a1b2c")


def test_create_with_the_bootloaders_partition_table_offset(workspace: Path) -> None:
    code, out, _ = run(
        workspace, "create", "dev1", "--chip", "esp32", "--partition-table-offset", "0xf000",
        "--json",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out)["partition_table_offset"] == 0xF000
    assert load_vdev(workspace / "vdevs" / "dev1").partition_table_offset == 0xF000
    run(workspace, "create", "dev2", "--chip", "esp32c3")
    assert load_vdev(workspace / "vdevs" / "dev2").partition_table_offset == 0x8000



@pytest.mark.parametrize(
    ("args", "shown"),
    [(("--chip", "esp32"), "esp32 v3.0"), (("--chip", "esp32c3"), "esp32c3 v0.4"),
     (("--chip", "esp32", "--revision", "100"), "esp32 v1.0")],
)
def test_create_names_the_revision_it_made(
    workspace: Path, args: tuple[str, ...], shown: str
) -> None:
    """`--revision 100` printed "virtual ESP32 (revision v3.0 or newer for Secure Boot V2)"
    for a v1.0 chip that `espfleet flash` then refused."""
    code, out, _ = run(workspace, "create", "dev1", *args)
    assert code == 0
    assert f"Created virtual {shown} " in out
    assert "v3.0 or newer" not in out
    assert ("below the Secure Boot V2 revision" in out) == ("100" in args)


def test_create_outside_a_workspace_fails_clearly(tmp_path: Path) -> None:
    code, _, err = run(tmp_path, "create", "dev1", "--chip", "esp32")
    assert code == 1
    assert "not an espfleet workspace" in err
    assert not (tmp_path / "vdevs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create", "../evil", "--chip", "esp32"), "not valid"),
        (("create", "dev1", "--chip", "esp32", "--mac", "zz"), "6 hex bytes"),
        (("create", "dev1", "--chip", "esp32", "--flash-size", "5MB"), "unsupported flash size"),
        (("create", "dev1", "--chip", "esp32", "--partition-table-offset", "0x8800"), "4 KB"),
        (("create", "dev1", "--chip", "esp32", "--partition-table-offset", "0x1000"), "after"),
        (("create", "dev1", "--chip", "esp32", "--partition-table-offset", "x"), "not a number"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    workspace: Path, args: tuple[str, ...], message: str
) -> None:
    code, _, err = run(workspace, *args)
    assert code == 2
    assert message in err
    assert not (workspace / "vdevs").exists() or not any((workspace / "vdevs").iterdir())


def test_create_twice_is_refused(workspace: Path) -> None:
    assert run(workspace, "create", "dev1", "--chip", "esp32c3")[0] == 0
    code, _, err = run(workspace, "create", "dev1", "--chip", "esp32")
    assert code == 1 and "already exists" in err
    assert load_vdev(workspace / "vdevs" / "dev1").chip == "esp32c3"


def test_dump_and_efuse(workspace: Path, tmp_path: Path) -> None:
    run(workspace, "create", "dev1", "--chip", "esp32s3", "--flash-size", "2MB")
    code, out, _ = run(workspace, "dump", "dev1", "--out", str(tmp_path / "f.bin"), "--json")
    assert code == 0 and json.loads(out)["bytes"] == 2 << 20
    assert (tmp_path / "f.bin").read_bytes() == b"\xff" * (2 << 20)
    code, _, _ = run(workspace, "efuse", "dev1", "--out", str(tmp_path / "e.bin"))
    assert code == 0
    stored = (workspace / "vdevs" / "dev1" / "efuse.bin").read_bytes()
    assert (tmp_path / "e.bin").read_bytes() == stored and len(stored) == 512


def test_unknown_device(workspace: Path, tmp_path: Path) -> None:
    code, _, err = run(workspace, "dump", "ghost", "--out", str(tmp_path / "f.bin"))
    assert code == 1 and "no virtual device named 'ghost'" in err
    assert not (tmp_path / "f.bin").exists()


def test_boot_of_an_empty_chip_fails_in_rom(workspace: Path) -> None:
    pytest.importorskip("espfleet.formats.efuse", reason="boot needs formats.efuse (F1/F2)")
    run(workspace, "create", "dev1", "--chip", "esp32")
    code, out, _ = run(workspace, "boot", "dev1", "--json")
    result = json.loads(out)
    assert code == 1
    assert result["started"] is False and result["stage"] == "rom"
    assert result["log"]


@pytest.mark.slow
def test_serve_process_with_real_esptool(workspace: Path, tmp_path: Path) -> None:
    assert run(workspace, "create", "dev1", "--chip", "esp32")[0] == 0
    image = tmp_path / "img.bin"
    image.write_bytes(os.urandom(1500))
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "espfleet"), "--workspace", str(workspace),
         "vdev", "serve", "dev1", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        lines: list[str] = []
        while not lines or lines[-1] != "}\n":
            line = server.stdout.readline()
            assert line, server.stderr.read() if server.stderr else "server exited"
            lines.append(line)
        url = json.loads("".join(lines))["url"]
        assert url.startswith("socket://127.0.0.1:")
        done = subprocess.run(
            [sys.executable, "-m", "esptool", "--port", url, "--before", "no-reset",
             "--after", "no-reset", "--no-stub", "write-flash", "0x9000", str(image)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    assert server.returncode == 0
    code, _, _ = run(workspace, "dump", "dev1", "--out", str(tmp_path / "f.bin"))
    assert code == 0
    assert (tmp_path / "f.bin").read_bytes()[0x9000 : 0x9000 + 1500] == image.read_bytes()


def test_serve_refuses_a_non_loopback_host(workspace: Path) -> None:
    run(workspace, "create", "dev1", "--chip", "esp32")
    code, _, err = run(workspace, "serve", "dev1", "--host", "0.0.0.0")
    assert code == 2
    assert "refusing to serve" in err


def test_a_served_device_cannot_be_booted_by_another_process(workspace: Path) -> None:
    from espfleet.device.store import vdev_lock

    run(workspace, "create", "dev1", "--chip", "esp32")
    with vdev_lock(workspace / "vdevs" / "dev1"):
        code, _, err = run(workspace, "boot", "dev1")
    assert code == 1
    assert "in use by process" in err
