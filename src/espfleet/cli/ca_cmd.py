"""`espfleet ca`: show the fleet CA, publish its CRL, re-sign the workspace manifest."""

from __future__ import annotations

from pathlib import Path

import click

from espfleet._io import atomic_write
from espfleet.cli._context import CliContext, get_passphrase
from espfleet.cli._output import console, echo_json, err_console
from espfleet.errors import InputError
from espfleet.pki.ca import utcnow
from espfleet.pki.crl import crl_number, load_crl
from espfleet.workspace import Workspace


@click.group(name="ca")
def ca() -> None:
    """The fleet certificate authority (root, issuing CA, CRL, server certificates)."""


@ca.command(name="show")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def show(obj: CliContext, as_json: bool) -> None:
    """Paths, fingerprints and validity of the CA, the CRL and the server certificates."""
    info = Workspace.open(obj.workspace_dir).describe()
    if as_json:
        echo_json(info)
        return
    for label in ("root_ca", "issuing_ca"):
        cert = info[label]
        console.print(f"[bold]{label}[/] {cert['subject']}")
        console.print(f"  {cert['path']}  sha256 {cert['fingerprint_sha256']}")
        console.print(f"  valid {cert['not_before']} .. {cert['not_after']}")
    for name, server in info["servers"].items():
        console.print(f"[bold]{name}[/] {', '.join(server['hosts'])}  until {server['not_after']}")
        console.print(f"  {server['path']}  sha256 {server['fingerprint_sha256']}")
    crl = info["crl"]
    console.print(
        f"[bold]crl[/] {crl['path']} #{crl['number']} ({crl['revoked']} revoked), "
        f"next update {crl['next_update']}"
    )
    console.print(
        f"[bold]secure boot[/] {info['secure_boot']['scheme']} digest "
        f"{info['secure_boot']['public_key_digest_sha256']}"
    )


@ca.command(name="crl")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Also copy the CRL here."
)
@click.option(
    "--refresh", is_flag=True,
    help="Re-sign the CRL now (needs the passphrase); do it before its nextUpdate.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def crl(obj: CliContext, out: Path | None, refresh: bool, as_json: bool) -> None:
    """The current CRL (signed by the issuing CA), as PEM on stdout or as JSON."""
    workspace = Workspace.open(obj.workspace_dir)
    if refresh:
        with workspace.ca(get_passphrase(purpose="the issuing CA key")) as authority:
            data = authority.regenerate_crl()
    else:
        data = workspace.crl_pem()
    parsed = load_crl(data)
    stale = parsed.next_update_utc is not None and parsed.next_update_utc <= utcnow()
    if stale:
        err_console.print(
            "warning: this CRL is past its nextUpdate: TLS peers may reject every client; "
            "run `espfleet ca crl --refresh`"
        )
    if out is not None:
        try:
            atomic_write(out, data)
        except OSError as error:
            raise InputError(
                f"cannot write the CRL to {out}: {error.strerror}; choose another --out"
            ) from None
    if not as_json:
        click.echo(data.decode("ascii"), nl=False)
        return
    echo_json(
        {
            "path": str(workspace.pki_dir / "crl.pem"),
            "out": str(out) if out else None,
            "number": crl_number(parsed),
            "issuer": parsed.issuer.rfc4514_string(),
            "this_update": parsed.last_update_utc.isoformat(),
            "next_update": parsed.next_update_utc.isoformat() if parsed.next_update_utc else None,
            "stale": stale,
            "revoked": [
                {"serial": f"{entry.serial_number:x}",
                 "revoked_at": entry.revocation_date_utc.isoformat()}
                for entry in parsed
            ],
            "pem": data.decode("ascii"),
        }
    )


@ca.command(name="reseal")
@click.option(
    "--unsafe-accept-all-files", is_flag=True,
    help="Re-sign every workspace file as it is now (only to recover from a damaged "
    "manifest, when you trust every file).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def reseal(obj: CliContext, unsafe_accept_all_files: bool, as_json: bool) -> None:
    """Accept a deliberate edit of fleet.toml: validate it and re-sign the manifest.

    If [hosts] changed, the broker and OTA server certificates are re-issued (new keys)
    for the new names: redeploy those servers afterwards."""
    changed = Workspace.reseal(
        obj.workspace_dir,
        get_passphrase(purpose="the issuing CA key"),
        unsafe_accept_all_files=unsafe_accept_all_files,
    )
    if as_json:
        echo_json({"workspace": str(obj.workspace_dir.absolute()), "changed": changed})
    else:
        console.print(f"Re-signed the workspace manifest; changed: {', '.join(changed) or 'none'}")
