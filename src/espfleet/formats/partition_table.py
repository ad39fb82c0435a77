"""ESP-IDF partition table: binary codec, CSV import/export, layout validation.

The binary table (written at CONFIG_PARTITION_TABLE_OFFSET, 0x8000 by default) is a run
of 32-byte entries ``<2sBBII16sI`` (magic AA 50, type, subtype, offset, size, name,
flags), then an MD5 row (EB EB, 14 x FF, MD5 of the entries), padded with 0xFF to
0xC00 bytes. The rules follow ESP-IDF's ``gen_esp32part.py`` and its bootloader.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from espfleet.errors import FormatError, InputError

__all__ = [
    "APP",
    "DATA",
    "MAX_ENTRIES",
    "SUBTYPES",
    "TABLE_LENGTH",
    "TYPES",
    "Partition",
    "PartitionTable",
    "decode",
    "default_secure_table",
    "from_csv",
    "parse_size",
    "subtype_name",
    "type_name",
]

APP = 0x00
DATA = 0x01
TYPES: dict[str, int] = {"app": APP, "data": DATA, "bootloader": 0x02, "partition_table": 0x03}

OTA_SUBTYPE_MIN = 0x10
OTA_SLOTS = 16
SUBTYPES: dict[int, dict[str, int]] = {
    APP: {
        "factory": 0x00,
        **{f"ota_{n}": OTA_SUBTYPE_MIN + n for n in range(OTA_SLOTS)},
        "test": 0x20,
    },
    DATA: {
        "ota": 0x00,
        "phy": 0x01,
        "nvs": 0x02,
        "coredump": 0x03,
        "nvs_keys": 0x04,
        "efuse": 0x05,
        "undefined": 0x06,
        "esphttpd": 0x80,
        "fat": 0x81,
        "spiffs": 0x82,
        "littlefs": 0x83,
    },
}

TABLE_LENGTH = 0xC00  # the table sector keeps its last 1 KB for a signature
TABLE_SECTOR = 0x1000
ENTRY = struct.Struct("<2sBBII16sI")
MAGIC = b"\xaa\x50"
MD5_ROW_PREFIX = b"\xeb\xeb" + b"\xff" * 14
END_ROW = b"\xff" * 32
#: Entries that fit with the MD5 row and an end marker (gen_esp32part refuses more).
MAX_ENTRIES = TABLE_LENGTH // ENTRY.size - 2
FLAG_ENCRYPTED = 1 << 0
FLAG_READONLY = 1 << 1
APP_ALIGN = 0x10000
DATA_ALIGN = 0x1000
NVS_KEYS_MIN_SIZE = 0x1000
OTADATA_SIZE = 0x2000


def type_name(ptype: int) -> str:
    """ESP-IDF's name for a partition type, or its hex value."""
    for name, value in TYPES.items():
        if value == ptype:
            return name
    return f"{ptype:#04x}"


def subtype_name(ptype: int, subtype: int) -> str:
    """ESP-IDF's name for a subtype of ``ptype``, or its hex value."""
    for name, value in SUBTYPES.get(ptype, {}).items():
        if value == subtype:
            return name
    return f"{subtype:#04x}"


def alignment(ptype: int) -> int:
    return APP_ALIGN if ptype == APP else DATA_ALIGN


@dataclass(frozen=True)
class Partition:
    """One entry of the partition table."""

    name: str
    type: int
    subtype: int
    offset: int
    size: int
    encrypted: bool = False
    readonly: bool = False

    def __post_init__(self) -> None:
        try:
            raw = self.name.encode("ascii")
        except UnicodeEncodeError:
            raise InputError(
                f"partition name {self.name!r} is not ASCII: use letters, digits and '_'"
            ) from None
        if not raw or len(raw) > 16 or b"\x00" in raw:
            raise InputError(f"partition name {self.name!r} must be 1 to 16 characters without NUL")
        if not 0 <= self.type <= 0xFE:
            raise InputError(f"partition {self.name}: type {self.type:#x} is not 0x00..0xfe")
        if not 0 <= self.subtype <= 0xFE:
            raise InputError(f"partition {self.name}: subtype {self.subtype:#x} is not 0x00..0xfe")
        for what, value in (("offset", self.offset), ("size", self.size)):
            if not 0 <= value <= 0xFFFFFFFF:
                raise InputError(f"partition {self.name}: {what} {value:#x} is not a u32")

    @property
    def end(self) -> int:
        """First byte after the partition."""
        return self.offset + self.size

    @property
    def type_name(self) -> str:
        return type_name(self.type)

    @property
    def subtype_name(self) -> str:
        return subtype_name(self.type, self.subtype)

    @property
    def ota_slot(self) -> int | None:
        """n for an ``ota_n`` app slot, else None."""
        if self.type == APP and OTA_SUBTYPE_MIN <= self.subtype < OTA_SUBTYPE_MIN + OTA_SLOTS:
            return self.subtype - OTA_SUBTYPE_MIN
        return None

    def is_(self, ptype: str, subtype: str) -> bool:
        """``p.is_("data", "nvs")``: compare with ESP-IDF names."""
        return self.type == TYPES[ptype] and self.subtype == SUBTYPES[TYPES[ptype]][subtype]

    def encode(self) -> bytes:
        flags = (FLAG_ENCRYPTED if self.encrypted else 0) | (FLAG_READONLY if self.readonly else 0)
        return ENTRY.pack(
            MAGIC, self.type, self.subtype, self.offset, self.size, self.name.encode("ascii"), flags
        )

    def describe(self) -> str:
        return (
            f"{self.name} ({self.type_name}/{self.subtype_name} at {self.offset:#x}, "
            f"size {self.size:#x})"
        )


@dataclass(frozen=True)
class PartitionTable:
    """An ordered partition table (order as on flash)."""

    entries: tuple[Partition, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(self.entries))
        if len(self.entries) > MAX_ENTRIES:
            raise InputError(
                f"partition table has {len(self.entries)} entries; at most {MAX_ENTRIES} fit "
                f"in {TABLE_LENGTH:#x} bytes with the MD5 row"
            )

    # ----- binary -----------------------------------------------------------------
    def encode(self, *, md5: bool = True) -> bytes:
        """The 0xC00-byte binary table with its MD5 row, as gen_esp32part writes it
        (``md5=False``: as ``--disable-md5sum`` does)."""
        rows = b"".join(p.encode() for p in self.entries)
        out = rows + (MD5_ROW_PREFIX + hashlib.md5(rows).digest() if md5 else b"")
        return out + b"\xff" * (TABLE_LENGTH - len(out))

    @staticmethod
    def decode(data: bytes, *, require_md5: bool = False) -> PartitionTable:
        return decode(data, require_md5=require_md5)

    # ----- CSV --------------------------------------------------------------------
    @staticmethod
    def from_csv(text: str, *, table_offset: int = 0x8000) -> PartitionTable:
        return from_csv(text, table_offset=table_offset)

    def to_csv(self) -> str:
        """ESP-IDF CSV (sizes as K/M where exact), readable by gen_esp32part."""
        rows = ["# ESP-IDF Partition Table", "# Name, Type, SubType, Offset, Size, Flags"]
        for p in self.entries:
            flags = ":".join(
                flag for flag, on in (("encrypted", p.encrypted), ("readonly", p.readonly)) if on
            )
            rows.append(
                f"{p.name},{p.type_name},{p.subtype_name},{p.offset:#x},{_size_text(p.size)},{flags}"
            )
        return "\n".join(rows) + "\n"

    # ----- queries ----------------------------------------------------------------
    def find(self, name: str) -> Partition | None:
        return next((p for p in self.entries if p.name == name), None)

    def by_type(self, ptype: int | str, subtype: int | str | None = None) -> list[Partition]:
        """Partitions of a type (and subtype); names as ESP-IDF spells them work too."""
        t = TYPES[ptype] if isinstance(ptype, str) else ptype
        s = SUBTYPES.get(t, {})[subtype] if isinstance(subtype, str) else subtype
        return [p for p in self.entries if p.type == t and (s is None or p.subtype == s)]

    def app_slots(self) -> list[Partition]:
        """OTA app slots, ota_0 first (the order the bootloader indexes them)."""
        return sorted((p for p in self.entries if p.ota_slot is not None), key=lambda p: p.subtype)

    def flash_end(self) -> int:
        """Where the last partition ends."""
        return max((p.end for p in self.entries), default=0)

    # ----- validation -------------------------------------------------------------
    def problems(self, flash_size: int, *, table_offset: int = 0x8000) -> list[str]:
        """Every layout rule the table breaks (empty when it is valid)."""
        from espfleet.formats._partition_rules import layout_problems

        return layout_problems(self, flash_size, table_offset)

    def validate(self, flash_size: int, *, table_offset: int = 0x8000) -> None:
        """Raise :class:`InputError` listing every layout problem."""
        _raise_if(self.problems(flash_size, table_offset=table_offset))

    def secure_problems(
        self, flash_size: int, *, table_offset: int = 0x8000, app_size: int | None = None
    ) -> list[str]:
        from espfleet.formats._partition_rules import secure_problems

        return self.problems(flash_size, table_offset=table_offset) + secure_problems(
            self, app_size
        )

    def validate_secure(
        self, flash_size: int, *, table_offset: int = 0x8000, app_size: int | None = None
    ) -> None:
        """:meth:`validate` plus what a secure fleet needs: two OTA slots (each large
        enough for ``app_size``), otadata and nvs_keys present and flagged encrypted,
        an nvs partition that is not flagged encrypted."""
        _raise_if(self.secure_problems(flash_size, table_offset=table_offset, app_size=app_size))


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise InputError(
            "partition table is not valid: " + "; ".join(problems) + ". Fix the partition CSV "
            "(or use the secure default layout) and build the table again"
        )


def decode(data: bytes, *, require_md5: bool = False) -> PartitionTable:
    """Parse a binary table.

    An MD5 row, when present, must match the entries before it (FormatError naming the
    row otherwise); ``require_md5`` also refuses a table without one (ESP-IDF's default
    CONFIG_PARTITION_TABLE_MD5). The table ends at an all-0xFF row, or where ``data``
    ends on a row boundary (erased flash would follow), as in old ESP-IDF outputs.
    """
    data = bytes(data)
    if not data:
        raise FormatError(
            "partition table is 0 bytes, truncated at offset 0x0: read the 0xc00-byte table "
            "from its offset in flash (0x8000 by default)",
            0,
        )
    md5 = hashlib.md5()
    entries: list[Partition] = []
    md5_seen = False
    off = 0
    for index, off in enumerate(range(0, TABLE_LENGTH, ENTRY.size)):
        row = data[off : off + ENTRY.size]
        where = f"partition table row {index} at offset {off:#x}"
        if row == END_ROW or (not row and off == len(data)):
            if require_md5 and not md5_seen:
                raise FormatError(
                    f"{where}: table ends without an MD5 row: the table is incomplete or was "
                    "built with --disable-md5sum",
                    off,
                )
            return PartitionTable(tuple(entries))
        if len(row) < ENTRY.size:
            raise FormatError(f"{where}: truncated ({len(row)} of 32 bytes)", off)
        if md5_seen:
            raise FormatError(f"{where}: expected the end of the table after the MD5 row", off)
        if row[:2] == MD5_ROW_PREFIX[:2]:
            if row[16:] != md5.digest():
                raise FormatError(
                    f"{where}: MD5 mismatch (table says {row[16:].hex()}, entries hash to "
                    f"{md5.hexdigest()}): the table is corrupt or was tampered with",
                    off,
                )
            md5_seen = True
            continue
        entries.append(_decode_entry(row, index, off))
        md5.update(row)
    raise FormatError(
        f"partition table at offset {TABLE_LENGTH:#x}: no end-of-table marker within "
        f"{TABLE_LENGTH:#x} bytes: not a partition table",
        TABLE_LENGTH,
    )


def _decode_entry(row: bytes, index: int, off: int) -> Partition:
    magic, ptype, subtype, offset, size, raw_name, flags = ENTRY.unpack(row)
    where = f"partition table entry {index} at offset {off:#x}"
    if magic != MAGIC:
        raise FormatError(
            f"{where}: bad magic {magic.hex()}, expected aa50: not a partition table", off
        )
    name = raw_name.split(b"\x00", 1)[0]
    try:
        return Partition(
            name.decode("ascii"),
            ptype,
            subtype,
            offset,
            size,
            encrypted=bool(flags & FLAG_ENCRYPTED),
            readonly=bool(flags & FLAG_READONLY),
        )
    except (UnicodeDecodeError, InputError) as error:
        raise FormatError(f"{where}: {error}", off) from None


def parse_size(text: str) -> int:
    """``0x100000``, ``1M``, ``24K``, ``4096`` -> bytes (gen_esp32part's rules)."""
    value = text.strip()
    for suffix, scale in (("k", 1024), ("m", 1024 * 1024)):
        if value.lower().endswith(suffix):
            return parse_size(value[:-1]) * scale
    try:
        return int(value, 0)
    except ValueError:
        raise InputError(f"{text!r} is not a size or offset (try 0x10000, 64K or 1M)") from None


def _keyword(text: str, table: dict[str, int], what: str) -> int:
    value = text.strip()
    if value.lower() in table:
        return table[value.lower()]
    try:
        return int(value, 0)
    except ValueError:
        raise InputError(
            f"unknown {what} {value!r}; known: {', '.join(table)} or a number"
        ) from None


def from_csv(text: str, *, table_offset: int = 0x8000) -> PartitionTable:
    """Parse ESP-IDF's partition CSV; blank offsets follow the previous partition,
    aligned to 0x10000 for apps and 0x1000 for data."""
    parsed: list[tuple[int, str, int, int, int | None, int, bool, bool]] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = [f.strip() for f in (stripped + ",,,,,").split(",")]
        try:
            if not fields[1]:
                raise InputError("the type field is empty")
            ptype = _keyword(fields[1], TYPES, "partition type")
            if fields[2]:
                subtype = _keyword(fields[2], SUBTYPES.get(ptype, {}), "subtype")
            elif ptype == APP:
                raise InputError("an app partition needs a subtype (factory, ota_0, ...)")
            else:
                subtype = SUBTYPES[DATA]["undefined"]
            offset = parse_size(fields[3]) if fields[3] else None
            if not fields[4]:
                raise InputError("the size field is empty")
            size = parse_size(fields[4])
            flags = {f.strip() for f in fields[5].split(":") if f.strip()}
            unknown = flags - {"encrypted", "readonly"}
            if unknown:
                raise InputError(f"unknown flag(s) {', '.join(sorted(unknown))}")
            if any(fields[6:]):
                raise InputError("too many fields (name, type, subtype, offset, size, flags)")
        except InputError as error:
            raise InputError(f"partition CSV line {line_no}: {error}") from None
        parsed.append(
            (
                line_no,
                fields[0],
                ptype,
                subtype,
                offset,
                size,
                "encrypted" in flags,
                "readonly" in flags,
            )
        )
    entries: list[Partition] = []
    last_end = table_offset + TABLE_SECTOR
    for line_no, name, ptype, subtype, offset, size, enc, ro in parsed:
        if offset is None:
            align = alignment(ptype)
            offset = -(-last_end // align) * align
        try:
            entries.append(Partition(name, ptype, subtype, offset, size, enc, ro))
        except InputError as error:
            raise InputError(f"partition CSV line {line_no}: {error}") from None
        last_end = offset + size
    return PartitionTable(tuple(entries))


def _size_text(size: int) -> str:
    for scale, suffix in ((0x100000, "M"), (0x400, "K")):
        if size and size % scale == 0:
            return f"{size // scale}{suffix}"
    return f"{size:#x}"


SMALL_DATA = (
    ("nvs_keys", 0x1000, True),
    ("otadata", OTADATA_SIZE, True),
    ("phy_init", 0x1000, False),
)
MIN_NVS = 0x6000
MIN_SLOT = 0x80000


def default_secure_table(flash_size: int, table_offset: int = 0x8000) -> PartitionTable:
    """nvs, nvs_keys (encrypted), otadata (encrypted), phy_init, ota_0, ota_1.

    The data partitions fill the space between the table and the first 64 KB-aligned
    app offset (nvs takes what the others leave, at least 24 KB); the two OTA slots
    share the rest of the flash equally.
    """
    if table_offset % TABLE_SECTOR or table_offset < 0x1000:
        raise InputError(f"table offset {table_offset:#x} must be a multiple of 0x1000")
    data_start = table_offset + TABLE_SECTOR
    small = sum(size for _, size, _ in SMALL_DATA)
    app_start = -(-(data_start + MIN_NVS + small) // APP_ALIGN) * APP_ALIGN
    slot = (flash_size - app_start) // 2 // APP_ALIGN * APP_ALIGN
    if slot < MIN_SLOT:
        raise InputError(
            f"a {flash_size:#x}-byte flash leaves OTA slots of {max(slot, 0):#x} bytes; the "
            f"secure layout needs at least {MIN_SLOT:#x} each: use a 2 MB or larger flash"
        )
    nvs_size = app_start - data_start - small
    parts = [Partition("nvs", DATA, SUBTYPES[DATA]["nvs"], data_start, nvs_size)]
    offset = data_start + nvs_size
    subtypes = {"nvs_keys": "nvs_keys", "otadata": "ota", "phy_init": "phy"}
    for name, size, encrypted in SMALL_DATA:
        parts.append(Partition(name, DATA, SUBTYPES[DATA][subtypes[name]], offset, size, encrypted))
        offset += size
    for n in range(2):
        parts.append(Partition(f"ota_{n}", APP, OTA_SUBTYPE_MIN + n, app_start + n * slot, slot))
    table = PartitionTable(tuple(parts))
    table.validate_secure(flash_size, table_offset=table_offset)
    return table
