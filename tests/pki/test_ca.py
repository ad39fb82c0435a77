"""CA profiles and chains, checked by openssl and by cryptography's RFC 5280 verifier."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from espfleet.errors import InputError, PkiError
from espfleet.pki.ca import (
    CaHierarchy,
    CertificateAuthority,
    IssuedCert,
    cert_pem,
    format_serial,
    parse_serial,
)
from espfleet.pki.keys import generate_ec_key
from espfleet.pki.verify import verify_client_chain, verify_server_chain

DEVICE = "esp32-24a1600a1b2c"


def openssl_verify(tmp_path: Path, hierarchy: CaHierarchy, leaf_pem: bytes, *extra: str) -> str:
    root, issuing, leaf = tmp_path / "root.pem", tmp_path / "issuing.pem", tmp_path / "leaf.pem"
    root.write_bytes(cert_pem(hierarchy.root_cert))
    issuing.write_bytes(cert_pem(hierarchy.issuing_cert))
    leaf.write_bytes(leaf_pem)
    result = subprocess.run(
        ["openssl", "verify", *extra, "-CAfile", str(root), "-untrusted", str(issuing), str(leaf)],
        capture_output=True,
        text=True,
    )
    return result.stdout + result.stderr if result.returncode else "OK"


def _ext(cert: x509.Certificate, cls: type) -> object:
    return cert.extensions.get_extension_for_class(cls).value


def test_root_and_issuing_profiles(hierarchy: CaHierarchy) -> None:
    root, issuing = hierarchy.root_cert, hierarchy.issuing_cert
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert _ext(root, x509.BasicConstraints) == x509.BasicConstraints(ca=True, path_length=1)
    assert _ext(issuing, x509.BasicConstraints) == x509.BasicConstraints(ca=True, path_length=0)
    assert issuing.issuer == root.subject
    assert root.not_valid_after_utc - root.not_valid_before_utc > dt.timedelta(days=7300)
    assert issuing.not_valid_after_utc <= root.not_valid_after_utc
    for cert in (root, issuing):
        usage = _ext(cert, x509.KeyUsage)
        assert usage.key_cert_sign and usage.crl_sign  # type: ignore[attr-defined]
    issuing.verify_directly_issued_by(root)


def test_device_certificate_profile(authority: CertificateAuthority, now: dt.datetime) -> None:
    issued = authority.issue_device_cert(DEVICE, now=now)
    cert = issued.certificate
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == DEVICE
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Acme"
    assert list(_ext(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # type: ignore[call-overload]
    assert _ext(cert, x509.BasicConstraints) == x509.BasicConstraints(ca=False, path_length=None)
    assert issued.not_after - now == dt.timedelta(days=730)
    assert issued.key_pem is not None and b"BEGIN PRIVATE KEY" in issued.key_pem
    assert issued.serial_hex == format_serial(cert.serial_number)
    assert parse_serial(issued.serial_hex.upper()) == issued.serial


def test_server_certificate_sans(authority: CertificateAuthority, now: dt.datetime) -> None:
    issued = authority.issue_server_cert("broker", ["mqtt.acme.io", "10.0.0.5"], now=now)
    sans = _ext(issued.certificate, x509.SubjectAlternativeName)
    assert sans.get_values_for_type(x509.DNSName) == ["mqtt.acme.io"]  # type: ignore[attr-defined]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]  # type: ignore[attr-defined]
    eku = _ext(issued.certificate, x509.ExtendedKeyUsage)
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]  # type: ignore[call-overload]


def test_device_chain_verifies_with_openssl_and_policy_builder(
    authority: CertificateAuthority, hierarchy: CaHierarchy, now: dt.datetime, tmp_path: Path
) -> None:
    issued = authority.issue_device_cert(DEVICE, now=now)
    at = "-attime", str(int(now.timestamp()))
    assert (
        openssl_verify(tmp_path, hierarchy, issued.cert_pem, *at, "-purpose", "sslclient") == "OK"
    )
    chain = verify_client_chain(
        issued.certificate, hierarchy.issuing_cert, hierarchy.root_cert, at=now
    )
    assert chain == [issued.certificate, hierarchy.issuing_cert, hierarchy.root_cert]


def test_server_chain_verifies_for_every_host(
    authority: CertificateAuthority, hierarchy: CaHierarchy, now: dt.datetime, tmp_path: Path
) -> None:
    issued = authority.issue_server_cert("ota", ["ota.acme.io", "192.168.1.2"], now=now)
    at = "-attime", str(int(now.timestamp()))
    assert (
        openssl_verify(tmp_path, hierarchy, issued.cert_pem, *at, "-purpose", "sslserver") == "OK"
    )
    for host in ("ota.acme.io", "192.168.1.2"):
        verify_server_chain(
            issued.certificate, hierarchy.issuing_cert, hierarchy.root_cert, host=host, at=now
        )
    with pytest.raises(PkiError, match="subjectAltName"):
        verify_server_chain(
            issued.certificate,
            hierarchy.issuing_cert,
            hierarchy.root_cert,
            host="evil.example.com",
            at=now,
        )


def test_device_certificate_cannot_serve_as_a_server(
    authority: CertificateAuthority, hierarchy: CaHierarchy, now: dt.datetime
) -> None:
    issued = authority.issue_device_cert(DEVICE, now=now)
    with pytest.raises(PkiError):
        verify_server_chain(
            issued.certificate, hierarchy.issuing_cert, hierarchy.root_cert, host=DEVICE, at=now
        )


def test_server_certificate_cannot_log_in_as_a_device(
    authority: CertificateAuthority, hierarchy: CaHierarchy, now: dt.datetime
) -> None:
    issued = authority.issue_server_cert("broker", ["localhost"], now=now)
    with pytest.raises(PkiError, match="EKU"):
        verify_client_chain(issued.certificate, hierarchy.issuing_cert, hierarchy.root_cert, at=now)


def test_expired_certificate_is_rejected(
    authority: CertificateAuthority, hierarchy: CaHierarchy, now: dt.datetime, tmp_path: Path
) -> None:
    issued = authority.issue_device_cert(DEVICE, now=now)
    later = now + dt.timedelta(days=731)
    with pytest.raises(PkiError, match="does not verify"):
        verify_client_chain(
            issued.certificate, hierarchy.issuing_cert, hierarchy.root_cert, at=later
        )
    result = openssl_verify(
        tmp_path, hierarchy, issued.cert_pem, "-attime", str(int(later.timestamp()))
    )
    assert "expired" in result


def test_certificate_from_a_foreign_ca_is_rejected(
    hierarchy: CaHierarchy,
    foreign_authority: CertificateAuthority,
    now: dt.datetime,
    tmp_path: Path,
) -> None:
    rogue = foreign_authority
    issued = rogue.issue_device_cert(DEVICE, now=now)
    with pytest.raises(PkiError):
        verify_client_chain(issued.certificate, hierarchy.issuing_cert, hierarchy.root_cert, at=now)
    assert openssl_verify(tmp_path, hierarchy, issued.cert_pem) != "OK"


def test_wrong_issuing_key_is_refused(hierarchy: CaHierarchy) -> None:
    with pytest.raises(PkiError, match="does not match"):
        CertificateAuthority(
            org="Acme",
            root_cert=hierarchy.root_cert,
            issuing_cert=hierarchy.issuing_cert,
            issuing_key=generate_ec_key(),
            device_days=730,
            server_days=825,
            crl_days=30,
        )


def test_issue_for_an_invalid_device_id_is_refused(authority: CertificateAuthority) -> None:
    with pytest.raises(InputError, match="invalid device id"):
        authority.issue_device_cert("ESP32 with spaces")


def test_issue_for_a_given_public_key_returns_no_key(authority: CertificateAuthority) -> None:
    key = generate_ec_key()
    issued = authority.issue_device_cert(DEVICE, public_key=key.public_key())
    assert issued.key_pem is None
    assert issued.certificate.public_key() == key.public_key()


def test_serials_are_unique_across_many_certificates(authority: CertificateAuthority) -> None:
    issued = [authority.issue_device_cert(f"esp32-{i:012x}") for i in range(50)]
    assert len({i.serial for i in issued}) == 50
    assert all(isinstance(i, IssuedCert) for i in issued)
