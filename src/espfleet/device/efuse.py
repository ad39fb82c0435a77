"""The device-side eFuse controller of a virtual chip.

Register-level behaviour (write registers, the program/read commands, coding
schemes, write protection, read protection) is espefuse's own
``EmulateEfuseController`` for the chip, so the real espefuse talking to the
virtual ROM loader meets exactly the controller its host tests use. Its memory is
the ``espefuse --virt`` file: the register window byte-reversed.

What espefuse's emulator lacks is the silicon's hidden side: a read-protected key
reads as zeros, yet the AES engine still uses it. Each time the controller applies
read protection we first fold the current register content into a *hardware shadow*
(fuses only ever gain bits, so an OR accumulates them). Only the engine reads the
shadow; software, espefuse and the loader see the register view.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import Any

from espfleet.errors import DeviceError, InputError

__all__ = ["EfuseController", "FieldDef"]

#: Lists of field definitions espefuse keeps per chip (outside the main EFUSES list).
_FIELD_LISTS = (
    "EFUSES",
    "KEYBLOCKS",
    "KEYBLOCKS_256",
    "CUSTOM_MAC",
    "ADC_CALIBRATION",
    "CALIBRATION_EFUSES",
    "BLOCK2_CALIBRATION_EFUSES",
)


@dataclass(frozen=True)
class FieldDef:
    """Where one eFuse field lives (espefuse's definition, flattened)."""

    name: str
    block: int
    word: int
    pos: int
    bit_len: int
    write_disable_bits: tuple[int, ...]
    read_disable_bits: tuple[int, ...]


@dataclass(frozen=True)
class _BlockDef:
    name: str
    index: int
    rd_offset: int
    words: int
    write_disable_bit: int | None
    read_disable_bits: tuple[int, ...]


def _bits(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(int(v) for v in value)
    return (int(value),)


def _field_len(field: Any) -> int:
    bit_len = getattr(field, "bit_len", None)
    if bit_len:
        return int(bit_len)
    kind = str(field.type)
    if kind.startswith("bool"):
        return 1
    size = int(kind.split(":")[1])
    return size * 8 if kind.startswith("bytes") else size


@cache
def _controller_class(chip: str) -> type[Any]:
    """espefuse's emulated controller for ``chip``, with two hooks of ours."""
    try:
        module = importlib.import_module(f"espefuse.efuse.{chip}.emulate_efuse_controller")
    except ModuleNotFoundError:
        raise InputError(f"espefuse has no eFuse controller for chip {chip!r}") from None
    base = module.EmulateEfuseController

    class _Controller(base):  # type: ignore[misc, valid-type]
        owner: EfuseController | None = None

        def check_rd_protection_area(self) -> None:
            # The silicon latches the key into the engine before hiding it.
            if self.owner is not None:
                self.owner._capture()
            super().check_rd_protection_area()

        def save_to_file(self) -> None:
            if self.owner is not None:
                self.owner.changed = True

    return _Controller


@cache
def _layout(chip: str) -> tuple[dict[str, FieldDef], tuple[_BlockDef, ...], int, int]:
    """Field and block tables of ``chip``: (fields by name, blocks, base, size)."""
    ctl = _controller_class(chip)()
    base = int(ctl.REGS.DR_REG_EFUSE_BASE)
    size = int(ctl.REGS.EFUSE_MEM_SIZE)
    blocks = []
    for entry in ctl.Blocks.BLOCKS:
        blk = ctl.Blocks.get(entry)
        blocks.append(
            _BlockDef(
                name=blk.name,
                index=int(blk.id),
                rd_offset=int(blk.rd_addr) - base,
                words=int(blk.len),
                write_disable_bit=blk.write_disable_bit,
                read_disable_bits=_bits(blk.read_disable_bit),
            )
        )
    fields: dict[str, FieldDef] = {}
    for list_name in _FIELD_LISTS:
        for field in getattr(ctl.Fields, list_name, None) or []:
            if field is None or getattr(field, "word", None) is None:
                continue
            definition = FieldDef(
                name=field.name,
                block=int(field.block),
                word=int(field.word),
                pos=int(field.pos or 0),
                bit_len=_field_len(field),
                write_disable_bits=_bits(field.write_disable_bit),
                read_disable_bits=_bits(field.read_disable_bit),
            )
            for name in (field.name, *(field.alt_names or [])):
                fields.setdefault(name, definition)
    return fields, tuple(blocks), base, size


class EfuseController:
    """eFuses of one virtual chip: the register view plus the hardware shadow."""

    def __init__(self, chip: str, data: bytes | None = None, hardware: bytes | None = None):
        self.chip = chip
        self._fields, self._blocks, self.base, self.size = _layout(chip)
        self._ctl = _controller_class(chip)()
        if data is not None:
            self._load(data)
        self._hw = bytearray(self.file_bytes())
        if hardware is not None:
            if len(hardware) != self.size:
                raise InputError(
                    f"hardware eFuse shadow is {len(hardware)} bytes, expected {self.size}: "
                    "the virtual device's files do not belong together"
                )
            self._hw = bytearray(a | b for a, b in zip(self._hw, hardware, strict=True))
        self._ctl.owner = self
        #: Set whenever espefuse's controller would have saved its file.
        self.changed = False

    def _load(self, data: bytes) -> None:
        if len(data) != self.size:
            raise InputError(
                f"eFuse file is {len(data)} bytes but {self.chip} has a {self.size}-byte "
                "eFuse window: pass the file `espefuse --virt --path-efuse-file` makes"
            )
        from espefuse.efuse.bitstring import BitStream

        self._ctl.mem = BitStream(bytes=bytes(data), length=self.size * 8)

    # --- the register window, as the CPU and the ROM loader see it -------------------

    def contains(self, addr: int) -> bool:
        return self.base <= addr < self.base + self.size

    def read_reg(self, addr: int) -> int:
        return int(self._ctl.read_reg(addr))

    def write_reg(self, addr: int, value: int, mask: int = 0xFFFFFFFF) -> None:
        """A CPU store to an eFuse register (program/read commands take effect here)."""
        if mask != 0xFFFFFFFF:
            value = (self.read_reg(addr) & ~mask) | (value & mask)
        self._ctl.write_reg(addr, value & 0xFFFFFFFF)

    def file_bytes(self) -> bytes:
        """The ``espefuse --virt`` file: read-protected blocks read as zeros."""
        return bytes(self._ctl.mem.bytes)

    def hardware_bytes(self) -> bytes:
        """Every fuse as burned, read-protected keys included (engine-only)."""
        self._capture()
        return bytes(self._hw)

    def _capture(self) -> None:
        current = self._ctl.mem.bytes
        for i, byte in enumerate(current):
            self._hw[i] |= byte

    # --- fields ----------------------------------------------------------------

    def field(self, name: str) -> FieldDef:
        try:
            return self._fields[name]
        except KeyError:
            raise InputError(
                f"{self.chip} has no eFuse named {name!r}: use espefuse's names "
                f"(espefuse/efuse_defs/{self.chip}.yaml)"
            ) from None

    def _block(self, index: int) -> _BlockDef:
        for blk in self._blocks:
            if blk.index == index:
                return blk
        raise DeviceError(f"{self.chip} has no eFuse block {index}")

    def block_bytes(self, name: str, *, hardware: bool = False) -> bytes:
        """A block's content as register memory (little-endian words)."""
        blk = next((b for b in self._blocks if b.name == name), None)
        if blk is None:
            blk = self._block(self.field(name).block)
        mem = self._memory(hardware)
        return mem[blk.rd_offset : blk.rd_offset + blk.words * 4]

    def _memory(self, hardware: bool) -> bytes:
        """Little-endian register memory from the eFuse base."""
        return (self.hardware_bytes() if hardware else self.file_bytes())[::-1]

    def get(self, name: str, *, hardware: bool = False) -> int:
        """Field value as software reads it (or as the hardware uses it)."""
        field = self.field(name)
        mem = self._memory(hardware)
        start = self._block(field.block).rd_offset + field.word * 4
        nbytes = (field.pos + field.bit_len + 7) // 8
        raw = int.from_bytes(mem[start : start + nbytes], "little")
        return (raw >> field.pos) & ((1 << field.bit_len) - 1)

    def is_write_protected(self, name: str) -> bool:
        field = self.field(name)
        wr_dis = self.get("WR_DIS", hardware=True)
        bits = field.write_disable_bits
        block_bit = self._block(field.block).write_disable_bit
        if block_bit is not None and field.block != 0:
            bits = (*bits, block_bit)
        return any(wr_dis >> bit & 1 for bit in bits)

    def is_read_protected(self, block_name: str) -> bool:
        blk = next((b for b in self._blocks if b.name == block_name), None)
        if blk is not None:
            bits = blk.read_disable_bits
        else:
            bits = self.field(block_name).read_disable_bits
        rd_dis = self.get("RD_DIS", hardware=True)
        return any(rd_dis >> bit & 1 for bit in bits)

    def burn(self, name: str, value: int) -> None:
        """Burn bits of a field (OR: fuses never clear), obeying write protection."""
        field = self.field(name)
        if value < 0 or value >> field.bit_len:
            raise InputError(f"eFuse {name} is {field.bit_len} bits wide: {value} does not fit")
        if value == 0:
            return
        if self.is_write_protected(name):
            raise DeviceError(
                f"eFuse {name} is write-protected: the burn has no effect on this chip"
            )
        self._or_into_registers(field, value)
        self._ctl.check_rd_protection_area()
        self.changed = True

    def set_raw(self, name: str, value: int) -> None:
        """Factory-time programming (MAC, revision): no write-protection check."""
        self._or_into_registers(self.field(name), value)
        self._capture()

    def _or_into_registers(self, field: FieldDef, value: int) -> None:
        start = self.base + self._block(field.block).rd_offset + field.word * 4
        shifted = value << field.pos
        for i in range((field.pos + field.bit_len + 31) // 32):
            word = (shifted >> (32 * i)) & 0xFFFFFFFF
            if word:
                self._ctl.update_reg(start + 4 * i, 0xFFFFFFFF, word)

    def set_chip_revision(self, revision: int) -> None:
        """Factory programming of the wafer revision fields (espefuse's own mapping)."""
        self._ctl.set_chip_revision(revision)
        self._capture()

    def chip_revision(self) -> int:
        return int(self._ctl.get_chip_revision())

    def reset(self) -> None:
        """A chip reset reloads the read registers from the fuses, masked by RD_DIS."""
        self._ctl.check_rd_protection_area()
