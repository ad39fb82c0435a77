"""Fixtures for the boot-chain tests; the kit itself is :mod:`bootkit` (importable here)."""

from __future__ import annotations

import importlib.util
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


# TEMPORARY until espfleet.formats.efuse lands: a minimal EfuseImage view over the
# chip's controller so the boot chain can run. Removed once the real one exists.
if importlib.util.find_spec("espfleet.formats.efuse") is None:
    from espfleet.device.chip import VirtualChip

    class _View:
        def __init__(self, chip: VirtualChip) -> None:
            self.chip = chip

        def get(self, name: str) -> int:
            return self.chip.efuse.get(name)

        def secure_boot_digests(self) -> list[bytes | None]:
            ctl = self.chip.efuse
            if self.chip.facts.sb_digest_purposes is None:
                block = ctl.block_bytes("BLOCK2")
                return [block if any(block) else None]
            out: list[bytes | None] = [None, None, None]
            for n in range(6):
                purpose = ctl.get(f"KEY_PURPOSE_{n}")
                if 9 <= purpose <= 11:
                    out[purpose - 9] = ctl.block_bytes(f"BLOCK_KEY{n}")
            return out

    VirtualChip.efuses = lambda self: _View(self)  # type: ignore[method-assign,assignment,return-value]
