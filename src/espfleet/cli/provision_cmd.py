"""`espfleet provision`: build per-device secure bundles, in parallel, resumably."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import click

from espfleet.backend.registry import Registry
from espfleet.chips import chip_facts
from espfleet.cli._context import CliContext, get_passphrase
from espfleet.cli._output import echo_json, err_console
from espfleet.errors import InputError, ProvisioningError
from espfleet.provisioning.batch import BatchReport, DeviceResult, batch_lock, run_batch
from espfleet.provisioning.inputs import load_firmware
from espfleet.provisioning.macs import MacEntry, check_wifi, parse_mac_list
from espfleet.provisioning.plan import FleetPolicy
from espfleet.provisioning.prepare import (
    Allocation,
    build_policy,
    record_allocation,
    requests_for,
    unfinished_allocations,
)
from espfleet.workspace import Workspace
from espfleet.workspace.authority import IssuingAuthority

WIFI_PASS_ENV = "ESPFLEET_WIFI_PASSWORD"
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


@click.command(name="provision")
@click.option(
    "--count", type=click.IntRange(min=1),
    help="N devices with locally administered MACs (02:e5:f1:..) recorded in the registry, "
    "for virtual chips and rehearsals: a real board keeps its factory MAC (list those with "
    "--macs). MACs allocated by an interrupted run are resumed first.",
)
@click.option(
    "--macs", "macs_file", type=click.Path(dir_okay=False, path_type=Path),
    help="CSV of base MACs (mac[,wifi_ssid,wifi_pass]), one device per line.",
)
@click.option("--device-id", "device_ids", multiple=True, help="A device id <chip>-<12 hex MAC>.")
@click.option(
    "--firmware", required=True, type=click.Path(path_type=Path),
    help="App image, PlatformIO build dir (.pio/build/<env>) or ESP-IDF build dir.",
)
@click.option(
    "--bootloader", type=click.Path(dir_okay=False, path_type=Path),
    help="Security-enabled bootloader built once with ESP-IDF (required in release mode "
    "unless the ESP-IDF build has one).",
)
@click.option(
    "--mode", type=click.Choice(["release", "development"]), default="release",
    show_default=True, help="development leaves flash encryption reversible and JTAG/UART open.",
)
@click.option("--flash-size", help="Flash size (e.g. 4MB); default: the build's, else fleet.toml.")
@click.option("--merged", is_flag=True, help="Also write one merged image per device.")
@click.option("--wifi-ssid", help=f"Wi-Fi SSID for every device (password from ${WIFI_PASS_ENV}).")
@click.option("--jobs", type=click.IntRange(min=1), help="Worker processes (default: CPU count).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def provision(
    obj: CliContext,
    count: int | None,
    macs_file: Path | None,
    device_ids: tuple[str, ...],
    firmware: Path,
    bootloader: Path | None,
    mode: str,
    flash_size: str | None,
    merged: bool,
    wifi_ssid: str | None,
    jobs: int | None,
    as_json: bool,
) -> None:
    """Build a secure bundle per device in bundles/<device-id>/.

    Each device gets its own flash-encryption key, NVS keys, P-256 key and certificate
    from the fleet CA and a recovery secret; bootloader and app are signed once with
    the fleet's Secure Boot V2 key; every encrypted partition is pre-encrypted at its
    offset. Devices already provisioned with the same mode, flash size and app version
    are skipped, so a re-run resumes; an unflashed device built with other settings is
    rebuilt. Nothing is burned or flashed: `espfleet flash` does that.
    """
    chosen = [name for name, given in (
        ("--count", count is not None), ("--macs", macs_file is not None),
        ("--device-id", bool(device_ids))) if given]
    if len(chosen) != 1:
        raise InputError(
            "name the devices with exactly one of --count N, --macs FILE or --device-id ID"
            + (f" (got {' and '.join(chosen)})" if chosen else "")
        )
    workspace = Workspace.open(obj.workspace_dir)
    chip = workspace.config.chip
    entries: tuple[MacEntry, ...] = ()
    if macs_file is not None:
        entries = parse_mac_list(_read_text(macs_file), source=str(macs_file))
    wifi_pass = os.environ.get(WIFI_PASS_ENV)
    if wifi_pass is not None and wifi_ssid is None:
        raise InputError(f"${WIFI_PASS_ENV} is set but --wifi-ssid is not")
    try:
        check_wifi(wifi_ssid, wifi_pass)
    except InputError as error:
        raise InputError(f"--wifi-ssid / ${WIFI_PASS_ENV}: {error}") from None
    source = load_firmware(firmware, bootloader=bootloader)
    passphrase = get_passphrase(purpose="the fleet's keys")
    signing_key = workspace.signing_key(passphrase)
    authority = workspace.ca(passphrase)
    policy = build_policy(
        workspace=workspace, source=source, signing_key=signing_key, mode=mode,
        flash_size=flash_size, merged=merged,
    )
    if mode == "development":
        err_console.print(f"[yellow]warning:[/] development mode on {chip} leaves open:")
        for line in policy.efuse_plan.leaves_open():
            err_console.print(f"  - {line}")
        if not policy.bootloader_verifies_app:
            err_console.print(
                f"  - the bootloader from {source.bootloader_origin} is not a Secure Boot V2 "
                "bootloader: the ROM verifies it, but it does not verify the app (any app "
                "written to flash runs); pass an ESP-IDF one with --bootloader for the "
                "whole chain"
            )
    registry = workspace.registry()
    try:
        with batch_lock(workspace.bundles_dir):
            allocation = requests_for(
                chip, entries=entries, device_ids=device_ids, count=count, registry=registry,
                wifi_ssid=wifi_ssid, wifi_pass=wifi_pass,
            )
            if allocation.new_macs:
                record_allocation(registry, chip, mode, allocation.new_macs)
            try:
                report = _run(
                    allocation, policy, authority, registry, workspace, passphrase, jobs,
                    quiet=as_json,
                )
            except KeyboardInterrupt:
                raise ProvisioningError(_interrupted(registry, chip, count)) from None
    finally:
        registry.close()
        authority.close()
    warnings = _broker_warnings(workspace, policy, mode)
    if as_json:
        echo_json({**report.to_json(), "chip": chip, "mode": mode,
                   "bundles": str(workspace.bundles_dir), "warnings": warnings})
    else:
        for warning in warnings:
            err_console.print(f"[yellow]warning:[/] {warning}")
        resumed = (
            f" ({allocation.resumed} of them allocated by an interrupted run)"
            if allocation.resumed else ""
        )
        click.echo(
            f"{report.count('built')} built{resumed}, {report.count('skipped')} already done, "
            f"{report.count('failed')} failed in {report.seconds:.1f} s "
            f"({chip_facts(chip).description}, {mode}); bundles in {workspace.bundles_dir}"
        )
        for result in report.results:
            if result.status == "failed":
                click.echo(f"  {result.device_id}: {result.error}", err=True)
            elif result.note:
                click.echo(f"  {result.device_id}: {result.note}", err=True)
    if report.count("failed"):
        raise ProvisioningError(
            f"{report.count('failed')} device(s) failed (see above); fix the cause and run "
            "the same command again: finished devices are skipped"
        )


def _broker_warnings(workspace: Workspace, policy: FleetPolicy, mode: str) -> list[str]:
    """`init` without --broker-host leaves localhost: every release device would look for
    its MQTT broker on itself."""
    host = workspace.config.broker_hosts[0]
    if mode != "release" or host not in _LOOPBACK_HOSTS:
        return []
    return [
        f"devices get broker {policy.broker_uri}: {host} is the device itself. Set the "
        "broker's real name under [hosts] in fleet.toml and run `espfleet ca reseal` "
        "before provisioning devices that ship"
    ]


def _read_text(path: Path) -> str:
    """A --macs file as text: UTF-8 (a spreadsheet's byte-order mark is fine). Another
    encoding is refused, never guessed: an SSID must reach the device byte for byte."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"--macs {path} does not exist") from None
    except OSError as error:
        raise InputError(f"--macs {path} cannot be read: {error.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InputError(
            f"--macs {path} line {line}: byte 0x{data[error.start]:02x} is not UTF-8 (a file "
            "saved as Windows/ANSI \"CSV\"?): save it as \"CSV UTF-8\" and run again"
        ) from None


def _interrupted(registry: Registry, chip: str, count: int | None) -> str:
    """What a Ctrl-C left, and the command that finishes the batch and nothing more."""
    done = "interrupted (Ctrl-C): every device built so far is kept, none half-built"
    if count is None:
        return f"{done}; run the same command again: finished devices are skipped"
    left = len(unfinished_allocations(registry.list_devices(), chip))
    if not left:
        return f"{done}; every allocated MAC has its bundle"
    return (
        f"{done}; {left} allocated MAC(s) have no bundle yet: `espfleet provision --count "
        f"{left}` with the same firmware options builds exactly those (--count {count} "
        f"again would build them and allocate {max(count - left, 0)} new device(s))"
    )


def _run(
    allocation: Allocation,
    policy: FleetPolicy,
    authority: IssuingAuthority,
    registry: Registry,
    workspace: Workspace,
    passphrase: bytes,
    jobs: int | None,
    *,
    quiet: bool,
) -> BatchReport:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    def run(on_result: Callable[[DeviceResult], None] | None = None) -> BatchReport:
        return run_batch(
            requests=allocation.requests, policy=policy, ca=authority.authority,
            registry=registry, bundles_dir=workspace.bundles_dir,
            vault_dir=workspace.vault_dir, passphrase=passphrase, jobs=jobs,
            on_result=on_result,
        )

    if quiet or not allocation.requests:
        return run()
    # No refresh thread: worker processes are forked while the bar is shown.
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err_console, transient=True, auto_refresh=False,
    ) as progress:
        task = progress.add_task("provisioning", total=len(allocation.requests))

        def advance(_result: DeviceResult) -> None:
            progress.advance(task)
            progress.refresh()

        return run(advance)
