"""The simulated application the virtual ESP32 boots into.

It does what a provisioned espfleet app does in its first second of life: read the
``nvs_keys`` partition through the flash-encryption engine, decrypt the ``nvs``
partition with those keys, load its identity from namespace ``espfleet``, run a
self-test, and confirm an image the bootloader left pending-verify (burning the
anti-rollback eFuse, as ``esp_ota_mark_app_valid_cancel_rollback`` does). It can also
write an OTA image into the passive slot through the engine and select it.

The bootloader hands off through :class:`espfleet.device.boot.Application`; a later
issue replaces this app with the MQTT device agent behind the same interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.x509.oid import NameOID

from espfleet.device.boot import HandOff
from espfleet.device.image_check import BootRefused, update_anti_rollback, verify_app_image
from espfleet.device.partition_io import (
    erase_and_write,
    otadata_partition,
    read_partition,
    write_otadata,
)
from espfleet.device_id import parse_device_id
from espfleet.errors import DeviceError, FormatError, InputError
from espfleet.formats import nvs, nvs_keys, otadata
from espfleet.formats.partition_table import Partition
from espfleet.provisioning.identity import NVS_NAMESPACE, REQUIRED_KEYS, DeviceIdentity

if TYPE_CHECKING:
    from espfleet.device.chip import VirtualChip

__all__ = [
    "AppReport",
    "Firmware",
    "Identity",
    "SimulatedFirmware",
]



@dataclass(frozen=True)
class Identity:
    """The device identity as the app reads it from encrypted NVS."""

    device_id: str
    cert_serial: str
    certificate: x509.Certificate
    nvs: DeviceIdentity


@dataclass(frozen=True)
class AppReport:
    """What the app reports once it runs (later: the MQTT ``state`` message)."""

    device_id: str
    cert_serial: str
    fw_version: str
    project_name: str
    secure_version: int
    efuse_secure_version: int
    running_slot: str
    broker_uri: str
    #: The device certificate's notAfter (ISO 8601, UTC).
    cert_not_after: str
    #: True when this boot confirmed a pending-verify image (otadata -> VALID).
    confirmed_update: bool


class Firmware:
    """The running app on one chip: identity, self-test, OTA into the passive slot."""

    def __init__(self, handoff: HandOff) -> None:
        self.handoff = handoff
        self.chip: VirtualChip = handoff.chip
        self.running: Partition = handoff.partition

    def run(self) -> AppReport:
        con = self.handoff.console
        desc = self.handoff.app_desc
        con.info("cpu_start", "Pro cpu start user code")
        con.info("app_init", f"Project name:     {desc.project_name}")
        con.info("app_init", f"App version:      {desc.version}")
        con.info("app_init", f"Secure version:   {desc.secure_version}")
        identity = self.read_identity()
        con.info("espfleet", f"device id {identity.device_id}, certificate serial "
                             f"{identity.cert_serial}")
        self.self_test(identity)
        confirmed = self._confirm_if_pending()
        efuse_sv = self.chip.efuses().get_int(self.chip.facts.secure_version_field).bit_count()
        return AppReport(
            device_id=identity.device_id,
            cert_serial=identity.cert_serial,
            fw_version=desc.version,
            project_name=desc.project_name,
            secure_version=desc.secure_version,
            efuse_secure_version=efuse_sv,
            running_slot=self.running.name,
            broker_uri=identity.nvs.broker_uri,
            cert_not_after=identity.certificate.not_valid_after_utc.isoformat(),
            confirmed_update=confirmed,
        )

    def self_test(self, identity: Identity) -> None:
        """What the app checks before it confirms an update: the identity in NVS is this
        chip's (a real-chip device id names the chip and its eFuse MAC)."""
        claimed = parse_device_id(identity.device_id)
        if claimed.chip is None:
            return
        own = self.chip.device_id
        if identity.device_id != own:
            raise DeviceError(
                f"self-test failed: the NVS identity is {identity.device_id} but this chip is "
                f"{own}: the flash holds another device's identity; re-provision this device"
            )

    # -- identity --------------------------------------------------------------------

    def read_identity(self) -> Identity:
        """nvs_keys through the engine, then the encrypted nvs partition, then the identity."""
        security = self.handoff.security
        keys_part = self._find("nvs_keys")
        nvs_part = self._find("nvs")
        try:
            keys = nvs_keys.NvsKeys.decode(read_partition(self.chip, keys_part, security))
            entries = nvs.read(read_partition(self.chip, nvs_part, security), keys)
        except FormatError as exc:
            raise DeviceError(
                f"cannot read the encrypted NVS identity: {exc}; re-provision this device"
            ) from None
        values = {
            k: v.value for k, v in entries.get(NVS_NAMESPACE, {}).items() if v.type == "string"
        }
        missing = [k.value for k in REQUIRED_KEYS if k.value not in values]
        if missing:
            raise DeviceError(
                f"NVS namespace {NVS_NAMESPACE!r} lacks {', '.join(missing)}: the device was "
                "not provisioned by espfleet; re-provision it"
            )
        cert = _load_cert(str(values["device_cert"]))
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not cns:
            raise DeviceError("the device certificate has no CN: re-provision this device")
        device_id = str(cns[0].value)
        try:
            stored = DeviceIdentity.from_entries(
                device_id, {k: str(v) for k, v in values.items()}
            )
        except InputError as exc:
            raise DeviceError(f"the NVS identity is not valid: {exc}; re-provision") from None
        return Identity(device_id, f"{cert.serial_number:x}", cert, stored)

    # -- otadata ---------------------------------------------------------------------

    def _confirm_if_pending(self) -> bool:
        """Self-test passed (we got here with an identity): confirm a pending image and
        raise the anti-rollback eFuse, as ``esp_ota_mark_app_valid_cancel_rollback``."""
        slots = self.chip_slots()
        ota_part = otadata_partition(self.handoff.table)
        if ota_part is None or self.running not in slots:
            return False
        security = self.handoff.security
        raw = read_partition(self.chip, ota_part, security, otadata.OTADATA_SIZE)
        state = otadata.decode(raw)
        active = state.active()
        if active is None or active.state != otadata.OtaState.PENDING_VERIFY:
            return False
        if active.slot(len(slots)) != slots.index(self.running):
            return False
        confirmed = otadata.set_state(state, otadata.OtaState.VALID)
        write_otadata(self.chip, ota_part, security, raw, confirmed.encode())
        self.handoff.console.info("esp_ota_ops", "Self-test passed: app marked valid, "
                                                 "rollback cancelled")
        update_anti_rollback(
            self.chip, self.handoff.app_desc.secure_version, self.handoff.console
        )
        return True

    def reject_update(self) -> None:
        """The running update failed its checks: mark it INVALID so the next reset boots
        the previous app (``esp_ota_mark_app_invalid_rollback_and_reboot``)."""
        ota_part = otadata_partition(self.handoff.table)
        slots = self.chip_slots()
        security = self.handoff.security
        if ota_part is None or self.running not in slots:
            raise DeviceError(f"{self.running.name} is not an OTA slot: there is nothing to "
                              "roll back to")
        raw = read_partition(self.chip, ota_part, security, otadata.OTADATA_SIZE)
        state = otadata.decode(raw)
        active = state.active()
        if active is None or active.slot(len(slots)) != slots.index(self.running):
            raise DeviceError(f"otadata does not select {self.running.name}: nothing to reject")
        if active.state == otadata.OtaState.VALID:
            raise DeviceError(f"{self.running.name} was already confirmed valid: ship a new "
                              "update instead of rolling back")
        rejected = otadata.set_state(state, otadata.OtaState.INVALID)
        write_otadata(self.chip, ota_part, security, raw, rejected.encode())
        self.handoff.console.error("esp_ota_ops", f"{self.running.name} marked invalid: "
                                                  "rolling back on the next reset")

    # -- OTA -------------------------------------------------------------------------

    def passive_slot(self) -> Partition:
        """The OTA slot the next update goes to (the one after the running one)."""
        slots = self.chip_slots()
        if not slots:
            raise DeviceError("the partition table has no OTA slots: OTA needs ota_0/ota_1")
        if self.running in slots:
            return slots[(slots.index(self.running) + 1) % len(slots)]
        return slots[0]

    def write_ota(self, image: bytes) -> Partition:
        """Write ``image`` to the passive slot, verify what the flash holds, select it.

        Like esp_ota_begin/write/end + esp_ota_set_boot_partition: the slot is erased
        and written in 4 KB chunks through the engine; the read-back image must pass the
        bootloader's checks (signature, anti-rollback) before otadata is flipped. A power
        cut (an armed :class:`espfleet.device.flash.PowerCut`) propagates from any step.
        """
        target = self.passive_slot()
        if len(image) > target.size:
            raise BootRefused(
                f"OTA image of {len(image)} bytes does not fit slot {target.name} "
                f"({target.size} bytes)"
            )
        erase_and_write(self.chip, target, self.handoff.security, target.offset, image)
        written = read_partition(self.chip, target, self.handoff.security, len(image))
        verify_app_image(written, self.chip.facts, self.chip.revision, self.handoff.security)
        self.select(target)
        return target

    def select(self, target: Partition) -> None:
        """Make ``target`` the next boot slot (new otadata entry in state NEW)."""
        slots = self.chip_slots()
        ota_part = otadata_partition(self.handoff.table)
        if ota_part is None or target not in slots:
            raise DeviceError(f"cannot select {target.name}: the partition table needs "
                              "otadata and the target must be an OTA slot")
        security = self.handoff.security
        raw = read_partition(self.chip, ota_part, security, otadata.OTADATA_SIZE)
        try:
            state = otadata.decode(raw)
        except FormatError:
            state = otadata.blank()
        updated = otadata.select(state, slots.index(target), len(slots))
        write_otadata(self.chip, ota_part, security, raw, updated.encode())
        self.handoff.console.info("esp_ota_ops", f"next boot: {target.name}")

    # -- partitions ------------------------------------------------------------------

    def chip_slots(self) -> list[Partition]:
        """The OTA app slots, ota_0 first."""
        return self.handoff.table.app_slots()

    def _find(self, subtype: str) -> Partition:
        found = self.handoff.table.by_type("data", subtype)
        if not found:
            raise DeviceError(f"the partition table has no {subtype} partition: re-provision")
        return found[0]


class SimulatedFirmware:
    """The default :class:`~espfleet.device.boot.Application`; keeps the running app."""

    def __init__(self) -> None:
        self.running: Firmware | None = None

    def __call__(self, handoff: HandOff) -> AppReport:
        self.running = Firmware(handoff)
        return self.running.run()


def _load_cert(pem: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise DeviceError(
            f"device_cert in NVS is not a certificate ({exc}): re-provision"
        ) from None
