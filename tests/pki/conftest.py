from __future__ import annotations

import datetime as dt

import pytest

from espfleet.pki.ca import CaHierarchy, CertificateAuthority, new_hierarchy

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="session")
def hierarchy() -> CaHierarchy:
    return new_hierarchy(org="Acme", root_days=7300, issuing_days=1825, now=NOW)


def _authority(hierarchy: CaHierarchy) -> CertificateAuthority:
    return CertificateAuthority(
        org="Acme",
        root_cert=hierarchy.root_cert,
        issuing_cert=hierarchy.issuing_cert,
        issuing_key=hierarchy.issuing_key,
        device_days=730,
        server_days=825,
        crl_days=30,
    )


@pytest.fixture(scope="session")
def authority(hierarchy: CaHierarchy) -> CertificateAuthority:
    return _authority(hierarchy)


@pytest.fixture(scope="session")
def foreign_authority() -> CertificateAuthority:
    """Another CA with the same names: what an attacker would stand up."""
    return _authority(new_hierarchy(org="Acme", root_days=7300, issuing_days=1825, now=NOW))


@pytest.fixture(scope="session")
def now() -> dt.datetime:
    return NOW
