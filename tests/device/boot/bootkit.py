"""Boot-chain test kit: a provisioned-like virtual chip, built the way the factory does.

Images come from espfleet's own format codecs (app_image, secure_boot), are signed with
Espressif's published RSA-3072 test keys, pre-encrypted on the host at their flash
offsets with a per-device flash-encryption key (formats.flash_encryption, checked
elsewhere against espsecure), and written raw to the chip's NOR flash; the security
eFuses are burned on the chip. Then :func:`espfleet.device.boot.boot` runs on it.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from espfleet.device.boot import boot
from espfleet.device.chip import VirtualChip
from espfleet.device.firmware import Firmware, SimulatedFirmware
from espfleet.formats import app_image, flash_encryption, nvs, otadata, secure_boot
from espfleet.formats.nvs_keys import NvsKeys
from espfleet.formats.otadata import OtaData
from espfleet.formats.partition_table import Partition, PartitionTable, default_secure_table
from espfleet.provisioning.identity import NVS_NAMESPACE, DeviceIdentity

VECTORS = Path(__file__).resolve().parents[3].parent / "shared" / "vectors" / "espressif"

#: KEY_PURPOSE_n values (espefuse's numbering) on S3/C3.
PURPOSE_XTS_AES_128 = 4
PURPOSE_XTS_AES_256 = (2, 3)
PURPOSE_SECURE_BOOT_DIGEST = (9, 10, 11)


def load_key(name: str) -> secure_boot.PrivateKey:
    return secure_boot.load_private_key((VECTORS / name).read_bytes())


def burn_key_block(chip: VirtualChip, block: str, key: bytes, *, read_protect: bool) -> None:
    """Burn a flash-encryption key as espefuse burn-key stores it."""
    chip.burn_efuse(block, int.from_bytes(key, "big"))
    if read_protect:
        bit = 0 if block == "BLOCK1" else int(block[-1])
        chip.burn_efuse("RD_DIS", 1 << bit)


def burn_digest(chip: VirtualChip, slot: int, digest: bytes) -> None:
    """Burn a secure boot V2 key digest as espefuse burn-key-digest stores it."""
    value = int.from_bytes(digest, "little")
    if chip.facts.sb_digest_purposes is None:
        chip.burn_efuse(chip.facts.sb_digest_blocks[slot], value)
        return
    block = slot + 2  # BLOCK_KEY0/1 hold the flash-encryption key in these tests
    chip.burn_efuse(f"BLOCK_KEY{block}", value)
    chip.burn_efuse(f"KEY_PURPOSE_{block}", PURPOSE_SECURE_BOOT_DIGEST[slot])


def device_certificate(device_id: str) -> tuple[str, str]:
    """A P-256 certificate with CN = device id (self-signed: the app only reads it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert_pem, key_pem


@dataclass
class Device:
    """A virtual chip laid out and fused like an espfleet release-mode device."""

    chip: VirtualChip
    fe_key: bytes | None
    signing_keys: Sequence[secure_boot.PrivateKey]
    table: PartitionTable
    cert_pem: str = field(repr=False)

    @property
    def name(self) -> str:
        return self.chip.chip

    def part(self, name: str) -> Partition:
        found = self.table.find(name)
        assert found is not None, name
        return found

    def app(
        self,
        version: str = "1.0.0",
        *,
        secure_version: int = 0,
        keys: Sequence[secure_boot.PrivateKey] | None = None,
        chip: str | None = None,
        payload: bytes = b"",
    ) -> bytes:
        """An app image for this chip, signed with ``keys`` (default: the device's own;
        ``[]`` leaves it unsigned)."""
        image = app_image.build_app(
            chip or self.name,
            version=version,
            project_name="espfleet-test",
            secure_version=secure_version,
            payload=payload or os.urandom(3000),
        )
        signers = self.signing_keys if keys is None else keys
        return secure_boot.sign(image, list(signers)) if signers else image

    def bootloader(self, keys: Sequence[secure_boot.PrivateKey] | None = None) -> bytes:
        image = app_image.build_bootloader(self.name, payload=os.urandom(2000))
        signers = self.signing_keys if keys is None else keys
        return secure_boot.sign(image, list(signers)) if signers else image

    def write(self, offset: int, plaintext: bytes, *, encrypted: bool = True) -> None:
        """What esptool --encrypt (or a pre-encrypted host image) leaves on the flash."""
        data = plaintext + b"\xff" * (-len(plaintext) % 32)
        if encrypted and self.fe_key is not None:
            conf = self.chip.facts.crypt_config_value or 0xF
            data = flash_encryption.encrypt(data, self.fe_key, offset, self.name, conf)
        sectors = -(-len(data) // 0x1000) * 0x1000
        self.chip.flash.erase(offset, sectors)
        self.chip.flash.program(offset, data)

    def write_bootloader(self, image: bytes, *, encrypted: bool = True) -> None:
        """Replace the bootloader (its whole region is erased first, as esptool does)."""
        facts = self.chip.facts
        start = facts.bootloader_offset
        self.chip.flash.erase(start, facts.default_partition_table_offset - start)
        self.write(start, image, encrypted=encrypted)

    def write_app(self, slot: str, image: bytes) -> None:
        self.write(self.part(slot).offset, image)

    def otadata(self) -> OtaData:
        raw = self.chip.read_decrypted(self.part("otadata").offset, otadata.OTADATA_SIZE)
        return otadata.decode(raw)

    def write_otadata(self, ota: OtaData) -> None:
        self.write(self.part("otadata").offset, ota.encode())


def write_identity(dev: Device, device_id: str) -> None:
    """nvs_keys (encrypted) and an encrypted NVS with an identity for ``device_id``."""
    cert_pem, key_pem = device_certificate(device_id)
    dev.cert_pem = cert_pem
    nvs_keys = NvsKeys.generate()
    identity = DeviceIdentity(
        device_id=device_id,
        device_cert=cert_pem,
        device_key=key_pem,
        ca_chain=cert_pem,
        broker_uri="mqtts://127.0.0.1:8883",
        recovery_uri="mqtts://127.0.0.1:8884",
        recovery_secret="s3cret-recovery-value",
        ota_ca=cert_pem,
    )
    entries = identity.entries().items()
    namespaces = {NVS_NAMESPACE: {k: nvs.NvsValue("string", v) for k, v in entries}}
    dev.write(dev.part("nvs_keys").offset, nvs_keys.encode())
    nvs_part = dev.part("nvs")
    dev.write(nvs_part.offset, nvs.write(namespaces, nvs_part.size, nvs_keys), encrypted=False)


def make_device(
    chip_name: str = "esp32",
    *,
    signing_keys: Sequence[secure_boot.PrivateKey],
    encryption: bool = True,
    secure_boot_on: bool = True,
    digest_keys: Sequence[secure_boot.PrivateKey] | None = None,
    revoke: Sequence[int] = (),
    app_version: str = "1.0.0",
    secure_version: int = 0,
    efuse_secure_version: int = 0,
    release: bool = True,
    fe_key_length: int = 32,
    table_offset: int | None = None,
) -> Device:
    """Flash and fuse a fresh chip; ``digest_keys`` (default: ``signing_keys``) are the
    keys whose digests are burned, one per slot."""
    revision = {"esp32": 300, "esp32s3": 0, "esp32c3": 3}[chip_name]
    chip = VirtualChip.new(
        chip_name, revision=revision, flash_size=4 << 20, partition_table_offset=table_offset
    )
    facts = chip.facts
    fe_key = os.urandom(fe_key_length) if encryption else None
    table = default_secure_table(chip.flash.size, chip.partition_table_offset)
    dev = Device(chip, fe_key, signing_keys, table, "")
    if fe_key is not None:
        halves = [fe_key[i:i + 32] for i in range(0, len(fe_key), 32)]
        purposes = [PURPOSE_XTS_AES_128] if len(halves) == 1 else PURPOSE_XTS_AES_256
        for n, half in enumerate(halves):
            burn_key_block(chip, facts.fe_key_blocks[n], half, read_protect=True)
            if not facts.crypt_config_field:
                chip.burn_efuse(f"KEY_PURPOSE_{n}", purposes[n])
        if facts.crypt_config_field:
            chip.burn_efuse(facts.crypt_config_field, facts.crypt_config_value or 0xF)
        count = facts.crypt_cnt_release if release else facts.crypt_cnt_development
        chip.burn_efuse(facts.crypt_cnt_field, count)
    if secure_boot_on:
        trusted = signing_keys if digest_keys is None else digest_keys
        for slot, key in enumerate(trusted):
            burn_digest(chip, slot, secure_boot.public_key_digest(key))
        for slot in revoke:
            chip.burn_efuse(facts.sb_revoke_fields[slot], 1)
        chip.burn_efuse(facts.sb_enable_field, 1)
    if efuse_secure_version:
        chip.burn_efuse(facts.secure_version_field, (1 << efuse_secure_version) - 1)

    dev.write(facts.bootloader_offset, dev.bootloader())
    dev.write(chip.partition_table_offset, table.encode())
    dev.write(dev.part("otadata").offset, otadata.blank().encode())
    write_identity(dev, chip.device_id)
    dev.write_app("ota_0", dev.app(app_version, secure_version=secure_version))
    chip.reset()
    return dev


def clone(chip: VirtualChip) -> VirtualChip:
    """An identical chip (flash, eFuses and the engine's hidden key copy)."""
    from espfleet.device.efuse import EfuseController
    from espfleet.device.flash import NorFlash

    efuse = EfuseController(
        chip.chip, data=chip.efuse.file_bytes(), hardware=chip.efuse.hardware_bytes()
    )
    flash = NorFlash(chip.flash.size, chip.flash.snapshot())
    return VirtualChip(
        chip.chip,
        revision=chip.revision,
        flash=flash,
        efuse=efuse,
        partition_table_offset=chip.partition_table_offset,
    )


def running_app(chip: VirtualChip) -> Firmware:
    """Boot ``chip`` and return the running simulated firmware (it must start)."""
    app = SimulatedFirmware()
    result = boot(chip, app)
    assert result.started, result.log
    assert app.running is not None
    return app.running
