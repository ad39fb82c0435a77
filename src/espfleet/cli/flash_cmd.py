"""`espfleet flash DEVICE_ID --port PORT`: burn, write, verify and lock one device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from espfleet.cli._context import CliContext, get_passphrase
from espfleet.cli._output import console, echo_json, err_console
from espfleet.device_id import parse_device_id
from espfleet.errors import EspfleetError, FlashError, InputError
from espfleet.provisioning.batch import bundle_sha256
from espfleet.provisioning.bundle import (
    MANIFEST_NAME,
    Bundle,
    Manifest,
    load_bundle,
    wipe_secrets,
)
from espfleet.provisioning.efuse_plan import SOURCE_FLASH_ENCRYPTION_KEY
from espfleet.provisioning.esptool_driver import open_session
from espfleet.provisioning.flash_journal import JOURNAL_NAME, FlashJournal
from espfleet.provisioning.flasher import FlashJob, Inspection, execute, inspect_chip
from espfleet.provisioning.preflight import pending
from espfleet.provisioning.prepare import RETIRED_STATUSES
from espfleet.provisioning.vault import Vault, shred
from espfleet.workspace import Workspace


class _Keys:
    """Opens the vault only when a key is needed (a dry run or a resumed run may not)."""

    def __init__(self, workspace: Workspace, bundle: Bundle) -> None:
        self.workspace = workspace
        self.bundle = bundle
        self._vault: Vault | None = None
        self._key: bytes | None = None

    def vault(self) -> Vault:
        if self._vault is None:
            passphrase = get_passphrase(purpose="the key vault")
            self._vault = Vault.open(self.workspace.vault_dir, passphrase, create=False)
        return self._vault

    def flash_encryption_key(self) -> bytes:
        if self._key is None:
            device_id = self.bundle.manifest.device_id
            sealed = self.bundle.sealed_secrets
            vault = self.vault()
            secrets = vault.unseal(device_id, sealed) if sealed else vault.load(device_id)
            self._key = secrets.flash_encryption_key
        return self._key

    def destroy(self) -> None:
        """Wipe the device's secrets: they are deleted, not read, so no passphrase is
        asked (a resumed run whose key was burned before never opened the vault)."""
        wipe_secrets(self.bundle.path)
        shred(Vault.sealed_path(self.workspace.vault_dir, self.bundle.manifest.device_id))


@click.command(name="flash")
@click.argument("device_id")
@click.option(
    "--port", "-p", required=True, metavar="PORT", envvar="ESPTOOL_PORT",
    help="Where the chip answers: /dev/ttyUSB0, COM3, rfc2217://host:port, socket://host:port "
    "(default: $ESPTOOL_PORT).",
)
@click.option("--dry-run", is_flag=True, help="Check the chip and show the plan; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before the irreversible steps.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan and result as JSON.")
@click.pass_obj
def flash(
    obj: CliContext, device_id: str, port: str, dry_run: bool, yes: bool, as_json: bool
) -> None:
    """Flash DEVICE_ID's bundle onto the chip on PORT.

    Reads the chip first and refuses the wrong chip, MAC or a conflicting eFuse state;
    then burns the eFuses that must precede the first boot, writes the pre-encrypted
    images, verifies them by the chip's MD5, and burns the final locks (download mode
    last). A failed run can be re-run: what the chip already holds is skipped.
    """
    if as_json and not (yes or dry_run):
        raise InputError("--json cannot ask for confirmation: add --yes (or use --dry-run)")
    device_id = parse_device_id(device_id).value
    workspace = Workspace.open(obj.workspace_dir)
    bundle_dir = workspace.bundles_dir / device_id
    bundle = load_bundle(bundle_dir)
    # The lock `espfleet provision` also takes before it rebuilds this bundle; what was
    # loaded before it is checked again under it (a rebuild in between would have this
    # run burn a key that the new bundle and the vault no longer hold).
    with FlashJournal(bundle_dir / JOURNAL_NAME, device_id).exclusive():
        _check_unchanged(bundle)
        _check_recorded(workspace, bundle_dir, device_id)
        job = FlashJob.from_bundle(bundle)
        journal = FlashJournal.load(bundle_dir, device_id)
        _flash(obj, workspace, bundle, job, journal, port, dry_run=dry_run, yes=yes,
               as_json=as_json)


def _flash(
    obj: CliContext,
    workspace: Workspace,
    bundle: Bundle,
    job: FlashJob,
    journal: FlashJournal,
    port: str,
    *,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    device_id = job.device_id
    keys = _Keys(workspace, bundle)
    try:
        session = open_session(port, quiet=not obj.debug)
    except FlashError as error:
        if journal.status == "flashed" and job.plan.mode == "release":
            raise FlashError(
                f"{error} (the journal says {device_id} was flashed and locked on "
                f"{journal.data.get('updated', '?')}: a release device no longer answers "
                "over serial, so there is nothing left to do)"
            ) from error
        raise
    try:
        inspection = inspect_chip(job, session, journal)
        if not as_json:
            _render(inspection)
        if dry_run:
            if as_json:
                echo_json({"dry_run": True, "plan": inspection.to_json()})
            else:
                console.print("[bold]--dry-run[/]: nothing was changed.")
            return
        if not inspection.complete and not yes and not click.confirm(
            "Burning eFuses is irreversible. Flash this device?", err=True
        ):
            err_console.print(f"Not flashed: nothing was burned or written on {device_id}.")
            raise click.exceptions.Exit(1)
        say = (lambda _m: None) if as_json else (lambda m: err_console.print(f"  {m}"))
        if any(s.source == SOURCE_FLASH_ENCRYPTION_KEY
               for s in pending(inspection.efuse, "pre_flash")):
            # A missing or wrong passphrase stops here, before the registry says
            # `flashing` (which would keep `espfleet provision` off an untouched device).
            keys.flash_encryption_key()
        if not inspection.complete:
            # Before the first burn: from here on the chip may hold this bundle's key, and
            # `espfleet provision` must never rebuild the bundle (even if its folder is lost).
            _record(workspace, bundle, status="flashing")
        result = execute(
            inspection, session, journal, key_provider=keys.flash_encryption_key, progress=say
        )
    finally:
        session.close()

    _record(workspace, bundle)
    journal.mark("registry:flashed")
    destroyed = workspace.config.key_policy == "destroy"
    # A re-run of a flashed device destroyed nothing new: say so only the first time.
    destroyed_now = destroyed and "key_destroyed" not in journal.completed
    if destroyed_now:
        keys.destroy()
        journal.mark("key_destroyed")
    if as_json:
        echo_json(
            {
                "dry_run": False,
                "plan": inspection.to_json(),
                "result": result.to_json(),
                "key_destroyed": destroyed,
            }
        )
        return
    if inspection.complete:
        console.print(f"{device_id} was already flashed: nothing to burn or write.")
    console.print(
        f"[green]{device_id} flashed[/]: {len(result.efuses_burned)} eFuse step(s), "
        f"{len(result.images_written)} image(s) written, {len(result.images_verified)} "
        f"verified, {len(result.locks_burned)} lock(s)."
    )
    if destroyed_now:
        console.print("Flash-encryption key destroyed (key policy: destroy).")


def _check_unchanged(bundle: Bundle) -> None:
    """The bundle on disk is still the one loaded (its manifest holds every image hash)."""
    try:
        on_disk: Manifest | None = Manifest.decode((bundle.path / MANIFEST_NAME).read_bytes())
    except (OSError, EspfleetError):
        on_disk = None
    if on_disk != bundle.manifest:
        device_id = bundle.manifest.device_id
        raise FlashError(
            f"the bundle of {device_id} changed while this run started (`espfleet provision` "
            f"rebuilt or removed {bundle.path}): nothing was burned or written; run "
            f"`espfleet flash {device_id}` again to flash the bundle now recorded"
        )


def _check_recorded(workspace: Workspace, bundle_dir: Path, device_id: str) -> None:
    """A retired identity is never flashed (recording it ``flashed`` would revive it);
    the manifest must be the one `espfleet provision` recorded: its hash covers every
    image hash, the mode and the eFuse plan, which an edit could weaken."""
    with workspace.registry() as registry:
        record = registry.get_device(device_id)
    if record is not None and record.status in RETIRED_STATUSES:
        raise InputError(
            f"device {device_id} is {record.status} in the registry: a retired identity is "
            "never flashed again (its certificate must not come back); provision the board "
            "under a new device id; nothing was changed"
        )
    if record is None or not record.bundle_sha256:
        return
    if bundle_sha256(bundle_dir) != record.bundle_sha256:
        raise FlashError(
            f"{bundle_dir / MANIFEST_NAME} is not the manifest `espfleet provision` recorded "
            f"for {device_id} (its hash differs from the registry's): the bundle was modified "
            "after provisioning, and its mode, eFuse plan or images may have been altered; do "
            "not flash it. Restore it from backup; nothing was changed"
        )


def _record(workspace: Workspace, bundle: Bundle, status: str = "flashed") -> None:
    manifest = bundle.manifest
    with workspace.registry() as registry:
        if registry.get_device(manifest.device_id) is None:
            registry.add_device(
                manifest.device_id, chip=manifest.chip, mac=manifest.mac, status=status,
                mode=manifest.mode,
            )
        else:
            registry.update_device(manifest.device_id, status=status, mode=manifest.mode)


def _status(done: bool, todo: str) -> str:
    return "[dim]done[/]" if done else f"[yellow]{todo}[/]"


def _render(inspection: Inspection) -> None:
    data: dict[str, Any] = inspection.to_json()
    console.print(
        f"[bold]{data['device_id']}[/] on {data['port']}: {data['chip']} {data['revision']}, "
        f"MAC {data['mac']}, {data['flash_size'] or 'unknown'} flash, {data['mode']} mode"
        + (" (resuming an earlier run)" if data["resuming"] and not inspection.complete else "")
    )
    _render_steps(inspection, "pre_flash", "eFuses before the images")
    images = Table(title="Images (pre-encrypted, written as is)", title_justify="left")
    for column in ("image", "offset", "size", "encrypted", "status"):
        images.add_column(column, no_wrap=True)
    for item in data["images"]:
        images.add_row(
            item["name"], f"{item['offset']:#x}", str(item["size"]),
            "yes" if item["encrypted"] else "no", _status(item["done"], "to write"),
        )
    console.print(images)
    _render_steps(inspection, "post_flash", "Locks after the images (download mode last)")
    for warning in data["leaves_open"]:
        console.print(f"[yellow]development mode leaves open:[/] {warning}")


#: Width of the step column at most (the "why" column gets the rest).
_STEP_WIDTH = 36


def _render_steps(inspection: Inspection, phase: str, title: str) -> None:
    checks = [c for c in inspection.efuse if c.step.phase == phase]
    if not checks:
        return
    # The step wraps before its key source ("<- ...") and within a width that leaves the
    # "why" readable: at 80 columns (a factory log, a pipe) a no-wrap step column
    # squeezed "#", "why" and the status out of the table.
    steps = [check.step.describe().replace(" <- ", "\n<- ") for check in checks]
    longest = max(len(line) for step in steps for line in step.splitlines())
    table = Table(title=title, title_justify="left")
    table.add_column("#", no_wrap=True)
    table.add_column("step", overflow="fold", width=min(longest, _STEP_WIDTH))
    table.add_column("why", ratio=1)
    table.add_column("status", no_wrap=True, min_width=len("to burn"))
    for index, (check, step) in enumerate(zip(checks, steps, strict=True), 1):
        table.add_row(str(index), step, check.step.why, _status(check.done, "to burn"))
    console.print(table)
