"""NVS: nvs_partition_gen writes (in-process and its CLI), our decoder reads back."""

from __future__ import annotations

import csv
import io
import random
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from espfleet.errors import FormatError, InputError
from espfleet.formats import nvs
from espfleet.formats.nvs import NvsValue
from espfleet.formats.nvs_keys import NvsKeys

Namespaces = dict[str, dict[str, NvsValue]]
RANGES = {
    "u8": (0, 2**8 - 1), "i8": (-(2**7), 2**7 - 1),
    "u16": (0, 2**16 - 1), "i16": (-(2**15), 2**15 - 1),
    "u32": (0, 2**32 - 1), "i32": (-(2**31), 2**31 - 1),
    "u64": (0, 2**64 - 1), "i64": (-(2**63), 2**63 - 1),
}  # fmt: skip
NAME = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=15
)
TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=120)


def value_strategy(text: st.SearchStrategy[str] = TEXT) -> st.SearchStrategy[NvsValue]:
    ints = [st.builds(NvsValue, st.just(t), st.integers(lo, hi)) for t, (lo, hi) in RANGES.items()]
    return st.one_of(
        *ints,
        st.builds(NvsValue, st.just("string"), text),
        st.builds(NvsValue, st.just("blob"), st.binary(max_size=64)),
        st.builds(NvsValue, st.just("blob"), st.binary(min_size=3000, max_size=9000)),
    )


def namespaces_strategy(text: st.SearchStrategy[str] = TEXT) -> st.SearchStrategy[Namespaces]:
    return st.dictionaries(
        NAME, st.dictionaries(NAME, value_strategy(text), max_size=6), min_size=1, max_size=3
    )


SIZE = 0x20000


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(namespaces_strategy())
def test_plain_round_trip_through_nvs_partition_gen(namespaces: Namespaces) -> None:
    image = nvs.write(namespaces, SIZE)
    assert len(image) == SIZE
    assert nvs.read(image) == namespaces


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(namespaces_strategy())
def test_encrypted_round_trip_through_nvs_partition_gen(namespaces: Namespaces) -> None:
    keys = NvsKeys.generate()
    image = nvs.write(namespaces, SIZE, keys)
    assert nvs.read(image, keys) == namespaces


def _random_namespaces(seed: int) -> Namespaces:
    rng = random.Random(seed)
    out: Namespaces = {}
    for n in range(3):
        entries: dict[str, NvsValue] = {}
        for k in range(12):
            kind = rng.choice([*RANGES, "string", "blob"])
            if kind in RANGES:
                value: int | str | bytes = rng.randint(*RANGES[kind])
            elif kind == "string":
                value = "".join(rng.choice("abc xyz,\"'#;é€") for _ in range(rng.randint(0, 300)))
            else:
                value = rng.randbytes(rng.choice([0, 5, 32, 33, 4000, 4065, 9000]))
            entries[f"k{n}_{k}_{kind}"] = NvsValue(kind, value)
        out[f"ns{seed}_{n}"] = entries
    return out


def _csv(namespaces: Namespaces) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["key", "type", "encoding", "value"])
    for ns, entries in namespaces.items():
        writer.writerow([ns, "namespace", "", ""])
        for key, v in entries.items():
            if v.type == "blob":
                assert isinstance(v.value, bytes)
                writer.writerow([key, "data", "hex2bin", v.value.hex()])
            else:
                writer.writerow([key, "data", v.type, v.value])
    return buf.getvalue()


def _gen_cli(tmp_path: Path, *args: str) -> bytes:
    subprocess.run(
        [sys.executable, "-m", "esp_idf_nvs_partition_gen", *args, "--outdir", str(tmp_path)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    return (tmp_path / "out.bin").read_bytes()


@pytest.mark.parametrize("seed", [1, 2])
def test_nvs_partition_gen_cli_output_reads_back_and_matches_in_process(
    tmp_path: Path, seed: int
) -> None:
    namespaces = _random_namespaces(seed)
    (tmp_path / "in.csv").write_text(_csv(namespaces), encoding="utf-8")
    image = _gen_cli(tmp_path, "generate", "in.csv", "out.bin", hex(0x10000))
    assert nvs.read(image) == namespaces
    assert nvs.write(namespaces, 0x10000) == image


def test_nvs_partition_gen_cli_encrypt_with_our_keys_file(tmp_path: Path) -> None:
    namespaces = _random_namespaces(3)
    keys = NvsKeys.generate()
    (tmp_path / "keys.bin").write_bytes(keys.encode())
    (tmp_path / "in.csv").write_text(_csv(namespaces), encoding="utf-8")
    image = _gen_cli(
        tmp_path, "encrypt", "in.csv", "out.bin", hex(0x10000), "--inputkey", "keys.bin"
    )
    assert nvs.read(image, keys) == namespaces
    assert nvs.write(namespaces, 0x10000, keys) == image


def test_blob_split_across_pages() -> None:
    blob = bytes(range(256)) * 40  # 10240 bytes: three chunks on three pages
    image = nvs.write({"ns": {"cert": NvsValue("blob", blob), "n": NvsValue("u8", 1)}}, 0x6000)
    pages_with_data = [p for p in range(6) if image[p * 4096 : p * 4096 + 4] != b"\xff" * 4]
    assert len(pages_with_data) >= 3
    assert nvs.read(image)["ns"]["cert"].value == blob


def test_wifi_key_names_are_stored_as_given() -> None:
    namespaces = {"nvs.net80211": {"sta.ssid": NvsValue("blob", b"x" * 36)}}
    assert nvs.read(nvs.write(namespaces, 0x3000)) == namespaces


def test_empty_namespace_survives() -> None:
    assert nvs.read(nvs.write({"empty": {}}, 0x3000)) == {"empty": {}}


def test_erased_partition_reads_empty() -> None:
    assert nvs.read(b"\xff" * 0x6000) == {}


def test_json_shape() -> None:
    namespaces = {"ns": {"b": NvsValue("blob", b"\xab\x01"), "n": NvsValue("i8", -2)}}
    document = nvs.to_json(namespaces)
    assert document == {
        "namespaces": {
            "ns": {"b": {"type": "blob", "value": "ab01"}, "n": {"type": "i8", "value": -2}}
        }
    }
    assert nvs.from_json(document) == namespaces


# ----- attacks and corruption ----------------------------------------------------------

SAMPLE = {"espfleet": {"id": NvsValue("string", "esp32-24a1600a1b2c"), "n": NvsValue("u32", 9)}}


def test_encrypted_nvs_without_keys_asks_for_keys() -> None:
    image = nvs.write(SAMPLE, 0x3000, NvsKeys.generate())
    with pytest.raises(FormatError, match=r"encrypted .*nvs_keys are needed") as info:
        nvs.read(image)
    assert info.value.offset == 0x40


def test_wrong_key_nvs_read_fails() -> None:
    image = nvs.write(SAMPLE, 0x3000, NvsKeys.generate())
    with pytest.raises(FormatError, match="wrong nvs_keys"):
        nvs.read(image, NvsKeys.generate())


def test_encrypted_nvs_hides_plaintext() -> None:
    image = nvs.write(SAMPLE, 0x3000, NvsKeys.generate())
    assert b"esp32-24a1600a1b2c" not in image and b"espfleet" not in image


def test_tampered_entry_names_page_entry_and_offset() -> None:
    image = bytearray(nvs.write(SAMPLE, 0x3000))
    image[64 + 32 * 1 + 10] ^= 0x01  # key byte of entry 1 (the string "id")
    with pytest.raises(FormatError) as info:
        nvs.read(bytes(image))
    assert str(info.value).startswith("NVS page 0 entry 1 at offset 0x60: entry CRC32")
    assert info.value.offset == 0x60


def test_tampered_string_data_fails_data_crc() -> None:
    image = bytearray(nvs.write(SAMPLE, 0x3000))
    image[64 + 32 * 2] ^= 0x01  # first data byte of the string
    with pytest.raises(FormatError, match="data CRC32 of 'id'"):
        nvs.read(bytes(image))


def test_tampered_encrypted_entry_is_detected() -> None:
    keys = NvsKeys.generate()
    image = bytearray(nvs.write(SAMPLE, 0x3000, keys))
    image[64 + 32 * 3 + 5] ^= 0x01
    with pytest.raises(FormatError, match="entry 3 at offset 0xa0"):
        nvs.read(bytes(image), keys)


def test_corrupt_page_header_names_page() -> None:
    image = bytearray(nvs.write(SAMPLE, 0x3000))
    image[4] ^= 0x01
    with pytest.raises(FormatError, match="NVS page 0 at offset 0x0: header CRC32"):
        nvs.read(bytes(image))


def test_missing_blob_chunk_is_reported() -> None:
    image = bytearray(nvs.write({"ns": {"big": NvsValue("blob", b"z" * 10000)}}, 0x6000))
    image[0x1000:0x2000] = b"\xff" * 0x1000  # page 1 (the middle chunk) erased
    with pytest.raises(FormatError, match="chunk 1 of 3 is missing"):
        nvs.read(bytes(image))


def _set_entry_state(image: bytearray, page: int, entry: int, state: int) -> None:
    at = page * 4096 + 32 + entry // 4
    shift = (entry % 4) * 2
    image[at] = (image[at] & ~(3 << shift)) | (state << shift)


def test_erased_entries_are_skipped_like_esp_idf() -> None:
    image = bytearray(nvs.write(SAMPLE, 0x3000))
    _set_entry_state(image, 0, 3, 0)  # entry 3 is "n" (after namespace, "id" + 1 data entry)
    assert nvs.read(bytes(image)) == {"espfleet": {"id": SAMPLE["espfleet"]["id"]}}


def test_newer_page_wins_for_a_rewritten_key() -> None:
    old = bytearray(nvs.write({"ns": {"v": NvsValue("u32", 1)}}, 0x3000))
    new = nvs.write({"ns": {"v": NvsValue("u32", 2)}}, 0x3000)
    page = bytearray(new[:4096])
    page[4:8] = (1).to_bytes(4, "little")  # sequence number 1: written after page 0
    page[28:32] = zlib.crc32(bytes(page[4:28]), 0xFFFFFFFF).to_bytes(4, "little")
    old[0:4] = (0xFFFFFFFC).to_bytes(4, "little")  # page 0 is FULL now
    old[4096:8192] = page
    assert nvs.read(bytes(old)) == {"ns": {"v": NvsValue("u32", 2)}}
    flipped = bytearray(old)  # the same pages with the sequence numbers swapped
    flipped[0:4096], flipped[4096:8192] = old[4096:8192], old[0:4096]
    assert nvs.read(bytes(flipped)) == {"ns": {"v": NvsValue("u32", 2)}}


def test_illegal_entry_state_is_reported() -> None:
    image = bytearray(nvs.write(SAMPLE, 0x3000))
    _set_entry_state(image, 0, 5, 1)
    with pytest.raises(FormatError, match="entry 5 at offset 0xe0: illegal entry state"):
        nvs.read(bytes(image))


def test_forged_namespace_index_clash_is_reported() -> None:
    from esp_idf_nvs_partition_gen import nvs_partition_gen as gen

    out = io.BytesIO()
    forged = gen.nvs_open(out, 0x2000, gen.Page.VERSION2)
    forged.write_namespace("one")
    forged.write_entry("a", 1, "u8")
    gen.set_namespace_idx_unsafe(forged, 0)
    forged.cur_page.write_primitive_data("two", 1, "u8", 0, forged)  # index 1 again
    gen.nvs_close(forged)
    with pytest.raises(FormatError, match="namespace 'two' \\(index 1\\) clashes with"):
        nvs.read(out.getvalue())


def test_truncated_partition_names_offset() -> None:
    image = nvs.write(SAMPLE, 0x3000)
    with pytest.raises(FormatError, match="truncated at offset 0x1000") as info:
        nvs.read(image[:0x1800])
    assert info.value.offset == 0x1000


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_flipped_or_truncated_images_raise_only_format_errors(data: st.DataObject) -> None:
    image = bytearray(_FUZZ_BASE)
    for _ in range(data.draw(st.integers(1, 4))):
        image[data.draw(st.integers(0, len(image) - 1))] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.one_of(st.just(len(image)), st.integers(0, len(image))))
    try:
        nvs.read(bytes(image[:cut]))
    except FormatError as error:
        assert error.offset is not None
        assert "offset 0x" in str(error)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096), st.integers(0, 0x3F), st.booleans())
def test_forged_pages_with_valid_crcs_raise_only_format_errors(
    page: bytes, header_bits: int, fix_entry_crcs: bool
) -> None:
    """Random entries behind a valid header (and, half the time, valid entry CRCs) reach
    the type, span, namespace and blob checks."""
    forged = bytearray(page.ljust(4096, b"\xff"))
    forged[0:4] = (0xFFFFFFFF & ~header_bits).to_bytes(4, "little")
    forged[8] = 0xFE
    forged[28:32] = zlib.crc32(bytes(forged[4:28]), 0xFFFFFFFF).to_bytes(4, "little")
    if fix_entry_crcs:
        for off in range(64, 4096, 32):
            entry = bytes(forged[off : off + 32])
            crc = zlib.crc32(entry[0:4] + entry[8:32], 0xFFFFFFFF)
            forged[off + 4 : off + 8] = crc.to_bytes(4, "little")
    try:
        nvs.read(bytes(forged))
    except FormatError as error:
        assert error.offset is not None


_FUZZ_BASE = nvs.write(
    {
        "a": {"s": NvsValue("string", "hello"), "b": NvsValue("blob", bytes(range(200)) * 25)},
        "b": {"x": NvsValue("i16", -5)},
    },
    0x5000,
)


# ----- input validation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("u8", 256), ("i8", -129), ("u64", -1), ("u16", True), ("u32", "7"),
        ("string", b"bytes"), ("string", "a\x00b"), ("string", "x" * 4000),
        ("blob", "text"), ("float", 1),
    ],
)  # fmt: skip
def test_bad_values_are_refused(kind: str, value: object) -> None:
    with pytest.raises(InputError):
        NvsValue(kind, value)  # type: ignore[arg-type]


def test_write_refuses_bad_sizes_names_and_overflow() -> None:
    with pytest.raises(InputError, match="at least 0x3000"):
        nvs.write(SAMPLE, 0x2000)
    with pytest.raises(InputError, match="multiple of 0x1000"):
        nvs.write(SAMPLE, 0x3800)
    with pytest.raises(InputError, match="1 to 15 bytes"):
        nvs.write({"ns": {"a_key_longer_than_15": NvsValue("u8", 1)}}, 0x3000)
    with pytest.raises(InputError, match="does not fit"):
        nvs.write({"ns": {"big": NvsValue("blob", b"x" * 20000)}}, 0x3000)
