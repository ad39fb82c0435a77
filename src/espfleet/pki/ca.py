"""The fleet CA: a root (offline in spirit: used only to sign the issuing CA) and the
issuing CA that signs every device and server certificate and the CRL.

:class:`CertificateAuthority` is pure and cheap to call: the issuing key is loaded once
when it is built, and issuing a certificate touches no file and no database (the
provisioning line issues many per second in parallel processes; recording them in the
registry is the caller's separate step).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from espfleet.device_id import parse_device_id
from espfleet.errors import InputError, PkiError
from espfleet.pki.crl import RevokedEntry, build_crl
from espfleet.pki.csr import check_csr
from espfleet.pki.keys import (
    PrivateKey,
    encrypt_private_key,
    generate_ec_key,
    plain_private_key_pem,
    public_key_pem,
)
from espfleet.pki.profiles import (
    PublicKey,
    device_certificate,
    issuing_ca_certificate,
    root_ca_certificate,
    server_certificate,
)

__all__ = [
    "CaHierarchy",
    "CertificateAuthority",
    "IssuedCert",
    "cert_pem",
    "fingerprint_sha256",
    "format_serial",
    "new_hierarchy",
    "parse_serial",
    "utcnow",
]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def format_serial(serial: int) -> str:
    """Canonical text form of a serial: lowercase hex, no separators, no leading zeros."""
    return f"{serial:x}"


def parse_serial(text: str) -> int:
    """Accept ``1a2b``, ``0x1A2B`` or openssl's ``1A:2B``."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise InputError(f"{text!r} is not a certificate serial (hex digits)") from None
    if value <= 0:
        raise InputError(f"{text!r} is not a certificate serial (must be positive)")
    return value


def fingerprint_sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class IssuedCert:
    """A freshly issued certificate. ``key_pem`` is set when the key was generated here:
    it is UNENCRYPTED (it goes into a device's encrypted NVS); never store it in the
    workspace without :func:`espfleet.pki.keys.encrypt_private_key`."""

    subject: str
    kind: str
    cert_pem: bytes
    key_pem: bytes | None
    serial: int
    fingerprint_sha256: str
    not_before: dt.datetime
    not_after: dt.datetime

    @property
    def serial_hex(self) -> str:
        return format_serial(self.serial)

    def encrypted_key_pem(self, passphrase: bytes) -> bytes:
        """The generated key as encrypted PEM (for storing inside the workspace)."""
        if self.key_pem is None:
            raise PkiError(f"the certificate of {self.subject} was issued for an outside key")
        key = serialization.load_pem_private_key(self.key_pem, None)
        assert isinstance(key, PrivateKey)
        return encrypt_private_key(key, passphrase)

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @classmethod
    def from_certificate(
        cls, cert: x509.Certificate, *, subject: str, kind: str, key: PrivateKey | None
    ) -> IssuedCert:
        return cls(
            subject=subject,
            kind=kind,
            cert_pem=cert_pem(cert),
            key_pem=plain_private_key_pem(key) if key is not None else None,
            serial=cert.serial_number,
            fingerprint_sha256=fingerprint_sha256(cert),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )


@dataclass(frozen=True)
class CaHierarchy:
    """Keys and certificates of a new fleet CA (the caller encrypts and stores them)."""

    root_key: PrivateKey
    root_cert: x509.Certificate
    issuing_key: PrivateKey
    issuing_cert: x509.Certificate


def new_hierarchy(*, org: str, root_days: int, issuing_days: int, now: dt.datetime) -> CaHierarchy:
    root_key = generate_ec_key()
    root_cert = root_ca_certificate(root_key, org=org, days=root_days, now=now)
    issuing_key = generate_ec_key()
    issuing_cert = issuing_ca_certificate(
        issuing_key, org=org, days=issuing_days, now=now, root_cert=root_cert, root_key=root_key
    )
    return CaHierarchy(root_key, root_cert, issuing_key, issuing_cert)


@dataclass(frozen=True)
class CertificateAuthority:
    """The issuing CA with its key loaded, plus the root it chains to."""

    org: str
    root_cert: x509.Certificate
    issuing_cert: x509.Certificate
    issuing_key: PrivateKey
    device_days: int
    server_days: int
    crl_days: int

    def __post_init__(self) -> None:
        if public_key_pem(self.issuing_key) != public_key_pem(self.issuing_cert.public_key()):  # type: ignore[arg-type]
            raise PkiError(
                "the issuing CA key does not match the issuing CA certificate: one of them "
                "was replaced; restore pki/ from a backup"
            )
        if self.issuing_cert.issuer != self.root_cert.subject:
            raise PkiError("the issuing CA certificate was not issued by the fleet root CA")

    def chain_pem(self) -> bytes:
        """Issuing CA then root: what a TLS server sends and a device stores as its chain."""
        return cert_pem(self.issuing_cert) + cert_pem(self.root_cert)

    def issue_device_cert(
        self,
        device_id: str,
        *,
        public_key: PublicKey | None = None,
        csr: x509.CertificateSigningRequest | None = None,
        now: dt.datetime | None = None,
    ) -> IssuedCert:
        """A device certificate: from ``csr`` (checked), for ``public_key``, or with a new
        P-256 key generated here (the factory path; then ``key_pem`` is set)."""
        parse_device_id(device_id)
        if csr is not None and public_key is not None:
            raise InputError("give either a CSR or a public key, not both")
        key: PrivateKey | None = None
        if csr is not None:
            public_key = check_csr(csr, device_id)
        elif public_key is None:
            key = generate_ec_key()
            public_key = key.public_key()
        cert = device_certificate(
            public_key,
            org=self.org,
            device_id=device_id,
            days=self.device_days,
            now=now or utcnow(),
            issuer_cert=self.issuing_cert,
            issuer_key=self.issuing_key,
        )
        return IssuedCert.from_certificate(cert, subject=device_id, kind="device", key=key)

    def issue_server_cert(
        self, common_name: str, hosts: Sequence[str], *, now: dt.datetime | None = None
    ) -> IssuedCert:
        """A TLS server certificate (broker, OTA server) with a new P-256 key."""
        key = generate_ec_key()
        cert = server_certificate(
            key.public_key(),
            org=self.org,
            common_name=common_name,
            hosts=hosts,
            days=self.server_days,
            now=now or utcnow(),
            issuer_cert=self.issuing_cert,
            issuer_key=self.issuing_key,
        )
        return IssuedCert.from_certificate(cert, subject=common_name, kind="server", key=key)

    def sign_crl(
        self, entries: Sequence[RevokedEntry], *, number: int, now: dt.datetime | None = None
    ) -> bytes:
        return build_crl(
            issuer_cert=self.issuing_cert,
            issuer_key=self.issuing_key,
            entries=entries,
            now=now or utcnow(),
            next_update_days=self.crl_days,
            number=number,
        )
