"""ESP application and bootloader images: parse, and build small valid ones.

Layout (ESP-IDF "app image format"): a 24-byte header (magic 0xE9, segment count,
SPI mode/size/frequency, entry point, then the extended header with chip id and
min/max chip revision), segments (load address, length, data), a checksum byte at
the end of a 16-byte aligned block, then (if the header says so) the SHA-256 of
everything before it. An app's first flash-mapped data (DROM) segment starts with
the 256-byte app descriptor (magic 0xABCD5432): version, project, secure_version
for anti-rollback, build time, ESP-IDF version, ELF SHA-256.

Parsing uses :mod:`esptool.bin_image` (wrapped into :class:`FormatError` with the
offset of the problem); building uses it too, so esptool's ``image-info`` accepts
what :func:`build_app` and :func:`build_bootloader` make. The builders exist for
tests, the virtual device and the demo, which run without ESP-IDF.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any, Final

from esptool.bin_image import ELFSection, LoadFirmwareImage
from esptool.targets import CHIP_DEFS

from espfleet.chips import CHIPS, chip_facts
from espfleet.errors import FormatError, InputError

__all__ = [
    "APP_DESC_MAGIC",
    "AppDescriptor",
    "AppImage",
    "Segment",
    "build_app",
    "build_bootloader",
    "parse",
]

IMAGE_MAGIC: Final = 0xE9
APP_DESC_MAGIC: Final = 0xABCD5432
_HEADER: Final = struct.Struct("<BBBBI")  # magic, segments, flash mode, size/freq, entry
_EXTENDED: Final = struct.Struct("<BBBBHBHH4sB")
_HEADER_SIZE: Final = _HEADER.size + _EXTENDED.size
_SEGMENT: Final = struct.Struct("<II")
_MAX_SEGMENTS: Final = 16
_DIGEST: Final = 32
_APP_DESC: Final = struct.Struct("<II8s32s32s16s16s32s32sHHB3s72s")
_TEXT_FIELD: Final = 32


@dataclass(frozen=True)
class Segment:
    load_address: int
    length: int
    #: File offset of the segment's data (its 8-byte header is just before).
    data_offset: int


@dataclass(frozen=True)
class AppDescriptor:
    """``esp_app_desc_t``: what the app says about itself."""

    secure_version: int
    version: str
    project_name: str
    time: str
    date: str
    idf_ver: str
    app_elf_sha256: bytes
    min_efuse_blk_rev_full: int = 0
    max_efuse_blk_rev_full: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.secure_version < 1 << 32:
            raise InputError(f"secure_version {self.secure_version} is not a 32-bit value")
        for name in ("version", "project_name", "idf_ver"):
            if len(getattr(self, name).encode()) > _TEXT_FIELD:
                raise InputError(
                    f"app descriptor {name} {getattr(self, name)!r} is longer than 32 bytes"
                )
        if len(self.app_elf_sha256) != _DIGEST:
            raise InputError("app_elf_sha256 must be 32 bytes")

    @classmethod
    def decode(cls, data: bytes) -> AppDescriptor | None:
        """The descriptor at the start of ``data``, or None if the magic is absent."""
        if len(data) < _APP_DESC.size:
            return None
        fields = _APP_DESC.unpack_from(data)
        if fields[0] != APP_DESC_MAGIC:
            return None

        def text(raw: bytes) -> str:
            return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")

        return cls(
            secure_version=fields[1],
            version=text(fields[3]),
            project_name=text(fields[4]),
            time=text(fields[5]),
            date=text(fields[6]),
            idf_ver=text(fields[7]),
            app_elf_sha256=fields[8],
            min_efuse_blk_rev_full=fields[9],
            max_efuse_blk_rev_full=fields[10],
        )

    def encode(self) -> bytes:
        return _APP_DESC.pack(
            APP_DESC_MAGIC, self.secure_version, bytes(8), self.version.encode(),
            self.project_name.encode(), self.time.encode(), self.date.encode(),
            self.idf_ver.encode(), self.app_elf_sha256, self.min_efuse_blk_rev_full,
            self.max_efuse_blk_rev_full, 0, bytes(3), bytes(72),
        )


@dataclass(frozen=True)
class AppImage:
    """A parsed app or bootloader image."""

    #: espfleet's chip name from the header's chip id, or None for chips it does not support.
    chip: str | None
    chip_id: int
    min_rev_full: int
    max_rev_full: int
    entry: int
    flash_mode: int
    flash_size_freq: int
    segments: tuple[Segment, ...]
    app_desc: AppDescriptor | None
    hash_appended: bool
    checksum_ok: bool
    #: Whether the appended SHA-256 matches; None when the image has none.
    sha256_ok: bool | None
    #: Bytes up to and including the checksum and SHA-256: a Secure Boot V2
    #: signature sector starts at this length rounded up to 4 KB.
    image_length: int
    #: No segment is mapped from flash: a second-stage bootloader, not an app.
    is_bootloader: bool

    @property
    def valid(self) -> bool:
        return self.checksum_ok and self.sha256_ok is not False


def _chip_of(chip_id: int) -> str | None:
    return next((name for name, f in CHIPS.items() if f.image_chip_id == chip_id), None)


def _esptool_chip(chip_id: int) -> str:
    """esptool's name for any chip id, so that chips espfleet does not support still
    parse with the right memory map."""
    return next(
        (name for name, rom in CHIP_DEFS.items()
         if name != "esp8266" and getattr(rom, "IMAGE_CHIP_ID", None) == chip_id),
        "esp32",
    )


def _walk(data: bytes) -> tuple[list[Segment], int]:
    """Segment table and the end of the checksum block, bounds-checked with offsets."""
    if len(data) < _HEADER_SIZE:
        raise FormatError(
            f"image is {len(data)} bytes, shorter than the {_HEADER_SIZE}-byte header: "
            "not an app or bootloader image", offset=len(data))
    magic, count = data[0], data[1]
    if magic != IMAGE_MAGIC:
        raise FormatError(
            f"image at offset 0x0: bad magic {magic:#04x}, expected {IMAGE_MAGIC:#04x}: "
            "not an ESP app/bootloader image (encrypted? pass the decrypted image)", offset=0)
    if not 1 <= count <= _MAX_SEGMENTS:
        raise FormatError(
            f"image header at offset 0x1: {count} segments (an image has 1..{_MAX_SEGMENTS})",
            offset=1)
    segments, position = [], _HEADER_SIZE
    for index in range(count):
        if position + _SEGMENT.size > len(data):
            raise FormatError(
                f"segment {index} header at offset {position:#x} is past the end of the "
                f"{len(data)}-byte image (truncated?)", offset=position)
        address, length = _SEGMENT.unpack_from(data, position)
        if position + _SEGMENT.size + length > len(data):
            raise FormatError(
                f"segment {index} at offset {position:#x}: length {length:#x} runs past the "
                f"end of the {len(data)}-byte image (truncated?)", offset=position + 4)
        segments.append(Segment(address, length, position + _SEGMENT.size))
        position += _SEGMENT.size + length
    checksum_end = position + 16 - position % 16
    if checksum_end > len(data):
        raise FormatError(
            f"image checksum at offset {checksum_end - 1:#x} is past the end of the "
            f"{len(data)}-byte image (truncated?)", offset=checksum_end - 1)
    return segments, checksum_end


def parse(data: bytes) -> AppImage:
    """Parse an app or bootloader image (plaintext; trailing bytes are ignored)."""
    segments, checksum_end = _walk(data)
    chip_id = struct.unpack_from("<H", data, 12)[0]
    chip = _chip_of(chip_id)
    hash_flag = data[23]
    if hash_flag not in (0, 1):
        raise FormatError(
            f"image extended header at offset 0x17: hash-appended flag {hash_flag:#04x} "
            "is not 0 or 1", offset=23)
    image_length = checksum_end + (_DIGEST if hash_flag else 0)
    if image_length > len(data):
        raise FormatError(
            f"image SHA-256 at offset {checksum_end:#x} is past the end of the "
            f"{len(data)}-byte image (truncated?)", offset=checksum_end)
    try:
        image: Any = LoadFirmwareImage(_esptool_chip(chip_id), data[:image_length])
    except Exception as exc:  # esptool raises FatalError, struct.error, RuntimeError...
        raise FormatError(f"image: esptool cannot load it: {exc}", offset=0) from None
    flash_mapped = [s for s in segments if image.is_flash_addr(s.load_address)]
    drom = [s for s in flash_mapped
            if image.ROM_LOADER.DROM_MAP_START <= s.load_address < image.ROM_LOADER.DROM_MAP_END]
    app_desc = AppDescriptor.decode(data[drom[0].data_offset:]) if drom else None
    return AppImage(
        chip=chip,
        chip_id=chip_id,
        min_rev_full=image.min_rev_full,
        max_rev_full=image.max_rev_full,
        entry=image.entrypoint,
        flash_mode=image.flash_mode,
        flash_size_freq=image.flash_size_freq,
        segments=tuple(segments),
        app_desc=app_desc,
        hash_appended=bool(hash_flag),
        checksum_ok=image.checksum == image.calculate_checksum(),
        sha256_ok=(image.stored_digest == image.calc_digest) if hash_flag else None,
        image_length=image_length,
        is_bootloader=not flash_mapped,
    )


# --- builders ------------------------------------------------------------------------


def _region(chip: str, name: str) -> int:
    """Start of a named memory region of the chip, from esptool's memory map."""
    rom = CHIP_DEFS[chip]
    return next(int(start) for start, _end, region in rom.MEMORY_MAP if region == name)


def _new_image(chip: str, min_rev_full: int) -> Any:
    chip_facts(chip)  # a clear error for an unknown chip
    if not 0 <= min_rev_full <= 0xFFFF:
        raise InputError(f"min_rev_full {min_rev_full} is not 0..65535 (major*100+minor)")
    rom = CHIP_DEFS[chip]
    image = rom.BOOTLOADER_IMAGE()
    image.min_rev_full = min_rev_full
    image.min_rev = min_rev_full // 100
    image.flash_size_freq = rom.FLASH_SIZES["4MB"]
    image.entrypoint = _region(chip, "IRAM") + 0x400
    return image


def _code(seed: bytes) -> bytes:
    """Deterministic filler for code segments (the virtual device never executes it)."""
    return hashlib.sha256(seed).digest() * 8


def build_app(
    chip: str,
    *,
    version: str,
    project_name: str = "app",
    secure_version: int = 0,
    payload: bytes = b"",
    min_rev_full: int = 0,
) -> bytes:
    """A valid app image for ``chip`` with an app descriptor and ``payload`` in DROM.

    The descriptor is the start of the first DROM segment, at file offset 0x20, as
    ESP-IDF places it; the SHA-256 is appended. Deterministic for the same inputs.
    """
    image = _new_image(chip, min_rev_full)
    rom = CHIP_DEFS[chip]
    elf_sha = hashlib.sha256(b"espfleet app\0" + version.encode() + b"\0" + payload).digest()
    desc = AppDescriptor(
        secure_version=secure_version, version=version, project_name=project_name,
        time="00:00:00", date="Jan  1 2026", idf_ver="espfleet-synthetic",
        app_elf_sha256=elf_sha,
    )
    rodata = desc.encode() + payload
    image.segments = [
        ELFSection(b".flash.appdesc", rom.DROM_MAP_START + 0x20, rodata, 0),
        ELFSection(b".flash.text", rom.IROM_MAP_START + 0x20, _code(elf_sha), 0),
        ELFSection(b".iram0.text", image.entrypoint, _code(b"iram" + elf_sha)[:64], 0),
        ELFSection(b".dram0.data", _region(chip, "DRAM") + 0x100, bytes(16), 0),
    ]
    result: bytes = image.save(None)
    return result


def build_bootloader(chip: str, *, payload: bytes = b"") -> bytes:
    """A valid second-stage bootloader image for ``chip``: RAM segments only."""
    image = _new_image(chip, 0)
    seed = b"espfleet bootloader\0" + payload
    image.segments = [
        ELFSection(b".dram0.data", _region(chip, "DRAM") + 0x100, payload or bytes(16), 0),
        ELFSection(b".iram_loader.text", image.entrypoint, _code(seed)[:128], 0),
    ]
    result: bytes = image.save(None)
    return result
