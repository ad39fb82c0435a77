"""`espfleet audit flash|efuse`: what a flash read-out gives away, and whether the
eFuses really lock the chip. Exit 1 when a finding at or above ``--fail-on`` exists,
so a factory line or CI can gate on it; 2 for bad input."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from espfleet.audit.findings import EfuseFinding, Finding, Severity, printable
from espfleet.chips import chip_facts, chip_names
from espfleet.cli._context import get_passphrase
from espfleet.cli._errors import EXIT_FAILED
from espfleet.cli._output import echo_json
from espfleet.errors import InputError

if TYPE_CHECKING:
    from espfleet.audit.known_secrets import KnownSecret

__all__ = ["audit"]

_SEVERITIES = [s.label for s in Severity]
_COLORS = {
    Severity.CRITICAL: "red",
    Severity.HIGH: "red",
    Severity.MEDIUM: "yellow",
    Severity.LOW: "cyan",
    Severity.INFO: "white",
}

_fail_on = click.option(
    "--fail-on",
    type=click.Choice(_SEVERITIES),
    default="high",
    show_default=True,
    help="Exit 1 when a finding at or above this severity exists.",
)
_json = click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
_chip_choice = click.Choice(list(chip_names()))
#: Human output lists this many flash findings (ordered by offset); --json has all.
_HUMAN_LIMIT = 200


_UNSEARCHED = (
    "the fleet's own secrets (device keys, NVS and flash-encryption keys, recovery secrets) "
    "were not searched: add --workspace DIR (a subcommand option, not espfleet -w)"
)


@click.group(name="audit")
def audit() -> None:
    """Audit a flash read-out or a chip's eFuses (exit 1 on findings >= --fail-on)."""


def _read_input(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot read {what} {path}: {error.strerror or error}") from None


def _gate(failing: Sequence[Finding | EfuseFinding]) -> None:
    if failing:
        click.get_current_context().exit(EXIT_FAILED)


def _verdict(count: int, failing: int, threshold: Severity) -> str:
    if failing:
        return click.style(
            f"FAIL: {failing} of {count} findings at or above {threshold.label}", fg="red",
            bold=True,
        )
    return click.style(f"PASS: no finding at or above {threshold.label} ({count} below)",
                       fg="green", bold=True)


def _severity(severity: Severity) -> str:
    return click.style(f"{severity.label.upper():<8}", fg=_COLORS[severity], bold=True)


@audit.command(name="flash")
@click.argument("dump", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--chip", type=_chip_choice, default=None,
              help="Chip of the dump, for the report (every chip's bootloader offset "
              "is checked).")
@click.option("--workspace", "workspace_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Also search for every secret this fleet workspace knows "
              "(needs the passphrase: $ESPFLEET_PASSPHRASE or a prompt).")
@click.option("--device-id", "--device", "devices", multiple=True, metavar="ID",
              help="With --workspace: only this device's secrets (repeatable; the same "
              "option name as in provision).")
@_json
@_fail_on
def flash(dump: Path, chip: str | None, workspace_dir: Path | None, devices: tuple[str, ...],
          as_json: bool, fail_on: str) -> None:
    """Scan a raw flash dump (`esptool read-flash 0 SIZE` or `espfleet vdev dump`).

    Finds plaintext keys, certificates and credentials, plaintext partition tables,
    bootloaders, app images and NVS (flash encryption off), and with --workspace the
    fleet's own secrets by exact bytes; prints an entropy map of the dump.
    """
    from espfleet.audit.flash_scan import scan_flash

    threshold = Severity.parse(fail_on)
    data = _read_input(dump, "flash dump")
    known: tuple[KnownSecret, ...] = ()
    skipped: tuple[str, ...] = ()
    if workspace_dir is not None:
        from espfleet.audit.workspace_secrets import workspace_secrets
        from espfleet.workspace import Workspace

        collected = workspace_secrets(
            Workspace.open(workspace_dir), get_passphrase(purpose="the fleet's key vault"),
            devices,
        )
        known, skipped = collected.secrets, collected.skipped
    elif devices:
        raise InputError("--device needs --workspace: it selects that workspace's devices")
    report = scan_flash(data, chip=chip_facts(chip) if chip else None, known_secrets=known)
    failing = report.failing(threshold)
    notes = report.notes if workspace_dir is not None else (*report.notes, _UNSEARCHED)
    if as_json:
        echo_json({**report.to_json(), "notes": list(notes), "dump": str(dump),
                   "fail_on": threshold.label, "passed": not failing,
                   "skipped_devices": list(skipped)})
        _gate(failing)
        return
    size = f"{len(data) / 1048576:.2f} MB" if len(data) >= 1048576 else f"{len(data)} bytes"
    click.echo(f"flash audit of {dump} ({size}"
               + (f", {chip}" if chip else "")
               + (f", {len(known)} workspace secrets searched" if workspace_dir else "") + ")")
    for note in (*notes, *skipped):
        click.echo(f"note: {note}")
    for f in report.findings[:_HUMAN_LIMIT]:
        click.echo(f"{_severity(f.severity)} 0x{f.offset:08x} +{f.length:<6} {f.kind}: "
                   f"{printable(f.message)}")
        click.echo(f"{'':17}fix: {f.fix}")
    if len(report.findings) > _HUMAN_LIMIT:
        click.echo(f"... and {len(report.findings) - _HUMAN_LIMIT} more findings: use --json "
                   "for all of them")
    click.echo("entropy map, one character per 4 KB block "
               "(# ciphertext-like, P plaintext, - low entropy, . erased):")
    for line in report.entropy.render():
        click.echo(f"  {line}")
    counts = report.entropy.counts()
    click.echo("  " + ", ".join(f"{name} {n}" for name, n in counts.items()))
    click.echo(_verdict(len(report.findings), len(failing), threshold))
    _gate(failing)


@audit.command(name="efuse")
@click.argument("efuse_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--port", default=None,
              help="Read the eFuses of a connected chip (serial, rfc2217://, socket://).")
@click.option("--chip", type=_chip_choice, required=True,
              help="Chip of the eFuse file or of the chip on --port.")
@click.option("--mode", type=click.Choice(["release", "development"]), default="release",
              show_default=True, help="The posture the chip must have.")
@click.option("--workspace", "workspace_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Require the secure boot digest of this fleet's signing key.")
@_json
@_fail_on
def efuse(efuse_file: Path | None, port: str | None, chip: str, mode: str,
          workspace_dir: Path | None, as_json: bool, fail_on: str) -> None:
    """Check a chip's eFuses (an `espefuse --virt` FILE or --port) against the mode.

    Each finding names the eFuse, the value found and required, and the espefuse
    command that fixes it, or why none can (write-protected, download mode locked).
    """
    from espfleet.audit.efuse_posture import audit_efuses
    from espfleet.audit.efuse_source import read_efuse_file, read_efuse_port

    threshold = Severity.parse(fail_on)
    if (efuse_file is None) == (port is None):
        raise InputError("give either an eFuse FILE (espefuse --virt) or --port PORT, not both "
                         "or neither")
    digest = None
    if workspace_dir is not None:
        from espfleet.workspace import Workspace

        digest = Workspace.open(workspace_dir).secure_boot_digest()
    unverified: tuple[str, ...] = ()
    if efuse_file is not None:
        state = read_efuse_file(chip, efuse_file)
    else:
        state, unverified = read_efuse_port(chip, str(port))
    # A Secure Download Mode snapshot shows digest slots, not digest values.
    check_digest = None if unverified else digest
    report = audit_efuses(state, mode, expected_digest=check_digest, unverified=unverified)
    failing = report.failing(threshold)
    source = str(efuse_file) if efuse_file is not None else f"port {port}"
    if as_json:
        echo_json({**report.to_json(), "source": source, "fail_on": threshold.label,
                   "passed": not failing,
                   "expected_digest": digest.hex() if digest else None})
        _gate(failing)
        return
    click.echo(f"eFuse audit of {source} ({chip}, {mode} mode"
               + (", fleet digest required" if digest else "") + ")")
    for f in report.findings:
        click.echo(f"{_severity(f.severity)} {f.efuse}: {f.message}")
        click.echo(f"{'':9}found {f.found}, required {f.required}")
        click.echo(f"{'':9}fix: {f.fix}")
    for note in report.notes:
        click.echo(f"note: {note}")
    click.echo(_verdict(len(report.findings), len(failing), threshold))
    _gate(failing)
