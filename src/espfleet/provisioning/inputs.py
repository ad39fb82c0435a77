"""Firmware inputs of ``espfleet provision --firmware PATH [--bootloader FILE]``.

``PATH`` is one of:

* an app image file (``app.bin``, ``firmware.bin``);
* a PlatformIO build directory ``.pio/build/<env>/`` (``firmware.bin``,
  ``partitions.bin``, ``bootloader.bin``), or a project whose ``.pio/build`` has
  exactly one environment;
* an ESP-IDF build directory (``flasher_args.json`` names every image and offset).

:func:`load_firmware` only reads files (the I/O edge). :func:`check_firmware` is pure:
it decides whether the images can make a secure device and says what to fix:

* the app and the bootloader are images for the workspace's chip;
* release mode needs a Secure Boot V2 capable bootloader: signed, or secure-padded by
  an ESP-IDF build with secure boot enabled (Arduino/PlatformIO cannot build one: pass
  ``--bootloader``), and on ESP32 built for revision v3.0+;
* the bootloader ends before the partition table;
* the partition table (from the build, else the secure default for the flash size)
  passes ``validate_secure``: two OTA slots big enough for the signed app, otadata and
  nvs_keys flagged encrypted, an nvs partition that is not.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from espfleet.chips import chip_facts
from espfleet.errors import FormatError, InputError
from espfleet.formats.nvs import MIN_SIZE as NVS_MIN_SIZE
from espfleet.formats.partition_table import PartitionTable, default_secure_table
from espfleet.formats.partition_table import decode as decode_table

__all__ = [
    "CheckedFirmware",
    "FirmwareSource",
    "ImageFacts",
    "check_firmware",
    "image_facts",
    "load_firmware",
    "parse_flash_size",
]

SourceKind = Literal["app-image", "platformio", "esp-idf"]
_FLASH_SIZES = {"1MB": 0x100000, "2MB": 0x200000, "4MB": 0x400000, "8MB": 0x800000,
                "16MB": 0x1000000, "32MB": 0x2000000}
#: ESP image header byte 3, high nibble -> flash size.
_HEADER_FLASH_SIZE = {0: "1MB", 1: "2MB", 2: "4MB", 3: "8MB", 4: "16MB", 5: "32MB"}
_IMAGE_MAGIC = 0xE9
_SECTOR = 0x1000


def parse_flash_size(text: str) -> int:
    size = _FLASH_SIZES.get(text.upper().replace(" ", ""))
    if size is None:
        raise InputError(f"flash size {text!r}: use one of {', '.join(_FLASH_SIZES)}")
    return size


@dataclass(frozen=True)
class FirmwareSource:
    """The images as found on disk, before any check."""

    kind: SourceKind
    origin: Path
    app: bytes
    bootloader: bytes | None = None
    #: Where the bootloader came from, for messages ("--bootloader", "PlatformIO build").
    bootloader_origin: str | None = None
    partition_table: bytes | None = None
    table_offset: int | None = None
    chip: str | None = None
    flash_size: str | None = None


@dataclass(frozen=True)
class ImageFacts:
    """What the ESP image header says (esptool's reading of it)."""

    chip_id: int
    min_revision: int
    flash_size: str | None
    length: int


def image_facts(data: bytes, what: str) -> ImageFacts:
    """Parse an ESP image header with esptool; FormatError if it is not an image."""
    import esptool.bin_image as bin_image

    if not data or data[0] != _IMAGE_MAGIC:
        raise FormatError(
            f"{what} is not an ESP image (first byte {data[:1].hex() or 'missing'}, expected e9)",
            0,
        )
    try:
        image = bin_image.LoadFirmwareImage("esp32", data)
    except Exception as error:  # esptool raises FatalError and struct errors alike
        raise FormatError(f"{what} is not a valid ESP image: {error}", 0) from None
    revision = max(int(image.min_rev) * 100, int(getattr(image, "min_rev_full", 0)))
    return ImageFacts(
        chip_id=int(image.chip_id),
        min_revision=revision,
        flash_size=_HEADER_FLASH_SIZE.get(data[3] >> 4),
        length=len(data),
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a directory, expected a file") from None


def load_firmware(path: Path, *, bootloader: Path | None = None) -> FirmwareSource:
    """Read the images of ``path`` (and ``--bootloader``, which overrides the build's)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"--firmware {path} does not exist")
    if path.is_file():
        source = FirmwareSource("app-image", path, _read(path, "--firmware"))
    elif (path / "flasher_args.json").is_file():
        source = _load_esp_idf(path)
    else:
        source = _load_platformio(path)
    if bootloader is not None:
        source = dataclasses.replace(
            source, bootloader=_read(bootloader, "--bootloader"), bootloader_origin="--bootloader"
        )
    return source


def _load_platformio(path: Path) -> FirmwareSource:
    build = path
    if not (build / "firmware.bin").is_file():
        candidates = (path / ".pio" / "build").glob("*")
        envs = sorted(p for p in candidates if (p / "firmware.bin").is_file())
        if len(envs) != 1:
            found = ", ".join(p.name for p in envs) or "none"
            raise InputError(
                f"--firmware {path} is neither an app image, a PlatformIO build directory "
                f"(.pio/build/<env>/ with firmware.bin) nor an ESP-IDF build directory "
                f"(flasher_args.json); PlatformIO environments found: {found}. Pass the "
                "environment's build directory"
            )
        build = envs[0]
    table = build / "partitions.bin"
    boot = build / "bootloader.bin"
    return FirmwareSource(
        "platformio", build, _read(build / "firmware.bin", "PlatformIO app"),
        boot.read_bytes() if boot.is_file() else None,
        "the PlatformIO build" if boot.is_file() else None,
        table.read_bytes() if table.is_file() else None,
    )


def _load_esp_idf(build: Path) -> FirmwareSource:
    path = build / "flasher_args.json"
    try:
        args: dict[str, Any] = json.loads(path.read_text())
        app_entry = args["app"]
        entries = {key: _flasher_entry(args, key)
                   for key in ("app", "bootloader", "partition-table")}
        chip = (args.get("extra_esptool_args") or {}).get("chip")
        size = (args.get("flash_settings") or {}).get("flash_size")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        # a hand-edited or truncated file: every shape error, not a traceback
        raise InputError(
            f"{path} is not ESP-IDF's flasher arguments ({type(error).__name__}: {error}): "
            "run `idf.py build` again"
        ) from None

    def image(key: str) -> tuple[bytes | None, int | None]:
        entry = entries[key]
        if entry is None:
            return None, None
        return _read(build / entry[0], f"ESP-IDF {key} image"), entry[1]

    app, _ = image("app")
    if app is None:
        raise InputError(f"flasher_args.json in {build} names no app image ({app_entry!r})")
    boot, _ = image("bootloader")
    origin = "the ESP-IDF build"
    # With secure boot on, ESP-IDF leaves the bootloader out of `idf.py flash`, hence out
    # of flasher_args.json (it is flashed once, apart): it is still built in its place.
    built = build / "bootloader" / "bootloader.bin"
    if boot is None and built.is_file():
        boot, origin = _read(built, "ESP-IDF bootloader"), f"the ESP-IDF build ({built})"
    table, table_offset = image("partition-table")
    return FirmwareSource(
        "esp-idf", build, app, boot, origin if boot is not None else None,
        table, table_offset, chip, size if size in _FLASH_SIZES else None,
    )


def _flasher_entry(args: dict[str, Any], key: str) -> tuple[str, int] | None:
    """``{"file": ..., "offset": "0x..."}`` of flasher_args.json; raises ValueError or
    TypeError when it has another shape."""
    entry = args.get(key)
    if not isinstance(entry, dict) or "file" not in entry:
        return None
    if not isinstance(entry["file"], str):
        raise TypeError(f"{key}.file is {entry['file']!r}, not a file name")
    return entry["file"], int(str(entry["offset"]), 0)


@dataclass(frozen=True)
class CheckedFirmware:
    """Images that passed :func:`check_firmware` (still unsigned or fleet-signed)."""

    chip: str
    app: bytes
    bootloader: bytes
    table: PartitionTable
    table_offset: int
    flash_size: str
    #: True when the bootloader can enforce Secure Boot V2 (signed or secure-padded).
    secure_bootloader: bool


def _is_secure_boot_bootloader(data: bytes, signed: bool) -> bool:
    """ESP-IDF pads a Secure Boot V2 bootloader to a 4 KB multiple (the signature
    sector); a plain (Arduino) bootloader ends on a 16-byte boundary."""
    return signed or len(data) % _SECTOR == 0


def check_firmware(
    source: FirmwareSource,
    *,
    chip: str,
    mode: str,
    flash_size: str | None,
    signed_app_size: int,
    bootloader_signed: bool,
    default_flash_size: str | None = None,
) -> CheckedFirmware:
    """Decide whether ``source`` can make a secure ``chip`` device in ``mode``.

    ``signed_app_size`` is the app's size once signed; ``bootloader_signed`` whether the
    bootloader already carries a Secure Boot V2 signature block. The flash size is
    ``flash_size`` (``--flash-size``), else the ESP-IDF build's, else
    ``default_flash_size`` (fleet.toml), else the app header's.
    """
    facts = chip_facts(chip)
    if source.chip is not None and source.chip != chip:
        raise InputError(
            f"the ESP-IDF build in {source.origin} targets {source.chip}, but this fleet is "
            f"{chip}: build for {chip} (idf.py set-target {chip})"
        )
    app = image_facts(source.app, f"app image {source.origin}")
    if app.chip_id != facts.image_chip_id:
        raise InputError(
            f"app image {source.origin} is for {_chip_name(app.chip_id)}, but this fleet is "
            f"{chip}: build the app for {chip}"
        )
    if source.bootloader is None:
        raise InputError(
            f"no bootloader: {chip} needs a security-enabled bootloader built once with "
            "ESP-IDF (Secure Boot V2 and flash encryption enabled); pass --bootloader FILE"
        )
    origin = source.bootloader_origin or "the bootloader"
    boot = image_facts(source.bootloader, f"bootloader from {origin}")
    if boot.chip_id != facts.image_chip_id:
        raise InputError(
            f"bootloader from {origin} is for {_chip_name(boot.chip_id)}, but this fleet is "
            f"{chip}: pass a {chip} bootloader"
        )
    secure = _is_secure_boot_bootloader(source.bootloader, bootloader_signed)
    if mode == "release":
        if not secure:
            hint = (
                " (Arduino/PlatformIO cannot build one)" if source.kind == "platformio" else ""
            )
            raise InputError(
                f"bootloader from {origin} is unsigned and not built for Secure Boot V2{hint}: "
                "release mode needs a bootloader built once with ESP-IDF with Secure Boot V2 "
                "and flash encryption enabled; pass it with --bootloader"
            )
        if boot.min_revision < facts.sb_v2_min_revision:
            need = facts.sb_v2_min_revision
            raise InputError(
                f"bootloader from {origin} supports chip revision v{boot.min_revision // 100}."
                f"{boot.min_revision % 100}, but Secure Boot V2 on {chip} needs "
                f"v{need // 100}.{need % 100}: set the minimum revision to "
                f"v{need // 100}.{need % 100} in menuconfig and rebuild the bootloader"
            )
    size_name = flash_size or source.flash_size or default_flash_size or app.flash_size
    if size_name is None:
        raise InputError("unknown flash size: pass --flash-size (e.g. 4MB)")
    size = parse_flash_size(size_name)
    table_offset = source.table_offset or facts.default_partition_table_offset
    boot_end = facts.bootloader_offset + _signed_size(len(source.bootloader), bootloader_signed)
    if boot_end > table_offset:
        raise InputError(
            f"the signed bootloader ends at {boot_end:#x}, past the partition table at "
            f"{table_offset:#x}: build the bootloader with a larger "
            "CONFIG_PARTITION_TABLE_OFFSET (the layout follows the bootloader's build)"
        )
    if source.partition_table is not None:
        table = decode_table(source.partition_table)
        if flash_size is None:
            _refuse_smaller_default_size(source, table, size_name, app.flash_size)
    else:
        table = default_secure_table(size, table_offset)
    table.validate_secure(size, table_offset=table_offset, app_size=signed_app_size)
    for part in table.by_type("data", "nvs"):
        if part.encrypted:
            raise InputError(
                f"partition {part.name} (data/nvs) is flagged encrypted: NVS encrypts its own "
                "entries with nvs_keys and must not be under flash encryption; remove the "
                "flag from the partition CSV"
            )
    identity = table.by_type("data", "nvs")[0]  # where every device's identity is written
    if identity.size < NVS_MIN_SIZE:
        # once for the batch, not as the same failure of every device
        raise InputError(
            f"partition {identity.name} (data/nvs, {identity.size:#x} bytes) is too small for "
            f"the device identity: NVS needs at least {NVS_MIN_SIZE:#x} (two data pages and a "
            "spare page); enlarge it in the partition CSV"
        )
    return CheckedFirmware(
        chip, source.app, source.bootloader, table, table_offset, size_name, secure
    )


def _refuse_smaller_default_size(
    source: FirmwareSource, table: PartitionTable, size_name: str, built: str | None
) -> None:
    """The build's table and app header say a larger flash than the size taken from
    the ESP-IDF settings or fleet.toml: name both, rather than blame the partition CSV."""
    end = table.flash_end()
    if end <= parse_flash_size(size_name) or built is None or parse_flash_size(built) < end:
        return
    origin = "the ESP-IDF build's flash_settings" if source.flash_size else "fleet.toml"
    raise InputError(
        f"the partition table of {source.origin} ends at {end:#x}, past the {size_name} "
        f"flash that {origin} sets, and its app was built for {built} flash (image "
        f"header): if the module has {built}, pass --flash-size {built} (and set "
        f'flash_size = "{built}" in fleet.toml, then `espfleet ca reseal`); otherwise '
        f"build the partition table for {size_name}"
    )


def _signed_size(length: int, already_signed: bool) -> int:
    """Length after sign_data: padded to 4 KB, plus the 4 KB signature sector."""
    if already_signed:
        return length
    return -(-length // _SECTOR) * _SECTOR + _SECTOR


def _chip_name(chip_id: int) -> str:
    from espfleet.chips import CHIPS

    for name, facts in CHIPS.items():
        if facts.image_chip_id == chip_id:
            return name
    return f"another chip (image chip id {chip_id})"
