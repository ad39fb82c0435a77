"""Certificate revocation lists, signed by the issuing CA.

Pure: the caller passes the revoked entries, the time and the CRL number. Reasons are
RFC 5280 reason names in snake case (``key_compromise``, ``superseded``, ...), the names
of :class:`cryptography.x509.ReasonFlags`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from espfleet.errors import InputError, PkiError
from espfleet.pki.keys import PrivateKey

__all__ = [
    "REVOCATION_REASONS",
    "RevokedEntry",
    "build_crl",
    "crl_number",
    "load_crl",
    "revoked_serials",
    "verify_crl",
]

#: Reasons a user may give (``remove_from_crl`` is for delta CRLs, which we do not make).
REVOCATION_REASONS: tuple[str, ...] = tuple(
    flag.name for flag in x509.ReasonFlags if flag is not x509.ReasonFlags.remove_from_crl
)


@dataclass(frozen=True)
class RevokedEntry:
    serial: int
    revoked_at: dt.datetime
    reason: str = "unspecified"

    def __post_init__(self) -> None:
        if self.reason not in REVOCATION_REASONS:
            raise InputError(
                f"unknown revocation reason {self.reason!r}: use one of "
                f"{', '.join(REVOCATION_REASONS)}"
            )
        if self.revoked_at.tzinfo is None:
            raise InputError("revoked_at must be timezone-aware (UTC)")
        if self.serial <= 0:
            raise InputError(f"certificate serial must be positive, got {self.serial}")


def build_crl(
    *,
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
    entries: Sequence[RevokedEntry],
    now: dt.datetime,
    next_update_days: int,
    number: int,
) -> bytes:
    """A PEM CRL with thisUpdate = ``now`` and nextUpdate ``next_update_days`` later."""
    if next_update_days <= 0:
        raise InputError(f"the CRL must be valid for at least one day, got {next_update_days}")
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=next_update_days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    for entry in sorted(entries, key=lambda e: e.serial):
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at)
        )
        if entry.reason != "unspecified":
            revoked = revoked.add_extension(
                x509.CRLReason(x509.ReasonFlags[entry.reason]), critical=False
            )
        builder = builder.add_revoked_certificate(revoked.build())
    crl = builder.sign(issuer_key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


#: A CRL is re-signed only from a valid one (it never drops a serial): no command can
#: rebuild it, but the copy in version control or a backup can be brought back.
_RESTORE = (
    "restore pki/crl.pem from version control or a backup, then run `espfleet ca crl "
    "--refresh` to add the registry's later revocations"
)


def load_crl(data: bytes, *, name: str = "CRL") -> x509.CertificateRevocationList:
    try:
        return x509.load_pem_x509_crl(data)
    except ValueError:
        raise PkiError(f"{name} is not a PEM CRL: {_RESTORE}") from None


def verify_crl(crl: x509.CertificateRevocationList, issuer_cert: x509.Certificate) -> None:
    """Raise :class:`PkiError` unless ``issuer_cert`` signed ``crl``."""
    public_key = issuer_cert.public_key()
    if crl.issuer != issuer_cert.subject or not crl.is_signature_valid(public_key):  # type: ignore[arg-type]
        raise PkiError(
            f"the CRL is not signed by the issuing CA: it was replaced or tampered with; "
            f"{_RESTORE}"
        )


def crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def revoked_serials(crl: x509.CertificateRevocationList) -> frozenset[int]:
    return frozenset(entry.serial_number for entry in crl)
