"""`espfleet vdev`: virtual ESP32 devices that the real esptool and espefuse can flash.

Devices live in the workspace under ``vdevs/<name>/`` (see :mod:`espfleet.device.store`).
"""

from __future__ import annotations

import re
import signal
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from espfleet._io import atomic_write
from espfleet.chips import chip_names
from espfleet.cli._context import CliContext
from espfleet.cli._output import console, echo_json
from espfleet.errors import InputError, WorkspaceError

if TYPE_CHECKING:
    from espfleet.device.chip import VirtualChip

__all__ = ["vdev"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FLEET_TOML = "fleet.toml"


def _vdev_dir(ctx: click.Context, name: str, *, must_exist: bool = True) -> Path:
    if not _NAME_RE.match(name):
        raise InputError(
            f"device name {name!r} is not valid: use letters, digits, '.', '_' or '-' "
            "(at most 64, no path separators)"
        )
    obj: CliContext = ctx.obj
    root = obj.workspace_dir
    if not (root / FLEET_TOML).is_file():
        raise WorkspaceError(
            f"{root} is not an espfleet workspace (no {FLEET_TOML}): create one with "
            "`espfleet init DIR`, or point --workspace / ESPFLEET_WORKSPACE at it"
        )
    directory = root / "vdevs" / name
    if must_exist and not directory.is_dir():
        raise WorkspaceError(
            f"no virtual device named {name!r} in {root}: create it with "
            f"`espfleet vdev create {name} --chip esp32`"
        )
    return directory


def _describe(chip: VirtualChip, name: str, directory: Path) -> dict[str, Any]:
    return {
        "name": name,
        "chip": chip.chip,
        "revision": chip.revision,
        "flash_size": chip.flash.size,
        "mac": chip.mac.hex(":"),
        "device_id": chip.device_id,
        "partition_table_offset": chip.partition_table_offset,
        "path": str(directory),
    }


@click.group(name="vdev")
def vdev() -> None:
    """Virtual ESP32 devices: create, serve to esptool/espefuse, boot, dump."""


@vdev.command(name="create")
@click.argument("name")
@click.option("--chip", "chip_name", type=click.Choice(chip_names()), required=True)
@click.option("--revision", type=int, default=None, help="major*100+minor (esp32: 300).")
@click.option("--flash-size", default="4MB", show_default=True, help="1MB .. 16MB.")
@click.option("--mac", default=None, help="Base MAC (default: random Espressif OUI).")
@click.option(
    "--partition-table-offset",
    default=None,
    help="Where its bootloader reads the partition table: the bootloader build's "
    "CONFIG_PARTITION_TABLE_OFFSET (default 0x8000).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def create(
    ctx: click.Context,
    name: str,
    chip_name: str,
    revision: int | None,
    flash_size: str,
    mac: str | None,
    partition_table_offset: str | None,
    as_json: bool,
) -> None:
    """Create a factory-fresh virtual chip NAME (erased flash, blank eFuses)."""
    from espfleet.device.store import create_vdev

    directory = _vdev_dir(ctx, name, must_exist=False)
    table_offset = _parse_offset(partition_table_offset)
    chip = create_vdev(directory, chip_name, revision, flash_size, mac, table_offset)
    info = _describe(chip, name, directory)
    if as_json:
        echo_json(info)
    else:
        # The chip's own revision: the family description ("ESP32 (revision v3.0 or
        # newer ...)") misdescribed a chip created with --revision 100.
        shown = f"v{chip.revision // 100}.{chip.revision % 100}"
        below = chip.revision < chip.facts.sb_v2_min_revision
        console.print(
            f"Created virtual {chip.chip} {shown} [bold]{name}[/bold] "
            f"({info['device_id']}, {flash_size} flash) in {directory}"
            + (" (below the Secure Boot V2 revision: `espfleet flash` refuses it)"
               if below else "")
        )


def _parse_offset(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        raise InputError(
            f"--partition-table-offset {text!r} is not a number like 0x8000 or 0xf000"
        ) from None


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@vdev.command(name="serve")
@click.argument("name")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True)
@click.option(
    "--unsafe-non-loopback",
    is_flag=True,
    help="Allow a non-loopback --host: anyone who reaches it can burn this chip's eFuses.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the URL as JSON.")
@click.pass_context
def serve(
    ctx: click.Context, name: str, host: str, port: int, unsafe_non_loopback: bool, as_json: bool
) -> None:
    """Serve NAME's ROM serial loader on a socket:// URL until stopped (Ctrl-C)."""
    from espfleet.device.store import load_vdev, vdev_lock

    directory = _vdev_dir(ctx, name)
    with vdev_lock(directory):
        _serve(name, directory, load_vdev(directory), host, port, unsafe_non_loopback, as_json)


def _serve(
    name: str,
    directory: Path,
    chip: VirtualChip,
    host: str,
    port: int,
    unsafe_non_loopback: bool,
    as_json: bool,
) -> None:
    from espfleet.device.server import LoaderServer
    from espfleet.device.store import save_vdev

    server = LoaderServer(
        chip,
        host,
        port,
        persist=lambda c: save_vdev(c, directory),
        allow_non_loopback=unsafe_non_loopback,
    )
    if as_json:
        echo_json({"name": name, "url": server.url, "host": host, "port": server.port})
    else:
        click.echo(server.url)
        console.print(
            f"Serving {chip.device_id} ({name}). Use: esptool --port {server.url} "
            "--before no-reset --after no-reset --no-stub ...  Stop with Ctrl-C.",
            highlight=False,
        )
    sys.stdout.flush()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)
    server.start()
    try:
        while True:
            threading.Event().wait(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        with server.lock:
            save_vdev(chip, directory)


@vdev.command(name="boot")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
@click.pass_context
def boot_cmd(ctx: click.Context, name: str, as_json: bool) -> None:
    """Reset NAME and run its boot chain; exit 0 only when the app starts."""
    from espfleet.device.boot import boot
    from espfleet.device.store import load_vdev, save_vdev, vdev_lock

    directory = _vdev_dir(ctx, name)
    with vdev_lock(directory):
        chip = load_vdev(directory)
        result = boot(chip)
        save_vdev(chip, directory)
    if as_json:
        echo_json(
            {
                "name": name,
                "started": result.started,
                "stage": result.stage,
                "reason": result.reason,
                "slot": result.slot,
                "app": asdict(result.app) if result.app is not None else None,
                "log": list(result.log),
            }
        )
    else:
        for line in result.log:
            click.echo(line)
        if not result.started:
            click.echo(f"boot stopped in {result.stage}: {result.reason}", err=True)
    if not result.started:
        ctx.exit(1)


def _export(ctx: click.Context, name: str, out: Path, as_json: bool, what: str) -> None:
    """Write one of NAME's stored images (``flash`` or ``efuse``) to ``out``."""
    from espfleet.device.store import load_vdev

    chip = load_vdev(_vdev_dir(ctx, name))
    data = chip.flash.snapshot() if what == "flash" else chip.efuse_bytes()
    atomic_write(out, data)
    if as_json:
        echo_json({"name": name, "out": str(out), "bytes": len(data)})
    elif what == "flash":
        console.print(f"Wrote {len(data)} bytes of raw flash of {name} to {out}")
    else:
        console.print(
            f"Wrote the {len(data)}-byte eFuse file of {name} to {out} "
            f"(read it with: espefuse --chip {chip.chip} --virt --path-efuse-file {out} summary)"
        )


_OUT = click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
_JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@vdev.command(name="dump")
@click.argument("name")
@_OUT
@_JSON
@click.pass_context
def dump(ctx: click.Context, name: str, out: Path, as_json: bool) -> None:
    """Write NAME's raw flash to --out, as an attacker with a clip on the flash reads it."""
    _export(ctx, name, out, as_json, "flash")


@vdev.command(name="efuse")
@click.argument("name")
@_OUT
@_JSON
@click.pass_context
def efuse(ctx: click.Context, name: str, out: Path, as_json: bool) -> None:
    """Write NAME's eFuse file (espefuse --virt format; read-protected keys as zeros)."""
    _export(ctx, name, out, as_json, "efuse")
