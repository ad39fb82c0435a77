"""The boot chain of the virtual ESP32: mask ROM, second-stage bootloader, hand-off.

:func:`boot` does what the silicon and ESP-IDF's bootloader do at reset, and refuses
where they refuse:

* **ROM.** Reads the bootloader at ``facts.bootloader_offset`` through the
  flash-encryption engine when the crypt counter is odd (ciphertext under another key
  decrypts to garbage: ``invalid header``), checks the image, and with secure boot on
  verifies its signature blocks against the eFuse key digests and revocations.
* **Second stage.** Partition table (MD5 row checked), otadata (slot selection and
  rollback of an app left pending-verify, written back through the engine), then the app
  in the chosen slot: chip id and revision, SHA-256, signature, anti-rollback against the
  eFuse ``SECURE_VERSION``. A slot that fails is skipped for the next one, as ESP-IDF does.
* **Hand-off** to an :class:`Application` (the simulated firmware by default).

Every decision is a line on the chip's console in ESP-IDF's log style, also returned in
:attr:`BootResult.log`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from espfleet.chips import ChipFacts
from espfleet.device.console import ROM_TEXT, BootConsole
from espfleet.errors import DeviceError, EspfleetError, FormatError, SigningError
from espfleet.formats import app_image, otadata, partition_table, secure_boot
from espfleet.formats.app_image import AppDescriptor, AppImage
from espfleet.formats.partition_table import Partition, PartitionTable

if TYPE_CHECKING:
    from espfleet.device.chip import VirtualChip
    from espfleet.device.firmware import AppReport

__all__ = [
    "Application",
    "BootRefused",
    "BootResult",
    "HandOff",
    "SecurityState",
    "boot",
    "erase_and_write",
    "otadata_partition",
    "partition_is_encrypted",
    "read_partition",
    "security_state",
    "update_anti_rollback",
    "verify_app_image",
    "write_otadata",
]

Stage = Literal["rom", "bootloader", "app"]

IDF_VERSION = "v5.2.2"
SECTOR = 0x1000
PARTITION_TABLE_SIZE = 0xC00
_IMAGE_MAGIC = 0xE9
_FIRST_READ = 0x10000
#: Header values of max_rev_full meaning "no upper limit" (0: older esptool default).
_MAX_REV_UNSET = (0, 0xFFFF)
#: The ROM loads at most this much bootloader (its IRAM/DRAM are smaller still).
_ROM_READ_LIMIT = 0x20000



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

    @property
    def trusted_digests(self) -> tuple[bytes, ...]:
        return tuple(
            d for i, d in enumerate(self.digests)
            if d is not None and not (i < len(self.revoked) and self.revoked[i])
        )


@dataclass(frozen=True)
class HandOff:
    """What the bootloader hands to the application it started."""

    chip: VirtualChip
    table: PartitionTable
    partition: Partition
    image: AppImage
    app_desc: AppDescriptor
    security: SecurityState
    console: BootConsole


class Application(Protocol):
    """The code that runs once the bootloader jumps to the app (replaceable)."""

    def __call__(self, handoff: HandOff) -> AppReport: ...


@dataclass(frozen=True)
class BootResult:
    """How far one reset got, and why it stopped there."""

    started: bool
    stage: Stage
    reason: str | None
    log: tuple[str, ...]
    slot: str | None
    app: AppReport | None


class _Stop(Exception):
    def __init__(self, stage: Stage, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


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


def partition_is_encrypted(part: Partition, security: SecurityState) -> bool:
    """ESP-IDF treats app, otadata and nvs_keys partitions as encrypted whenever flash
    encryption is on, whatever their flag says; others follow their flag."""
    if not security.flash_encryption:
        return False
    always = part.type == partition_table.APP or part.is_("data", "ota") or part.is_(
        "data", "nvs_keys"
    )
    return always or part.encrypted


def read_partition(
    chip: VirtualChip, part: Partition, security: SecurityState, length: int | None = None
) -> bytes:
    """Read a partition as software on the chip would (through the engine if encrypted)."""
    size = part.size if length is None else min(length, part.size)
    if partition_is_encrypted(part, security):
        return chip.read_decrypted(part.offset, size)
    return chip.flash.read(part.offset, size)


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
            f"image requires chip rev >= {_rev(image.min_rev_full)}, but chip is {_rev(revision)}"
        )
    if image.max_rev_full not in _MAX_REV_UNSET and revision > image.max_rev_full:
        raise BootRefused(
            f"image requires chip rev <= {_rev(image.max_rev_full)}, but chip is {_rev(revision)}"
        )
    if not image.checksum_ok or image.sha256_ok is False:
        raise BootRefused(
            "image hash failed: the image is corrupted (or decrypted with another key)"
        )
    if image.app_desc is None or image.is_bootloader:
        raise BootRefused("no app descriptor: this is not an app image")
    if security.secure_boot:
        _verify_signature(data, security)
    secure_version = image.app_desc.secure_version
    if secure_version < security.secure_version:
        raise BootRefused(
            f"app secure_version {secure_version} is lower than the eFuse secure version "
            f"{security.secure_version}: anti-rollback refuses the downgrade; build the app "
            f"with secure_version >= {security.secure_version}"
        )
    return image, image.app_desc


def boot(chip: VirtualChip, application: Application | None = None) -> BootResult:
    """Reset ``chip`` and run its boot chain; hand off to ``application`` if it gets there."""
    console = BootConsole(sink=chip.console)
    security = security_state(chip)
    try:
        _rom_stage(chip, security, console)
        table = _load_partition_table(chip, security, console)
        part, image, desc = _select_and_load(chip, table, security, console)
    except _Stop as stop:
        return BootResult(False, stop.stage, stop.reason, tuple(console.lines), None, None)
    _finish_bootloader(chip, security, console)
    if application is None:
        from espfleet.device.firmware import SimulatedFirmware

        application = SimulatedFirmware()
    handoff = HandOff(chip, table, part, image, desc, security, console)
    try:
        report = application(handoff)
    except EspfleetError as exc:
        console.error("app", f"abort() was called: {exc}")
        return BootResult(False, "app", str(exc), tuple(console.lines), part.name, None)
    return BootResult(True, "app", None, tuple(console.lines), part.name, report)


# -- ROM ------------------------------------------------------------------------------


def _rom_stage(chip: VirtualChip, security: SecurityState, con: BootConsole) -> None:
    facts = chip.facts
    text = ROM_TEXT[facts.name]
    for line in (*text.banner, "", text.reset_line):
        con.rom(line)
    offset = facts.bootloader_offset
    if security.flash_encryption and chip.hardware_key() is None:
        con.rom(f"flash read err, {offset:x}")
        raise _Stop("rom", f"ROM: flash read err at 0x{offset:x}: the crypt counter turns flash "
                           "encryption on but no flash-encryption key is burned; this chip "
                           "cannot boot (burn the key before the crypt counter)")
    read = chip.read_decrypted if security.flash_encryption else chip.flash.read
    data = _read_image(lambda n: read(offset, n), min(_ROM_READ_LIMIT, chip.flash.size - offset))
    if data[0] != _IMAGE_MAGIC:
        word = int.from_bytes(data[:4], "little")
        con.rom(text.invalid_header.format(word=word))
        raise _Stop("rom", f"ROM: invalid header 0x{word:08x} at 0x{facts.bootloader_offset:x}"
                    + _garbage_hint(security))
    try:
        image = app_image.parse(data)
    except FormatError as exc:
        con.rom(f"invalid image: {exc}")
        raise _Stop("rom", f"ROM: bootloader image does not parse: {exc}") from None
    if not image.checksum_ok or image.sha256_ok is False:
        con.rom("Checksum failure")
        raise _Stop("rom", "ROM: bootloader checksum/SHA-256 mismatch: the bootloader is "
                           "corrupted (or decrypted with another key)")
    if security.secure_boot:
        if chip.revision < facts.sb_v2_min_revision:
            con.rom(text.secure_boot_fail[0])
            raise _Stop("rom", f"ROM: secure boot V2 needs chip revision "
                               f">= {_rev(facts.sb_v2_min_revision)}")
        try:
            slot = _verify_signature(data, security)
        except BootRefused as exc:
            for line in text.secure_boot_fail:
                con.rom(line)
            raise _Stop("rom", f"ROM: secure boot refused the bootloader: {exc}") from None
        con.rom(f"secure boot v2: bootloader verified with key digest slot {slot}")
    con.rom(text.load_line.format(length=image.image_length))
    con.rom(text.entry_line)


def _garbage_hint(security: SecurityState) -> str:
    if security.flash_encryption:
        return (" (flash encryption is on: the bootloader is plaintext or encrypted with "
                "another key; flash it encrypted with this device's key)")
    return " (nothing flashed there, or flash encryption is off and the image is encrypted)"


def _verify_signature(data: bytes, security: SecurityState) -> int:
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


# -- second stage bootloader -------------------------------------------------------------


def _load_partition_table(
    chip: VirtualChip, security: SecurityState, con: BootConsole
) -> PartitionTable:
    facts = chip.facts
    con.info("boot", f"ESP-IDF {IDF_VERSION} 2nd stage bootloader")
    con.info("boot", f"chip revision: {_rev(chip.revision)}")
    con.info(f"boot.{facts.name}", f"SPI Flash Size : {chip.flash.size // (1024 * 1024)}MB")
    offset = facts.default_partition_table_offset
    if security.flash_encryption:
        raw = chip.read_decrypted(offset, PARTITION_TABLE_SIZE)
    else:
        raw = chip.flash.read(offset, PARTITION_TABLE_SIZE)
    try:
        table = partition_table.PartitionTable.decode(raw)
    except FormatError as exc:
        con.error("flash_parts", str(exc))
        con.error("boot", "Failed to verify partition table")
        con.error("boot", "load partition table error!")
        raise _Stop("bootloader", f"partition table at 0x{offset:x} refused: {exc}") from None
    con.info("boot", "Partition Table:")
    con.info("boot", "## Label            Type ST Offset   Length")
    for i, part in enumerate(table.entries):
        con.info(
            "boot",
            f"{i:2d} {part.name:<16} {part.type:02x}   {part.subtype:02x} "
            f"{part.offset:08x} {part.size:08x}",
        )
    con.info("boot", "End of partition table")
    return table


def otadata_partition(table: PartitionTable) -> Partition | None:
    """The table's otadata partition (data/ota), if any."""
    found = table.by_type("data", "ota")
    return found[0] if found else None


def _select_and_load(
    chip: VirtualChip, table: PartitionTable, security: SecurityState, con: BootConsole
) -> tuple[Partition, AppImage, AppDescriptor]:
    """ESP-IDF's order: the selected slot, then the slots below it down to factory, then
    the slots above it; the first image that passes every check boots."""
    factories = table.by_type("app", "factory")
    factory = factories[0] if factories else None
    ota = table.app_slots()
    ota_part = otadata_partition(table)
    candidates: list[Partition] = []
    confirmed: Partition | None = None
    if ota and ota_part is not None:
        index, state = _run_otadata(chip, ota_part, len(ota), security, con)
        if index is not None:
            chosen = ota[index]
            active = state.active()
            if active is not None and active.state == otadata.OtaState.VALID:
                confirmed = chosen
            candidates = [chosen, *reversed(ota[:index])]
            candidates += [*([factory] if factory else []), *ota[index + 1:]]
    if not candidates:
        candidates = [*([factory] if factory else []), *ota]
        if candidates:
            con.info("boot", f"Defaulting to {candidates[0].name} partition")
    for part in candidates:
        loaded = _try_load(chip, part, security, con)
        if loaded is not None:
            con.info("boot", f"Loaded app from partition at offset 0x{part.offset:x}")
            if part == confirmed:
                update_anti_rollback(chip, loaded[1].secure_version, con)
            return part, *loaded
    con.error("boot", "No bootable app partitions in the partition table")
    raise _Stop("bootloader", "no bootable app: every app slot was refused (see the log)")


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


def _run_otadata(
    chip: VirtualChip, part: Partition, num_slots: int, security: SecurityState,
    con: BootConsole,
) -> tuple[int | None, otadata.OtaData]:
    """Slot selection with app rollback; the updated otadata goes back to flash."""
    raw = read_partition(chip, part, security, otadata.OTADATA_SIZE)
    try:
        state = otadata.decode(raw)
    except FormatError as exc:
        con.error("boot", f"otadata unreadable ({exc}): using the default app")
        return None, otadata.blank()
    for index, entry in enumerate(state.entries):
        if entry is not None and entry.state == otadata.OtaState.PENDING_VERIFY:
            con.warn("boot", f"otadata[{index}]: app in ota_{entry.slot(num_slots)} was never "
                             "confirmed (still pending verify): marking it ABORTED, rolling back")
    slot, updated = otadata.bootloader_step(state, num_slots)
    if updated != state:
        write_otadata(chip, part, security, raw, updated.encode())
        con.info("boot", "otadata updated")
    if slot is None:
        con.info("boot", "otadata holds no usable entry")
    else:
        active = updated.active()
        assert active is not None
        con.info("boot", f"otadata selects ota_{slot} (ota_seq={active.seq}, "
                         f"state {active.state.name})")
    return slot, updated


def write_otadata(
    chip: VirtualChip, part: Partition, security: SecurityState, old: bytes, new: bytes
) -> None:
    """Rewrite only the otadata sectors that changed: erase, then program (through the
    engine when encrypted), one sector at a time as ESP-IDF does, so a power cut can
    damage at most the sector being written."""
    for start in range(0, otadata.OTADATA_SIZE, SECTOR):
        block = new[start:start + SECTOR]
        if block == old[start:start + SECTOR]:
            continue
        erase_and_write(chip, part, security, part.offset + start, block)


def erase_and_write(
    chip: VirtualChip, part: Partition, security: SecurityState, addr: int, data: bytes
) -> None:
    """Erase the sectors under ``data`` and program it in 4 KB chunks, as software on the
    chip writes a partition (``esp_partition_write``)."""
    chip.flash.erase(addr, _align(len(data), SECTOR))
    encrypted = partition_is_encrypted(part, security)
    for pos in range(0, len(data), SECTOR):
        chunk = data[pos:pos + SECTOR]
        if encrypted:
            chip.write_encrypted(addr + pos, chunk)
        else:
            chip.flash.program(addr + pos, chunk)


def _try_load(
    chip: VirtualChip, part: Partition, security: SecurityState, con: BootConsole
) -> tuple[AppImage, AppDescriptor] | None:
    con.info("esp_image", f"loading {part.name} at 0x{part.offset:x}")
    data = _read_app(chip, part, security)
    if data[0] != _IMAGE_MAGIC:
        con.error("esp_image", f"image at 0x{part.offset:x} has invalid magic byte "
                               f"(nothing flashed here?)")
        return None
    try:
        image, desc = verify_app_image(data, chip.facts, chip.revision, security)
    except BootRefused as exc:
        tag = "secure_boot_v2" if "signature" in str(exc) else "esp_image"
        con.error(tag, str(exc))
        con.error("boot", f"{part.name} at 0x{part.offset:x} is not bootable")
        return None
    if security.secure_boot:
        con.info("secure_boot_v2", "Verifying with RSA-PSS...")
        con.info("secure_boot_v2", "Signature verified successfully!")
    con.info("boot", f"App version: {desc.version}, secure_version: {desc.secure_version} "
                     f"(eFuse: {security.secure_version})")
    return image, desc


def _read_app(chip: VirtualChip, part: Partition, security: SecurityState) -> bytes:
    return _read_image(lambda n: read_partition(chip, part, security, n), part.size)


def _read_image(read: Callable[[int], bytes], limit: int) -> bytes:
    """Read just enough to hold an image and its signature sector (slots are large and
    decrypting a whole one per boot is slow): grow the read until the image parses."""
    size = min(_FIRST_READ, limit)
    while True:
        data = read(size)
        if data[0] != _IMAGE_MAGIC or size >= limit:
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


def _finish_bootloader(chip: VirtualChip, security: SecurityState, con: BootConsole) -> None:
    if security.secure_boot:
        con.info("secure_boot_v2", "secure boot v2 is already enabled, continuing..")
    if security.flash_encryption:
        facts = chip.facts
        count = chip.efuses().get_int(facts.crypt_cnt_field).bit_count()
        left = (facts.crypt_cnt_bits - count) // 2
        con.info("flash_encrypt", f"flash encryption is enabled ({left} plaintext flashes left)")
    else:
        con.warn("flash_encrypt", "Flash encryption is not enabled: flash contents are plaintext")
    con.info("boot", "Disabling RNG early entropy source...")


def _parse(data: bytes, what: str) -> AppImage:
    try:
        return app_image.parse(data)
    except FormatError as exc:
        raise BootRefused(f"{what} does not parse: {exc}") from None


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def _rev(full: int) -> str:
    return f"v{full // 100}.{full % 100}"
