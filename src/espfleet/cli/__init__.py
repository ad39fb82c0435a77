"""The ``espfleet`` command line.

Each command group lives in its own module and is imported only when used, so
``espfleet --help`` stays fast. This package is the only place where an
:class:`~espfleet.errors.EspfleetError` becomes an exit code (see ``_errors``).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import click

from espfleet import __version__
from espfleet.cli._context import CliContext
from espfleet.cli._errors import run_guarded

__all__ = ["main"]

#: command name -> "module:attribute" (a click command or group)
COMMANDS: dict[str, str] = {
    "init": "espfleet.cli.init_cmd:init",
    "ca": "espfleet.cli.ca_cmd:ca",
    "cert": "espfleet.cli.cert_cmd:cert",
    "inspect": "espfleet.cli.inspect_cmd:inspect",
    "provision": "espfleet.cli.provision_cmd:provision",
    "flash": "espfleet.cli.flash_cmd:flash",
    "vdev": "espfleet.cli.vdev_cmd:vdev",
    "audit": "espfleet.cli.audit_cmd:audit",
    "demo": "espfleet.cli.demo_cmd:demo",
}

#: command name -> the first sentence of its help, for ``espfleet --help``: listing the
#: commands must not import them (provision/flash/cert pull in SQLAlchemy, alembic and the
#: provisioning stack). tests/cli/test_root_help.py keeps these equal to the commands' own.
SUMMARIES: dict[str, str] = {
    "init": "Create a fleet workspace in DIRECTORY (new or empty).",
    "ca": "The fleet certificate authority (root, issuing CA, CRL, server certificates).",
    "cert": "Device certificates issued by the fleet's issuing CA.",
    "inspect": "Decode FILE as an image, partition table, otadata, NVS, nvs_keys or eFuse image.",
    "provision": "Build a secure bundle per device in bundles/<device-id>/.",
    "flash": "Flash DEVICE_ID's bundle onto the chip on PORT.",
    "vdev": "Virtual ESP32 devices: create, serve to esptool/espefuse, boot, dump.",
    "audit": "Audit a flash read-out or a chip's eFuses (exit 1 on findings >= --fail-on).",
    "demo": "Rehearse the factory path on virtual ESP32s, offline.",
}


class _LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Click's listing, from :data:`SUMMARIES` instead of importing every command."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [
            (name, click.Command(name, help=SUMMARIES[name]).get_short_help_str(limit))
            for name in COMMANDS
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> object:
        return run_guarded(ctx, lambda: super(_LazyGroup, self).invoke(ctx))


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="espfleet")
@click.option(
    "--workspace",
    "-w",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Fleet workspace directory (default: $ESPFLEET_WORKSPACE, else the current directory).",
)
@click.option("--debug", is_flag=True, help="Show a traceback for errors.")
@click.pass_context
def main(ctx: click.Context, workspace: Path | None, debug: bool) -> None:
    """espfleet: from ESP32 prototype to a secure fleet.

    Factory provisioning with Secure Boot V2 and per-device flash encryption,
    encrypted NVS identities from the fleet CA, and a virtual ESP32 to rehearse
    the whole lifecycle. Start with `espfleet demo`, or `espfleet init DIR`.
    """
    if workspace is None:
        env = os.environ.get("ESPFLEET_WORKSPACE")
        workspace = Path(env) if env else None
    ctx.obj = CliContext(workspace_option=workspace, debug=debug)
