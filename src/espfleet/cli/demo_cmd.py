"""`espfleet demo`: provision, flash, boot and audit virtual ESP32s, and refuse an attack."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from espfleet.chips import chip_names
from espfleet.cli._output import console, echo_json, err_console
from espfleet.demo import DemoReport, run_demo
from espfleet.errors import EspfleetError


@click.command(name="demo")
@click.option("--devices", type=click.IntRange(1, 20), default=3, show_default=True,
              help="How many virtual devices to provision and flash.")
@click.option("--chip", type=click.Choice(chip_names()), default="esp32", show_default=True)
@click.option("--keep", is_flag=True, help="Keep the temporary workspace and print its path.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def demo(ctx: click.Context, devices: int, chip: str, keep: bool, as_json: bool) -> None:
    """Rehearse the factory path on virtual ESP32s, offline.

    Creates a fleet (in a temporary workspace unless --workspace names a new one),
    provisions DEVICES virtual chips in release mode, flashes each through the real
    esptool and espefuse over socket://, boots them, reads their flash out as an
    attacker would and audits it, then shows a tampered app being refused.
    Exits non-zero if any step fails.
    """
    workspace: Path | None = ctx.obj.workspace_option

    def observe(event: str, text: str) -> None:
        if as_json:
            return
        if event == "start":
            status.update(f"[bold]{text}[/] ...")
        elif event == "ok":
            console.print(f"[green]✓[/] {text}")
        else:
            console.print(f"[red]✗[/] {text}")

    with console.status("starting", spinner="dots") as status:
        report = run_demo(workspace=workspace, devices=devices, chip=chip, keep=keep,
                          observe=observe)
    if as_json:
        echo_json(report.to_json())
    else:
        _summary(report)
    if not report.ok:
        failed = next((s for s in report.steps if not s.ok), None)
        what = f"the demo failed at '{failed.name}'" if failed else "the demo did not finish"
        where = (
            f"the workspace is kept at {report.workspace}"
            if report.kept
            else "run with --keep to inspect the workspace"
        )
        raise EspfleetError(f"{what}; {where}")


def _summary(report: DemoReport) -> None:
    table = Table(title=f"{len(report.devices)} virtual {report.chip} device(s)")
    table.add_column("device", no_wrap=True)
    for column in ("eFuse burns", "images", "locks", "booted", "fw", "audit"):
        table.add_column(column)
    for d in report.devices:
        table.add_row(
            d["device_id"], str(d["efuses_burned"]), str(d["images_written"]),
            str(d["locks_burned"]), str(d["booted_slot"]), str(d["fw_version"]),
            "pass" + (f" ({n} low)" if (n := d["flash_findings"] + d["efuse_findings"]) else ""),
        )
    console.print(table)
    if report.attack:
        a = report.attack
        console.print(
            f"[bold]Attack refused:[/] one bit flipped at {a['flipped_bit_at']} of "
            f"{a['device']}'s encrypted app -> boot stopped in {a['stage']}: {a['reason']}"
        )
        for line in a.get("log_tail", []):
            console.print(f"  [dim]{line}[/]")
    console.print(f"{len(report.steps)} steps in {report.seconds:.1f} s")
    if report.kept:
        err_console.print(f"workspace: {report.workspace}")
