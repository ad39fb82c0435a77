"""`espfleet demo`: the whole factory path, end to end, on virtual ESP32s.

The demo drives the same commands a user runs (``espfleet init``, ``provision``,
``vdev create/serve``, ``flash``, ``vdev boot/dump/efuse``, ``audit``), each as its own
``python -m espfleet`` process, so what it shows is the product as shipped: the real
esptool and espefuse talk to each virtual chip over ``socket://``.

Steps, in order (the first failure stops the run and is reported):

1. ``init`` a fleet workspace (temporary unless one is given), root + issuing CA and the
   Secure Boot V2 signing key, all encrypted with a one-off passphrase;
2. build demo firmware (an app and a bootloader; a real fleet passes its own), sign the
   bootloader with the fleet key;
3. ``provision`` N devices in release mode;
4. per device: create a virtual chip with the bundle's MAC, serve its ROM loader,
   ``flash`` it (pre-flight, eFuse plan, images, read-back, locks), ``boot`` it, ``dump``
   its flash as an attacker would and ``audit`` the dump and the eFuses;
5. an attack: flip one bit of a flashed device's encrypted app, boot, and show the chip
   refuse it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from espfleet.device_id import format_mac, parse_device_id
from espfleet.errors import EspfleetError, InputError

__all__ = ["DemoError", "DemoReport", "DemoStep", "run_demo"]

PASSPHRASE_ENV = "ESPFLEET_PASSPHRASE"
SERVE_TIMEOUT_S = 30.0


class DemoError(EspfleetError):
    """A demo step failed; the message names the step and the command's own error."""


@dataclass
class DemoStep:
    name: str
    ok: bool
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "detail": self.detail,
            "error": self.error,
        }


@dataclass
class DemoReport:
    workspace: Path
    kept: bool
    chip: str
    steps: list[DemoStep] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)
    attack: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps) and self.attack is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "chip": self.chip,
            "workspace": str(self.workspace) if self.kept else None,
            "steps": [step.to_json() for step in self.steps],
            "devices": self.devices,
            "attack": self.attack,
            "seconds": round(self.seconds, 3),
        }


class _Espfleet:
    """Runs ``python -m espfleet`` against one workspace with the demo's passphrase."""

    def __init__(self, workspace: Path, passphrase: str) -> None:
        self.workspace = workspace
        self.env = {**os.environ, PASSPHRASE_ENV: passphrase, "PYTHONUNBUFFERED": "1"}
        self.env.pop("ESPFLEET_WORKSPACE", None)

    def argv(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", "espfleet", "--workspace", str(self.workspace), *args]

    def run(self, args: Sequence[str], *, expect_ok: bool = True) -> tuple[int, Any]:
        """Run one command with ``--json``; return (exit code, parsed JSON or None).

        A command that printed no JSON gets ``{"error": <its last stderr line>}``.
        """
        proc = subprocess.run(
            self.argv(args), env=self.env, capture_output=True, text=True,
            stdin=subprocess.DEVNULL, check=False,
        )
        data: Any = None
        if proc.stdout.strip():
            try:
                data = json.loads(proc.stdout)
            except json.JSONDecodeError:
                data = None
        message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        if data is None and message:
            data = {"error": message}
        if expect_ok and proc.returncode != 0:
            detail = message or proc.stdout[-500:]
            raise DemoError(f"`espfleet {' '.join(args)}` exited {proc.returncode}: {detail}")
        return proc.returncode, data

    def serve(self, name: str) -> tuple[subprocess.Popen[str], str]:
        """Start ``vdev serve NAME`` and return the process and its socket:// URL."""
        proc = subprocess.Popen(
            self.argv(["vdev", "serve", name, "--port", "0", "--json"]),
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        buffer = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            buffer += line
            try:
                url = str(json.loads(buffer)["url"])
            except (json.JSONDecodeError, KeyError):
                continue
            return proc, url
        proc.kill()
        _, err = proc.communicate()
        raise DemoError(f"`espfleet vdev serve {name}` did not report a URL: {err.strip()[-500:]}")


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop a served chip like Ctrl-C does, so it saves its flash and eFuses."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


Observer = Callable[[str, str], None]
"""Called with (event, text): event is "start", "ok" or "fail"."""


def run_demo(
    *,
    workspace: Path | None = None,
    devices: int = 3,
    chip: str = "esp32",
    keep: bool = False,
    observe: Observer | None = None,
) -> DemoReport:
    """Run the demo; never raises for a failed step (the report says), only for bad input."""
    if devices < 1 or devices > 20:
        raise InputError("--devices must be between 1 and 20 for the demo")
    temporary = workspace is None
    if workspace is None:
        base = Path(tempfile.mkdtemp(prefix="espfleet-demo-"))
        workspace = base / "fleet"
    elif workspace.exists() and any(workspace.iterdir()):
        raise InputError(
            f"{workspace} is not empty: the demo creates a new fleet there; "
            "give a new directory or leave out --workspace for a temporary one"
        )
    passphrase = os.environ.get(PASSPHRASE_ENV) or secrets.token_urlsafe(24)
    report = DemoReport(workspace=workspace, kept=keep or not temporary, chip=chip)
    tool = _Espfleet(workspace, passphrase)
    say: Observer = observe or (lambda _event, _text: None)

    def step(name: str, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        say("start", name)
        started = time.monotonic()
        try:
            detail = body()
        except EspfleetError as error:
            report.steps.append(DemoStep(name, False, time.monotonic() - started, error=str(error)))
            say("fail", f"{name}: {error}")
            raise
        report.steps.append(DemoStep(name, True, time.monotonic() - started, detail))
        say("ok", name)
        return detail

    started = time.monotonic()
    try:
        _run_steps(tool, step, report, devices=devices, chip=chip)
    except EspfleetError:
        pass
    finally:
        report.seconds = time.monotonic() - started
        if temporary and not keep:
            shutil.rmtree(workspace.parent, ignore_errors=True)
    return report


def _run_steps(
    tool: _Espfleet,
    step: Callable[[str, Callable[[], dict[str, Any]]], dict[str, Any]],
    report: DemoReport,
    *,
    devices: int,
    chip: str,
) -> None:
    ws = tool.workspace
    step("init fleet workspace", lambda: tool.run(
        ["init", str(ws), "--org", "espfleet demo", "--chip", chip, "--json"])[1] or {})
    firmware = step("build demo firmware", lambda: _write_demo_firmware(tool, chip))
    provisioned = step("provision devices (release mode)", lambda: tool.run([
        "provision", "--count", str(devices), "--firmware", firmware["app"],
        "--bootloader", firmware["bootloader"], "--mode", "release", "--json",
    ])[1])
    ids = sorted(d["device_id"] for d in provisioned["devices"])
    # Each device has its own chip process and esptool session: run them side by side.
    with ThreadPoolExecutor(max_workers=min(len(ids), os.cpu_count() or 1)) as pool:
        report.devices.extend(pool.map(lambda d: _device(tool, step, d, chip), ids))
    report.attack = step(
        "attack: one bit flipped in an encrypted app", lambda: _tampered_app(tool, ids[0])
    )


def _write_demo_firmware(tool: _Espfleet, chip: str) -> dict[str, Any]:
    from espfleet._io import atomic_write
    from espfleet.provisioning.demo_firmware import demo_firmware
    from espfleet.workspace import Workspace

    workspace = Workspace.open(tool.workspace)
    key = workspace.signing_key(tool.env[PASSPHRASE_ENV].encode())
    firmware = demo_firmware(chip, key, version="1.0.0", project_name="espfleet-demo")
    out = workspace.releases_dir
    app, bootloader = out / "demo-app-1.0.0.bin", out / "demo-bootloader.bin"
    atomic_write(app, firmware.app)
    atomic_write(bootloader, firmware.bootloader)
    return {"app": str(app), "bootloader": str(bootloader),
            "app_bytes": len(firmware.app), "bootloader_bytes": len(firmware.bootloader)}


def _mac_of(device_id: str) -> str:
    mac = parse_device_id(device_id).mac
    if mac is None:
        raise DemoError(f"{device_id} is not a <chip>-<MAC> device id")
    return format_mac(mac)


def _device(
    tool: _Espfleet,
    step: Callable[[str, Callable[[], dict[str, Any]]], dict[str, Any]],
    device_id: str,
    chip: str,
) -> dict[str, Any]:
    ws = tool.workspace
    dumps = ws / "dumps"
    dumps.mkdir(exist_ok=True)
    step(f"{device_id}: create virtual chip", lambda: tool.run(
        ["vdev", "create", device_id, "--chip", chip, "--mac", _mac_of(device_id), "--json"])[1])

    def flash() -> dict[str, Any]:
        server, url = tool.serve(device_id)
        try:
            data = tool.run(["flash", device_id, "--port", url, "--yes", "--json"])[1]
        finally:
            _stop(server)
        result = data.get("result", {})
        return {"port": url, "efuses_burned": len(result.get("efuses_burned", [])),
                "images_written": len(result.get("images_written", [])),
                "locks_burned": len(result.get("locks_burned", []))}

    flashed = step(f"{device_id}: flash through esptool/espefuse", flash)

    def boot() -> dict[str, Any]:
        code, data = tool.run(["vdev", "boot", device_id, "--json"], expect_ok=False)
        if code != 0 or not data or not data.get("started"):
            reason = (data or {}).get("reason") or (data or {}).get("error")
            raise DemoError(f"{device_id} did not boot: {reason}")
        return {"slot": data.get("slot"), "app": data.get("app")}

    booted = step(f"{device_id}: boot", boot)
    dump = dumps / f"{device_id}.flash.bin"
    efuse = dumps / f"{device_id}.efuse.bin"

    def audit() -> dict[str, Any]:
        tool.run(["vdev", "dump", device_id, "--out", str(dump), "--json"])
        tool.run(["vdev", "efuse", device_id, "--out", str(efuse), "--json"])
        code, flash_report = tool.run(
            ["audit", "flash", str(dump), "--chip", chip, "--workspace", str(ws),
             "--device", device_id, "--json"], expect_ok=False)
        if code != 0:
            raise DemoError(f"the flash dump of {device_id} has findings at high or above: "
                            f"{_summarise(flash_report)}")
        code, efuse_report = tool.run(
            ["audit", "efuse", str(efuse), "--chip", chip, "--mode", "release",
             "--workspace", str(ws), "--json"], expect_ok=False)
        if code != 0:
            raise DemoError(f"the eFuse posture of {device_id} fails the release audit: "
                            f"{_summarise(efuse_report)}")
        return {"flash_findings": len((flash_report or {}).get("findings", [])),
                "efuse_findings": len((efuse_report or {}).get("findings", []))}

    audited = step(f"{device_id}: read out flash and audit it", audit)
    app = booted.get("app") or {}
    return {"device_id": device_id, **flashed, "booted_slot": booted.get("slot"),
            "fw_version": app.get("fw_version"), "cert_serial": app.get("cert_serial"),
            **audited}


def _summarise(report: Any) -> str:
    if not isinstance(report, dict):
        return "no report"
    findings = report.get("findings", [])
    worst = [f"{f.get('severity')}: {f.get('message')}" for f in findings][:3]
    return "; ".join(worst) or "see the audit output"


def _tampered_app(tool: _Espfleet, device_id: str) -> dict[str, Any]:
    """Copy a flashed chip, flip one bit in its encrypted app, and boot the copy."""
    vdevs = tool.workspace / "vdevs"
    victim = f"{device_id[:48]}-tampered"
    shutil.copytree(vdevs / device_id, vdevs / victim)
    manifest = json.loads((tool.workspace / "bundles" / device_id / "manifest.json").read_text())
    app = next(a for a in manifest["artifacts"] if a["name"] in ("ota_0", "app"))
    flash_path = vdevs / victim / "flash.bin"
    image = bytearray(flash_path.read_bytes())
    target = app["offset"] + 0x100
    image[target] ^= 0x01
    flash_path.write_bytes(bytes(image))
    code, data = tool.run(["vdev", "boot", victim, "--json"], expect_ok=False)
    if code == 0 or (data or {}).get("started"):
        raise DemoError("the tampered app booted: the chain of trust is broken")
    if not data or data.get("started") is not False or not data.get("reason"):
        # A crash is not a refusal: only the boot chain saying no counts.
        raise DemoError(f"booting the tampered copy failed without a boot verdict: {data}")
    return {"device": victim, "flipped_bit_at": hex(target), "refused": True,
            "stage": data.get("stage"), "reason": data["reason"],
            "log_tail": list(data.get("log", []))[-6:]}
