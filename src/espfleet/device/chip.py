"""A virtual ESP32 / ESP32-S3 / ESP32-C3: flash, eFuses, the flash-encryption engine.

The chip knows nothing about sockets or files: :mod:`espfleet.device.server` puts
its ROM loader on TCP and :mod:`espfleet.device.store` keeps it on disk.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

from espfleet.chips import ChipFacts, chip_facts
from espfleet.device import engine
from espfleet.device.efuse import EfuseController
from espfleet.device.flash import SECTOR_SIZE, NorFlash
from espfleet.errors import InputError

if TYPE_CHECKING:
    from espfleet.formats.efuse import EfuseImage

__all__ = [
    "DownloadMode",
    "RomModel",
    "VirtualChip",
    "check_table_offset",
    "parse_mac",
    "rom_model",
]

#: What the ROM does with a request for download mode after a reset.
DownloadMode = Literal["normal", "secure", "disabled"]


@dataclass(frozen=True)
class RomModel:
    """Per-chip facts of the ROM serial loader (addresses from esptool's ROM classes)."""

    magic_value: int
    #: GET_SECURITY_INFO exists in this ROM (S3/C3); ESP32's answers an error.
    security_info: bool
    chip_id: int
    uart_clkdiv_reg: int
    spi_base: int
    spi_usr2_offs: int
    spi_w0_offs: int
    #: ESP32 only: bit 31 of APB_CTL_DATE is the third revision bit.
    apb_ctl_date_addr: int | None
    #: FLASH_BEGIN carries a fifth word (encrypted write) in this ROM.
    begin_has_encrypt_flag: bool
    #: eFuses that stop the ROM from entering download mode after reset.
    loader_disable_fields: tuple[str, ...]
    #: Oldest revision whose ROM honours them (ESP32: UART_DOWNLOAD_DIS from v3.0 only).
    loader_disable_min_revision: int
    #: eFuse that restricts download mode to the secure command set.
    secure_download_field: str | None
    #: eFuse that stops the ROM from encrypting writes in download mode.
    download_encrypt_disable_field: str
    #: 4-bit eFuse MAC CRC field (ESP32), None when the block's RS code covers it.
    mac_crc_field: str | None


_ROM_FACTS: dict[str, dict[str, Any]] = {
    "esp32": {
        "begin_has_encrypt_flag": False,
        "apb_ctl_date_addr": 0x3FF6607C,
        "loader_disable_fields": ("UART_DOWNLOAD_DIS",),
        "loader_disable_min_revision": 300,
        "secure_download_field": None,
        "download_encrypt_disable_field": "DISABLE_DL_ENCRYPT",
        "mac_crc_field": "MAC_CRC",
    },
    "esp32s3": {
        "begin_has_encrypt_flag": True,
        "apb_ctl_date_addr": None,
        "loader_disable_fields": ("DIS_DOWNLOAD_MODE",),
        "loader_disable_min_revision": 0,
        "secure_download_field": "ENABLE_SECURITY_DOWNLOAD",
        "download_encrypt_disable_field": "DIS_DOWNLOAD_MANUAL_ENCRYPT",
        "mac_crc_field": None,
    },
    "esp32c3": {
        "begin_has_encrypt_flag": True,
        "apb_ctl_date_addr": None,
        "loader_disable_fields": ("DIS_DOWNLOAD_MODE",),
        "loader_disable_min_revision": 0,
        "secure_download_field": "ENABLE_SECURITY_DOWNLOAD",
        "download_encrypt_disable_field": "DIS_DOWNLOAD_MANUAL_ENCRYPT",
        "mac_crc_field": None,
    },
}


@cache
def rom_model(chip: str) -> RomModel:
    facts = chip_facts(chip)
    from esptool.targets import CHIP_DEFS

    rom = CHIP_DEFS[chip]
    extra = _ROM_FACTS[chip]
    return RomModel(
        magic_value=facts.rom_magic[0],
        security_info=bool(rom.SECURITY_INFO_SUPPORTED),
        chip_id=facts.image_chip_id,
        uart_clkdiv_reg=int(rom.UART_CLKDIV_REG),
        spi_base=int(rom.SPI_REG_BASE),
        spi_usr2_offs=int(rom.SPI_USR2_OFFS),
        spi_w0_offs=int(rom.SPI_W0_OFFS),
        **extra,
    )


_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-]?[0-9a-f]{2}){5}$")


def parse_mac(text: str) -> bytes:
    """``24:a1:60:0a:1b:2c`` (or dashes, or 12 hex digits) -> 6 bytes; unicast only."""
    value = text.strip().lower()
    if not _MAC_RE.match(value):
        raise InputError(f"MAC {text!r} is not 6 hex bytes like 24:a1:60:0a:1b:2c")
    mac = bytes.fromhex(value.replace(":", "").replace("-", ""))
    if mac[0] & 1:
        raise InputError(f"MAC {text!r} is a multicast address: the first byte must be even")
    return mac


def check_table_offset(facts: ChipFacts, flash_size: int, offset: int | None) -> int:
    """The partition table offset a bootloader can be built with on this chip."""
    if offset is None:
        return facts.default_partition_table_offset
    if offset % SECTOR_SIZE or not facts.bootloader_offset < offset <= flash_size - SECTOR_SIZE:
        raise InputError(
            f"partition table offset {offset:#x} is not a 4 KB-aligned offset after the "
            f"bootloader (at {facts.bootloader_offset:#x}) inside the flash: use the "
            "bootloader's CONFIG_PARTITION_TABLE_OFFSET (default 0x8000)"
        )
    return offset


def _mac_crc8(mac: bytes) -> int:
    """esp_crc8 of the ESP32 ROM (espefuse's MAC_CRC): CRC-8, reflected poly 0x8C."""
    result = 0
    for byte in mac:
        result ^= byte
        for _ in range(8):
            result = (result >> 1) ^ 0x8C if result & 1 else result >> 1
    return result


class VirtualChip:
    """One virtual chip. ``efuse`` is the controller; ``flash`` the NOR flash."""

    def __init__(
        self,
        chip: str,
        *,
        revision: int,
        flash: NorFlash,
        efuse: EfuseController,
        partition_table_offset: int | None = None,
    ) -> None:
        self.facts: ChipFacts = chip_facts(chip)
        self.chip = chip
        self.rom = rom_model(chip)
        self.revision = revision
        self.flash = flash
        self.efuse = efuse
        #: Where the second-stage bootloader reads the partition table: ESP-IDF compiles
        #: CONFIG_PARTITION_TABLE_OFFSET into the bootloader and the binary does not say
        #: it, so the virtual chip is told (default: the chip's 0x8000).
        self.partition_table_offset = check_table_offset(
            self.facts, flash.size, partition_table_offset
        )
        #: Virtual console: the boot log (:mod:`espfleet.device.boot`) and ROM loader notes.
        self.console: list[str] = []
        self.download_mode: DownloadMode = "normal"
        self.reset()

    @classmethod
    def new(
        cls,
        chip: str,
        *,
        revision: int | None = None,
        flash_size: int = 4 << 20,
        mac: bytes | None = None,
        partition_table_offset: int | None = None,
    ) -> VirtualChip:
        """A factory-fresh chip: erased flash, blank eFuses but its MAC and revision."""
        facts = chip_facts(chip)
        if revision is None:
            revision = facts.virtual_default_revision
        if not 0 <= revision <= 399 or revision % 100 > 15:
            raise InputError(f"chip revision {revision} is not major*100+minor (e.g. 300)")
        if mac is None:
            mac = bytes([0x24, 0x0A, 0xC4]) + secrets.token_bytes(3)
        if len(mac) != 6 or mac[0] & 1:
            raise InputError("a chip MAC is 6 bytes and unicast (first byte even)")
        efuse = EfuseController(facts.name)
        efuse.set_raw("MAC", int.from_bytes(mac, "big"))
        crc_field = rom_model(chip).mac_crc_field
        if crc_field:
            efuse.set_raw(crc_field, _mac_crc8(mac))
        if revision:
            efuse.set_chip_revision(revision)
        efuse.changed = False
        return cls(
            chip,
            revision=revision,
            flash=NorFlash(flash_size),
            efuse=efuse,
            partition_table_offset=partition_table_offset,
        )

    # --- identity ---------------------------------------------------------------

    @property
    def mac(self) -> bytes:
        """Base MAC as the eFuses hold it."""
        return self.efuse.get("MAC").to_bytes(6, "big")

    @property
    def device_id(self) -> str:
        return f"{self.chip}-{self.mac.hex()}"

    # --- eFuses -----------------------------------------------------------------

    def efuse_bytes(self) -> bytes:
        """Exactly the ``espefuse --virt`` file (read-protected keys as zeros)."""
        return self.efuse.file_bytes()

    def efuses(self) -> EfuseImage:
        from espfleet.formats.efuse import EfuseImage

        return EfuseImage.decode(self.chip, self.efuse_bytes())

    def burn_efuse(self, name: str, value: int) -> None:
        """Burn a field from software (app/bootloader); obeys write protection."""
        self.efuse.burn(name, value)

    def hardware_key(self) -> bytes | None:
        """The flash-encryption key as the AES engine holds it (even when read-protected)."""
        return engine.engine_key(self.efuse)

    def flash_encryption_enabled(self) -> bool:
        """The crypt counter has an odd number of bits set."""
        count = self.efuse.get(self.facts.crypt_cnt_field, hardware=True)
        return bin(count).count("1") % 2 == 1

    # --- flash through the engine ----------------------------------------------------

    def read_decrypted(self, addr: int, length: int) -> bytes:
        """A read through the cache: decrypted when flash encryption is on, else raw."""
        if not self.flash_encryption_enabled():
            return self.flash.read(addr, length)
        align = engine.alignment(self.chip)
        start = addr - addr % align
        end = -(-(addr + length) // align) * align
        plain = engine.crypt(self.efuse, start, self.flash.read(start, end - start), decrypt=True)
        return plain[addr - start : addr - start + length]

    def write_encrypted(self, addr: int, data: bytes) -> None:
        """Engine-encrypt ``data`` for ``addr`` and program it (the caller erased first)."""
        self.flash.program(addr, engine.crypt(self.efuse, addr, data, decrypt=False))

    # --- reset ------------------------------------------------------------------

    def reset(self) -> None:
        """Power-on/reset: eFuse registers reload and the ROM re-reads its strapping eFuses."""
        self.efuse.reset()
        honoured = self.revision >= self.rom.loader_disable_min_revision
        if honoured and any(
            self.efuse.get(f, hardware=True) for f in self.rom.loader_disable_fields
        ):
            self.download_mode = "disabled"
        elif self.rom.secure_download_field and self.efuse.get(
            self.rom.secure_download_field, hardware=True
        ):
            self.download_mode = "secure"
        else:
            self.download_mode = "normal"
