"""Pin the public surface of the PKI, workspace, registry and device-id modules."""

from __future__ import annotations

import importlib

import pytest

SURFACES = {
    "espfleet.pki": {
        "REVOCATION_REASONS",
        "CaHierarchy",
        "CertificateAuthority",
        "IssuedCert",
        "RevokedEntry",
        "build_crl",
        "check_csr",
        "check_not_revoked",
        "decrypt_private_key",
        "encrypt_private_key",
        "fingerprint_sha256",
        "format_serial",
        "is_encrypted_pem",
        "load_crl",
        "load_csr",
        "new_hierarchy",
        "parse_serial",
        "verify_client_chain",
        "verify_server_chain",
    },
    "espfleet.workspace": {"FleetConfig", "IssuingAuthority", "Workspace", "secure_boot_digest"},
    "espfleet.backend.registry": {
        "CertRecord",
        "DeviceRecord",
        "Registry",
        "head_revision",
        "upgrade",
    },
    "espfleet.device_id": {
        "DeviceId",
        "device_id_for",
        "format_mac",
        "parse_device_id",
        "parse_mac",
    },
}


@pytest.mark.parametrize("module", sorted(SURFACES))
def test_public_surface_is_pinned(module: str) -> None:
    mod = importlib.import_module(module)
    assert set(mod.__all__) == SURFACES[module]
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name}"


def test_pki_does_not_import_backend_or_device() -> None:
    import subprocess
    import sys

    code = (
        "import sys, espfleet.pki, espfleet.pki.store; "
        "bad = [m for m in sys.modules if m.startswith(('espfleet.backend', 'espfleet.device.',"
        " 'espfleet.provisioning', 'espfleet.cli', 'sqlalchemy'))]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
