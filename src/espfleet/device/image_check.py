"""The checks the ROM and the bootloader apply to an image, from the eFuse state.

:class:`SecurityState` is what the eFuses say at reset; :func:`verify_app_image` is the
second-stage bootloader's verdict on an app (also run by the app before an OTA switch);
:func:`verify_signature` is the Secure Boot V2 check the ROM applies to the bootloader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from espfleet.chips import ChipFacts
from espfleet.device.console import BootConsole
from espfleet.errors import DeviceError, FormatError, SigningError
from espfleet.formats import app_image, secure_boot
from espfleet.formats.app_image import AppDescriptor, AppImage

if TYPE_CHECKING:
    from espfleet.device.chip import VirtualChip

__all__ = [
    "IMAGE_MAGIC",
    "BootRefused",
    "SecurityState",
    "read_image",
    "rev_text",
    "security_state",
    "update_anti_rollback",
    "verify_app_image",
    "verify_signature",
]

IMAGE_MAGIC = 0xE9
SECTOR = 0x1000
_FIRST_READ = 0x10000
#: Header values of max_rev_full meaning "no upper limit" (0: older esptool default).
_MAX_REV_UNSET = (0, 0xFFFF)


class BootRefused(DeviceError):
    """An image or table the boot chain (or the app's OTA check) refuses."""


@dataclass(frozen=True)
class SecurityState:
    """What the eFuses tell the ROM and the bootloader at reset."""

    flash_encryption: bool
    secure_boot: bool
    #: Secure boot V2 public-key digests by slot (None: slot empty).
    digests: tuple[bytes | None, ...]
    #: Whether each digest slot is revoked.
    revoked: tuple[bool, ...]
    #: Signature blocks the ROM reads (ESP32 has one digest slot and reads one block).
    max_signature_blocks: int
    #: Signature schemes the chip's ROM verifies (chips.ChipFacts.secure_boot_schemes).
    schemes: tuple[str, ...]
    #: The anti-rollback counter: the number of bits set in ``SECURE_VERSION``.
    secure_version: int



def security_state(chip: VirtualChip) -> SecurityState:
    """Read the security eFuses the way the ROM does at reset."""
    facts = chip.facts
    efuses = chip.efuses()
    slots = len(facts.sb_digest_purposes or facts.sb_digest_blocks)
    digests: list[bytes | None] = [None] * slots
    revoked = [False] * slots
    for found in efuses.secure_boot_digests():
        digests[found.slot] = found.digest
        revoked[found.slot] = found.revoked
    for slot, name in enumerate(facts.sb_revoke_fields):
        revoked[slot] = revoked[slot] or bool(efuses.get_int(name))
    return SecurityState(
        flash_encryption=chip.flash_encryption_enabled(),
        secure_boot=bool(efuses.get_int(facts.sb_enable_field)),
        digests=tuple(digests),
        revoked=tuple(revoked),
        max_signature_blocks=slots,
        schemes=tuple(facts.secure_boot_schemes),
        secure_version=efuses.get_int(facts.secure_version_field).bit_count(),
    )


def verify_app_image(
    data: bytes, facts: ChipFacts, revision: int, security: SecurityState
) -> tuple[AppImage, AppDescriptor]:
    """The bootloader's checks of an app image (also what the app runs before an OTA
    switch): header, chip id, minimum revision, checksum and SHA-256, signature,
    anti-rollback. Raises :class:`BootRefused` saying which one failed."""
    image = _parse(data, "app image")
    if image.chip != facts.name:
        raise BootRefused(
            f"mismatch chip ID, expected {facts.image_chip_id}, found {image.chip_id}: "
            f"the image is not built for {facts.name}"
        )
    if image.min_rev_full > revision:
        raise BootRefused(
            f"image requires chip rev >= {rev_text(image.min_rev_full)}, "
            f"but chip is {rev_text(revision)}"
        )
    if image.max_rev_full not in _MAX_REV_UNSET and revision > image.max_rev_full:
        raise BootRefused(
            f"image requires chip rev <= {rev_text(image.max_rev_full)}, "
            f"but chip is {rev_text(revision)}"
        )
    if not image.checksum_ok or image.sha256_ok is False:
        raise BootRefused(
            "image hash failed: the image is corrupted (or decrypted with another key)"
        )
    if image.app_desc is None or image.is_bootloader:
        raise BootRefused("no app descriptor: this is not an app image")
    if security.secure_boot:
        verify_signature(data, security)
    secure_version = image.app_desc.secure_version
    if secure_version < security.secure_version:
        raise BootRefused(
            f"app secure_version {secure_version} is lower than the eFuse secure version "
            f"{security.secure_version}: anti-rollback refuses the downgrade; build the app "
            f"with secure_version >= {security.secure_version}"
        )
    return image, image.app_desc


def verify_signature(data: bytes, security: SecurityState) -> int:
    try:
        slot = secure_boot.verify_with_digests(
            data, security.digests, security.revoked, max_blocks=security.max_signature_blocks
        )
        digest = security.digests[slot]
        scheme = next(
            b.scheme for b in secure_boot.signature_blocks(data) if b.key_digest == digest
        )
    except (SigningError, FormatError) as exc:
        raise BootRefused(f"signature verification failed: {exc}") from None
    if scheme not in security.schemes:
        raise BootRefused(
            f"signature verification failed: the image is signed with {scheme}, but this "
            f"chip's secure boot V2 verifies {', '.join(security.schemes)} only"
        )
    return slot


def update_anti_rollback(chip: VirtualChip, secure_version: int, con: BootConsole) -> None:
    """Raise the eFuse anti-rollback counter to ``secure_version`` (never lowers it).

    The counter is thermometer-coded: version n is n bits set. ESP-IDF's bootloader does
    this for a VALID app (CONFIG_BOOTLOADER_APP_ANTI_ROLLBACK), and the app does it in
    ``esp_ota_mark_app_valid_cancel_rollback``.
    """
    facts = chip.facts
    current = chip.efuses().get_int(facts.secure_version_field).bit_count()
    if secure_version <= current:
        return
    if secure_version > facts.secure_version_bits:
        con.error("efuse", f"secure_version {secure_version} exceeds the "
                           f"{facts.secure_version_bits}-bit eFuse counter")
        return
    chip.burn_efuse(facts.secure_version_field, (1 << secure_version) - 1)
    con.info("efuse", f"Anti-rollback: eFuse secure version {current} -> {secure_version}")


def read_image(read: Callable[[int], bytes], limit: int) -> bytes:
    """Read just enough to hold an image and its signature sector (slots are large and
    decrypting a whole one per boot is slow): grow the read until the image parses."""
    size = min(_FIRST_READ, limit)
    while True:
        data = read(size)
        if data[0] != IMAGE_MAGIC or size >= limit:
            return data
        try:
            image = app_image.parse(data)
        except FormatError:
            size = min(size * 4, limit)
            continue
        needed = min(_align(image.image_length, SECTOR) + SECTOR, limit)
        if needed <= size:
            return data[:needed]  # the image, its padding, and the signature sector
        size = needed


def _parse(data: bytes, what: str) -> AppImage:
    try:
        return app_image.parse(data)
    except FormatError as exc:
        raise BootRefused(f"{what} does not parse: {exc}") from None


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def rev_text(full: int) -> str:
    return f"v{full // 100}.{full % 100}"
