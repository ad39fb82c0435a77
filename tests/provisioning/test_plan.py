"""Done-when for one device, checked with the reference tools: every encrypted artifact
decrypts (espsecure) to the signed plaintext, espsecure verifies both signatures, the
NVS decodes to a certificate chaining to the fleet CA with the matching key, and no
artifact holds a secret in plaintext."""

from __future__ import annotations

import datetime as dt
import io
import os
from pathlib import Path
from typing import Any

import espsecure
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from espfleet.errors import FormatError, ProvisioningError
from espfleet.formats import nvs, otadata
from espfleet.formats.nvs_keys import NvsKeys
from espfleet.pki.ca import cert_pem
from espfleet.pki.verify import verify_client_chain
from espfleet.provisioning.bundle import CertificateInfo, Manifest
from espfleet.provisioning.identity import NVS_NAMESPACE, DeviceIdentity
from espfleet.provisioning.plan import DeviceKeys, DevicePlan, DeviceRequest, plan_device

from .conftest import Fleet, make_policy

MAC = bytes.fromhex("02e5f1000004")


def _keys(fleet: Fleet, device_id: str) -> DeviceKeys:
    with fleet.workspace.ca(fleet.passphrase) as ca:
        issued = ca.issue_device_cert(device_id)
    assert issued.key_pem is not None
    return DeviceKeys(
        flash_encryption_key=os.urandom(32), nvs_keys=NvsKeys.generate(),
        recovery_secret="rec-" + os.urandom(16).hex(),
        cert_pem=issued.cert_pem.decode(), key_pem=issued.key_pem.decode(),
        certificate=CertificateInfo(issued.serial_hex, issued.fingerprint_sha256,
                                    issued.not_after.isoformat()),
    )


def _espsecure_decrypt(data: bytes, key: bytes, offset: int) -> bytes:
    out = io.BytesIO()
    espsecure.decrypt_flash_data(io.BytesIO(key), out, offset, 0xF, False, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def built(
    fleet: Fleet, test_app: bytes, sb_bootloader: bytes
) -> tuple[Any, DeviceKeys, DevicePlan]:
    policy: Any = make_policy(fleet, test_app, sb_bootloader, merged=True)
    request = DeviceRequest("esp32", MAC, "lab-wifi", "wifi-pass-s3cret")
    keys = _keys(fleet, request.device_id)
    return policy, keys, plan_device(policy, request, keys)


def test_every_encrypted_artifact_decrypts_with_espsecure_to_the_signed_plaintext(
    built: tuple[Any, DeviceKeys, DevicePlan],
) -> None:
    policy, keys, plan = built
    by_name = {a.name: a for a in plan.manifest.artifacts}
    expected = {
        "bootloader": policy.signed_bootloader,
        "partition_table": policy.table.encode(),
        "nvs_keys": keys.nvs_keys.encode(),
        "ota_0": policy.signed_app,
    }
    assert {n for n, a in by_name.items() if a.encrypted} == {*expected, "otadata"}
    assert not by_name["nvs"].encrypted
    for name, plaintext in expected.items():
        art = by_name[name]
        assert plan.images[name] != plaintext
        assert _espsecure_decrypt(plan.images[name], keys.flash_encryption_key, art.offset) \
            == plaintext, name
    ota = otadata.decode(_espsecure_decrypt(plan.images["otadata"], keys.flash_encryption_key,
                                            by_name["otadata"].offset))
    assert otadata.boot_slot(ota, 2) == 0
    assert by_name["bootloader"].offset == 0x1000 and by_name["partition_table"].offset == 0xF000


def test_espsecure_verifies_bootloader_and_app_signatures(
    fleet: Fleet, built: tuple[Any, DeviceKeys, DevicePlan]
) -> None:
    _, keys, plan = built
    pub = fleet.workspace.signing_public_key_pem()
    for name in ("bootloader", "ota_0"):
        art = plan.manifest.artifact(name)
        plain = _espsecure_decrypt(plan.images[name], keys.flash_encryption_key, art.offset)
        espsecure.verify_signature("2", False, None, io.BytesIO(pub), io.BytesIO(plain))
    digest = espsecure._digest_sbv2_public_key(io.BytesIO(pub))
    assert plan.manifest.key_fingerprints.secure_boot_digest == digest.hex()


def test_nvs_decodes_to_identity_chaining_to_fleet_ca(
    fleet: Fleet, built: tuple[Any, DeviceKeys, DevicePlan]
) -> None:
    _, keys, plan = built
    art = plan.manifest.artifact("nvs_keys")
    nvs_keys = NvsKeys.decode(
        _espsecure_decrypt(plan.images["nvs_keys"], keys.flash_encryption_key, art.offset))
    with pytest.raises(FormatError, match=r"(?i)key|encrypt"):
        nvs.read(plan.images["nvs"])
    namespaces = nvs.read(plan.images["nvs"], nvs_keys)
    entries = {k: str(v.value) for k, v in namespaces[NVS_NAMESPACE].items()}
    identity = DeviceIdentity.from_entries(plan.manifest.device_id, entries)
    cert = x509.load_pem_x509_certificate(identity.device_cert.encode())
    ws = fleet.workspace
    verify_client_chain(cert, ws.issuing_cert, ws.root_cert, at=dt.datetime.now(dt.UTC))
    key = serialization.load_pem_private_key(identity.device_key.encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    assert cert.subject.rfc4514_string().find(plan.manifest.device_id) >= 0
    assert identity.ca_chain == ws.chain_pem().decode()
    assert identity.ota_ca == cert_pem(ws.root_cert).decode()
    assert (identity.wifi_ssid, identity.wifi_pass) == ("lab-wifi", "wifi-pass-s3cret")
    assert identity.recovery_secret == keys.recovery_secret


def _secret_needles(keys: DeviceKeys) -> dict[str, bytes]:
    key = serialization.load_pem_private_key(keys.key_pem.encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return {
        "device key PEM": keys.key_pem.encode(),
        "device key PEM body line": keys.key_pem.splitlines()[1].encode(),
        "device key DER": der,
        "device key scalar": key.private_numbers().private_value.to_bytes(32, "big"),
        "flash-encryption key": keys.flash_encryption_key,
        "flash-encryption key reversed": keys.flash_encryption_key[::-1],
        "nvs keys": keys.nvs_keys.raw[:32],
        "recovery secret": keys.recovery_secret.encode(),
        "wifi password": b"wifi-pass-s3cret",
        "BEGIN PRIVATE KEY": b"PRIVATE KEY",
    }


def test_flash_read_out_of_artifacts_and_merged_image_leaks_no_secret(
    built: tuple[Any, DeviceKeys, DevicePlan],
) -> None:
    _, keys, plan = built
    assert plan.merged is not None
    blobs = {**plan.images, "merged": plan.merged, "manifest": plan.manifest.encode()}
    for blob_name, blob in blobs.items():
        for needle_name, needle in _secret_needles(keys).items():
            assert needle not in blob, f"{needle_name} in {blob_name}"


def test_merged_image_places_every_artifact_at_its_offset(
    built: tuple[Any, DeviceKeys, DevicePlan],
) -> None:
    _, _, plan = built
    assert plan.merged is not None
    for art in plan.manifest.artifacts:
        assert plan.merged[art.offset : art.end] == plan.images[art.name]
    assert Manifest.decode(plan.manifest.encode()) == plan.manifest


def test_two_devices_share_plaintext_but_not_ciphertext(
    fleet: Fleet, test_app: bytes, sb_bootloader: bytes
) -> None:
    policy: Any = make_policy(fleet, test_app, sb_bootloader)
    plans = []
    for mac in (MAC, bytes.fromhex("02e5f1000008")):
        request = DeviceRequest("esp32", mac)
        plans.append(plan_device(policy, request, _keys(fleet, request.device_id)))
    assert plans[0].images["ota_0"] != plans[1].images["ota_0"]
    assert plans[0].manifest.firmware == plans[1].manifest.firmware


def test_device_of_another_chip_is_refused(
    fleet: Fleet, test_app: bytes, sb_bootloader: bytes
) -> None:
    policy: Any = make_policy(fleet, test_app, sb_bootloader)
    request = DeviceRequest("esp32s3", MAC)
    with pytest.raises(ProvisioningError, match="is not a esp32"):
        plan_device(policy, request, _keys(fleet, request.device_id))


def test_development_policy_carries_development_plan(
    fleet: Fleet, test_app: bytes, sb_bootloader: bytes, tmp_path: Path
) -> None:
    policy: Any = make_policy(fleet, test_app, sb_bootloader, mode="development")
    request = DeviceRequest("esp32", MAC)
    plan = plan_device(policy, request, _keys(fleet, request.device_id))
    assert plan.manifest.mode == "development"
    assert plan.manifest.efuse_plan.post_flash() == ()


@pytest.mark.parametrize(("chip", "key_len"), [("esp32s3", 32), ("esp32s3", 64), ("esp32c3", 32)])
def test_xts_chip_artifacts_decrypt_with_espsecure_aes_xts(
    fleet: Fleet, chip: str, key_len: int
) -> None:
    from espfleet.formats import app_image

    from .conftest import build_test_app

    cls = {"esp32s3": "ESP32S3FirmwareImage", "esp32c3": "ESP32C3FirmwareImage"}[chip]
    policy: Any = make_policy(fleet, build_test_app(cls, size=0x4000),
                              app_image.build_bootloader(chip), chip=chip, fe_key_len=key_len)
    request = DeviceRequest(chip, MAC)
    keys = _keys(fleet, request.device_id)
    keys = DeviceKeys(os.urandom(key_len), keys.nvs_keys, keys.recovery_secret, keys.cert_pem,
                      keys.key_pem, keys.certificate)
    plan = plan_device(policy, request, keys)
    assert plan.manifest.artifact("bootloader").offset == 0x0
    for name, plaintext in (("bootloader", policy.signed_bootloader), ("ota_0", policy.signed_app)):
        art = plan.manifest.artifact(name)
        out = io.BytesIO()
        espsecure.decrypt_flash_data(io.BytesIO(keys.flash_encryption_key), out, art.offset,
                                     0xF, True, io.BytesIO(plan.images[name]))
        assert out.getvalue() == plaintext, name
    assert plan.manifest.efuse_plan.chip == chip
