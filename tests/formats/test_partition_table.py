"""Partition table: Espressif's vector, ESP-IDF's CSV rules, validation, attacks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from espfleet.errors import FormatError, InputError
from espfleet.formats import partition_table as pt
from espfleet.formats.partition_table import Partition, PartitionTable

MB = 1024 * 1024

# ESP-IDF's partitions_two_ota.csv, and the offsets gen_esp32part gives it.
TWO_OTA_CSV = """\
# Name,   Type, SubType, Offset,   Size, Flags
nvs,      data, nvs,     ,        0x4000,
otadata,  data, ota,     ,        0x2000,
phy_init, data, phy,     ,        0x1000,
factory,  app,  factory, ,        1M,
ota_0,    app,  ota_0,   ,        1M,
ota_1,    app,  ota_1,   ,        1M,
"""
TWO_OTA_LAYOUT = [
    ("nvs", 0x9000, 0x4000),
    ("otadata", 0xD000, 0x2000),
    ("phy_init", 0xF000, 0x1000),
    ("factory", 0x10000, 0x100000),
    ("ota_0", 0x110000, 0x100000),
    ("ota_1", 0x210000, 0x100000),
]


def test_espressif_singleapp_vector_decodes_and_reencodes(vectors: Path) -> None:
    data = (vectors / "partitions_singleapp.bin").read_bytes()
    table = pt.decode(data)
    assert [(p.name, p.type_name, p.subtype_name, p.offset, p.size) for p in table.entries] == [
        ("factory", "app", "factory", 0x10000, 0x100000),
        ("rfdata", "data", "phy", 0x110000, 0x40000),
        ("wifidata", "data", "nvs", 0x150000, 0x40000),
    ]
    # gen_esp32part of that era wrote no MD5 row: re-encoding without one is identical.
    encoded = table.encode(md5=False)
    assert encoded[: len(data)] == data
    assert encoded[len(data) :] == b"\xff" * (pt.TABLE_LENGTH - len(data))
    table.validate(4 * MB)


def test_md5_row_layout_matches_gen_esp32part() -> None:
    table = pt.from_csv(TWO_OTA_CSV)
    blob = table.encode()
    rows = b"".join(p.encode() for p in table.entries)
    n = len(rows)
    assert len(blob) == 0xC00
    assert blob[:n] == rows
    assert blob[n : n + 16] == b"\xeb\xeb" + b"\xff" * 14
    assert blob[n + 16 : n + 32] == hashlib.md5(rows).digest()
    assert blob[n + 32 :] == b"\xff" * (0xC00 - n - 32)
    assert pt.decode(blob, require_md5=True) == table


def test_csv_blank_offsets_follow_esp_idf_alignment() -> None:
    table = pt.from_csv(TWO_OTA_CSV)
    assert [(p.name, p.offset, p.size) for p in table.entries] == TWO_OTA_LAYOUT
    assert [p.name for p in table.app_slots()] == ["ota_0", "ota_1"]
    table.validate(4 * MB)


def test_csv_sizes_flags_and_numeric_types() -> None:
    table = pt.from_csv(
        "keys, data, nvs_keys, 0x10000, 4K, encrypted\n"
        "ro, data, nvs, , 24K, readonly\n"
        "fs, data, littlefs, , 0x10000,\n"
        "custom, 0x40, 0x7, , 8k, encrypted:readonly\n"
        "app, app, ota_0, , 1m,\n"
    )
    assert [(p.offset, p.size) for p in table.entries] == [
        (0x10000, 0x1000),
        (0x11000, 0x6000),
        (0x17000, 0x10000),
        (0x27000, 0x2000),
        (0x30000, 0x100000),
    ]
    keys, ro, fs, custom, _ = table.entries
    assert keys.encrypted and not keys.readonly
    assert ro.readonly and ro.is_("data", "nvs")
    assert fs.subtype_name == "littlefs"
    assert (custom.type, custom.subtype, custom.encrypted, custom.readonly) == (0x40, 7, True, True)
    assert pt.from_csv(table.to_csv()) == table


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("nvs, data, bogus, , 4K", "line 1: unknown subtype 'bogus'"),
        ("nvs, data, nvs, , 4K, secret", "line 1: unknown flag(s) secret"),
        ("nvs, data, nvs, , ", "line 1: the size field is empty"),
        ("app, app, , , 1M", "line 1: an app partition needs a subtype"),
        ("x, data, nvs, , 12Q", "line 1: '12Q' is not a size"),
        ("name_that_is_far_too_long, data, nvs, , 4K", "line 1: partition name"),
    ],
)
def test_bad_csv_lines_name_the_line(line: str, needle: str) -> None:
    with pytest.raises(InputError) as info:
        pt.from_csv(line)
    assert needle in str(info.value)


def _table(*parts: Partition) -> PartitionTable:
    return PartitionTable(parts)


APP0 = Partition("ota_0", pt.APP, 0x10, 0x20000, 0x100000)


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        (
            _table(
                Partition("a", 1, 2, 0x9000, 0x4000), Partition("b", 1, 1, 0xB000, 0x1000), APP0
            ),
            "b (data/phy at 0xb000, size 0x1000) overlaps a (data/nvs at 0x9000",
        ),
        (_table(Partition("x", pt.APP, 0, 0x18000, 0x100000)), "offset is not aligned to 0x10000"),
        (
            _table(Partition("nvs", 1, 2, 0x9000, 0x6000, encrypted=True), APP0),
            "is flagged encrypted: NVS encrypts its own entries",
        ),
        (_table(Partition("big", pt.APP, 0, 0x10000, 4 * MB)), "beyond the 0x400000-byte flash"),
        (
            _table(Partition("early", 1, 2, 0x7000, 0x2000), APP0),
            "overlaps the partition table at 0x8000-0x8fff",
        ),
        (_table(APP0, Partition("ota_0", 1, 2, 0x9000, 0x3000)), "duplicate partition name"),
        (_table(Partition("nvs", 1, 2, 0x9000, 0x3000)), "no app partition"),
        (
            _table(Partition("otadata", 1, 0, 0x9000, 0x1000), APP0),
            "otadata must be exactly 0x2000 bytes",
        ),
        (_table(Partition("ota_1", pt.APP, 0x11, 0x20000, 0x100000)), "without gaps"),
    ],
)
def test_validate_rejects_bad_layouts(table: PartitionTable, needle: str) -> None:
    with pytest.raises(InputError) as info:
        table.validate(4 * MB)
    assert needle in str(info.value)


def test_validate_lists_every_problem_at_once() -> None:
    table = _table(
        Partition("nvs", 1, 2, 0x9000, 0x6000, encrypted=True),
        Partition("nvs", pt.APP, 0, 0x18000, 8 * MB),
    )
    problems = table.problems(4 * MB)
    assert len(problems) >= 4


@pytest.mark.parametrize("flash_mb", [2, 4, 8, 16])
def test_default_secure_table_is_secure_and_fills_flash(flash_mb: int) -> None:
    table = pt.default_secure_table(flash_mb * MB)
    assert [p.name for p in table.entries] == [
        "nvs",
        "nvs_keys",
        "otadata",
        "phy_init",
        "ota_0",
        "ota_1",
    ]
    table.validate_secure(flash_mb * MB)
    ota_0, ota_1 = table.app_slots()
    assert ota_0.size == ota_1.size
    assert flash_mb * MB - table.flash_end() < 2 * 0x10000
    assert table.find("nvs_keys").encrypted and table.find("otadata").encrypted  # type: ignore[union-attr]
    assert not table.find("nvs").encrypted  # type: ignore[union-attr]
    assert pt.decode(table.encode(), require_md5=True) == table


def test_default_secure_table_follows_a_moved_table_offset() -> None:
    table = pt.default_secure_table(4 * MB, table_offset=0xF000)
    assert table.entries[0].offset == 0x10000
    table.validate_secure(4 * MB, table_offset=0xF000)
    with pytest.raises(InputError, match="overlaps the partition table"):
        table.validate(4 * MB, table_offset=0x10000)


def test_default_secure_table_refuses_tiny_flash() -> None:
    with pytest.raises(InputError, match="2 MB or larger"):
        pt.default_secure_table(1 * MB)


@pytest.mark.parametrize(
    ("csv", "needle"),
    [
        (TWO_OTA_CSV, "no nvs_keys partition"),
        (TWO_OTA_CSV, "otadata (data/ota at 0xd000, size 0x2000) must be flagged encrypted"),
        (
            "nvs,data,nvs,,24K\nnvs_keys,data,nvs_keys,,4K,encrypted\n"
            "otadata,data,ota,,8K,encrypted\nota_0,app,ota_0,,1M\n",
            "needs two OTA app slots",
        ),
    ],
)
def test_validate_secure_rejects_insecure_layouts(csv: str, needle: str) -> None:
    with pytest.raises(InputError) as info:
        pt.from_csv(csv).validate_secure(4 * MB)
    assert needle in str(info.value)


def test_validate_secure_checks_that_the_app_fits() -> None:
    table = pt.default_secure_table(4 * MB)
    slot = table.app_slots()[0].size
    table.validate_secure(4 * MB, app_size=slot)
    with pytest.raises(InputError, match="smaller than the"):
        table.validate_secure(4 * MB, app_size=slot + 1)


def test_queries() -> None:
    table = pt.from_csv(TWO_OTA_CSV)
    assert table.find("phy_init") == table.entries[2]
    assert table.find("missing") is None
    assert [p.name for p in table.by_type("app")] == ["factory", "ota_0", "ota_1"]
    assert [p.name for p in table.by_type("data", "ota")] == ["otadata"]
    assert [p.name for p in table.by_type(pt.DATA, 0x02)] == ["nvs"]


# ----- attacks and garbage -----------------------------------------------------------


def test_tampered_partition_table_fails_md5_check() -> None:
    blob = bytearray(pt.default_secure_table(4 * MB).encode())
    blob[0x20 + 12] ^= 0x01  # nvs_keys' size
    with pytest.raises(FormatError) as info:
        pt.decode(bytes(blob))
    assert "MD5 mismatch" in str(info.value)
    assert info.value.offset == 6 * 32


def test_tampered_flags_clearing_encryption_fails_md5_check() -> None:
    table = pt.default_secure_table(4 * MB)
    blob = bytearray(table.encode())
    blob[1 * 32 + 28] = 0  # drop nvs_keys' encrypted flag
    with pytest.raises(FormatError, match="MD5 mismatch"):
        pt.decode(bytes(blob))


def test_stripped_md5_row_is_refused_when_required() -> None:
    blob = pt.default_secure_table(4 * MB).encode(md5=False)
    assert len(pt.decode(blob).entries) == 6
    with pytest.raises(FormatError, match="without an MD5 row") as info:
        pt.decode(blob, require_md5=True)
    assert info.value.offset == 6 * 32


def test_bad_magic_names_entry_and_offset() -> None:
    blob = bytearray(pt.default_secure_table(4 * MB).encode())
    blob[0x40] = 0x00
    with pytest.raises(FormatError) as info:
        pt.decode(bytes(blob))
    assert str(info.value).startswith("partition table entry 2 at offset 0x40: bad magic")
    assert info.value.offset == 0x40


def test_truncated_table_names_offset() -> None:
    blob = pt.default_secure_table(4 * MB).encode()[:0x30]
    with pytest.raises(FormatError, match=r"row 1 at offset 0x20: truncated") as info:
        pt.decode(blob)
    assert info.value.offset == 0x20


def test_empty_input_is_not_an_empty_table() -> None:
    """Zero bytes is a failed read, not a table without partitions (erased is 0xFF)."""
    with pytest.raises(FormatError, match="0 bytes, truncated at offset 0x0") as info:
        pt.decode(b"")
    assert info.value.offset == 0
    assert pt.decode(b"\xff" * pt.TABLE_LENGTH).entries == ()


def test_table_without_end_marker_is_refused() -> None:
    row = Partition("x", 1, 2, 0x9000, 0x1000).encode()
    with pytest.raises(FormatError, match="no end-of-table marker"):
        pt.decode(row * 200)


def test_too_many_entries_are_refused() -> None:
    parts = tuple(Partition(f"p{i}", 1, 0x81, 0x9000 + i * 0x1000, 0x1000) for i in range(95))
    with pytest.raises(InputError, match="at most 94"):
        PartitionTable(parts)


# ----- properties ---------------------------------------------------------------------

NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=16)


@st.composite
def tables(draw: st.DrawFn) -> PartitionTable:
    count = draw(st.integers(0, 20))
    names = draw(st.lists(NAMES, min_size=count, max_size=count, unique=True))
    parts = []
    for name in names:
        ptype = draw(st.sampled_from([pt.APP, pt.DATA, 0x40]))
        subtype = draw(st.sampled_from(sorted(pt.SUBTYPES.get(ptype, {"x": 0x17}).values())))
        parts.append(
            Partition(
                name,
                ptype,
                subtype,
                draw(st.integers(0, 0xFFFF)) * 0x1000,
                draw(st.integers(1, 0x400)) * 0x1000,
                encrypted=draw(st.booleans()),
                readonly=draw(st.booleans()),
            )
        )
    return PartitionTable(tuple(parts))


@settings(max_examples=150, deadline=None)
@given(tables(), st.booleans())
def test_binary_round_trip(table: PartitionTable, md5: bool) -> None:
    blob = table.encode(md5=md5)
    assert len(blob) == 0xC00
    assert pt.decode(blob, require_md5=md5) == table
    assert pt.decode(blob).encode(md5=md5) == blob


@settings(max_examples=150, deadline=None)
@given(tables())
def test_csv_round_trip(table: PartitionTable) -> None:
    assert pt.from_csv(table.to_csv()) == table


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=0xC20))
def test_random_bytes_raise_only_format_errors(data: bytes) -> None:
    try:
        pt.decode(data)
    except FormatError as error:
        assert error.offset is not None
        assert "offset 0x" in str(error)


@settings(max_examples=200, deadline=None)
@given(tables(), st.data())
def test_truncated_or_flipped_tables_raise_only_format_errors(
    table: PartitionTable, data: st.DataObject
) -> None:
    blob = bytearray(table.encode())
    cut = data.draw(st.integers(0, len(blob)))
    if data.draw(st.booleans()) and cut < len(blob):
        blob[cut] ^= data.draw(st.integers(1, 255))
    else:
        blob = blob[:cut]
    try:
        pt.decode(bytes(blob))
    except FormatError as error:
        assert error.offset is not None
