"""App and bootloader images against esptool (image-info, bin_image) and Espressif's vectors."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from esptool.bin_image import LoadFirmwareImage
from hypothesis import given, settings
from hypothesis import strategies as st

from espfleet.errors import FormatError, InputError
from espfleet.formats import app_image

CHIPS = ("esp32", "esp32s3", "esp32c3")


@pytest.mark.parametrize(
    ("name", "chip", "bootloader", "hashed"),
    [
        ("bootloader_esp32.bin", "esp32", True, False),
        ("bootloader_esp32_v5_2.bin", "esp32", True, True),
        ("bootloader_esp32c3.bin", "esp32c3", True, True),
        ("bootloader.bin", "esp32", True, True),
        ("bootloader_unsigned_v2.bin", "esp32", True, True),
        ("hello-world-signed.bin", "esp32", False, True),
        ("esp_idf_blink_esp32s2.bin", None, False, True),
    ],
)
def test_espressif_images_parse_like_esptool(
    vectors: Path, name: str, chip: str | None, bootloader: bool, hashed: bool
) -> None:
    data = (vectors / name).read_bytes()
    image = app_image.parse(data)
    reference = LoadFirmwareImage(chip or "esp32s2", data)
    assert image.chip == chip
    assert image.chip_id == reference.chip_id
    assert image.entry == reference.entrypoint
    assert (image.min_rev_full, image.max_rev_full) == (reference.min_rev_full,
                                                        reference.max_rev_full)
    assert [(s.load_address, s.data_offset - 8) for s in image.segments] == [
        (s.addr, s.file_offs) for s in reference.segments]
    assert image.is_bootloader is bootloader
    assert image.hash_appended is hashed
    assert image.checksum_ok and image.valid
    assert image.sha256_ok is (True if hashed else None)
    if hashed:
        assert image.image_length == reference.data_length + 32
        assert hashlib.sha256(data[: image.image_length - 32]).digest() == \
            data[image.image_length - 32 : image.image_length]


def test_app_descriptor_of_espressif_app(vectors: Path) -> None:
    desc = app_image.parse((vectors / "hello-world-signed.bin").read_bytes()).app_desc
    assert desc is not None
    assert desc.project_name == "hello-world"
    assert desc.version == "v3.3-beta3-21-g0706bd0d1-dirty"
    assert desc.idf_ver == "v3.3-beta3-21-g0706bd0d1-dirty"
    assert desc.secure_version == 0
    assert len(desc.app_elf_sha256) == 32
    blink = app_image.parse((vectors / "esp_idf_blink_esp32s2.bin").read_bytes()).app_desc
    assert blink is not None and blink.project_name == "blink"
    assert app_image.parse((vectors / "bootloader_esp32.bin").read_bytes()).app_desc is None


def test_signed_image_length_is_where_the_signature_sector_starts(vectors: Path) -> None:
    signed = (vectors / "bootloader_signed_v2_rsa.bin").read_bytes()
    length = app_image.parse(signed).image_length
    assert length + (-length % 4096) == len(signed) - 4096


@pytest.mark.parametrize("chip", CHIPS)
def test_built_app_is_accepted_by_esptool_image_info(tmp_path: Path, chip: str) -> None:
    data = app_image.build_app(chip, version="1.4.2", project_name="thermo", secure_version=3,
                               payload=b"payload" * 50, min_rev_full=301)
    path = tmp_path / "app.bin"
    path.write_bytes(data)
    result = subprocess.run(
        [sys.executable, "-m", "esptool", "--chip", chip, "image-info", str(path)],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Checksum:" in result.stdout and "(valid)" in result.stdout
    assert "Validation hash:" in result.stdout
    assert "App version: 1.4.2" in result.stdout
    assert "Project name: thermo" in result.stdout
    assert "Secure version: 3" in result.stdout
    assert "Minimal chip revision: v3.1" in result.stdout
    # The descriptor is the start of the first DROM segment, at file offset 0x20.
    assert int.from_bytes(data[0x20:0x24], "little") == app_image.APP_DESC_MAGIC


@pytest.mark.parametrize("chip", CHIPS)
def test_built_bootloader_is_accepted_by_esptool_image_info(tmp_path: Path, chip: str) -> None:
    path = tmp_path / "bootloader.bin"
    path.write_bytes(app_image.build_bootloader(chip, payload=b"boot"))
    result = subprocess.run(
        [sys.executable, "-m", "esptool", "--chip", chip, "image-info", str(path)],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(valid)" in result.stdout
    image = app_image.parse(path.read_bytes())
    assert image.is_bootloader and image.app_desc is None and image.chip == chip


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from(CHIPS),
    st.text(st.characters(codec="ascii", min_codepoint=32), min_size=1, max_size=31),
    st.text(st.characters(codec="ascii", min_codepoint=32), min_size=1, max_size=31),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.binary(max_size=3000),
    st.integers(min_value=0, max_value=399),
)
def test_build_then_parse_round_trip(
    chip: str, version: str, project: str, secure_version: int, payload: bytes, rev: int
) -> None:
    data = app_image.build_app(chip, version=version, project_name=project,
                               secure_version=secure_version, payload=payload, min_rev_full=rev)
    image = app_image.parse(data)
    assert image.chip == chip and image.valid and not image.is_bootloader
    assert image.min_rev_full == rev
    assert image.image_length == len(data)
    assert image.app_desc is not None
    assert (image.app_desc.version, image.app_desc.project_name,
            image.app_desc.secure_version) == (version, project, secure_version)
    drom = image.segments[0]
    assert data[drom.data_offset + 256 : drom.data_offset + 256 + len(payload)] == payload
    assert app_image.build_app(chip, version=version, project_name=project,
                               secure_version=secure_version, payload=payload,
                               min_rev_full=rev) == data


def test_tampered_image_fails_its_checks() -> None:
    data = bytearray(app_image.build_app("esp32", version="1.0.0", payload=b"abc" * 100))
    data[0x20 + 300] ^= 0xFF  # inside the DROM payload
    image = app_image.parse(bytes(data))
    assert not image.checksum_ok
    assert image.sha256_ok is False
    assert not image.valid


def test_downgrade_is_visible_in_secure_version() -> None:
    new = app_image.parse(app_image.build_app("esp32", version="2.0", secure_version=5))
    old = app_image.parse(app_image.build_app("esp32", version="1.0", secure_version=4))
    assert new.app_desc is not None and old.app_desc is not None
    assert old.app_desc.secure_version < new.app_desc.secure_version


@pytest.mark.parametrize(
    ("mutate", "message", "offset"),
    [
        (lambda d: b"\xe8" + d[1:], "bad magic 0xe8", 0),
        (lambda d: d[:10], "shorter than", 10),
        (lambda d: d[:1] + b"\x00" + d[2:], "0 segments", 1),
        (lambda d: d[:0x30], "past the end", None),
        (lambda d: d[:23] + b"\x07" + d[24:], "hash-appended flag", 23),
        (lambda d: d[:-10], "SHA-256 at offset", None),
    ],
)
def test_malformed_images_are_format_errors_with_offsets(
    mutate: object, message: str, offset: int | None
) -> None:
    data = app_image.build_bootloader("esp32c3", payload=bytes(64))
    assert callable(mutate)
    with pytest.raises(FormatError, match=message) as info:
        app_image.parse(mutate(data))
    assert info.value.offset is not None
    if offset is not None:
        assert info.value.offset == offset


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=4000), st.data())
def test_truncated_or_random_input_raises_only_format_errors(cut: int, data: st.DataObject) -> None:
    good = app_image.build_bootloader("esp32", payload=bytes(range(256)) * 8)
    candidate = good[:cut] if data.draw(st.booleans()) else \
        b"\xe9" + data.draw(st.binary(max_size=400))
    try:
        image = app_image.parse(candidate)
    except FormatError as exc:
        assert exc.offset is not None and 0 <= exc.offset <= len(candidate)
        return
    assert image.image_length <= len(candidate)


def test_builder_input_errors() -> None:
    with pytest.raises(InputError, match="longer than 32"):
        app_image.build_app("esp32", version="v" * 33)
    with pytest.raises(InputError, match="32-bit"):
        app_image.build_app("esp32", version="1", secure_version=-1)
    with pytest.raises(InputError, match="min_rev_full"):
        app_image.build_app("esp32", version="1", min_rev_full=70000)
    with pytest.raises(InputError, match="unknown chip"):
        app_image.build_bootloader("esp8266")
