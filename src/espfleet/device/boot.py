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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from espfleet.device.console import ROM_TEXT, BootConsole
from espfleet.device.image_check import (
    IMAGE_MAGIC,
    BootRefused,
    SecurityState,
    read_image,
    rev_text,
    security_state,
    update_anti_rollback,
    verify_app_image,
    verify_signature,
)
from espfleet.device.partition_io import otadata_partition, read_partition, write_otadata
from espfleet.errors import EspfleetError, FormatError
from espfleet.formats import app_image, otadata, partition_table
from espfleet.formats.app_image import AppDescriptor, AppImage
from espfleet.formats.partition_table import Partition, PartitionTable

if TYPE_CHECKING:
    from espfleet.device.chip import VirtualChip
    from espfleet.device.firmware import AppReport

__all__ = ["IDF_VERSION", "Application", "BootResult", "HandOff", "Stage", "boot"]

Stage = Literal["rom", "bootloader", "app"]

IDF_VERSION = "v5.2.2"
PARTITION_TABLE_SIZE = 0xC00
_SECTOR = 0x1000
#: Where a moved partition table is looked for when the expected one is missing (hint).
_TABLE_SEARCH_END = 0x20000
#: The ROM loads at most this much bootloader (its IRAM/DRAM are smaller still).
_ROM_READ_LIMIT = 0x20000



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


def boot(chip: VirtualChip, application: Application | None = None) -> BootResult:
    """Reset ``chip`` and run its boot chain; hand off to ``application`` if it gets there."""
    chip.reset()  # eFuse registers reload; the ROM latches its download-mode eFuses
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
    data = read_image(lambda n: read(offset, n), min(_ROM_READ_LIMIT, chip.flash.size - offset))
    if data[0] != IMAGE_MAGIC:
        word = int.from_bytes(data[:4], "little")
        con.rom(text.invalid_header.format(word=word))
        raise _Stop("rom", f"ROM: invalid header 0x{word:08x} at 0x{facts.bootloader_offset:x}"
                    + _garbage_hint(chip, security))
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
                               f">= {rev_text(facts.sb_v2_min_revision)}")
        try:
            slot = verify_signature(data, security)
        except BootRefused as exc:
            for line in text.secure_boot_fail:
                con.rom(line)
            raise _Stop("rom", f"ROM: secure boot refused the bootloader: {exc}") from None
        con.rom(f"secure boot v2: bootloader verified with key digest slot {slot}")
    con.rom(text.load_line.format(length=image.image_length))
    con.rom(text.entry_line)


def _garbage_hint(chip: VirtualChip, security: SecurityState) -> str:
    offset = chip.facts.bootloader_offset
    if chip.flash.read(offset, 16) == b"\xff" * 16:
        # erased flash read through the decryption is garbage too: say what it is
        return (" (the flash is erased there: no bootloader was written; flash the bundle, "
                "or resume an interrupted `espfleet flash`)")
    if security.flash_encryption:
        return (" (flash encryption is on: the bootloader is plaintext or encrypted with "
                "another key; flash it encrypted with this device's key)")
    return " (nothing flashed there, or flash encryption is off and the image is encrypted)"


# -- second stage bootloader -------------------------------------------------------------


def _load_partition_table(
    chip: VirtualChip, security: SecurityState, con: BootConsole
) -> PartitionTable:
    facts = chip.facts
    con.info("boot", f"ESP-IDF {IDF_VERSION} 2nd stage bootloader")
    con.info("boot", f"chip revision: {rev_text(chip.revision)}")
    con.info(f"boot.{facts.name}", f"SPI Flash Size : {chip.flash.size // (1024 * 1024)}MB")
    offset = chip.partition_table_offset
    try:
        table = partition_table.PartitionTable.decode(_read_table(chip, security, offset))
    except FormatError as exc:
        con.error("flash_parts", str(exc))
        con.error("boot", "Failed to verify partition table")
        con.error("boot", "load partition table error!")
        raise _Stop("bootloader", f"partition table at 0x{offset:x} refused: {exc}"
                                  + _table_elsewhere_hint(chip, security)) from None
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


def _read_table(chip: VirtualChip, security: SecurityState, offset: int) -> bytes:
    if security.flash_encryption:
        return chip.read_decrypted(offset, PARTITION_TABLE_SIZE)
    return chip.flash.read(offset, PARTITION_TABLE_SIZE)


def _table_elsewhere_hint(chip: VirtualChip, security: SecurityState) -> str:
    """A rehearsal mistake, not a silicon behaviour: the images were written for a
    bootloader built with another CONFIG_PARTITION_TABLE_OFFSET than this virtual chip
    was created with. Name where a table is (the real bootloader never looks there)."""
    for offset in range(chip.facts.bootloader_offset + _SECTOR, _TABLE_SEARCH_END, _SECTOR):
        if offset == chip.partition_table_offset:
            continue
        try:
            table = partition_table.PartitionTable.decode(_read_table(chip, security, offset))
        except FormatError:
            continue
        if not any(part.type == partition_table.APP for part in table.entries):
            continue  # erased flash (or a blank otadata) decodes as an empty table
        return (
            f" (a valid partition table is at 0x{offset:x}: the images were built for a "
            f"bootloader with CONFIG_PARTITION_TABLE_OFFSET=0x{offset:x}, but this virtual "
            f"chip was created for 0x{chip.partition_table_offset:x}; rehearse on a chip made "
            f"with `espfleet vdev create NAME --partition-table-offset 0x{offset:x}`)"
        )
    return ""


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
    initial = False
    if ota and ota_part is not None:
        index, state = _run_otadata(chip, ota_part, len(ota), security, con)
        initial = factory is None and state.entries == (None, None)
        if index is not None:
            chosen = ota[index]
            active = state.active()
            if active is not None and active.state == otadata.OtaState.VALID:
                confirmed = chosen
            candidates = [chosen, *reversed(ota[:index])]
            candidates += [*([factory] if factory else []), *ota[index + 1:]]
    if not candidates:
        candidates = [*([factory] if factory else []), *ota]
        con.info("boot", "Defaulting to factory image" if factory else
                 "No factory image, trying OTA 0")
    for part in candidates:
        loaded = _try_load(chip, part, security, con)
        if loaded is None:
            continue
        con.info("boot", f"Loaded app from partition at offset 0x{part.offset:x}")
        if initial and ota_part is not None and part in ota:
            _set_actual_ota_seq(chip, ota_part, ota.index(part), security, con)
        if initial or part == confirmed:
            update_anti_rollback(chip, loaded[1].secure_version, con)
        return part, *loaded
    con.error("boot", "No bootable app partitions in the partition table")
    raise _Stop("bootloader", "no bootable app: every app slot was refused (see the log)")


def _set_actual_ota_seq(
    chip: VirtualChip, part: Partition, index: int, security: SecurityState, con: BootConsole
) -> None:
    """Erased otadata and no factory app: ESP-IDF records the slot it booted as VALID."""
    old = read_partition(chip, part, security, otadata.OTADATA_SIZE)
    entry = otadata.OtaSelectEntry(index + 1, otadata.OtaState.VALID)
    write_otadata(chip, part, security, old, otadata.blank().with_entry(0, entry).encode())
    con.info("boot", f"Set actual ota_seq={index + 1} in otadata[0]")


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


def _try_load(
    chip: VirtualChip, part: Partition, security: SecurityState, con: BootConsole
) -> tuple[AppImage, AppDescriptor] | None:
    con.info("esp_image", f"loading {part.name} at 0x{part.offset:x}")
    data = _read_app(chip, part, security)
    if data[0] != IMAGE_MAGIC:
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
    return read_image(lambda n: read_partition(chip, part, security, n), part.size)


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


