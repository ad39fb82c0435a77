"""eFuse images: the register window ``espefuse --virt`` keeps in its eFuse file.

The file is the chip's eFuse read-register memory, byte-reversed (``data[::-1]`` is
the little-endian memory from the eFuse base address). Each block is a run of 32-bit
words at espefuse's read address; a field is ``bit_len`` bits at ``word``/``pos``
of its block. Where the fields and blocks are, which bit of WR_DIS protects a field
and which bit of RD_DIS hides a block, and what key purpose numbers mean, all come
from espefuse's own definitions (``espefuse/efuse_defs/<chip>.yaml`` through its
``mem_definition`` and field classes): nothing here is a copied table.

Values: integers for ``uint``/``bool`` fields, and for ``bytes`` fields the bytes in
memory order, which is the order ``espefuse summary`` prints (and its JSON
``raw_value``). A read-protected key reads as zeros, as on silicon.

:class:`EfuseImage` is immutable; :meth:`EfuseImage.with_field` returns a new image
with a field overwritten (a builder for tests and the virtual device, which
enforce burn rules themselves), and :meth:`EfuseImage.encode` gives the file bytes.
"""

from __future__ import annotations

import functools
import importlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

from espfleet.chips import chip_facts
from espfleet.errors import FormatError, InputError

__all__ = ["DigestSlot", "EfuseImage", "FieldDef", "field_names"]

Kind = Literal["uint", "bool", "bytes"]
_WORD_BITS: Final = 32
#: ESP32's CODING_SCHEME value for 3/4 coding: key blocks hold 24 bytes, not 32.
_CODING_SCHEME_34: Final = 1


@dataclass(frozen=True)
class FieldDef:
    """Where one eFuse field lives, from espefuse's definitions."""

    name: str
    block: int
    start: int  # bit offset within the block: word * 32 + pos
    bit_len: int
    kind: Kind
    write_disable_bit: int | None
    read_disable_bits: tuple[int, ...]
    alt_names: tuple[str, ...] = ()

    @property
    def mask(self) -> int:
        return (1 << self.bit_len) - 1


@dataclass(frozen=True)
class _BlockDef:
    name: str
    aliases: tuple[str, ...]
    index: int
    offset: int  # byte offset of the block in the register memory
    words: int
    read_disable_bits: tuple[int, ...]
    key_purpose_field: str | None


@dataclass(frozen=True)
class _Layout:
    chip: str
    size: int
    blocks: tuple[_BlockDef, ...]
    fields: MappingProxyType[str, FieldDef]
    names: MappingProxyType[str, str]  # alt name -> field name
    purposes: MappingProxyType[int, str]


@dataclass(frozen=True)
class DigestSlot:
    """A Secure Boot V2 public-key digest slot of eFuse."""

    slot: int
    block: str
    digest: bytes = field(repr=False)
    revoked: bool

    def __post_init__(self) -> None:
        if len(self.digest) != 32:
            raise ValueError("a secure boot digest is 32 bytes")


def _kind(efuse_type: str) -> Kind:
    head = efuse_type.split(":")[0]
    if head not in ("uint", "bool", "bytes"):
        raise ValueError(f"unexpected espefuse field type {efuse_type!r}")
    return head  # type: ignore[return-value]


def _bits(value: int | list[int] | None) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list) else (value,)


def _convert(definition: Any) -> FieldDef:
    return FieldDef(
        name=definition.name,
        block=definition.block,
        start=definition.word * _WORD_BITS + definition.pos,
        bit_len=definition.bit_len,
        kind=_kind(definition.type),
        write_disable_bit=definition.write_disable_bit,
        read_disable_bits=_bits(definition.read_disable_bit),
        alt_names=tuple(definition.alt_names),
    )


@functools.cache
def _layout(chip: str, coding_34: bool = False) -> _Layout:
    """espefuse's definitions for ``chip``, as espfleet uses them (parsed once)."""
    facts = chip_facts(chip)
    mem = importlib.import_module(f"espefuse.efuse.{chip}.mem_definition")
    fields_module = importlib.import_module(f"espefuse.efuse.{chip}.fields")
    regs = mem.EfuseDefineRegisters
    defs = mem.EfuseDefineFields(None)
    groups = ["EFUSES", "KEYBLOCKS_192" if coding_34 else "KEYBLOCKS_256", "KEYBLOCKS",
              "CUSTOM_MAC", "ADC_CALIBRATION", "CALIBRATION_EFUSES"]
    fields: dict[str, FieldDef] = {}
    for group in groups:
        for definition in getattr(defs, group, []):
            # Fields without a position (espefuse's "calc" fields) are derived, not stored.
            if definition.word is not None and definition.name not in fields:
                fields[definition.name] = _convert(definition)
    names = {alt: f.name for f in fields.values() for alt in f.alt_names}
    blocks = []
    for raw in mem.EfuseDefineBlocks.BLOCKS:
        block = mem.EfuseDefineBlocks.get(raw)
        blocks.append(_BlockDef(
            name=block.name, aliases=tuple(block.alias), index=block.id,
            offset=block.rd_addr - regs.DR_REG_EFUSE_BASE, words=block.len,
            read_disable_bits=_bits(block.read_disable_bit),
            key_purpose_field=block.key_purpose,
        ))
    purpose_field = getattr(fields_module, "EfuseKeyPurposeField", None)
    table = getattr(purpose_field, "KEY_PURPOSES", [])
    purposes = {entry[1]: entry[0] for entry in table if entry[1] >= 0}
    if facts.efuse_file_size != regs.EFUSE_MEM_SIZE:
        raise AssertionError(f"{chip}: espefuse and espfleet disagree on the eFuse size")
    return _Layout(chip, facts.efuse_file_size, tuple(blocks), MappingProxyType(fields),
                   MappingProxyType(names), MappingProxyType(purposes))


def field_names(chip: str) -> tuple[str, ...]:
    """Every stored field of ``chip`` that :meth:`EfuseImage.get` answers for."""
    return tuple(_layout(chip).fields)


_revision_lock = threading.Lock()


@functools.cache
def _revision_reader(chip: str) -> Any:
    """espefuse's emulated controller for ``chip``, used only to compute the chip
    revision from eFuse bits exactly as espefuse does (no file is opened)."""
    module = importlib.import_module(f"espefuse.efuse.{chip}.emulate_efuse_controller")
    return module.EmulateEfuseController(efuse_file=None)


@dataclass(frozen=True)
class EfuseImage:
    """A decoded eFuse image of one chip."""

    chip: str
    raw: bytes = field(repr=False)

    def __post_init__(self) -> None:
        size = chip_facts(self.chip).efuse_file_size
        if len(self.raw) != size:
            raise FormatError(
                f"{self.chip} eFuse image is {len(self.raw)} bytes, expected {size} (the "
                f"eFuse register window espefuse --virt writes): wrong chip or a truncated file",
                offset=min(len(self.raw), size),
            )

    # --- construction ---------------------------------------------------------------

    @classmethod
    def decode(cls, chip: str, data: bytes) -> EfuseImage:
        """Decode the bytes of an ``espefuse --virt --path-efuse-file`` file."""
        return cls(chip, bytes(data))

    @classmethod
    def blank(cls, chip: str) -> EfuseImage:
        """A chip fresh from the factory: every bit zero."""
        return cls(chip, bytes(chip_facts(chip).efuse_file_size))

    def encode(self) -> bytes:
        return self.raw

    # --- layout helpers -------------------------------------------------------------

    @property
    def _defs(self) -> _Layout:
        """The chip's layout; on ESP32 with 3/4 coding, with 24-byte key blocks."""
        base = _layout(self.chip)
        coding = base.fields.get("CODING_SCHEME")
        if coding is not None and self._read(coding) == _CODING_SCHEME_34:
            return _layout(self.chip, coding_34=True)
        return base

    def definition(self, name: str) -> FieldDef:
        """Where field ``name`` (espefuse name, alternative name or key block alias) is."""
        return self._field(name)

    def _field(self, name: str) -> FieldDef:
        layout = self._defs
        found = layout.fields.get(layout.names.get(name, name))
        block = self._block_or_none(name)
        if found is None and block is not None:  # a block alias: its whole-block key field
            found = layout.fields.get(block.name)
        if found is None:
            raise InputError(
                f"{self.chip} has no eFuse field {name!r}: names are espefuse's "
                "(see 'espefuse summary')"
            )
        return found

    def _block_or_none(self, name: str) -> _BlockDef | None:
        return next((b for b in _layout(self.chip).blocks
                     if name == b.name or name in b.aliases), None)

    def _block(self, name: str) -> _BlockDef:
        block = self._block_or_none(name)
        if block is None:
            names = ", ".join(b.name for b in _layout(self.chip).blocks)
            raise InputError(f"{self.chip} has no eFuse block {name!r} (blocks: {names})")
        return block

    def _block_int(self, index: int) -> int:
        block = next(b for b in _layout(self.chip).blocks if b.index == index)
        memory = self.raw[::-1]
        return int.from_bytes(memory[block.offset : block.offset + 4 * block.words], "little")

    def _read(self, definition: FieldDef) -> int:
        return (self._block_int(definition.block) >> definition.start) & definition.mask

    # --- reading --------------------------------------------------------------------

    def get(self, name: str) -> int | bytes:
        """A field by espefuse name (or alternative name, or a block name for the
        whole-block key fields): int for uint/bool, bytes (memory order) for bytes."""
        definition = self._field(name)
        value = self._read(definition)
        if definition.kind == "bytes":
            return value.to_bytes(definition.bit_len // 8, "little")
        return value

    def get_int(self, name: str) -> int:
        value = self.get(name)
        if isinstance(value, bytes):
            raise InputError(f"eFuse field {name} holds bytes, not a number")
        return value

    def get_bytes(self, name: str) -> bytes:
        value = self.get(name)
        if not isinstance(value, bytes):
            raise InputError(f"eFuse field {name} holds a number, not bytes")
        return value

    def fields(self) -> dict[str, int | bytes]:
        """Every stored field, by espefuse name."""
        return {name: self.get(name) for name in self._defs.fields}

    def __iter__(self) -> Iterator[str]:
        return iter(self._defs.fields)

    def is_read_protected(self, block_name: str) -> bool:
        """Whether software (and espefuse) reads this block as zeros (RD_DIS)."""
        bits = self._block(block_name).read_disable_bits
        rd_dis = self.get_int("RD_DIS")
        return any(rd_dis >> bit & 1 for bit in bits)

    def is_write_protected(self, field_name: str) -> bool:
        """Whether the field's WR_DIS bit is set (no further burns of it)."""
        bit = self._field(field_name).write_disable_bit
        return bit is not None and bool(self.get_int("WR_DIS") >> bit & 1)

    def key_purpose(self, block_name: str) -> str | None:
        """The purpose of a key block (S3/C3, espefuse's names), None where blocks have
        no purpose field (ESP32)."""
        purpose_field = self._block(block_name).key_purpose_field
        if purpose_field is None:
            return None
        value = self.get_int(purpose_field)
        return self._defs.purposes.get(value, f"CUSTOM_{value}")

    @property
    def crypt_cnt(self) -> int:
        return self.get_int(chip_facts(self.chip).crypt_cnt_field)

    @property
    def crypt_cnt_enabled(self) -> bool:
        """Flash encryption is on: the crypt counter has an odd number of bits set."""
        return self.crypt_cnt.bit_count() % 2 == 1

    @property
    def secure_boot_enabled(self) -> bool:
        return bool(self.get_int(chip_facts(self.chip).sb_enable_field))

    @property
    def chip_revision(self) -> int:
        """major * 100 + minor, computed by espefuse's own code for the chip.

        On ESP32 the top revision bit lives outside eFuse (APB_CTL_DATE); like
        espefuse's virtual chip, an image with both CHIP_VER_REV bits reads as v3.
        """
        from espefuse.efuse.bitstring import BitStream  # espefuse's own bit container

        reader = _revision_reader(self.chip)
        with _revision_lock:
            reader.mem = BitStream(bytes=self.raw)
            return int(reader.get_chip_revision())

    def secure_boot_digests(self) -> list[DigestSlot]:
        """The Secure Boot V2 key digests burned into eFuse, by slot.

        ESP32 has one slot (BLOCK2, set when non-zero); S3/C3 have a slot per key
        block whose purpose is SECURE_BOOT_DIGEST0..2, revoked by
        SECURE_BOOT_KEY_REVOKE0..2.
        """
        facts = chip_facts(self.chip)
        if facts.sb_digest_purposes is None:
            slots = []
            for index, block in enumerate(facts.sb_digest_blocks):
                digest = self.get_bytes(block)
                if any(digest):
                    slots.append(DigestSlot(index, block, digest[:32], revoked=False))
            return slots
        found = []
        for block in facts.sb_digest_blocks:
            purpose = self.key_purpose(block)
            if purpose in facts.sb_digest_purposes:
                slot = facts.sb_digest_purposes.index(purpose)
                revoked = bool(self.get_int(facts.sb_revoke_fields[slot]))
                found.append(DigestSlot(slot, block, self.get_bytes(block), revoked))
        return sorted(found, key=lambda s: s.slot)

    # --- building -------------------------------------------------------------------

    def with_field(self, name: str, value: int | bytes) -> EfuseImage:
        """A copy with field ``name`` set to ``value`` (overwritten, not OR-ed)."""
        definition = self._field(name)
        if definition.kind == "bytes":
            if not isinstance(value, bytes | bytearray) or len(value) * 8 != definition.bit_len:
                raise InputError(
                    f"eFuse field {definition.name} takes {definition.bit_len // 8} bytes"
                )
            number = int.from_bytes(value, "little")
        else:
            if isinstance(value, bytes | bytearray) or not 0 <= int(value) <= definition.mask:
                raise InputError(
                    f"eFuse field {definition.name} is {definition.bit_len} bits: "
                    f"{value!r} does not fit"
                )
            number = int(value)
        block = next(b for b in _layout(self.chip).blocks if b.index == definition.block)
        word_bytes = 4 * block.words
        memory = bytearray(self.raw[::-1])
        current = int.from_bytes(memory[block.offset : block.offset + word_bytes], "little")
        current &= ~(definition.mask << definition.start)
        current |= number << definition.start
        memory[block.offset : block.offset + word_bytes] = current.to_bytes(word_bytes, "little")
        return EfuseImage(self.chip, bytes(memory[::-1]))

    def with_fields(self, values: dict[str, int | bytes]) -> EfuseImage:
        image = self
        for name, value in values.items():
            image = image.with_field(name, value)
        return image
