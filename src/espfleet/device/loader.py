"""The ROM serial loader protocol of a virtual chip (what esptool --no-stub talks to).

Pure request/response over decoded SLIP payloads: :meth:`RomLoader.handle` takes one
request frame and returns the response frames. Requests are ``<BBHI`` (0x00, op,
data length, checksum) + data; responses ``<BBHI`` (0x01, op, length, value) + data +
4 status bytes (status, error, 0, 0). Error codes are the ROM's (esptool prints
them as 0x1xx).

Enforced as the silicon does in download mode: secure download mode (S3/C3) allows
only flash writes, SPI setup and GET_SECURITY_INFO; the ROM encrypts writes only when
asked and DIS_DOWNLOAD_MANUAL_ENCRYPT is clear; ESP32's ROM has no encrypted
write path at all, and flash reads are raw (the engine sits behind the cache, which
the ROM loader does not use), so an encrypted chip gives out ciphertext.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from espfleet.device import engine
from espfleet.device.chip import VirtualChip
from espfleet.device.flash import SECTOR_SIZE, PowerCut
from espfleet.errors import DeviceError, InputError

__all__ = ["Op", "RomError", "RomLoader"]


class Op:
    """Opcodes (esptool's ESP_CMDS)."""

    FLASH_BEGIN = 0x02
    FLASH_DATA = 0x03
    FLASH_END = 0x04
    MEM_BEGIN = 0x05
    MEM_END = 0x06
    MEM_DATA = 0x07
    SYNC = 0x08
    WRITE_REG = 0x09
    READ_REG = 0x0A
    SPI_SET_PARAMS = 0x0B
    SPI_ATTACH = 0x0D
    READ_FLASH_SLOW = 0x0E
    CHANGE_BAUDRATE = 0x0F
    FLASH_DEFL_BEGIN = 0x10
    FLASH_DEFL_DATA = 0x11
    FLASH_DEFL_END = 0x12
    SPI_FLASH_MD5 = 0x13
    GET_SECURITY_INFO = 0x14


class RomError:
    """Second status byte of a failed command (esptool shows 0x100 + code)."""

    INVALID_MESSAGE = 0x05
    FAILED = 0x06
    BAD_CHECKSUM = 0x07
    FLASH_WRITE = 0x08
    FLASH_READ = 0x09
    READ_LENGTH = 0x0A
    DEFLATE = 0x0B


#: What the ROM still answers in secure download mode (ESP-IDF "Secure Download Mode").
SECURE_DOWNLOAD_OPS = frozenset(
    {
        Op.SYNC,
        Op.FLASH_BEGIN,
        Op.FLASH_DATA,
        Op.FLASH_END,
        Op.FLASH_DEFL_BEGIN,
        Op.FLASH_DEFL_DATA,
        Op.FLASH_DEFL_END,
        Op.SPI_SET_PARAMS,
        Op.SPI_ATTACH,
        Op.CHANGE_BAUDRATE,
        Op.GET_SECURITY_INFO,
    }
)

#: GET_SECURITY_INFO flag bits (esptool's SECURITY_INFO_FLAG_MAP) and their eFuses.
_SECURITY_FLAGS = (
    (0, "SECURE_BOOT_EN"),
    (1, "SECURE_BOOT_AGGRESSIVE_REVOKE"),
    (2, "ENABLE_SECURITY_DOWNLOAD"),
    (3, "SECURE_BOOT_KEY_REVOKE0"),
    (4, "SECURE_BOOT_KEY_REVOKE1"),
    (5, "SECURE_BOOT_KEY_REVOKE2"),
    (6, "SOFT_DIS_JTAG"),
    (7, "DIS_PAD_JTAG"),
    (8, "DIS_USB_OTG"),
    (9, "DIS_DOWNLOAD_DCACHE"),
    (10, "DIS_DOWNLOAD_ICACHE"),
)

_SPI_CMD_USR = 1 << 18
_SPIFLASH_RDID = 0x9F
_FLASH_VENDOR = 0xEF  # Winbond
_FLASH_TYPE = 0x40
_XTAL_HZ = 40_000_000
_ROM_BAUD = 115_200
_READ_SLOW_BLOCK = 64


class _Refused(Exception):
    def __init__(self, code: int, note: str) -> None:
        super().__init__(note)
        self.code = code
        self.note = note


@dataclass
class _FlashWrite:
    offset: int
    block_size: int
    blocks: int
    end: int
    encrypted: bool
    compressed: bool
    next_seq: int = 0
    written: int = 0
    inflater: zlib._Decompress | None = field(default=None)


class RomLoader:
    """One download-mode session of ``chip`` (a new one after every reset)."""

    def __init__(self, chip: VirtualChip) -> None:
        self.chip = chip
        self.secure = chip.download_mode == "secure"
        self._regs: dict[int, int] = {}
        self._write: _FlashWrite | None = None
        #: Flash / eFuses changed since the owner last persisted them.
        self.flash_dirty = False
        #: The host asked the ROM to leave download mode and run the app.
        self.exit_requested = False

    # --- framing ----------------------------------------------------------------

    def handle(self, frame: bytes) -> list[bytes]:
        """Answer one request payload (SLIP-decoded). Returns response payloads."""
        if len(frame) < 8:
            return []
        direction, op, length, checksum = struct.unpack("<BBHI", frame[:8])
        data = frame[8:]
        if direction != 0x00:
            return []
        if len(data) != length:
            return [self._response(op, 0, b"", RomError.INVALID_MESSAGE)]
        if self.secure and op not in SECURE_DOWNLOAD_OPS:
            self._note(f"secure download mode: command {op:#04x} refused")
            return [self._response(op, 0, b"", RomError.INVALID_MESSAGE)]
        if op == Op.SYNC:
            # The ROM answers SYNC 8 times, with a non-zero value (zero means a stub).
            return [self._response(op, 0x20120707, b"") for _ in range(8)]
        handler = self._HANDLERS.get(op)
        if handler is None:
            return [self._response(op, 0, b"", RomError.INVALID_MESSAGE)]
        try:
            value, body = handler(self, data, checksum)
        except _Refused as refused:
            if refused.note:
                self._note(refused.note)
            return [self._response(op, 0, b"", refused.code)]
        except PowerCut:
            raise  # the chip lost power: no answer at all
        except DeviceError as error:
            self._note(str(error))
            return [self._response(op, 0, b"", RomError.FAILED)]
        return [self._response(op, value, body)]

    @staticmethod
    def _response(op: int, value: int, body: bytes, error: int = 0) -> bytes:
        status = bytes([1, error, 0, 0]) if error else b"\x00\x00\x00\x00"
        payload = body + status
        return struct.pack("<BBHI", 0x01, op, len(payload), value & 0xFFFFFFFF) + payload

    def _note(self, text: str) -> None:
        self.chip.console.append(f"[rom-loader] {text}")

    # --- registers ----------------------------------------------------------------

    def _register_default(self, addr: int) -> int:
        rom = self.chip.rom
        if addr == 0x40001000:
            return rom.magic_value
        if addr == rom.uart_clkdiv_reg:
            return round(_XTAL_HZ / _ROM_BAUD)
        if addr == rom.apb_ctl_date_addr:
            return (1 << 31) if self.chip.revision >= 300 else 0
        return 0

    def read_register(self, addr: int) -> int:
        if self.chip.efuse.contains(addr):
            return self.chip.efuse.read_reg(addr)
        return self._regs.get(addr, self._register_default(addr))

    def write_register(self, addr: int, value: int, mask: int) -> None:
        if self.chip.efuse.contains(addr):
            self.chip.efuse.write_reg(addr, value, mask)
            return
        old = self._regs.get(addr, self._register_default(addr))
        self._regs[addr] = (old & ~mask) | (value & mask)
        rom = self.chip.rom
        if addr == rom.spi_base and value & _SPI_CMD_USR:
            self._run_spi_command()

    def _run_spi_command(self) -> None:
        """The SPI1 "user command" esptool uses for RDID (flash id) and status reads."""
        rom = self.chip.rom
        command = self._regs.get(rom.spi_base + rom.spi_usr2_offs, 0) & 0xFF
        result = 0
        if command == _SPIFLASH_RDID:
            capacity = self.chip.flash.size.bit_length() - 1
            result = _FLASH_VENDOR | _FLASH_TYPE << 8 | capacity << 16
        self._regs[rom.spi_base + rom.spi_w0_offs] = result
        self._regs[rom.spi_base] = 0

    def _read_reg(self, data: bytes, _chk: int) -> tuple[int, bytes]:
        if len(data) != 4:
            raise _Refused(RomError.INVALID_MESSAGE, "READ_REG needs one address")
        (addr,) = struct.unpack("<I", data)
        return self.read_register(addr), b""

    def _write_reg(self, data: bytes, _chk: int) -> tuple[int, bytes]:
        if not data or len(data) % 16:
            raise _Refused(RomError.INVALID_MESSAGE, "WRITE_REG needs 16-byte entries")
        for addr, value, mask, _delay in struct.iter_unpack("<IIII", data):
            self.write_register(addr, value, mask)
        return 0, b""

    # --- setup --------------------------------------------------------------------

    def _ack(self, _data: bytes, _chk: int) -> tuple[int, bytes]:
        return 0, b""

    def _security_info(self, _data: bytes, _chk: int) -> tuple[int, bytes]:
        rom = self.chip.rom
        if not rom.security_info:
            raise _Refused(RomError.INVALID_MESSAGE, "")  # ESP32: not in this ROM
        efuse = self.chip.efuse
        flags = 0
        for bit, name in _SECURITY_FLAGS:
            try:
                if efuse.get(name, hardware=True):
                    flags |= 1 << bit
            except InputError:  # a field this chip does not have
                continue
        crypt_cnt = efuse.get(self.chip.facts.crypt_cnt_field, hardware=True)
        purposes = [efuse.get(f"KEY_PURPOSE_{n}", hardware=True) for n in range(6)] + [0]
        body = struct.pack(
            "<IB7BII", flags, crypt_cnt, *purposes, rom.chip_id, self.chip.revision // 100
        )
        return 0, body

    # --- flash writes -------------------------------------------------------------

    def _begin(self, data: bytes, compressed: bool) -> tuple[int, bytes]:
        rom = self.chip.rom
        words = 5 if rom.begin_has_encrypt_flag else 4
        if len(data) not in (16, 20) or (len(data) == 20 and words == 4):
            raise _Refused(RomError.INVALID_MESSAGE, "FLASH_BEGIN: wrong parameter count")
        size, blocks, block_size, offset = struct.unpack("<IIII", data[:16])
        encrypted = len(data) == 20 and struct.unpack("<I", data[16:])[0] == 1
        if encrypted:
            field_name = rom.download_encrypt_disable_field
            if self.chip.efuse.get(field_name, hardware=True):
                raise _Refused(RomError.FAILED, f"encrypted write refused: {field_name} is burned")
            if self.chip.hardware_key() is None:
                raise _Refused(RomError.FAILED, "encrypted write refused: no key in eFuse")
        flash = self.chip.flash
        start = offset - offset % SECTOR_SIZE
        end = -(-(offset + size) // SECTOR_SIZE) * SECTOR_SIZE
        if end > flash.size or (block_size == 0 and blocks):
            raise _Refused(
                RomError.FAILED, f"FLASH_BEGIN {offset:#x}+{size:#x} outside {flash.size:#x} flash"
            )
        if end > start:
            flash.erase(start, end - start)
            self.flash_dirty = True
        self._write = _FlashWrite(
            offset=offset,
            block_size=block_size,
            blocks=blocks,
            end=offset + size,
            encrypted=encrypted,
            compressed=compressed,
            inflater=zlib.decompressobj() if compressed else None,
        )
        return 0, b""

    def _flash_begin(self, data: bytes, _chk: int) -> tuple[int, bytes]:
        return self._begin(data, compressed=False)

    def _defl_begin(self, data: bytes, _chk: int) -> tuple[int, bytes]:
        return self._begin(data, compressed=True)

    def _block(self, data: bytes, checksum: int, compressed: bool) -> tuple[int, bytes]:
        write = self._write
        if write is None or write.compressed != compressed:
            raise _Refused(RomError.FAILED, "flash data without a matching FLASH_BEGIN")
        if len(data) < 16:
            raise _Refused(RomError.INVALID_MESSAGE, "flash data header missing")
        length, seq, _, _ = struct.unpack("<IIII", data[:16])
        payload = data[16:]
        if len(payload) != length:
            raise _Refused(RomError.INVALID_MESSAGE, "flash data length mismatch")
        expected = 0xEF
        for byte in payload:
            expected ^= byte
        if checksum != expected:
            raise _Refused(RomError.BAD_CHECKSUM, f"flash data block {seq}: bad checksum")
        if seq != write.next_seq:
            raise _Refused(RomError.FAILED, f"flash data block {seq}, expected {write.next_seq}")
        if write.inflater is not None:
            try:
                chunk = write.inflater.decompress(payload)
            except zlib.error as error:
                raise _Refused(RomError.DEFLATE, f"inflate failed: {error}") from None
        else:
            chunk = payload
        address = write.offset + write.written
        # A padded tail beyond the erased range is 0xFF and programs nothing.
        usable = max(0, min(len(chunk), write.end - address, self.chip.flash.size - address))
        if any(b != 0xFF for b in chunk[usable:]):
            raise _Refused(RomError.FLASH_WRITE, f"write past {write.end:#x}")
        if usable:
            if write.encrypted:
                self._program_encrypted(address, chunk[:usable])
            else:
                self.chip.flash.program(address, chunk[:usable])
            self.flash_dirty = True
        write.written += len(chunk)
        write.next_seq += 1
        return 0, b""

    def _program_encrypted(self, address: int, data: bytes) -> None:
        align = engine.alignment(self.chip.chip)
        pad = -len(data) % align
        self.chip.write_encrypted(address, data + b"\xff" * pad)

    def _flash_data(self, data: bytes, checksum: int) -> tuple[int, bytes]:
        return self._block(data, checksum, compressed=False)

    def _defl_data(self, data: bytes, checksum: int) -> tuple[int, bytes]:
        return self._block(data, checksum, compressed=True)

    def _flash_end(self, data: bytes, _chk: int) -> tuple[int, bytes]:
        self._write = None
        if len(data) >= 4 and struct.unpack("<I", data[:4])[0] == 0:
            self.exit_requested = True
            self._note("leaving download mode to run the application")
        return 0, b""

    # --- flash reads --------------------------------------------------------------

    def _md5(self, data: bytes, _chk: int) -> tuple[int, bytes]:
        if len(data) != 16:
            raise _Refused(RomError.INVALID_MESSAGE, "SPI_FLASH_MD5 needs 4 words")
        addr, size, _, _ = struct.unpack("<IIII", data)
        digest = hashlib.md5(self.chip.flash.read(addr, size)).hexdigest()
        return 0, digest.encode("ascii")

    def _read_slow(self, data: bytes, _chk: int) -> tuple[int, bytes]:
        if len(data) != 8:
            raise _Refused(RomError.INVALID_MESSAGE, "READ_FLASH_SLOW needs 2 words")
        addr, length = struct.unpack("<II", data)
        if length > _READ_SLOW_BLOCK:
            raise _Refused(RomError.READ_LENGTH, f"READ_FLASH_SLOW of {length} bytes")
        if addr + length > self.chip.flash.size:
            raise _Refused(RomError.FLASH_READ, f"read past the end of flash at {addr:#x}")
        raw = self.chip.flash.read(addr, length)
        return 0, raw.ljust(_READ_SLOW_BLOCK, b"\x00")

    def _mem_refused(self, _data: bytes, _chk: int) -> tuple[int, bytes]:
        raise _Refused(
            RomError.FAILED,
            "RAM download refused: the virtual chip runs no uploaded code; use esptool --no-stub",
        )

    _HANDLERS: ClassVar[dict[int, Callable[[RomLoader, bytes, int], tuple[int, bytes]]]] = {
        Op.READ_REG: _read_reg,
        Op.WRITE_REG: _write_reg,
        Op.SPI_ATTACH: _ack,
        Op.SPI_SET_PARAMS: _ack,
        Op.CHANGE_BAUDRATE: _ack,
        Op.GET_SECURITY_INFO: _security_info,
        Op.FLASH_BEGIN: _flash_begin,
        Op.FLASH_DATA: _flash_data,
        Op.FLASH_END: _flash_end,
        Op.FLASH_DEFL_BEGIN: _defl_begin,
        Op.FLASH_DEFL_DATA: _defl_data,
        Op.FLASH_DEFL_END: _flash_end,
        Op.SPI_FLASH_MD5: _md5,
        Op.READ_FLASH_SLOW: _read_slow,
        Op.MEM_BEGIN: _mem_refused,
        Op.MEM_DATA: _mem_refused,
        Op.MEM_END: _mem_refused,
    }
