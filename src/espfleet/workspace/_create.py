"""Building a new workspace: everything in a temporary directory, then renamed into place."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509

from espfleet._io import atomic_directory, atomic_write, atomic_write_text
from espfleet.backend.registry import Registry
from espfleet.errors import WorkspaceError, WorkspaceExistsError
from espfleet.pki.ca import CertificateAuthority, new_hierarchy, utcnow
from espfleet.pki.keys import generate_rsa3072_key, public_key_pem
from espfleet.pki.store import write_certificate, write_private_key
from espfleet.workspace.config import FleetConfig, render_fleet_toml
from espfleet.workspace.layout import (
    CHAIN,
    CRL,
    DIRS,
    FLEET_TOML,
    GITIGNORE,
    ISSUING_CERT,
    ISSUING_KEY,
    PRIVATE_DIRS,
    ROOT_CERT,
    ROOT_KEY,
    SERVERS,
    SIGNED_FILES,
    SIGNING_KEY,
    SIGNING_PUB,
    authority_fields,
    resolve_registry_url,
)
from espfleet.workspace.manifest import MANIFEST, build_manifest

__all__ = ["certificate_hosts", "create_at", "issue_server_certs", "server_hosts"]


def create_at(target: Path, config: FleetConfig, passphrase: bytes) -> None:
    """Create the workspace at ``target`` (absolute; must not exist or be an empty dir).

    A failure or a kill leaves no workspace: at worst a hidden ``.espfleet-init-*``
    (or, for a new directory, ``.<name>.partial-*``) directory. Into an existing empty
    directory the entries are moved one by one, fleet.toml (what marks a workspace) last."""
    refuse_existing(target)
    try:
        _create(target, config, passphrase)
    except OSError as error:
        raise WorkspaceError(
            f"cannot create the workspace at {target}: {error.strerror or error} "
            f"({error.filename or target}): choose a writable directory"
        ) from None


def _create(target: Path, config: FleetConfig, passphrase: bytes) -> None:
    if target.exists():
        staging = Path(tempfile.mkdtemp(prefix=".espfleet-init-", dir=target))
        try:
            populate(staging, config, passphrase)
            names = sorted(os.listdir(staging), key=lambda n: n == FLEET_TOML)
            for name in names:  # fleet.toml last: it is what marks a workspace
                os.rename(staging / name, target / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    else:
        with atomic_directory(target) as staging:
            populate(staging, config, passphrase)


def refuse_existing(target: Path) -> None:
    if (target / FLEET_TOML).exists():
        raise WorkspaceExistsError(
            f"{target} is already an espfleet workspace: refusing to overwrite it; "
            "choose another directory"
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise WorkspaceExistsError(
            f"{target} exists and is not an empty directory: refusing to create a workspace "
            "there; choose a new or empty directory"
        )


def populate(root: Path, config: FleetConfig, passphrase: bytes) -> None:
    """Write a complete workspace into ``root`` (a fresh temporary directory)."""
    for name in DIRS:
        (root / name).mkdir(parents=True, exist_ok=True)
        if name in PRIVATE_DIRS:
            (root / name).chmod(0o700)
    now = utcnow()
    life = config.lifetimes
    hierarchy = new_hierarchy(
        org=config.org, root_days=life.root_ca_days, issuing_days=life.issuing_ca_days, now=now
    )
    write_certificate(root / ROOT_CERT, hierarchy.root_cert)
    write_private_key(root / ROOT_KEY, hierarchy.root_key, passphrase)
    write_certificate(root / ISSUING_CERT, hierarchy.issuing_cert)
    write_private_key(root / ISSUING_KEY, hierarchy.issuing_key, passphrase)
    write_certificate(root / CHAIN, hierarchy.issuing_cert, hierarchy.root_cert)
    authority = CertificateAuthority(
        **authority_fields(config),
        root_cert=hierarchy.root_cert,
        issuing_cert=hierarchy.issuing_cert,
        issuing_key=hierarchy.issuing_key,
    )
    issue_server_certs(root, config, authority, passphrase, SERVERS, now=now)
    atomic_write(root / CRL, authority.sign_crl([], number=1, now=now))
    signing = generate_rsa3072_key()
    write_private_key(root / SIGNING_KEY, signing, passphrase)
    atomic_write(root / SIGNING_PUB, public_key_pem(signing))
    atomic_write_text(root / FLEET_TOML, render_fleet_toml(config))
    atomic_write_text(root / ".gitignore", GITIGNORE)
    atomic_write(root / MANIFEST, build_manifest(root, SIGNED_FILES, hierarchy.issuing_key))
    Registry.open(resolve_registry_url(config.registry_url, root)).close()


def server_hosts(config: FleetConfig, name: str) -> tuple[str, ...]:
    """The hosts fleet.toml gives the ``broker`` or ``ota`` server."""
    hosts: tuple[str, ...] = getattr(config, f"{name}_hosts")
    return hosts


def certificate_hosts(cert: x509.Certificate) -> set[str]:
    """The DNS names and IP addresses a server certificate is valid for."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    return ips | set(sans.get_values_for_type(x509.DNSName))


def issue_server_certs(
    root: Path,
    config: FleetConfig,
    authority: CertificateAuthority,
    passphrase: bytes,
    names: Iterable[str],
    *,
    now: dt.datetime | None = None,
) -> list[str]:
    """(Re-)issue the named server certificates for their fleet.toml hosts, each with a
    new key (encrypted); returns the files written."""
    written: list[str] = []
    for name in names:
        cert_name, key_name = SERVERS[name]
        issued = authority.issue_server_cert(
            f"{config.org} {name}", server_hosts(config, name), now=now
        )
        atomic_write(root / key_name, issued.encrypted_key_pem(passphrase), mode=0o600)
        atomic_write(root / cert_name, issued.cert_pem)
        written += [cert_name, key_name]
    return written
