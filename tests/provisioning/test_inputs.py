"""Firmware inputs: app image, PlatformIO and ESP-IDF build directories, and the checks
that refuse what cannot make a secure device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from espfleet.errors import FormatError, InputError
from espfleet.formats import app_image
from espfleet.formats.partition_table import default_secure_table
from espfleet.provisioning.inputs import (
    FirmwareSource,
    check_firmware,
    image_facts,
    load_firmware,
    parse_flash_size,
)

from .conftest import build_test_app


def _idf_build(tmp_path: Path, bootloader: bytes, *, chip: str = "esp32",
               table_offset: int = 0xF000) -> Path:
    build = tmp_path / "build"
    (build / "bootloader").mkdir(parents=True)
    (build / "partition_table").mkdir()
    (build / "blink.bin").write_bytes(build_test_app())
    (build / "bootloader" / "bootloader.bin").write_bytes(bootloader)
    table = default_secure_table(0x400000, table_offset)
    (build / "partition_table" / "partition-table.bin").write_bytes(table.encode())
    (build / "flasher_args.json").write_text(json.dumps({
        "flash_settings": {"flash_mode": "dio", "flash_size": "4MB", "flash_freq": "40m"},
        "bootloader": {"offset": "0x1000", "file": "bootloader/bootloader.bin"},
        "partition-table": {"offset": hex(table_offset),
                            "file": "partition_table/partition-table.bin"},
        "app": {"offset": "0x20000", "file": "blink.bin"},
        "extra_esptool_args": {"chip": chip, "before": "default_reset"},
    }))
    return build


def _check(source: FirmwareSource, mode: str = "release", **kw: object) -> object:
    args: dict[str, object] = dict(chip="esp32", mode=mode, flash_size=None,
                                   signed_app_size=len(source.app) + 0x1000,
                                   bootloader_signed=False)
    args.update(kw)
    return check_firmware(source, **args)  # type: ignore[arg-type]


def test_esp_idf_build_with_espressif_sbv2_bootloader_passes(
    tmp_path: Path, sb_bootloader: bytes
) -> None:
    source = load_firmware(_idf_build(tmp_path, sb_bootloader))
    assert (source.kind, source.chip, source.flash_size, source.table_offset) == \
        ("esp-idf", "esp32", "4MB", 0xF000)
    checked = _check(source)
    assert checked.table_offset == 0xF000 and checked.secure_bootloader  # type: ignore[attr-defined]



def test_secure_boot_esp_idf_build_without_bootloader_entry_uses_the_built_one(
    tmp_path: Path, sb_bootloader: bytes
) -> None:
    """With CONFIG_SECURE_BOOT, `idf.py flash` (and so flasher_args.json) leaves the
    bootloader out; it was refused as "no bootloader: pass --bootloader" although the
    build had made it in bootloader/bootloader.bin."""
    build = _idf_build(tmp_path, sb_bootloader)
    path = build / "flasher_args.json"
    args = json.loads(path.read_text())
    del args["bootloader"]
    path.write_text(json.dumps(args))
    source = load_firmware(build)
    assert source.bootloader == sb_bootloader
    assert source.bootloader_origin is not None and "bootloader.bin" in source.bootloader_origin
    assert _check(source).secure_bootloader  # type: ignore[attr-defined]
    (build / "bootloader" / "bootloader.bin").unlink()
    with pytest.raises(InputError, match="pass --bootloader FILE"):
        _check(load_firmware(build))


def test_esp_idf_build_for_another_chip_is_refused(tmp_path: Path, sb_bootloader: bytes) -> None:
    source = load_firmware(_idf_build(tmp_path, sb_bootloader, chip="esp32s3"))
    with pytest.raises(InputError, match=r"targets esp32s3.*idf.py set-target esp32"):
        _check(source)


def test_signed_bootloader_past_the_partition_table_is_refused(
    tmp_path: Path, sb_bootloader: bytes
) -> None:
    source = load_firmware(_idf_build(tmp_path, sb_bootloader, table_offset=0x8000))
    with pytest.raises(InputError, match=r"ends at 0xa000, past the partition table at 0x8000"):
        _check(source)


def test_platformio_project_root_with_one_env_and_override_bootloader(
    tmp_path: Path, sb_bootloader: bytes
) -> None:
    env = tmp_path / "proj" / ".pio" / "build" / "esp32dev"
    env.mkdir(parents=True)
    (env / "firmware.bin").write_bytes(build_test_app())
    (env / "bootloader.bin").write_bytes(app_image.build_bootloader("esp32"))
    plain = load_firmware(tmp_path / "proj")
    assert plain.kind == "platformio" and plain.bootloader_origin == "the PlatformIO build"
    with pytest.raises(InputError, match="Arduino/PlatformIO cannot build one"):
        _check(plain)
    _check(plain, mode="development")  # the bench may use it
    sb = tmp_path / "sb.bin"
    sb.write_bytes(sb_bootloader)
    overridden = load_firmware(tmp_path / "proj", bootloader=sb)
    assert overridden.bootloader == sb_bootloader
    assert overridden.bootloader_origin == "--bootloader"



def test_platformio_8mb_build_under_fleet_toml_4mb_names_both_sizes(
    tmp_path: Path, sb_bootloader: bytes
) -> None:
    """fleet.toml's flash_size ("4MB", written by `init`) outranks the app header: an 8 MB
    board's build was refused with "ends ... beyond the 0x400000-byte flash ... Fix the
    partition CSV", though the CSV was right and the size came from elsewhere."""
    import esptool.bin_image as bin_image

    image = bin_image.LoadFirmwareImage("esp32", build_test_app())
    image.flash_size_freq = (3 << 4) | (image.flash_size_freq & 0x0F)  # 8MB
    image.segments = [bin_image.ELFSection(b".s%d" % i, seg.addr, seg.data, 0)
                      for i, seg in enumerate(image.segments)]
    table = default_secure_table(0x800000, 0xF000).encode()
    source = FirmwareSource(
        "platformio", tmp_path, image.save(None), sb_bootloader, "--bootloader", table, 0xF000
    )
    with pytest.raises(InputError, match=r"past the 4MB flash that fleet.toml sets, and its "
                       r"app was built for 8MB flash .* pass --flash-size 8MB"):
        _check(source, default_flash_size="4MB")
    checked = _check(source, flash_size="8MB", default_flash_size="4MB")
    assert checked.flash_size == "8MB"  # type: ignore[attr-defined]
    small = FirmwareSource("platformio", tmp_path, build_test_app(), sb_bootloader,
                           "--bootloader", table, 0xF000)
    with pytest.raises(InputError, match="Fix the partition CSV"):  # no larger build size
        _check(small, default_flash_size="4MB")


def test_ambiguous_platformio_project_names_the_envs(tmp_path: Path) -> None:
    for env in ("a", "b"):
        (tmp_path / ".pio" / "build" / env).mkdir(parents=True)
        (tmp_path / ".pio" / "build" / env / "firmware.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="environments found: a, b"):
        load_firmware(tmp_path)


def test_missing_paths_and_bad_flasher_args(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_firmware(tmp_path / "nope.bin")
    (tmp_path / "flasher_args.json").write_text("{not json")
    with pytest.raises(InputError, match=r"run `idf.py build` again"):
        load_firmware(tmp_path)
    app = tmp_path / "app.bin"
    app.write_bytes(b"x")
    with pytest.raises(InputError, match=r"--bootloader .* does not exist"):
        load_firmware(app, bootloader=tmp_path / "missing.bin")



@pytest.mark.parametrize(
    "edit",
    [
        lambda a: a["partition-table"].update(offset="0xzz"),
        lambda a: a["app"].update(offset=None),
        lambda a: a["bootloader"].update(file=None),
        lambda a: a.update(flash_settings=[1]),
        lambda a: a.update(extra_esptool_args="esp32"),
    ],
    ids=["bad-offset", "null-offset", "null-file", "settings-list", "args-string"],
)
def test_malformed_flasher_args_is_an_input_error_not_a_traceback(
    tmp_path: Path, sb_bootloader: bytes, edit: Any
) -> None:
    build = _idf_build(tmp_path, sb_bootloader)
    path = build / "flasher_args.json"
    args = json.loads(path.read_text())
    edit(args)
    path.write_text(json.dumps(args))
    with pytest.raises(InputError, match=r"is not ESP-IDF's flasher arguments .*run `idf.py "
                                         r"build` again"):
        load_firmware(build)


def test_no_bootloader_and_not_an_image(tmp_path: Path) -> None:
    source = FirmwareSource("app-image", tmp_path / "a.bin", build_test_app())
    with pytest.raises(InputError, match="pass --bootloader FILE"):
        _check(source)
    junk = FirmwareSource("app-image", tmp_path / "j.bin", b"\x00" * 64)
    with pytest.raises(FormatError, match="not an ESP image"):
        _check(junk)


def test_image_facts_reads_revision_and_chip(vectors: Path) -> None:
    facts = image_facts((vectors / "bootloader_unsigned_v2.bin").read_bytes(), "bl")
    assert (facts.chip_id, facts.min_revision) == (0, 300)
    c3 = image_facts((vectors / "bootloader_esp32c3.bin").read_bytes(), "bl")
    assert c3.chip_id == 5
    assert parse_flash_size("4mb") == 0x400000
    with pytest.raises(InputError, match="flash size"):
        parse_flash_size("3MB")
