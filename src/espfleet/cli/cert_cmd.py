"""`espfleet cert`: issue, revoke and list device certificates."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from cryptography import x509

from espfleet._io import atomic_write
from espfleet.cli._context import CliContext, get_passphrase
from espfleet.cli._output import console, echo_json, err_console
from espfleet.device_id import parse_device_id
from espfleet.errors import InputError
from espfleet.pki.crl import REVOCATION_REASONS
from espfleet.pki.csr import check_csr, load_csr
from espfleet.workspace import Workspace
from espfleet.workspace.config import MAX_DAYS


@click.group(name="cert")
def cert() -> None:
    """Device certificates issued by the fleet's issuing CA."""


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


@contextlib.contextmanager
def _undo_on_failure(out_dir: Path, paths: list[Path]) -> Iterator[None]:
    """Create ``out_dir``; if the body fails, restore ``paths`` and remove the directories
    this created. A file-system error becomes an :class:`InputError` naming the path.
    ``out_dir`` is locked meanwhile, so a concurrent issue for the same device cannot
    restore over (or delete) the files of the one that won."""
    created = [d for d in (out_dir, *out_dir.parents) if not d.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = os.open(out_dir, os.O_RDONLY)
    except OSError as error:
        raise InputError(
            f"cannot write to {out_dir}: {error.strerror}; choose another --out"
        ) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        previous = {p: (p.read_bytes(), p.stat().st_mode & 0o777) for p in paths if p.exists()}
    except OSError as error:
        os.close(lock)
        raise InputError(f"cannot read {error.filename or out_dir}: {error.strerror}") from None
    try:
        yield
    except BaseException as error:
        for path in paths:
            if path in previous:
                atomic_write(path, *previous[path])
            else:
                path.unlink(missing_ok=True)
        for directory in created:  # deepest first; one still holding files stays
            with contextlib.suppress(OSError):
                directory.rmdir()
        if isinstance(error, OSError):
            raise InputError(
                f"cannot write {error.filename or out_dir}: {error.strerror}; nothing was "
                "recorded; free some space or choose another --out"
            ) from None
        raise
    finally:
        os.close(lock)


def _refuse_another_devices_files(out_dir: Path, device_id: str) -> None:
    """``out_dir`` holding another device's certificate (and maybe its only key copy,
    outside the workspace) must not be overwritten by this device's files."""
    from cryptography.x509.oid import NameOID

    path = out_dir / "device.pem"
    try:
        data = path.read_bytes()
    except OSError:  # nothing there (an unwritable --out is reported when writing)
        return
    try:
        names = x509.load_pem_x509_certificate(data).subject.get_attributes_for_oid(
            NameOID.COMMON_NAME)
        holder = str(names[0].value) if names else "no device"
    except ValueError:
        holder = "not a certificate"
    if holder != device_id:
        raise InputError(
            f"{out_dir} already holds the files of {holder} ({path}, and its key if it was "
            f"issued here): give {device_id} its own --out directory, e.g. "
            f"{out_dir / device_id}, or move those files first"
        )


def _read_csr(path: Path, device_id: str) -> x509.CertificateSigningRequest:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot read the CSR {path}: {error.strerror}") from None
    csr = load_csr(data, name=str(path))
    check_csr(csr, device_id)
    return csr


@cert.command(name="issue")
@click.argument("device_id")
@click.option(
    "--csr", "csr_path", type=click.Path(dir_okay=False, path_type=Path),
    help="Sign this CSR (CN must be DEVICE_ID) instead of generating a key here.",
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path),
    help="Write device.pem, ca-chain.pem (and device.key.pem) here "
    "(default: pki/devices/DEVICE_ID/ in the workspace).",
)
@click.option("--renew", is_flag=True, help="Replace the device's active certificate.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def issue(
    obj: CliContext, device_id: str, csr_path: Path | None, out: Path | None, renew: bool,
    as_json: bool,
) -> None:
    """Issue a certificate for DEVICE_ID (CN = DEVICE_ID, EKU clientAuth).

    Without --csr a P-256 key is generated here (factory path). A key written inside the
    workspace is encrypted with the passphrase; written elsewhere (for a device) it is a
    plain PEM with mode 0600.
    """
    workspace = Workspace.open(obj.workspace_dir)
    chip = parse_device_id(device_id).chip
    if chip is not None and chip != workspace.config.chip:
        raise InputError(
            f"{device_id} names an {chip} chip, but this workspace's product is an "
            f"{workspace.config.chip} ([fleet] chip in fleet.toml): check the device id"
        )
    csr = _read_csr(csr_path, device_id) if csr_path is not None else None
    with workspace.registry() as registry:
        current = registry.active_certificate(device_id)
        device = registry.get_device(device_id)
    if device is not None and device.status in ("revoked", "decommissioned"):
        raise InputError(
            f"{device_id} is {device.status}: a {device.status} device gets no certificate"
        )
    if csr is None and device is not None and device.bundle_sha256:
        raise InputError(
            f"{device_id} has a provisioned bundle (status {device.status}): its key and "
            "certificate live in the bundle's encrypted NVS, so a key made here would never "
            "reach the device (and the bundle would flash a superseded certificate); renew "
            "with a CSR from the device (--csr), or rebuild an unflashed bundle with "
            "`espfleet provision`"
        )
    if current is not None and not renew:
        raise InputError(
            f"{device_id} already has an active certificate (serial {current.serial}, valid "
            f"until {current.not_after:%Y-%m-%d}): pass --renew to replace it"
        )
    out_dir = out if out is not None else workspace.devices_pki_dir / device_id
    _refuse_another_devices_files(out_dir, device_id)
    encrypt_key = _inside(out_dir, workspace.root)
    passphrase = get_passphrase(purpose="the issuing CA key")
    with workspace.ca(passphrase) as authority:
        issued = authority.issue_device_cert(device_id, csr=csr)
        writes = {
            "cert": (out_dir / "device.pem", issued.cert_pem, 0o644),
            "chain": (out_dir / "ca-chain.pem", authority.chain_pem(), 0o644),
        }
        if issued.key_pem is not None:
            key_pem = issued.encrypted_key_pem(passphrase) if encrypt_key else issued.key_pem
            writes["key"] = (out_dir / "device.key.pem", key_pem, 0o600)
        # A key left from an earlier factory-path issue does not match a certificate
        # issued from a CSR: it goes, so device.pem and device.key.pem never disagree.
        stale = [] if "key" in writes else [out_dir / "device.key.pem"]
        stale = [path for path in stale if path.exists()]
        # Files first, then the registry: a certificate is never recorded as active while
        # its files (and a key generated here) are missing; if recording fails the files
        # are put back as they were.
        with _undo_on_failure(out_dir, [path for path, _, _ in writes.values()] + stale):
            for path, data, mode in writes.values():
                atomic_write(path, data, mode=mode)
            for path in stale:
                path.unlink()
            record = authority.record(issued, renew=renew)
        files = {name: path for name, (path, _, _) in writes.items()}
    result: dict[str, Any] = {
        **record.to_json(),
        "renewed": current is not None,
        "superseded": current.serial if current is not None else None,
        "files": {name: str(path) for name, path in files.items()},
        "key_encrypted": encrypt_key if "key" in files else None,
        "removed": [str(path) for path in stale],
    }
    if "key" in files and not encrypt_key:
        err_console.print(
            f"warning: {files['key']} is an UNENCRYPTED private key (mode 0600) for the "
            "device: move it onto the device and delete it"
        )
    if as_json:
        echo_json(result)
        return
    console.print(f"Issued certificate {record.serial} for {device_id} until {record.not_after}")
    for name, path in result["files"].items():
        console.print(f"  {name:<5} {path}")


@cert.command(name="revoke")
@click.argument("target", metavar="DEVICE_ID|SERIAL")
@click.option(
    "--reason", type=click.Choice(REVOCATION_REASONS), default="unspecified", show_default=True,
    help="RFC 5280 reason, e.g. key_compromise, superseded, cessation_of_operation.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def revoke(obj: CliContext, target: str, reason: str, as_json: bool) -> None:
    """Revoke a certificate by serial, or every unexpired one of a device, superseded ones
    included (the device is then marked revoked), and re-sign the CRL."""
    workspace = Workspace.open(obj.workspace_dir)
    with workspace.ca(get_passphrase(purpose="the issuing CA key")) as authority:
        revoked = authority.revoke(target, reason)
    result = {
        "revoked": [record.to_json() for record in revoked],
        "crl": str(workspace.pki_dir / "crl.pem"),
    }
    if as_json:
        echo_json(result)
        return
    for record in revoked:
        console.print(f"Revoked {record.serial} ({record.device_id}), reason {reason}")
    console.print(f"CRL re-signed: {result['crl']}")


@cert.command(name="list")
@click.option(
    "--expiring-within", type=click.IntRange(min=0, max=MAX_DAYS), metavar="DAYS",
    help="Only active certificates that expire within DAYS (expired ones included).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def list_(obj: CliContext, expiring_within: int | None, as_json: bool) -> None:
    """Certificates in the registry, soonest expiry first."""
    workspace = Workspace.open(obj.workspace_dir)
    span = dt.timedelta(days=expiring_within) if expiring_within is not None else None
    with workspace.registry() as registry:
        records = registry.certificates(expiring_within=span)
    if as_json:
        echo_json([record.to_json() for record in records])
        return
    # Plain columns, never cut to the terminal width: the serial and the device id are
    # what `cert revoke` takes, so they must survive copy-paste and grep.
    width = max([len("device"), *(len(record.device_id) for record in records)])
    click.echo(f"{'device':<{width}}  {'status':<10}  {'not after (UTC)':<16}  serial")
    now = dt.datetime.now(dt.UTC)
    for record in records:
        # an active certificate past its notAfter is refused by every TLS peer: say so
        status = "expired" if record.status == "active" and record.not_after <= now else (
            record.status)
        click.echo(
            f"{record.device_id:<{width}}  {status:<10}  "
            f"{record.not_after:%Y-%m-%d %H:%M}  {record.serial}"
        )
