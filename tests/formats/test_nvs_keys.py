"""nvs_keys: byte-identical with nvs_partition_gen's keys file, CRC checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from espfleet.errors import FormatError, InputError
from espfleet.formats import nvs_keys
from espfleet.formats.nvs_keys import NvsKeys


def test_reads_and_rewrites_nvs_partition_gen_keys_file(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "esp_idf_nvs_partition_gen",
            "generate-key",
            "--keyfile",
            "k.bin",
            "--outdir",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
    )
    reference = (tmp_path / "keys" / "k.bin").read_bytes()
    keys = nvs_keys.decode(reference)
    assert keys.raw == reference[:64]
    assert keys.encode() == reference


def test_layout() -> None:
    keys = NvsKeys(bytes(range(32)), bytes(range(32, 64)))
    raw = keys.encode()
    assert len(raw) == 4096
    assert raw[:64] == bytes(range(64))
    assert raw[68:] == b"\xff" * (4096 - 68)
    assert nvs_keys.decode(raw) == keys


def test_generate_is_random_and_valid() -> None:
    a, b = nvs_keys.generate(), NvsKeys.generate()
    assert a != b and a.eky != a.tky
    assert NvsKeys.decode(a.encode()) == a


def test_repr_does_not_leak_key_material() -> None:
    keys = nvs_keys.generate()
    assert keys.eky.hex() not in repr(keys) and keys.tky.hex() not in repr(keys)
    assert keys.fingerprint() in repr(keys)


def test_tampered_nvs_keys_fail_crc() -> None:
    raw = bytearray(nvs_keys.generate().encode())
    raw[5] ^= 0x80
    with pytest.raises(FormatError, match="offset 0x40: CRC32") as info:
        nvs_keys.decode(bytes(raw))
    assert info.value.offset == 0x40


def test_still_flash_encrypted_partition_is_explained() -> None:
    with pytest.raises(FormatError, match="still flash-encrypted"):
        nvs_keys.decode(bytes(range(256)) * 16)


def test_erased_partition_says_no_keys() -> None:
    with pytest.raises(FormatError, match="erased"):
        nvs_keys.decode(b"\xff" * 4096)


def test_truncated_names_offset() -> None:
    with pytest.raises(FormatError, match="truncated at offset 0x41") as info:
        nvs_keys.decode(b"\x01" * 0x41)
    assert info.value.offset == 0x41


@pytest.mark.parametrize(
    ("eky", "tky"),
    [(b"\x01" * 32, b"\x01" * 32), (b"\x01" * 31, b"\x02" * 32), (b"\xff" * 32, b"\x02" * 32)],
)
def test_weak_keys_are_refused(eky: bytes, tky: bytes) -> None:
    with pytest.raises(InputError):
        NvsKeys(eky, tky)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_round_trip(eky: bytes, tky: bytes) -> None:
    try:
        keys = NvsKeys(eky, tky)
    except InputError:
        return
    assert nvs_keys.decode(keys.encode()) == keys
    assert NvsKeys.from_raw(keys.raw) == keys


def test_from_raw_of_a_wrong_length_is_refused() -> None:
    with pytest.raises(InputError, match="64 bytes"):
        NvsKeys.from_raw(bytes(range(1, 64)))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_format_errors(data: bytes) -> None:
    try:
        nvs_keys.decode(data)
    except FormatError as error:
        assert error.offset is not None
