"""Virtual devices on disk, and the loader server persisting what esptool/espefuse change."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from espfleet.device.chip import VirtualChip
from espfleet.device.server import LoaderServer
from espfleet.device.store import (
    EFUSE_FILE,
    FLASH_FILE,
    SILICON_ONLY_FILE,
    create_vdev,
    load_vdev,
    save_vdev,
)
from espfleet.errors import InputError, WorkspaceError


def test_create_then_load_round_trip(tmp_path: Path) -> None:
    made = create_vdev(tmp_path / "d1", "esp32s3", 2, "2MB", "24:a1:60:0a:1b:2c")
    loaded = load_vdev(tmp_path / "d1")
    assert (loaded.chip, loaded.revision, loaded.flash.size) == ("esp32s3", 2, 2 << 20)
    assert loaded.mac == made.mac == bytes.fromhex("24a1600a1b2c")
    assert loaded.efuse_bytes() == made.efuse_bytes()
    assert (tmp_path / "d1" / SILICON_ONLY_FILE).stat().st_mode & 0o777 == 0o600


def test_create_refuses_an_existing_device(tmp_path: Path) -> None:
    create_vdev(tmp_path / "d1", "esp32")
    before = (tmp_path / "d1" / FLASH_FILE).stat().st_mtime_ns
    with pytest.raises(WorkspaceError, match="already exists"):
        create_vdev(tmp_path / "d1", "esp32c3")
    assert (tmp_path / "d1" / FLASH_FILE).stat().st_mtime_ns == before


def test_bad_create_arguments_leave_nothing_on_disk(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        create_vdev(tmp_path / "d1", "esp8266")
    with pytest.raises(InputError):
        create_vdev(tmp_path / "d2", "esp32", flash_size="3MB")
    assert list(tmp_path.iterdir()) == []


def test_incomplete_or_mismatched_device_is_refused(tmp_path: Path) -> None:
    create_vdev(tmp_path / "d1", "esp32")
    (tmp_path / "d1" / EFUSE_FILE).write_bytes(b"\x00" * 512)
    with pytest.raises(WorkspaceError, match="inconsistent"):
        load_vdev(tmp_path / "d1")
    (tmp_path / "d1" / FLASH_FILE).unlink()
    with pytest.raises(WorkspaceError, match=r"flash\.bin is missing"):
        load_vdev(tmp_path / "d1")
    with pytest.raises(WorkspaceError, match="no virtual device"):
        load_vdev(tmp_path / "nothing")


def test_a_flash_clip_and_the_efuse_file_do_not_hold_the_key(tmp_path: Path) -> None:
    key = os.urandom(32)
    chip = VirtualChip.new("esp32")
    chip.burn_efuse("BLOCK1", int.from_bytes(key, "big"))
    chip.burn_efuse("RD_DIS", 1)
    save_vdev(chip, tmp_path / "d1")
    for name in (FLASH_FILE, EFUSE_FILE):
        data = (tmp_path / "d1" / name).read_bytes()
        assert key not in data and key[::-1] not in data
    assert load_vdev(tmp_path / "d1").hardware_key() == key


def test_non_loopback_host_is_refused_unless_asked() -> None:
    chip = VirtualChip.new("esp32c3")
    with pytest.raises(InputError, match="refusing to serve"):
        LoaderServer(chip, host="0.0.0.0")
    LoaderServer(chip, host="0.0.0.0", allow_non_loopback=True).stop()


@pytest.mark.slow
def test_server_persists_flash_and_efuse_changes(tmp_path: Path) -> None:
    directory = tmp_path / "d1"
    chip = create_vdev(directory, "esp32")
    image = tmp_path / "img.bin"
    image.write_bytes(os.urandom(2048))
    with LoaderServer(chip, persist=lambda c: save_vdev(c, directory)) as server:
        common = ["--port", server.url, "--before", "no-reset"]
        tool = [sys.executable, "-m", "esptool", *common, "--after", "no-reset", "--no-stub"]
        flashed = subprocess.run(
            [*tool, "write-flash", "0x10000", str(image)], capture_output=True, timeout=60
        )
        assert flashed.returncode == 0, flashed.stderr
        burned = subprocess.run(
            [sys.executable, "-m", "espefuse", *common, "--do-not-confirm",
             "burn-efuse", "JTAG_DISABLE", "1"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert burned.returncode == 0, burned.stderr
        # Saved when the command completed, while esptool's session is still open.
        stored = load_vdev(directory)
    assert stored.flash.read(0x10000, 2048) == image.read_bytes()
    assert stored.efuse.get("JTAG_DISABLE") == 1
    assert server.sessions == 2


def test_public_surface_of_the_device_modules() -> None:
    from espfleet.device import chip, flash, server, store

    assert set(server.__all__) == {"LoaderServer"}
    assert {"create_vdev", "load_vdev", "save_vdev"} <= set(store.__all__)
    assert {"VirtualChip", "parse_mac"} <= set(chip.__all__)
    assert {"NorFlash", "PowerCut"} <= set(flash.__all__)
    for module in (chip, flash, server, store):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_crash_between_the_efuse_files_never_loses_a_read_protected_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A serve process killed while persisting a read-protect burn: whichever file made
    it to disk, the stored chip never reads its key as zeros while the engine lacks it."""
    from espfleet._io import atomic_write as real_write

    key = os.urandom(32)
    chip = create_vdev(tmp_path / "d1", "esp32")
    chip.burn_efuse("BLOCK1", int.from_bytes(key, "big"))
    chip.burn_efuse("RD_DIS", 1)
    written: list[str] = []

    def crash_after_one_efuse_file(path: Path, data: bytes, **kwargs: int) -> None:
        if written:
            raise KeyboardInterrupt("killed")
        real_write(path, data, **kwargs)
        if path.name in (EFUSE_FILE, SILICON_ONLY_FILE):
            written.append(path.name)

    monkeypatch.setattr("espfleet.device.store.atomic_write", crash_after_one_efuse_file)
    with pytest.raises(KeyboardInterrupt):
        save_vdev(chip, tmp_path / "d1")
    stored = load_vdev(tmp_path / "d1")
    assert stored.hardware_key() == key or not stored.efuse.is_read_protected("BLOCK1")


def test_device_stored_without_a_table_offset_uses_the_chips_default(tmp_path: Path) -> None:
    import json

    create_vdev(tmp_path / "d1", "esp32", partition_table_offset=0xD000)
    meta_file = tmp_path / "d1" / "chip.json"
    assert load_vdev(tmp_path / "d1").partition_table_offset == 0xD000
    meta = json.loads(meta_file.read_text())
    del meta["partition_table_offset"]  # a device created before the field existed
    meta_file.write_text(json.dumps(meta))
    assert load_vdev(tmp_path / "d1").partition_table_offset == 0x8000
    meta["partition_table_offset"] = "0x8800"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(WorkspaceError, match=r"inconsistent.*4 KB-aligned"):
        load_vdev(tmp_path / "d1")
