"""`espfleet cert`: issue, revoke and list device certificates."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from espfleet._io import atomic_write
from espfleet.cli._context import CliContext, get_passphrase
from espfleet.cli._output import console, echo_json, err_console
from espfleet.device_id import parse_device_id
from espfleet.errors import InputError
from espfleet.pki.crl import REVOCATION_REASONS
from espfleet.pki.csr import check_csr, load_csr
from espfleet.workspace import Workspace


@click.group(name="cert")
def cert() -> None:
    """Device certificates issued by the fleet's issuing CA."""


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _read_csr(path: Path, device_id: str) -> Any:
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
    parse_device_id(device_id)
    csr = _read_csr(csr_path, device_id) if csr_path is not None else None
    with workspace.registry() as registry:
        current = registry.active_certificate(device_id)
        device = registry.get_device(device_id)
    if device is not None and device.status in ("revoked", "decommissioned"):
        raise InputError(
            f"{device_id} is {device.status}: a {device.status} device gets no certificate"
        )
    if current is not None and not renew:
        raise InputError(
            f"{device_id} already has an active certificate (serial {current.serial}, valid "
            f"until {current.not_after:%Y-%m-%d}): pass --renew to replace it"
        )
    out_dir = out if out is not None else workspace.devices_pki_dir / device_id
    encrypt_key = _inside(out_dir, workspace.root)
    passphrase = get_passphrase(purpose="the issuing CA key")
    with workspace.ca(passphrase) as authority:
        issued = authority.issue_device_cert(device_id, csr=csr)
        record = authority.record(issued, renew=renew)
        files = {"cert": out_dir / "device.pem", "chain": out_dir / "ca-chain.pem"}
        atomic_write(files["cert"], issued.cert_pem)
        atomic_write(files["chain"], authority.chain_pem())
        if issued.key_pem is not None:
            files["key"] = out_dir / "device.key.pem"
            key_pem = issued.encrypted_key_pem(passphrase) if encrypt_key else issued.key_pem
            atomic_write(files["key"], key_pem, mode=0o600)
    result: dict[str, Any] = {
        **record.to_json(),
        "renewed": current is not None,
        "superseded": current.serial if current is not None else None,
        "files": {name: str(path) for name, path in files.items()},
        "key_encrypted": encrypt_key if "key" in files else None,
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
    "--expiring-within", type=click.IntRange(min=0), metavar="DAYS",
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
    table = Table("serial", "device", "status", "not after")
    for record in records:
        table.add_row(record.serial, record.device_id, record.status, f"{record.not_after}")
    console.print(table)
