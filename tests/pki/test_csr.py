from __future__ import annotations

import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from espfleet.errors import InputError
from espfleet.pki.ca import CertificateAuthority
from espfleet.pki.csr import check_csr, load_csr

DEVICE = "esp32-24a1600a1b2c"


def make_csr(
    common_name: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None
) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def break_signature(pem: bytes) -> bytes:
    """Flip a bit in the last byte of the DER (inside the signature's s integer)."""
    der = bytearray(load_csr(pem).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    return bytes(der)


def test_csr_is_signed_into_a_device_certificate(authority: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = authority.issue_device_cert(DEVICE, csr=load_csr(make_csr(DEVICE, key)))
    assert issued.key_pem is None
    assert issued.certificate.public_key() == key.public_key()


def test_der_csr_is_accepted() -> None:
    der = load_csr(make_csr(DEVICE)).public_bytes(serialization.Encoding.DER)
    assert check_csr(load_csr(der), DEVICE) is not None


def test_csr_for_another_device_is_refused(authority: CertificateAuthority) -> None:
    csr = load_csr(make_csr("esp32-000000000001"))
    with pytest.raises(InputError, match="only request a certificate for its own id"):
        authority.issue_device_cert(DEVICE, csr=csr)


@pytest.mark.parametrize(
    ("names", "message"),
    [([], "has no common name"),
     ([DEVICE, "esp32-000000000001"], "has 2 common names ('esp32-24a1600a1b2c', "
      "'esp32-000000000001')")],
)
def test_csr_without_exactly_one_common_name_says_so(names: list[str], message: str) -> None:
    """Not "common name is None": a CSR with a second CN smuggled in, or none, is named."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, n) for n in names])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    with pytest.raises(InputError, match=re.escape(message) + ".*-subj /CN=esp32-24a1600a1b2c"):
        check_csr(csr, DEVICE)


def test_csr_with_broken_signature_is_refused() -> None:
    csr = load_csr(break_signature(make_csr(DEVICE)))
    with pytest.raises(InputError, match="broken signature"):
        check_csr(csr, DEVICE)


def test_csr_with_weak_rsa_key_is_refused() -> None:
    weak = rsa.generate_private_key(65537, 1024)
    with pytest.raises(InputError, match="1024-bit"):
        check_csr(load_csr(make_csr(DEVICE, weak)), DEVICE)


def test_csr_on_another_curve_is_refused() -> None:
    csr = load_csr(make_csr(DEVICE, ec.generate_private_key(ec.SECP384R1())))
    with pytest.raises(InputError, match="P-256"):
        check_csr(csr, DEVICE)


def test_garbage_is_not_a_csr() -> None:
    with pytest.raises(InputError, match="not a certificate signing request"):
        load_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n")


def test_csr_requesting_ca_rights_and_other_names_gets_a_plain_leaf(
    authority: CertificateAuthority,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEVICE)]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("broker.example.com")]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert = authority.issue_device_cert(DEVICE, csr=csr).certificate
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [DEVICE]
