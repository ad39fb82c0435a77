"""Certificate signing requests from devices (renewal) or the factory line.

A CSR is accepted only if its signature verifies (the requester holds the key), its
subject CN is exactly the device id the certificate is for, and its key is one the fleet
issues for (ECDSA P-256, or RSA of at least 2048 bits).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from espfleet.errors import InputError
from espfleet.pki.profiles import PublicKey

__all__ = ["check_csr", "load_csr"]


def load_csr(data: bytes, *, name: str = "the CSR") -> x509.CertificateSigningRequest:
    """Parse a PEM or DER CSR."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError:
        raise InputError(
            f"{name} is not a certificate signing request (PEM or DER): "
            "make one with `openssl req -new -key device.key -subj /CN=<device-id>`"
        ) from None


def _common_name(csr: x509.CertificateSigningRequest, device_id: str) -> str:
    """The CSR's one CN; none or several is refused with what to put in ``-subj``."""
    names = [
        value if isinstance(value, str) else value.decode("utf-8", "replace")
        for value in (a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    ]
    if len(names) != 1:
        found = f"{len(names)} common names ({', '.join(map(repr, names))})" if names else (
            "no common name")
        raise InputError(
            f"the CSR for {device_id} has {found}: a device certificate has exactly one, "
            f"its id; make the CSR with -subj /CN={device_id}"
        )
    return names[0]


def check_csr(csr: x509.CertificateSigningRequest, device_id: str) -> PublicKey:
    """The CSR's public key, if the CSR may be turned into ``device_id``'s certificate."""
    if not csr.is_signature_valid:
        raise InputError(
            f"the CSR for {device_id} has a broken signature: it was altered after it was "
            "signed, or not signed with the key it carries; generate a new CSR"
        )
    common_name = _common_name(csr, device_id)
    if common_name != device_id:
        raise InputError(
            f"the CSR's common name is {common_name!r}, not {device_id!r}: a device may only "
            "request a certificate for its own id"
        )
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise InputError(
                f"the CSR for {device_id} uses curve {key.curve.name}: use ECDSA P-256 "
                "(secp256r1), which every ESP32 TLS stack supports"
            )
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise InputError(
                f"the CSR for {device_id} has a {key.key_size}-bit RSA key: use at least 2048"
            )
        return key
    raise InputError(
        f"the CSR for {device_id} has a {type(key).__name__}: use ECDSA P-256 or RSA >= 2048"
    )
