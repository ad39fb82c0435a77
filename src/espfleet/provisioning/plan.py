"""The pure core of provisioning: one device + the batch's policy -> its flash images,
manifest and secrets. No file, clock, database or randomness here: the caller brings
the device's fresh keys (:class:`DeviceKeys`) and gets back bytes and records.

What goes on flash, each image at its own offset:

==================  ===========  =================================================
artifact            encrypted    content
==================  ===========  =================================================
bootloader          yes          fleet-signed bootloader (same for every device)
partition_table     yes          the checked table
nvs                 no (*)       identity in namespace ``espfleet``; every entry is
                                 XTS-encrypted with nvs_keys
nvs_keys            yes          this device's NVS XTS keys
otadata             yes          selects ota_0 (state VALID: verified on the host)
ota_0               yes          fleet-signed app (same plaintext for every device)
==================  ===========  =================================================

(*) the nvs partition is never flagged encrypted: NVS encrypts its own entries.

``ota_1`` is deliberately not written: otadata never selects it before the first OTA
update, and an OTA update writes it through the flash-encryption hardware on the
device. Pre-encrypting a copy there would double flashing time and host encryption per
device for a slot the device overwrites anyway. The flasher erases nothing beyond the
images it writes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from espfleet.chips import chip_facts
from espfleet.device_id import device_id_for, format_mac
from espfleet.errors import ProvisioningError
from espfleet.formats import flash_encryption, nvs, otadata
from espfleet.formats.nvs_keys import NvsKeys
from espfleet.formats.partition_table import PartitionTable
from espfleet.provisioning.bundle import (
    MERGED_NAME,
    Artifact,
    CertificateInfo,
    FirmwareInfo,
    KeyFingerprints,
    KeyPolicy,
    Manifest,
    merge_images,
)
from espfleet.provisioning.efuse_plan import EfusePlan, Mode
from espfleet.provisioning.identity import NVS_NAMESPACE, DeviceIdentity
from espfleet.provisioning.vault import DeviceSecrets

__all__ = ["DeviceKeys", "DevicePlan", "DeviceRequest", "FleetPolicy", "plan_device"]


@dataclass(frozen=True)
class FleetPolicy:
    """Everything shared by the devices of one batch (signed once, checked once)."""

    chip: str
    mode: Mode
    key_policy: KeyPolicy
    flash_size: str
    table: PartitionTable
    table_offset: int
    signed_bootloader: bytes = field(repr=False)
    signed_app: bytes = field(repr=False)
    secure_boot_digest: bytes
    efuse_plan: EfusePlan
    firmware: FirmwareInfo
    broker_uri: str
    recovery_uri: str
    ca_chain_pem: str = field(repr=False)
    ota_ca_pem: str = field(repr=False)
    merged: bool = False
    #: Flash-encryption key length in bytes (32; 64 for XTS-AES-256 on S3).
    fe_key_len: int = 32
    #: False for a plain (Arduino/PlatformIO) bootloader, accepted in development mode
    #: only: the ROM verifies its signature, but it verifies no app.
    bootloader_verifies_app: bool = True

    def __post_init__(self) -> None:
        if not self.bootloader_verifies_app and self.mode == "release":
            raise ProvisioningError(
                "release mode needs a Secure Boot V2 bootloader that verifies the app"
            )
        if self.fe_key_len not in chip_facts(self.chip).fe_key_lengths:
            raise ProvisioningError(f"{self.chip} takes no {self.fe_key_len}-byte key")
        if (self.efuse_plan.chip, self.efuse_plan.mode) != (self.chip, self.mode):
            raise ProvisioningError("the eFuse plan is for another chip or mode than the batch")
        if len(self.secure_boot_digest) != 32:
            raise ProvisioningError("a Secure Boot V2 public-key digest has 32 bytes")
        for ptype, subtype in (("data", "nvs"), ("data", "nvs_keys"), ("data", "ota")):
            if not self.table.by_type(ptype, subtype):
                raise ProvisioningError(f"the partition table has no {ptype}/{subtype} partition")
        if not self.table.app_slots():
            raise ProvisioningError("the partition table has no OTA app slot")


@dataclass(frozen=True)
class DeviceRequest:
    """One device to provision: its MAC (the id follows) and optional Wi-Fi settings."""

    chip: str
    mac: bytes
    wifi_ssid: str | None = None
    wifi_pass: str | None = field(default=None, repr=False)

    @property
    def device_id(self) -> str:
        return device_id_for(self.chip, self.mac)


@dataclass(frozen=True)
class DeviceKeys:
    """The fresh secrets and certificate of one device (made by the caller)."""

    flash_encryption_key: bytes = field(repr=False)
    nvs_keys: NvsKeys
    recovery_secret: str = field(repr=False)
    cert_pem: str
    key_pem: str = field(repr=False)
    certificate: CertificateInfo


@dataclass(frozen=True)
class DevicePlan:
    """A device's bundle, ready to be written."""

    manifest: Manifest
    images: Mapping[str, bytes] = field(repr=False)
    merged: bytes | None = field(repr=False)
    secrets: DeviceSecrets


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def plan_device(policy: FleetPolicy, request: DeviceRequest, keys: DeviceKeys) -> DevicePlan:
    """Build every image of one device's bundle (pure)."""
    if request.chip != policy.chip:
        raise ProvisioningError(f"device {request.device_id} is not a {policy.chip}")
    facts = chip_facts(policy.chip)
    table = policy.table
    device_id = request.device_id
    identity = DeviceIdentity(
        device_id=device_id,
        device_cert=keys.cert_pem,
        device_key=keys.key_pem,
        ca_chain=policy.ca_chain_pem,
        broker_uri=policy.broker_uri,
        recovery_uri=policy.recovery_uri,
        recovery_secret=keys.recovery_secret,
        ota_ca=policy.ota_ca_pem,
        wifi_ssid=request.wifi_ssid,
        wifi_pass=request.wifi_pass,
    )
    nvs_part = table.by_type("data", "nvs")[0]
    keys_part = table.by_type("data", "nvs_keys")[0]
    ota_part = table.by_type("data", "ota")[0]
    app_slot = table.app_slots()[0]
    if len(policy.signed_app) > app_slot.size:
        raise ProvisioningError(f"the signed app does not fit {app_slot.name}")
    nvs_image = nvs.write(
        {NVS_NAMESPACE: {k: nvs.NvsValue("string", v) for k, v in identity.entries().items()}},
        nvs_part.size,
        keys.nvs_keys,
    )
    num_slots = len(table.app_slots())
    ota_image = otadata.select(otadata.blank(), 0, num_slots, otadata.OtaState.VALID).encode()
    plain: list[tuple[str, int, bytes, bool]] = [
        ("bootloader", facts.bootloader_offset, policy.signed_bootloader, True),
        ("partition_table", policy.table_offset, table.encode(), True),
        ("nvs", nvs_part.offset, nvs_image, False),
        ("nvs_keys", keys_part.offset, keys.nvs_keys.encode(), True),
        ("otadata", ota_part.offset, ota_image, True),
        (app_slot.name, app_slot.offset, policy.signed_app, True),
    ]
    images: dict[str, bytes] = {}
    artifacts: list[Artifact] = []
    for name, offset, data, encrypted in plain:
        stored = (
            flash_encryption.encrypt(data, keys.flash_encryption_key, offset, policy.chip)
            if encrypted else data
        )
        images[name] = stored
        artifacts.append(Artifact.of(name, offset, stored, encrypted=encrypted))
    merged_bytes = None
    merged_entry = None
    if policy.merged:
        merged_bytes = merge_images({a: images[a.name] for a in artifacts})
        merged_entry = Artifact("merged", MERGED_NAME, 0, len(merged_bytes),
                                _sha256(merged_bytes), True)
    manifest = Manifest(
        device_id=device_id,
        chip=policy.chip,
        mode=policy.mode,
        mac=format_mac(request.mac),
        flash_size=policy.flash_size,
        key_policy=policy.key_policy,
        artifacts=tuple(artifacts),
        efuse_plan=policy.efuse_plan,
        certificate=keys.certificate,
        key_fingerprints=KeyFingerprints(
            flash_encryption_key_sha256=_sha256(keys.flash_encryption_key),
            nvs_keys_sha256=_sha256(keys.nvs_keys.raw),
            secure_boot_digest=policy.secure_boot_digest.hex(),
        ),
        firmware=policy.firmware,
        merged=merged_entry,
    )
    secrets = DeviceSecrets(
        flash_encryption_key=keys.flash_encryption_key,
        nvs_keys=keys.nvs_keys.raw,
        recovery_secret=keys.recovery_secret,
        wifi_password=request.wifi_pass,
    )
    return DevicePlan(manifest, images, merged_bytes, secrets)
