"""The fleet workspace: the directory ``espfleet init`` creates and every command uses.

Layout (relative to the workspace root)::

    fleet.toml                       settings (FleetConfig), signed via the manifest
    .gitignore                       keeps secrets out of version control
    pki/root-ca.pem, root-ca.key.pem         fleet root CA (ECDSA P-256, pathLen 1)
    pki/issuing-ca.pem, issuing-ca.key.pem   issuing CA (pathLen 0): devices, servers, CRL
    pki/ca-chain.pem                 issuing + root, what TLS peers are given
    pki/crl.pem                      CRL signed by the issuing CA (re-signed on revocation)
    pki/broker.pem, broker.key.pem   MQTT broker server certificate (SANs = [hosts] broker)
    pki/ota.pem, ota.key.pem         OTA HTTPS server certificate (SANs = [hosts] ota)
    pki/workspace-manifest.json      SHA-256 of the files above, signed by the issuing CA
    pki/devices/<device-id>/         certificates issued by `espfleet cert issue`
    keys/secure_boot_signing_key.pem       Secure Boot V2 signing key (RSA-3072)
    keys/secure_boot_signing_key.pub.pem   its public key (espsecure verify-signature)
    vault/  releases/  bundles/  vdevs/    used by provisioning, releases, virtual devices
    registry.db                      SQLite registry (default; any SQLAlchemy URL)

Every ``*.key.pem`` is PKCS#8 encrypted with the workspace passphrase.

Stable API (used by provisioning, audit, backend, demo)::

    ws = Workspace.create(path, org="Acme", chip="esp32", broker_hosts=("mqtt.acme.io",),
                          passphrase=b"...")          # WorkspaceError if path is taken
    ws = Workspace.open(path)                          # verifies files, chain, manifest
    ws.config: FleetConfig; ws.root: Path
    ws.pki_dir, .keys_dir, .vault_dir, .bundles_dir, .releases_dir, .vdevs_dir: Path
    ws.registry_url: str                               # relative sqlite resolved to root
    ws.registry() -> Registry                          # caller closes it
    ws.ca(passphrase) -> IssuingAuthority              # issue_device_cert, record, revoke,
                                                       # crl_pem, chain_pem, close
    ws.signing_key(passphrase) -> RSAPrivateKey        # Secure Boot V2 signing key
    ws.signing_public_key_pem() -> bytes; ws.secure_boot_digest() -> bytes (32)
    ws.root_cert, ws.issuing_cert, ws.chain_pem()      # no passphrase needed
    Workspace.reseal(path, passphrase)                 # accept a deliberate fleet.toml edit
                                                       # (re-issues server certs for new hosts)
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy.engine import make_url

from espfleet._io import atomic_write
from espfleet.backend.registry import Registry
from espfleet.errors import InputError, PkiError, WorkspaceError
from espfleet.pki.ca import (
    CertificateAuthority,
    cert_pem,
    fingerprint_sha256,
    format_serial,
    utcnow,
)
from espfleet.pki.crl import crl_number, load_crl, revoked_serials, verify_crl
from espfleet.pki.keys import PrivateKey, public_key_pem
from espfleet.pki.store import read_bytes, read_certificate, read_private_key
from espfleet.workspace._create import (
    certificate_hosts,
    create_at,
    issue_server_certs,
    server_hosts,
)
from espfleet.workspace.authority import IssuingAuthority
from espfleet.workspace.config import DEFAULT_HOSTS, FleetConfig, parse_fleet_toml
from espfleet.workspace.layout import (
    CHAIN,
    CRL,
    FLEET_TOML,
    ISSUING_CERT,
    ISSUING_KEY,
    ROOT_CERT,
    SERVERS,
    SIGNED_FILES,
    SIGNING_KEY,
    SIGNING_PUB,
    authority_fields,
    resolve_registry_url,
    sqlite_file,
)
from espfleet.workspace.manifest import MANIFEST, build_manifest, changed_files, verify_manifest

__all__ = ["FleetConfig", "IssuingAuthority", "Workspace", "secure_boot_digest"]

def secure_boot_digest(public_pem: bytes) -> bytes:
    """SHA-256 of the Secure Boot V2 public key block: what goes into the eFuse digest."""
    import espsecure

    digest = espsecure._digest_sbv2_public_key(io.BytesIO(public_pem))
    assert isinstance(digest, bytes) and len(digest) == 32
    return digest


class Workspace:
    """An opened, verified fleet workspace (see the module docstring)."""

    def __init__(self, root: Path, config: FleetConfig) -> None:
        self.root = root
        self.config = config

    # -- paths ---------------------------------------------------------------------
    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def vault_dir(self) -> Path:
        return self.root / "vault"

    @property
    def bundles_dir(self) -> Path:
        return self.root / "bundles"

    @property
    def releases_dir(self) -> Path:
        return self.root / "releases"

    @property
    def vdevs_dir(self) -> Path:
        return self.root / "vdevs"

    @property
    def devices_pki_dir(self) -> Path:
        return self.root / "pki" / "devices"

    @property
    def registry_url(self) -> str:
        return resolve_registry_url(self.config.registry_url, self.root)

    # -- creation --------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: Path,
        *,
        org: str,
        passphrase: bytes,
        chip: str = "esp32",
        broker_hosts: Sequence[str] = DEFAULT_HOSTS,
        ota_hosts: Sequence[str] | None = None,
        key_policy: str = "escrow",
    ) -> Workspace:
        """Create a workspace at ``path`` (which must not exist or be an empty directory).

        Everything is built in a temporary directory first: a failure or a kill leaves
        no workspace (at worst a hidden ``.espfleet-init-*`` or ``.<name>.partial-*``
        directory)."""
        config = FleetConfig(
            org=org,
            chip=chip,
            broker_hosts=tuple(broker_hosts),
            ota_hosts=tuple(ota_hosts if ota_hosts is not None else broker_hosts),
            key_policy=key_policy,
        )
        if not passphrase:
            raise InputError("a passphrase is required to encrypt the workspace keys")
        target = Path(path).absolute()
        create_at(target, config, passphrase)
        return cls.open(target)

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path) -> Workspace:
        """Open and verify a workspace: files present and parseable, the issuing CA
        chaining to the root, the manifest signature and digests, the CRL signature."""
        root = Path(path).absolute()
        if not (root / FLEET_TOML).is_file():
            raise WorkspaceError(
                f"{root} is not an espfleet workspace (no fleet.toml): create one with "
                "`espfleet init DIR`, or point --workspace / ESPFLEET_WORKSPACE at it"
            )
        root_cert = read_certificate(root / ROOT_CERT, name=ROOT_CERT)
        issuing = read_certificate(root / ISSUING_CERT, name=ISSUING_CERT)
        _check_issued_by(issuing, root_cert)
        verify_manifest(root, SIGNED_FILES, issuing)
        config = parse_fleet_toml(read_bytes(root / FLEET_TOML, name=FLEET_TOML))
        crl = load_crl(read_bytes(root / CRL, name=CRL), name=CRL)
        try:
            verify_crl(crl, issuing)
        except PkiError as error:
            raise WorkspaceError(f"{CRL}: {error}") from None
        workspace = cls(root, config)
        database = sqlite_file(workspace.registry_url)
        if database is not None and not database.is_file():
            raise WorkspaceError(
                f"the registry {database} is missing: restore it from a backup (a new, "
                "empty registry would forget every device and revocation)"
            )
        workspace.__dict__["root_cert"] = root_cert
        workspace.__dict__["issuing_cert"] = issuing
        return workspace

    @cached_property
    def root_cert(self) -> x509.Certificate:
        return read_certificate(self.root / ROOT_CERT, name=ROOT_CERT)

    @cached_property
    def issuing_cert(self) -> x509.Certificate:
        return read_certificate(self.root / ISSUING_CERT, name=ISSUING_CERT)

    def chain_pem(self) -> bytes:
        return cert_pem(self.issuing_cert) + cert_pem(self.root_cert)

    def server_cert(self, name: str) -> x509.Certificate:
        """``broker`` or ``ota``."""
        cert_name = SERVERS[name][0]
        return read_certificate(self.root / cert_name, name=cert_name)

    def server_key(self, name: str, passphrase: bytes) -> PrivateKey:
        key_name = SERVERS[name][1]
        return read_private_key(self.root / key_name, passphrase, name=key_name)

    # -- keys and services ---------------------------------------------------------------
    def ca(self, passphrase: bytes) -> IssuingAuthority:
        """The issuing CA with its key decrypted (PassphraseError on a wrong passphrase)."""
        key = read_private_key(self.root / ISSUING_KEY, passphrase, name=ISSUING_KEY)
        try:
            return IssuingAuthority(
                **authority_fields(self.config),
                root_cert=self.root_cert,
                issuing_cert=self.issuing_cert,
                issuing_key=key,
                crl_path=self.root / CRL,
                registry_url=self.registry_url,
                chip=self.config.chip,
            )
        except PkiError as error:
            raise WorkspaceError(str(error)) from None

    def signing_key(self, passphrase: bytes) -> rsa.RSAPrivateKey:
        key = read_private_key(self.root / SIGNING_KEY, passphrase, name=SIGNING_KEY)
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != 3072:
            raise WorkspaceError(f"{SIGNING_KEY} is not an RSA-3072 key: restore it")
        if public_key_pem(key) != self.signing_public_key_pem():
            raise WorkspaceError(f"{SIGNING_KEY} does not match {SIGNING_PUB}: restore them")
        return key

    def signing_public_key_pem(self) -> bytes:
        return read_bytes(self.root / SIGNING_PUB, name=SIGNING_PUB)

    def secure_boot_digest(self) -> bytes:
        return secure_boot_digest(self.signing_public_key_pem())

    def registry(self) -> Registry:
        """The registry, migrated to the current schema. The caller closes it."""
        return Registry.open(self.registry_url)

    def describe(self) -> dict[str, Any]:
        """Paths, fingerprints and validity of the CA material (``ca show``, ``init``)."""

        def cert_info(name: str, cert: x509.Certificate) -> dict[str, Any]:
            return {
                "path": str(self.root / name),
                "subject": cert.subject.rfc4514_string(),
                "serial": format_serial(cert.serial_number),
                "fingerprint_sha256": fingerprint_sha256(cert),
                "not_before": cert.not_valid_before_utc.isoformat(),
                "not_after": cert.not_valid_after_utc.isoformat(),
            }

        crl = load_crl(read_bytes(self.root / CRL, name=CRL), name=CRL)
        servers = {}
        for name, (cert_name, key_name) in SERVERS.items():
            info = cert_info(cert_name, self.server_cert(name))
            info["key_path"] = str(self.root / key_name)
            info["hosts"] = list(server_hosts(self.config, name))
            servers[name] = info
        return {
            "workspace": str(self.root),
            "org": self.config.org,
            "chip": self.config.chip,
            "key_policy": self.config.key_policy,
            "registry_url": make_url(self.registry_url).render_as_string(hide_password=True),
            "root_ca": cert_info(ROOT_CERT, self.root_cert),
            "issuing_ca": cert_info(ISSUING_CERT, self.issuing_cert),
            "chain": str(self.root / CHAIN),
            "crl": {
                "path": str(self.root / CRL),
                "fingerprint_sha256": hashlib.sha256(
                    crl.public_bytes(serialization.Encoding.DER)
                ).hexdigest(),
                "number": crl_number(crl),
                "this_update": crl.last_update_utc.isoformat(),
                "next_update": (
                    crl.next_update_utc.isoformat() if crl.next_update_utc else None
                ),
                "revoked": len(crl),
            },
            "servers": servers,
            "secure_boot": {
                "scheme": self.config.secure_boot_scheme,
                "key_path": str(self.root / SIGNING_KEY),
                "public_key_path": str(self.root / SIGNING_PUB),
                "public_key_digest_sha256": self.secure_boot_digest().hex(),
            },
        }

    def crl_pem(self) -> bytes:
        """The CRL to publish, checked against the registry: it must list every unexpired
        certificate the registry has revoked. A CRL is not in the manifest (it changes on
        every revocation), so an older, validly signed copy put back would otherwise
        silently un-revoke certificates."""
        data = read_bytes(self.root / CRL, name=CRL)
        listed = revoked_serials(load_crl(data, name=CRL))
        with self.registry() as registry:
            revoked = registry.certificates(status="revoked")
        now = utcnow()
        missing = [
            r.serial for r in revoked if r.not_after > now and int(r.serial, 16) not in listed
        ]
        if missing:
            raise WorkspaceError(
                f"{CRL} does not list {len(missing)} certificate(s) the registry has revoked "
                f"(e.g. serial {missing[0]}): an older CRL was put back; re-sign it from the "
                "registry with `espfleet ca crl --refresh`"
            )
        return data

    @classmethod
    def reseal(
        cls, path: Path, passphrase: bytes, *, unsafe_accept_all_files: bool = False
    ) -> list[str]:
        """Accept a deliberate edit of fleet.toml: validate it, check the CA chain and
        that the passphrase opens the issuing key, then re-sign the manifest. Any other
        signed file that changed is refused (a swapped ca-chain.pem or server certificate
        must not ride along with a settings edit), unless ``unsafe_accept_all_files``,
        the way back from a damaged manifest. Returns the files whose digests changed."""
        root = Path(path).absolute()
        config = parse_fleet_toml(read_bytes(root / FLEET_TOML, name=FLEET_TOML))
        root_cert = read_certificate(root / ROOT_CERT, name=ROOT_CERT)
        issuing = read_certificate(root / ISSUING_CERT, name=ISSUING_CERT)
        _check_issued_by(issuing, root_cert)
        cls(root, config)._check_chip_of_devices()
        key = read_private_key(root / ISSUING_KEY, passphrase, name=ISSUING_KEY)
        try:  # refuses a key that is not the issuing certificate's (a swapped key file)
            authority = CertificateAuthority(
                **authority_fields(config),
                root_cert=root_cert,
                issuing_cert=issuing,
                issuing_key=key,
            )
        except PkiError as error:
            raise WorkspaceError(str(error)) from None
        try:
            changed = changed_files(root, SIGNED_FILES, issuing)
        except WorkspaceError:
            if not unsafe_accept_all_files:
                raise
            changed = list(SIGNED_FILES)
        if not unsafe_accept_all_files:
            others = [name for name in changed if name != FLEET_TOML]
            if others:
                raise WorkspaceError(
                    f"{', '.join(others)} changed since the workspace was signed: reseal "
                    "accepts an edit of fleet.toml only; restore those files from a backup"
                )
        # [hosts] edited: the broker/OTA certificates must name the new hosts, or every
        # device would refuse the server (new key too: redeploy the server afterwards)
        stale = [
            name
            for name, (cert_name, _key) in SERVERS.items()
            if certificate_hosts(read_certificate(root / cert_name, name=cert_name))
            != set(server_hosts(config, name))
        ]
        reissued = issue_server_certs(root, config, authority, passphrase, stale)
        atomic_write(root / MANIFEST, build_manifest(root, SIGNED_FILES, key))
        cls.open(root)
        return sorted(set(changed) | set(reissued))


    def _check_chip_of_devices(self) -> None:
        """A fleet's chip cannot change once the registry holds devices of it: their ids,
        bundles and eFuse plans are that chip's (an edit of [fleet] chip is a mistake)."""
        database = sqlite_file(self.registry_url)
        if database is not None and not database.is_file():
            return  # nothing registered here (and opening would create an empty registry)
        with self.registry() as registry:
            others = sorted({r.chip for r in registry.list_devices()} - {self.config.chip})
        if others:
            raise WorkspaceError(
                f"fleet.toml: [fleet] chip is {self.config.chip!r}, but the registry holds "
                f"{' and '.join(others)} devices: a fleet's chip cannot change once it has "
                f"devices; restore chip = {others[0]!r}, or create a workspace for the "
                f"{self.config.chip} product with `espfleet init`"
            )


def _check_issued_by(issuing: x509.Certificate, root_cert: x509.Certificate) -> None:
    try:
        issuing.verify_directly_issued_by(root_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise WorkspaceError(
            f"{ISSUING_CERT} was not issued by {ROOT_CERT}: one of them was replaced; "
            "restore pki/ from a backup"
        ) from None
