"""espfleet's NVS decoder (ESP-IDF nvs_flash format, page version 1 and 2).

4 KB pages: header (state u32, seq u32, version u8, 19 reserved, CRC32 of bytes 4..27),
a 32-byte entry-state bitmap (2 bits per entry: 3 empty, 2 written, 0 erased), then
126 entries of 32 bytes: ns u8, type u8, span u8, chunk u8, CRC32 (of bytes 0..3 and
8..31), key[16], data[8]. Variable-length items (strings, blobs) continue in the next
``span - 1`` entries. Encrypted NVS runs AES-XTS over every entry with the entry's byte
offset in the partition as the tweak; headers and bitmaps stay plaintext.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from espfleet.errors import FormatError
from espfleet.formats.nvs_keys import NvsKeys

__all__ = ["PAGE_SIZE", "PRIMITIVES", "TYPE_CODES", "RawItem", "decode_items"]

PAGE_SIZE = 4096
ENTRY_SIZE = 32
FIRST_ENTRY = 64
ENTRIES_PER_PAGE = 126
CRC_INIT = 0xFFFFFFFF

PAGE_UNINITIALIZED = 0xFFFFFFFF
PAGE_ACTIVE = 0xFFFFFFFE
PAGE_FULL = 0xFFFFFFFC
PAGE_FREEING = 0xFFFFFFF8
PAGE_CORRUPT = 0xFFFFFFF0
PAGE_INVALID = 0x00000000
READABLE_PAGES = {PAGE_ACTIVE: "active", PAGE_FULL: "full", PAGE_FREEING: "freeing"}
VERSIONS = {0xFF: 1, 0xFE: 2}

STATE_EMPTY, STATE_WRITTEN, STATE_ERASED = 3, 2, 0

#: NVS type name -> (type code, struct format of the value in the data field)
PRIMITIVES: dict[str, tuple[int, str]] = {
    "u8": (0x01, "<B"),
    "i8": (0x11, "<b"),
    "u16": (0x02, "<H"),
    "i16": (0x12, "<h"),
    "u32": (0x04, "<I"),
    "i32": (0x14, "<i"),
    "u64": (0x08, "<Q"),
    "i64": (0x18, "<q"),
}
TYPE_STRING, TYPE_BLOB_V1, TYPE_BLOB_DATA, TYPE_BLOB_INDEX = 0x21, 0x41, 0x42, 0x48
TYPE_CODES = {code: name for name, (code, _) in PRIMITIVES.items()} | {
    TYPE_STRING: "string",
    TYPE_BLOB_V1: "blob",
}
VARIABLE = {TYPE_STRING, TYPE_BLOB_V1, TYPE_BLOB_DATA}


@dataclass
class RawItem:
    """A decoded value before namespaces are resolved."""

    ns: int
    key: str
    type: str
    value: int | str | bytes
    offset: int


@dataclass
class _Blob:
    size: int
    count: int
    start: int
    offset: int


@dataclass
class _State:
    keys: NvsKeys | None
    namespaces: dict[int, tuple[str, int]] = field(default_factory=dict)
    items: dict[tuple[int, str], RawItem] = field(default_factory=dict)
    blobs: dict[tuple[int, str], _Blob] = field(default_factory=dict)
    chunks: dict[tuple[int, str, int], tuple[bytes, int]] = field(default_factory=dict)
    first_entry_checked: bool = False


def _crc(data: bytes) -> int:
    return zlib.crc32(data, CRC_INIT)


def _entry_crc(entry: bytes) -> int:
    return _crc(entry[0:4] + entry[8:32])


def _decrypt(keys: NvsKeys, data: bytes, offset: int) -> bytes:
    tweak = offset.to_bytes(16, "little")
    decryptor = Cipher(algorithms.AES(keys.raw), modes.XTS(tweak)).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def decode_items(data: bytes, keys: NvsKeys | None) -> tuple[dict[int, str], list[RawItem]]:
    """Every live item of an NVS partition, namespaces by index, newest page winning."""
    if not data or len(data) % PAGE_SIZE:
        raise FormatError(
            f"NVS partition is {len(data)} bytes, truncated at offset "
            f"{len(data) - len(data) % PAGE_SIZE:#x}: it must be a whole number of 4 KB pages",
            len(data) - len(data) % PAGE_SIZE,
        )
    pages: list[tuple[int, int]] = []
    for number in range(len(data) // PAGE_SIZE):
        seq = _page_seq(data, number)
        if seq is not None:
            pages.append((seq, number))
    state = _State(keys)
    for _, number in sorted(pages):
        _read_page(data, number, state)
    items = list(state.items.values()) + _assemble_blobs(state)
    names: dict[int, str] = {}
    for index, (name, _) in state.namespaces.items():
        names[index] = name
    for item in items:
        if item.ns not in names:
            raise FormatError(
                f"NVS entry {item.key!r} at offset {item.offset:#x}: namespace index {item.ns} "
                "is not defined by any namespace entry",
                item.offset,
            )
    return names, items


def _page_seq(data: bytes, number: int) -> int | None:
    base = number * PAGE_SIZE
    page_state, seq, version = struct.unpack_from("<IIB", data, base)
    where = f"NVS page {number} at offset {base:#x}"
    if page_state in (PAGE_UNINITIALIZED, PAGE_CORRUPT, PAGE_INVALID):
        return None
    if page_state not in READABLE_PAGES:
        raise FormatError(f"{where}: unknown page state {page_state:#010x}", base)
    (stored,) = struct.unpack_from("<I", data, base + 28)
    if stored != _crc(data[base + 4 : base + 28]):
        raise FormatError(
            f"{where}: header CRC32 {stored:#010x} does not match: the page header is corrupt",
            base + 28,
        )
    if version not in VERSIONS:
        raise FormatError(f"{where}: unknown NVS page version byte {version:#04x}", base + 8)
    return int(seq)


def _entry_states(data: bytes, base: int) -> list[int]:
    bitmap = data[base + 32 : base + 64]
    return [(bitmap[i // 4] >> ((i % 4) * 2)) & 3 for i in range(ENTRIES_PER_PAGE)]


def _read_page(data: bytes, number: int, state: _State) -> None:
    base = number * PAGE_SIZE
    states = _entry_states(data, base)
    i = 0
    while i < ENTRIES_PER_PAGE:
        entry_state = states[i]
        offset = base + FIRST_ENTRY + i * ENTRY_SIZE
        where = f"NVS page {number} entry {i} at offset {offset:#x}"
        if entry_state == 1:
            raise FormatError(f"{where}: illegal entry state 0b01 in the bitmap", base + 32)
        if entry_state != STATE_WRITTEN:
            i += 1
            continue
        entry = _load(data, offset, state.keys)
        _check_entry_crc(entry, where, offset, state)
        span = entry[2]
        if not 1 <= span <= ENTRIES_PER_PAGE - i:
            raise FormatError(f"{where}: span {span} runs past the end of the page", offset + 2)
        if any(s != STATE_WRITTEN for s in states[i + 1 : i + span]):
            raise FormatError(f"{where}: its {span - 1} data entries are not all written", offset)
        payload = b"".join(_load(data, offset + k * ENTRY_SIZE, state.keys) for k in range(1, span))
        _take(entry, payload, where, offset, state)
        i += span


def _load(data: bytes, offset: int, keys: NvsKeys | None) -> bytes:
    raw = data[offset : offset + ENTRY_SIZE]
    return raw if keys is None else _decrypt(keys, raw, offset)


def _check_entry_crc(entry: bytes, where: str, offset: int, state: _State) -> None:
    first = not state.first_entry_checked
    state.first_entry_checked = True
    (stored,) = struct.unpack_from("<I", entry, 4)
    if stored == _entry_crc(entry):
        return
    if state.keys is None and first:
        hint = (
            "this NVS partition is encrypted (or corrupt): its nvs_keys are needed to read "
            "it (espfleet inspect --nvs-keys FILE)"
        )
    elif first:
        hint = "wrong nvs_keys, or the partition is not encrypted"
    else:
        hint = "the entry is corrupt"
    raise FormatError(f"{where}: entry CRC32 {stored:#010x} does not match: {hint}", offset)


def _text(raw: bytes, what: str, where: str, offset: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{where}: {what} is not valid UTF-8", offset) from None


def _take(entry: bytes, payload: bytes, where: str, offset: int, state: _State) -> None:
    ns, code, span, chunk = entry[0], entry[1], entry[2], entry[3]
    key = _text(entry[8:24].split(b"\x00", 1)[0], "key", where, offset + 8)
    if not key:
        raise FormatError(f"{where}: empty key", offset + 8)
    value_field = entry[24:32]
    if code in VARIABLE:
        size, _, data_crc = struct.unpack_from("<HHI", value_field)
        if size > len(payload):
            raise FormatError(
                f"{where}: {key!r} claims {size} bytes but spans {span - 1} data entries",
                offset + 24,
            )
        body = payload[:size]
        if _crc(body) != data_crc:
            raise FormatError(f"{where}: data CRC32 of {key!r} does not match", offset + 28)
        if code == TYPE_BLOB_DATA:
            state.chunks[(ns, key, chunk)] = (body, offset)
        elif code == TYPE_BLOB_V1:
            _put(state, RawItem(ns, key, "blob", body, offset))
        else:
            if not body.endswith(b"\x00") or b"\x00" in body[:-1]:
                raise FormatError(
                    f"{where}: string {key!r} is not one NUL-terminated string", offset
                )
            text = _text(body[:-1], f"string {key!r}", where, offset)
            _put(state, RawItem(ns, key, "string", text, offset))
        return
    if span != 1:
        raise FormatError(f"{where}: fixed-size entry {key!r} has span {span}", offset + 2)
    if code == TYPE_BLOB_INDEX:
        size, count, start = struct.unpack_from("<IBB", value_field)
        state.blobs[(ns, key)] = _Blob(size, count, start, offset)
        state.items.pop((ns, key), None)
        return
    name = TYPE_CODES.get(code)
    if name is None:
        raise FormatError(f"{where}: unknown NVS item type {code:#04x}", offset + 1)
    (value,) = struct.unpack_from(PRIMITIVES[name][1], value_field)
    if ns == 0:
        if name != "u8":
            raise FormatError(f"{where}: namespace entry {key!r} is not a u8", offset + 1)
        _define_namespace(state, key, value, where, offset)
        return
    _put(state, RawItem(ns, key, name, value, offset))


def _put(state: _State, item: RawItem) -> None:
    """A newer write of a key replaces an older one of any type."""
    state.blobs.pop((item.ns, item.key), None)
    state.items[(item.ns, item.key)] = item


def _define_namespace(state: _State, name: str, index: int, where: str, offset: int) -> None:
    if not 1 <= index <= 254:
        raise FormatError(f"{where}: namespace {name!r} has index {index}", offset + 24)
    for other, (other_name, _) in state.namespaces.items():
        if (other_name == name) != (other == index):
            raise FormatError(
                f"{where}: namespace {name!r} (index {index}) clashes with namespace "
                f"{other_name!r} (index {other})",
                offset,
            )
    state.namespaces[index] = (name, offset)


def _assemble_blobs(state: _State) -> list[RawItem]:
    out: list[RawItem] = []
    for (ns, key), blob in state.blobs.items():
        parts = []
        for chunk in range(blob.start, blob.start + blob.count):
            found = state.chunks.get((ns, key, chunk))
            if found is None:
                raise FormatError(
                    f"NVS blob {key!r} (index at offset {blob.offset:#x}): chunk {chunk} of "
                    f"{blob.count} is missing",
                    blob.offset,
                )
            parts.append(found[0])
        value = b"".join(parts)
        if len(value) != blob.size:
            raise FormatError(
                f"NVS blob {key!r} (index at offset {blob.offset:#x}): chunks hold "
                f"{len(value)} bytes, the index says {blob.size}",
                blob.offset,
            )
        out.append(RawItem(ns, key, "blob", value, blob.offset))
    return out
