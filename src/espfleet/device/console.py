"""The virtual ESP32's serial console, in the style of ESP-IDF's log.

The ROM prints bare lines (``rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)``,
``invalid header: 0xffffffff``); the second-stage bootloader and the app print
``L (ms) tag: message`` where L is E/W/I and ms is milliseconds since reset. The clock
here is simulated and deterministic, so two boots of the same flash print the same log.

What each chip's ROM prints differs; those strings are data in :data:`ROM_TEXT`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["ROM_TEXT", "BootConsole", "RomText"]

Level = Literal["E", "W", "I"]


@dataclass(frozen=True)
class RomText:
    """What one chip's mask ROM prints at reset and when it refuses to boot."""

    banner: tuple[str, ...]
    reset_line: str
    #: Printed (in a loop, on silicon) when the first bytes at the bootloader offset
    #: are not an image header; ``{word:08x}`` is the first 32-bit word read.
    invalid_header: str
    #: Printed when secure boot is on and the bootloader's signature does not verify.
    secure_boot_fail: tuple[str, ...]
    load_line: str
    entry_line: str


ROM_TEXT: dict[str, RomText] = {
    "esp32": RomText(
        banner=("ets Jul 29 2019 12:21:46",),
        reset_line="rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
        invalid_header="invalid header: 0x{word:08x}",
        secure_boot_fail=("secure boot check fail", "ets_main.c 371 "),
        load_line="load:0x3fff0030,len:{length}",
        entry_line="entry 0x400805e4",
    ),
    "esp32s3": RomText(
        banner=("ESP-ROM:esp32s3-20210327", "Build:Mar 27 2021"),
        reset_line="rst:0x1 (POWERON),boot:0x8 (SPI_FAST_FLASH_BOOT)",
        invalid_header="invalid header: 0x{word:08x}",
        secure_boot_fail=("Secure boot V2 verification failed", "ets_main.c 333 "),
        load_line="load:0x3fce3810,len:{length:#x}",
        entry_line="entry 0x403c9908",
    ),
    "esp32c3": RomText(
        banner=("ESP-ROM:esp32c3-api1-20210207", "Build:Feb  7 2021"),
        reset_line="rst:0x1 (POWERON),boot:0xc (SPI_FAST_FLASH_BOOT)",
        invalid_header="invalid header: 0x{word:08x}",
        secure_boot_fail=("Secure boot V2 verification failed", "ets_main.c 333 "),
        load_line="load:0x3fcd5820,len:{length:#x}",
        entry_line="entry 0x403cc710",
    ),
}


@dataclass
class BootConsole:
    """Collects one boot's log lines, mirrored onto the chip's console list.

    ``sink`` is the chip's ``console`` list: lines appear there as they are printed,
    so a boot that dies half-way still leaves what it printed, as a UART would.
    """

    sink: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    ms: int = 0

    def rom(self, text: str) -> None:
        """A ROM line (no level, no timestamp)."""
        self._emit(text)

    def advance(self, ms: int) -> None:
        """Let simulated time pass (a flash read, a signature check)."""
        self.ms += ms

    def info(self, tag: str, message: str) -> None:
        self._log("I", tag, message)

    def warn(self, tag: str, message: str) -> None:
        self._log("W", tag, message)

    def error(self, tag: str, message: str) -> None:
        self._log("E", tag, message)

    def _log(self, level: Level, tag: str, message: str) -> None:
        self.ms += 4
        self._emit(f"{level} ({self.ms}) {tag}: {message}")

    def _emit(self, line: str) -> None:
        self.lines.append(line)
        self.sink.append(line)
