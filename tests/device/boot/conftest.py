"""Fixtures for the boot-chain tests; the kit itself is :mod:`bootkit` (importable here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from bootkit import Device, load_key, make_device

from espfleet.formats import secure_boot


@pytest.fixture(scope="session")
def keys() -> list[secure_boot.PrivateKey]:
    """Espressif's three RSA-3072 secure boot test keys."""
    return [
        load_key("rsa_secure_boot_signing_key.pem"),
        load_key("rsa_secure_boot_signing_key2.pem"),
        load_key("rsa_secure_boot_signing_key3.pem"),
    ]


@pytest.fixture
def device(keys: list[secure_boot.PrivateKey]) -> Device:
    """A release-mode ESP32 v3.0: flash encryption + secure boot V2, app in ota_0."""
    return make_device("esp32", signing_keys=keys[:1])

