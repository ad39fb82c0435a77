from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from espfleet.errors import InputError, PkiError
from espfleet.pki.ca import CaHierarchy, CertificateAuthority
from espfleet.pki.crl import (
    REVOCATION_REASONS,
    RevokedEntry,
    crl_number,
    load_crl,
    revoked_serials,
    verify_crl,
)
from espfleet.pki.verify import check_not_revoked


def test_crl_has_updates_number_and_issuer_signature(
    authority: CertificateAuthority, hierarchy: CaHierarchy, now: dt.datetime
) -> None:
    crl = load_crl(authority.sign_crl([], number=7, now=now))
    assert crl.last_update_utc == now
    assert crl.next_update_utc == now + dt.timedelta(days=30)
    assert crl_number(crl) == 7
    assert crl.issuer == hierarchy.issuing_cert.subject
    verify_crl(crl, hierarchy.issuing_cert)


def test_revoked_serial_shows_in_openssl_crl_text(
    authority: CertificateAuthority, hierarchy: CaHierarchy, now: dt.datetime, tmp_path: Path
) -> None:
    issued = authority.issue_device_cert("esp32-24a1600a1b2c", now=now)
    entry = RevokedEntry(issued.serial, now, "key_compromise")
    pem = authority.sign_crl([entry], number=2, now=now)
    path = tmp_path / "crl.pem"
    path.write_bytes(pem)
    text = subprocess.run(
        ["openssl", "crl", "-in", str(path), "-text", "-noout"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert f"{issued.serial:X}" in text.replace(":", "").upper()
    assert "Key Compromise" in text
    issuing = tmp_path / "issuing.pem"
    issuing.write_bytes(issued.cert_pem[:0] + authority.chain_pem())
    verified = subprocess.run(
        ["openssl", "crl", "-in", str(path), "-CAfile", str(issuing), "-noout"],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0 and "verify OK" in verified.stdout + verified.stderr
    with pytest.raises(PkiError, match="revoked"):
        check_not_revoked(issued.certificate, load_crl(pem), hierarchy.issuing_cert)


def test_crl_signed_by_a_foreign_ca_is_rejected(
    hierarchy: CaHierarchy, foreign_authority: CertificateAuthority, now: dt.datetime
) -> None:
    rogue = foreign_authority
    crl = load_crl(rogue.sign_crl([], number=1, now=now))
    with pytest.raises(PkiError, match="not signed by the issuing CA"):
        verify_crl(crl, hierarchy.issuing_cert)


def test_unknown_reason_is_refused(now: dt.datetime) -> None:
    with pytest.raises(InputError, match="unknown revocation reason"):
        RevokedEntry(5, now, "because")


@settings(max_examples=15, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=2**159 - 1), st.sampled_from(REVOCATION_REASONS)
        ),
        max_size=8,
        unique_by=lambda t: t[0],
    )
)
def test_crl_round_trip(
    authority: CertificateAuthority, now: dt.datetime, entries: list[tuple[int, str]]
) -> None:
    revoked = [RevokedEntry(serial, now, reason) for serial, reason in entries]
    crl = load_crl(authority.sign_crl(revoked, number=3, now=now))
    assert revoked_serials(crl) == {serial for serial, _ in entries}
    for serial, reason in entries:
        entry = crl.get_revoked_certificate_by_serial_number(serial)
        assert entry is not None
        try:
            got = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.name
        except x509.ExtensionNotFound:
            got = "unspecified"
        assert got == reason
