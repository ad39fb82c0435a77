"""Chain verification with cryptography's RFC 5280 verifier (never by hand).

The fleet's trust store is its root CA; the issuing CA is the one intermediate. Client
verification is what the broker does with a device certificate (EKU clientAuth); server
verification is what a device does with the broker's or the OTA server's certificate
(EKU serverAuth, the host must be one of the SANs). Revocation is checked against the
issuing CA's CRL, whose signature is verified first.
"""

from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from espfleet.errors import PkiError
from espfleet.pki.crl import revoked_serials, verify_crl

__all__ = ["check_not_revoked", "verify_client_chain", "verify_server_chain"]


def _builder(root: x509.Certificate, at: dt.datetime) -> PolicyBuilder:
    return PolicyBuilder().store(Store([root])).time(at).max_chain_depth(2)


def verify_client_chain(
    leaf: x509.Certificate,
    issuing: x509.Certificate,
    root: x509.Certificate,
    *,
    at: dt.datetime,
) -> list[x509.Certificate]:
    """The verified chain (leaf, issuing, root) of a device certificate, or :class:`PkiError`."""
    verifier = _builder(root, at).build_client_verifier()
    try:
        return list(verifier.verify(leaf, [issuing]).chain)
    except x509.verification.VerificationError as error:
        raise PkiError(
            f"certificate {leaf.serial_number:x} does not verify as a fleet client "
            f"certificate at {at:%Y-%m-%d %H:%M} UTC: {error}"
        ) from None


def verify_server_chain(
    leaf: x509.Certificate,
    issuing: x509.Certificate,
    root: x509.Certificate,
    *,
    host: str,
    at: dt.datetime,
) -> list[x509.Certificate]:
    """The verified chain of a server certificate for ``host`` (DNS name or IP)."""
    try:
        subject: x509.DNSName | x509.IPAddress = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host)
    verifier = _builder(root, at).build_server_verifier(subject)
    try:
        return list(verifier.verify(leaf, [issuing]))
    except x509.verification.VerificationError as error:
        raise PkiError(
            f"certificate {leaf.serial_number:x} does not verify as the fleet server "
            f"certificate for {host} at {at:%Y-%m-%d %H:%M} UTC: {error}"
        ) from None


def check_not_revoked(
    leaf: x509.Certificate, crl: x509.CertificateRevocationList, issuing: x509.Certificate
) -> None:
    """Raise :class:`PkiError` if ``leaf`` is on the issuing CA's (verified) CRL."""
    verify_crl(crl, issuing)
    if leaf.serial_number in revoked_serials(crl):
        raise PkiError(
            f"certificate {leaf.serial_number:x} is revoked: issue a new one with "
            "`espfleet cert issue --renew`"
        )
