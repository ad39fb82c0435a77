"""Flash read-outs of whole devices: provisioned the espfleet way (release: every
partition but nvs flash-encrypted, NVS encrypted with nvs_keys) versus the seeds'
first attempt (certificates, key and Wi-Fi password in a plaintext app image)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from espfleet.audit.findings import Severity
from espfleet.audit.flash_scan import scan_flash
from espfleet.audit.known_secrets import KnownSecret
from espfleet.chips import chip_facts
from espfleet.cli import main
from espfleet.formats import flash_encryption, nvs, otadata, partition_table
from espfleet.formats.nvs_keys import NvsKeys

FLASH_SIZE = 0x400000
WIFI_PASS = "correct-horse-battery"
RECOVERY = "rs-" + os.urandom(16).hex()


@dataclass
class Device:
    dump: bytes
    fe_key: bytes
    nvs_keys: NvsKeys
    key_pem: bytes
    cert_pem: bytes

    def known(self) -> list[KnownSecret]:
        return [KnownSecret("flash-encryption key", self.fe_key),
                KnownSecret("NVS keys", self.nvs_keys.raw),
                KnownSecret("device TLS key", self.key_pem.strip()),
                KnownSecret("Wi-Fi password", WIFI_PASS.encode()),
                KnownSecret("recovery secret", RECOVERY.encode())]


def build_device(kit: Any, vectors: Path, *, encrypted: bool, app_payload: bytes = b"",
                 nvs_encrypted: bool | None = None) -> Device:
    """A 4 MB read-out of an ESP32 after flashing the images provisioning makes.

    ``encrypted``: flash encryption; ``nvs_encrypted`` (default: the same): NVS
    encryption with the nvs_keys partition.
    """
    nvs_encrypted = encrypted if nvs_encrypted is None else nvs_encrypted
    cert, key = kit.make_cert()
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fe_key, nvs_keys = os.urandom(32), NvsKeys.generate()
    table = partition_table.default_secure_table(FLASH_SIZE)
    identity = {"device_cert": cert_pem.decode(), "device_key": key_pem.decode(),
                "broker_uri": "mqtts://broker.example.com:8883", "wifi_ssid": "HomeNet",
                "wifi_pass": WIFI_PASS, "recovery_secret": RECOVERY}
    nvs_part = table.by_type("data", "nvs")[0]
    nvs_image = nvs.write(
        {"espfleet": {k: nvs.NvsValue("string", v) for k, v in identity.items()}},
        nvs_part.size, nvs_keys if nvs_encrypted else None,
    )
    app = (vectors / "hello-world-signed.bin").read_bytes()
    if app_payload:
        app = kit.app_image(app_payload)
    images = [  # (offset, data, flagged encrypted)
        (0x1000, (vectors / "bootloader_signed_v2_rsa.bin").read_bytes(), True),
        (0x8000, table.encode(), True),
        (nvs_part.offset, nvs_image, False),
        (table.by_type("data", "nvs_keys")[0].offset, nvs_keys.encode(), True),
        (table.by_type("data", "ota")[0].offset,
         otadata.select(otadata.blank(), 0, 2, otadata.OtaState.VALID).encode(), True),
        (table.app_slots()[0].offset, app, True),
    ]
    dump = bytearray(b"\xff" * FLASH_SIZE)
    for offset, data, flagged in images:
        if encrypted and flagged:
            data = flash_encryption.encrypt(data, fe_key, offset, "esp32")
        dump[offset : offset + len(data)] = data
    return Device(bytes(dump), fe_key, nvs_keys, key_pem, cert_pem)


def test_release_provisioned_dump_has_no_finding_at_high_or_above(
    kit: Any, vectors: Path
) -> None:
    device = build_device(kit, vectors, encrypted=True)
    report = scan_flash(device.dump, chip=chip_facts("esp32"), known_secrets=device.known())
    assert report.failing(Severity.HIGH) == [], [f.message for f in report.findings]
    assert not any(f.kind == "known-secret" for f in report.findings)
    counts = report.entropy.counts()
    assert report.findings == ()  # not even a low-entropy region left unexplained
    assert counts["plaintext"] == 0 and counts["ciphertext"] >= 20


def test_flash_readout_of_unencrypted_device_leaks_its_workspace_secrets(
    kit: Any, vectors: Path
) -> None:
    device = build_device(kit, vectors, encrypted=False)
    report = scan_flash(device.dump, chip=chip_facts("esp32"), known_secrets=device.known())
    leaked = {f.message.split("'s ")[1].split(" is readable")[0]
              for f in report.findings if f.kind == "known-secret"}
    assert leaked == {"NVS keys", "device TLS key", "Wi-Fi password", "recovery secret"}
    kinds = {f.kind for f in report.failing(Severity.HIGH)}
    assert {"plaintext-bootloader", "plaintext-partition-table", "plaintext-app",
            "plaintext-nvs", "nvs-secret", "pem-private-key"} <= kinds


def test_plaintext_nvs_keys_decrypt_the_encrypted_identity(kit: Any, vectors: Path) -> None:
    """Encrypted NVS but flash encryption off: the nvs_keys partition lies in plaintext
    next to it, and the audit opens the NVS as an attacker would."""
    device = build_device(kit, vectors, encrypted=False, nvs_encrypted=True)
    report = scan_flash(device.dump, chip=chip_facts("esp32"))
    by_kind = {f.kind: f for f in report.findings}
    assert by_kind["plaintext-nvs-keys"].offset == 0x1C000
    assert device.nvs_keys.fingerprint() in by_kind["plaintext-nvs-keys"].message
    decrypted = by_kind["nvs-decrypted"]
    assert decrypted.offset == 0x9000 and decrypted.severity == Severity.CRITICAL
    assert ("secrets: espfleet/device_key, espfleet/recovery_secret, espfleet/wifi_pass"
            in decrypted.message)
    assert "plaintext-nvs" not in by_kind  # the entries themselves are ciphertext


def test_seed_style_device_with_secrets_in_the_app_fails_loudly(
    kit: Any, vectors: Path, tmp_path: Path, pem_key_and_cert: tuple[bytes, bytes]
) -> None:
    """The seeds' first attempt: certs, key and Wi-Fi password compiled into the app."""
    key_pem, cert_pem = pem_key_and_cert
    payload = (cert_pem + b"\x00" + key_pem + b"\x00ssid\x00HomeNet\x00password\x00"
               + WIFI_PASS.encode() + b"\x00mqtt://fleet:hunter2hunter2@broker.local\x00")
    device = build_device(kit, vectors, encrypted=False, app_payload=payload)
    dump = tmp_path / "seed-device.bin"
    dump.write_bytes(device.dump)

    result = CliRunner().invoke(main, ["audit", "flash", str(dump), "--chip", "esp32", "--json"])
    assert result.exit_code == 1, result.output
    out = json.loads(result.output)
    assert out["passed"] is False and out["worst"] == "critical"
    app_at = 0x20000
    in_app = {f["kind"] for f in out["findings"]
              if f["severity"] == "critical" and app_at <= f["offset"] < app_at + 0x10000}
    assert {"pem-private-key", "password-like", "url-credentials"} <= in_app
    assert any(f["kind"] == "plaintext-app" and f["offset"] == app_at for f in out["findings"])
    assert all(f["fix"] for f in out["findings"])
    assert WIFI_PASS not in result.output  # the report itself does not leak the secret

    human = CliRunner().invoke(main, ["audit", "flash", str(dump), "--chip", "esp32"])
    assert human.exit_code == 1
    assert "FAIL:" in human.output and "CRITICAL 0x00020" in human.output
    assert "entropy map" in human.output


@pytest.mark.parametrize("fail_on, code", [("critical", 0), ("high", 0), ("info", 0)])
def test_release_dump_passes_the_gate(
    kit: Any, vectors: Path, tmp_path: Path, fail_on: str, code: int
) -> None:
    dump = tmp_path / "release.bin"
    dump.write_bytes(build_device(kit, vectors, encrypted=True).dump)
    result = CliRunner().invoke(main, ["audit", "flash", str(dump), "--fail-on", fail_on])
    assert result.exit_code == code, result.output
