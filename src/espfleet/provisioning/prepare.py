"""Batch preparation: from a workspace and firmware inputs to the :class:`FleetPolicy`
every device of the batch shares. Everything that can refuse does so here, before
anything is written: firmware checks, passphrases, signing.

The bootloader and the app are signed ONCE per batch with the workspace's Secure Boot
V2 key; an image that is already signed must carry a valid signature by that key (an
image signed by another key is refused, as the chip would refuse to boot it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from espfleet.device_id import device_id_for, format_mac, parse_device_id
from espfleet.errors import FormatError, InputError, SigningError
from espfleet.formats import app_image, secure_boot
from espfleet.pki.ca import cert_pem
from espfleet.provisioning.bundle import FirmwareInfo
from espfleet.provisioning.efuse_plan import plan_for
from espfleet.provisioning.inputs import FirmwareSource, check_firmware
from espfleet.provisioning.macs import LOCAL_PREFIX, MacEntry, allocate_macs
from espfleet.provisioning.plan import DeviceRequest, FleetPolicy

#: Registry statuses of identities that must never come back.
RETIRED_STATUSES = ("revoked", "decommissioned")

__all__ = [
    "RETIRED_STATUSES",
    "Allocation",
    "build_policy",
    "is_signed",
    "record_allocation",
    "requests_for",
    "sign_or_verify",
    "unfinished_allocations",
]


def sign_or_verify(image: bytes, key: rsa.RSAPrivateKey, what: str) -> bytes:
    """``image`` signed with ``key``; an already signed image is verified instead."""
    if is_signed(image):
        try:
            secure_boot.verify(image, key)
        except SigningError:
            raise InputError(
                f"{what} is already signed, but not with this fleet's Secure Boot V2 key: "
                "a chip with this fleet's digest would refuse to boot it; pass the unsigned "
                "image and espfleet signs it"
            ) from None
        return image
    return secure_boot.sign(image, [key])


def is_signed(image: bytes) -> bool:
    """Whether a Secure Boot V2 signature sector follows the image."""
    try:
        secure_boot.signed_length(image)
    except SigningError:
        return False
    return True


def build_policy(
    *,
    workspace: Any,
    source: FirmwareSource,
    signing_key: rsa.RSAPrivateKey,
    mode: str,
    flash_size: str | None = None,
    merged: bool = False,
) -> FleetPolicy:
    """Check the firmware, sign it once, and derive the batch policy."""
    config = workspace.config
    chip = config.chip
    efuse_plan = plan_for(chip, mode)
    try:
        desc = app_image.parse(source.app).app_desc
    except FormatError as error:
        raise InputError(f"app image {source.origin} does not parse: {error}") from None
    if desc is None:
        raise InputError(
            f"app image {source.origin} has no ESP-IDF app descriptor (version, secure "
            "version): build it with ESP-IDF or Arduino-ESP32, not as a raw binary"
        )
    signed_app = sign_or_verify(source.app, signing_key, f"app image {source.origin}")
    bootloader_signed = source.bootloader is not None and is_signed(source.bootloader)
    checked = check_firmware(
        source, chip=chip, mode=mode, flash_size=flash_size,
        signed_app_size=len(signed_app), bootloader_signed=bootloader_signed,
        default_flash_size=config.flash_size,
    )
    signed_boot = sign_or_verify(
        checked.bootloader, signing_key, f"bootloader from {source.bootloader_origin}"
    )
    host = config.broker_hosts[0]
    uri_host = f"[{host}]" if ":" in host else host  # an IPv6 address goes in brackets
    return FleetPolicy(
        chip=chip,
        mode=efuse_plan.mode,
        key_policy=config.key_policy,
        flash_size=checked.flash_size,
        table=checked.table,
        table_offset=checked.table_offset,
        signed_bootloader=signed_boot,
        signed_app=signed_app,
        secure_boot_digest=workspace.secure_boot_digest(),
        efuse_plan=efuse_plan,
        firmware=FirmwareInfo(
            project_name=desc.project_name,
            version=desc.version,
            secure_version=desc.secure_version,
            app_sha256=hashlib.sha256(signed_app).hexdigest(),
        ),
        broker_uri=f"mqtts://{uri_host}:{config.broker_port}",
        recovery_uri=f"mqtts://{uri_host}:{config.recovery_port}",
        ca_chain_pem=workspace.chain_pem().decode(),
        ota_ca_pem=cert_pem(workspace.root_cert).decode(),
        merged=merged,
        bootloader_verifies_app=checked.secure_bootloader,
    )


@dataclass(frozen=True)
class Allocation:
    """Requests of a batch, plus the MACs ``--count`` allocated (to record first)."""

    requests: tuple[DeviceRequest, ...]
    new_macs: tuple[bytes, ...] = ()
    resumed: int = 0


def requests_for(
    chip: str,
    *,
    entries: Sequence[MacEntry] = (),
    device_ids: Sequence[str] = (),
    count: int | None = None,
    registry: Any = None,
    wifi_ssid: str | None = None,
    wifi_pass: str | None = None,
) -> Allocation:
    """Turn ``--macs`` entries, ``--device-id`` or ``--count`` into device requests.

    ``--count`` first resumes devices allocated by an interrupted run (registry status
    ``allocated``, no bundle recorded), then allocates fresh MACs after every MAC the
    registry knows.
    """
    requests: list[DeviceRequest] = []
    for entry in entries:
        requests.append(DeviceRequest(
            chip, entry.mac, entry.wifi_ssid or wifi_ssid,
            entry.wifi_pass if entry.wifi_ssid else wifi_pass,
        ))
    for value in device_ids:
        parsed = parse_device_id(value)
        if parsed.mac is None or parsed.chip is None:
            raise InputError(
                f"--device-id {value}: provisioning needs a chip id of the form "
                f"{chip}-<12 hex digits of the base MAC>"
            )
        if parsed.chip != chip:
            raise InputError(f"--device-id {value} is a {parsed.chip}, but this fleet is {chip}")
        requests.append(DeviceRequest(chip, parsed.mac, wifi_ssid, wifi_pass))
    new: list[bytes] = []
    resumed = 0
    records = registry.list_devices() if registry is not None else None
    if count is not None:
        if records is None:
            raise InputError("--count needs the registry to allocate MACs")
        unfinished = unfinished_allocations(records, chip)[:count]
        resumed = len(unfinished)
        for record in unfinished:
            requests.append(DeviceRequest(chip, bytes.fromhex(record.mac), wifi_ssid, wifi_pass))
        if count > resumed:
            used = [bytes.fromhex(r.mac) for r in records if r.mac]
            new = allocate_macs(count - resumed, used)
            requests += [DeviceRequest(chip, mac, wifi_ssid, wifi_pass) for mac in new]
    seen: set[str] = set()
    for request in requests:
        if request.device_id in seen:
            raise InputError(
                f"device {request.device_id} (MAC {format_mac(request.mac)}) is listed twice: "
                "every device needs its own MAC"
            )
        seen.add(request.device_id)
    if records is not None:
        _refuse_mac_conflicts(records, requests)
    return Allocation(tuple(requests), tuple(new), resumed)


def unfinished_allocations(records: Sequence[Any], chip: str) -> list[Any]:
    """Registry records of MACs ``--count`` allocated whose bundle was never built (an
    interrupted run): the next ``--count`` builds these before allocating new ones."""
    # only MACs of espfleet's own range: `cert issue` registers a board's real MAC
    # as "allocated" too, and --count must never build a bundle for that board
    return [
        r for r in records
        if r.status == "allocated" and r.chip == chip and r.mac and not r.bundle_sha256
        and bytes.fromhex(r.mac)[:3] == LOCAL_PREFIX
    ]


def _refuse_mac_conflicts(records: Sequence[Any], requests: Sequence[DeviceRequest]) -> None:
    by_mac = {r.mac: r.device_id for r in records if r.mac}
    retired = {r.device_id: r.status for r in records if r.status in RETIRED_STATUSES}
    for request in requests:
        if request.device_id in retired:
            raise InputError(
                f"device {request.device_id} is {retired[request.device_id]} in the registry: "
                "a retired identity is never provisioned again; give the board a new MAC"
            )
        owner = by_mac.get(request.mac.hex())
        if owner is not None and owner != request.device_id:
            raise InputError(
                f"MAC {format_mac(request.mac)} already belongs to {owner} in the registry: "
                "every device needs its own MAC"
            )


def record_allocation(registry: Any, chip: str, mode: str, macs: Sequence[bytes]) -> None:
    """Record ``--count``'s fresh MACs as ``allocated`` devices, in one transaction."""
    import datetime as dt

    from espfleet.backend.models import Device

    now = dt.datetime.now(dt.UTC)
    with registry.transaction() as session:
        for mac in macs:
            session.add(Device(
                device_id=device_id_for(chip, mac), chip=chip, mac=mac.hex(),
                status="allocated", mode=mode, created_at=now, updated_at=now,
            ))
