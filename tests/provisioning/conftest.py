"""Provisioning fixtures: a workspace, its keys, and firmware signed by the reference tool."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from espfleet.workspace import Workspace

PASSPHRASE = b"correct horse battery staple"


@dataclass(frozen=True)
class Fleet:
    root: Path
    workspace: Workspace
    passphrase: bytes
    signing_pem: bytes

    def sign(self, image: bytes) -> bytes:
        """Sign with espsecure (the reference tool), as ESP-IDF's build would."""
        import espsecure

        padded = image + b"\xff" * (-len(image) % 4096)
        block = espsecure.generate_signature_block_using_private_key(
            [io.BytesIO(self.signing_pem)], padded
        )
        signed = padded + block
        return signed + b"\xff" * (-len(signed) % 4096)


@pytest.fixture
def fleet(fleet_workspace: Path) -> Fleet:
    ws = Workspace.open(fleet_workspace)
    key = ws.signing_key(PASSPHRASE)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return Fleet(fleet_workspace, ws, PASSPHRASE, pem)


@pytest.fixture(scope="session")
def unsigned_app(vectors: Path) -> bytes:
    """Espressif's ESP32 hello_world with its signature sector cut off (secure-padded)."""
    return (vectors / "hello-world-signed.bin").read_bytes()[:-4096]


@pytest.fixture(scope="session")
def sb_bootloader(vectors: Path) -> bytes:
    """Espressif's ESP32 v3.0 Secure Boot V2 bootloader, unsigned."""
    return (vectors / "bootloader_unsigned_v2.bin").read_bytes()


def build_test_app(chip_cls: str = "ESP32FirmwareImage", *, version: str = "1.0.0",
                   project: str = "blink", secure_version: int = 0, size: int = 0x20000) -> bytes:
    """An app image made by esptool (the reference tool): a DROM segment that starts with
    the ESP-IDF app descriptor, then code; secure-padded for a V2 signature."""
    import os
    import struct

    import esptool.bin_image as bin_image

    desc = struct.pack("<III8x32s32s16s16s32s32s", 0xABCD5432, secure_version, 0,
                       version.encode(), project.encode(), b"00:00:00", b"Jan  1 2026",
                       b"v5.2", b"\x00" * 32)
    desc += b"\x00" * (256 - len(desc))
    image = getattr(bin_image, chip_cls)()
    image.segments = [
        bin_image.ELFSection(b".flash.appdesc", 0x3F400020, desc + os.urandom(0x1000), 0),
        bin_image.ELFSection(b".flash.text", 0x400D0020, os.urandom(size), 0),
    ]
    image.entrypoint = 0x400D0020
    image.flash_size_freq = 0x20  # 4MB
    image.secure_pad = "2"
    image.append_digest = True
    out = image.save(None)
    assert isinstance(out, bytes)
    return out


@pytest.fixture(scope="session")
def test_app() -> bytes:
    return build_test_app()


def make_policy(fleet: Fleet, app: bytes, bootloader: bytes, *, mode: str = "release",
                merged: bool = False, key_policy: str = "escrow", chip: str = "esp32",
                fe_key_len: int = 32) -> object:
    """A FleetPolicy for the fixture workspace, images signed by espsecure."""
    import hashlib

    from espfleet.formats.partition_table import default_secure_table
    from espfleet.pki.ca import cert_pem
    from espfleet.provisioning.bundle import FirmwareInfo
    from espfleet.provisioning.efuse_plan import plan_for
    from espfleet.provisioning.plan import FleetPolicy

    ws = fleet.workspace
    signed_app = fleet.sign(app)
    return FleetPolicy(
        chip=chip, mode=mode, key_policy=key_policy,  # type: ignore[arg-type]
        flash_size="4MB", table=default_secure_table(0x400000, 0xF000), table_offset=0xF000,
        signed_bootloader=fleet.sign(bootloader), signed_app=signed_app,
        secure_boot_digest=ws.secure_boot_digest(),
        efuse_plan=plan_for(chip, mode, fe_key_len=fe_key_len), fe_key_len=fe_key_len,
        firmware=FirmwareInfo("blink", "1.0.0", 0, hashlib.sha256(signed_app).hexdigest()),
        broker_uri="mqtts://localhost:8883", recovery_uri="mqtts://localhost:8884",
        ca_chain_pem=ws.chain_pem().decode(), ota_ca_pem=cert_pem(ws.root_cert).decode(),
        merged=merged,
    )
