"""A virtual device on disk: ``vdevs/<name>/`` in the workspace, or any directory.

Files:

* ``chip.json`` -- chip, revision, flash size, MAC (the eFuses are the truth for the MAC),
  the partition table offset its bootloader was built with
* ``flash.bin`` -- the raw flash, exactly what a clip on the flash chip reads
* ``efuse.bin`` -- the ``espefuse --virt --path-efuse-file`` file (read-protected keys as zeros)
* ``.silicon-only.efuse.bin`` -- every fuse as burned, read-protected keys included. It
  models state inside the chip package that only the flash-encryption engine reads:
  it is on no bus an attacker can clip, and no espfleet command exports it.

Every write is atomic (:mod:`espfleet._io`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from espfleet._io import atomic_directory, atomic_write, atomic_write_text
from espfleet.chips import chip_facts
from espfleet.device.chip import VirtualChip, parse_mac
from espfleet.device.efuse import EfuseController
from espfleet.device.flash import NorFlash, parse_flash_size
from espfleet.errors import InputError, WorkspaceError

__all__ = [
    "CHIP_FILE",
    "EFUSE_FILE",
    "FLASH_FILE",
    "SILICON_ONLY_FILE",
    "create_vdev",
    "load_vdev",
    "save_vdev",
    "vdev_lock",
]

CHIP_FILE = "chip.json"
FLASH_FILE = "flash.bin"
EFUSE_FILE = "efuse.bin"
SILICON_ONLY_FILE = ".silicon-only.efuse.bin"
LOCK_FILE = ".lock"
_FORMAT = 1


def _size_text(size: int) -> str:
    return f"{size >> 20}MB"


def _describe(chip: VirtualChip) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "chip": chip.chip,
        "revision": chip.revision,
        "flash_size": _size_text(chip.flash.size),
        "mac": chip.mac.hex(":"),
        "device_id": chip.device_id,
        "partition_table_offset": f"{chip.partition_table_offset:#x}",
    }


def _write_all(chip: VirtualChip, directory: Path) -> None:
    # The silicon-only file goes first: loading ORs it into the register view, so a crash
    # between the two eFuse files may show a burn early but never loses a key that
    # efuse.bin already reads as zeros (read protection burned).
    atomic_write(directory / SILICON_ONLY_FILE, chip.efuse.hardware_bytes(), mode=0o600)
    atomic_write(directory / EFUSE_FILE, chip.efuse_bytes())
    atomic_write(directory / FLASH_FILE, chip.flash.snapshot())
    atomic_write_text(directory / CHIP_FILE, json.dumps(_describe(chip), indent=2) + "\n")


def create_vdev(
    directory: Path,
    chip: str,
    revision: int | None = None,
    flash_size: int | str = "4MB",
    mac: bytes | str | None = None,
    partition_table_offset: int | None = None,
) -> VirtualChip:
    """Make a factory-fresh virtual chip in ``directory`` (which must not exist)."""
    directory = Path(directory)
    if directory.exists():
        raise WorkspaceError(
            f"{directory} already exists: pick another device name or remove it first"
        )
    size = parse_flash_size(flash_size) if isinstance(flash_size, str) else flash_size
    mac_bytes = parse_mac(mac) if isinstance(mac, str) else mac
    vchip = VirtualChip.new(
        chip,
        revision=revision,
        flash_size=size,
        mac=mac_bytes,
        partition_table_offset=partition_table_offset,
    )
    with atomic_directory(directory) as tmp:
        _write_all(vchip, tmp)
    return vchip


def save_vdev(chip: VirtualChip, directory: Path) -> None:
    """Persist ``chip`` into ``directory`` (each file replaced atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_all(chip, directory)


def _read(directory: Path, name: str) -> bytes:
    try:
        return (directory / name).read_bytes()
    except FileNotFoundError:
        raise WorkspaceError(
            f"virtual device {directory} is incomplete: {name} is missing; "
            "recreate it with `espfleet vdev create`"
        ) from None


def load_vdev(directory: Path) -> VirtualChip:
    """Load the virtual chip kept in ``directory``."""
    directory = Path(directory)
    if not (directory / CHIP_FILE).is_file():
        raise WorkspaceError(
            f"no virtual device at {directory}: create one with `espfleet vdev create NAME`"
        )
    try:
        meta = json.loads(_read(directory, CHIP_FILE))
        chip = str(meta["chip"])
        revision = int(meta["revision"])
        flash_size = parse_flash_size(str(meta["flash_size"]))
        table_offset = meta.get("partition_table_offset")  # absent: the chip's default
        table_offset = None if table_offset is None else int(str(table_offset), 0)
    except (ValueError, KeyError, TypeError) as error:
        raise WorkspaceError(f"{directory / CHIP_FILE} is damaged ({error}): recreate it") from None
    chip_facts(chip)
    try:
        flash = NorFlash(flash_size, _read(directory, FLASH_FILE))
        efuse = EfuseController(
            chip, _read(directory, EFUSE_FILE), _read(directory, SILICON_ONLY_FILE)
        )
        return VirtualChip(
            chip, revision=revision, flash=flash, efuse=efuse, partition_table_offset=table_offset
        )
    except InputError as error:
        raise WorkspaceError(f"virtual device {directory} is inconsistent: {error}") from None


@contextlib.contextmanager
def vdev_lock(directory: Path) -> Iterator[None]:
    """Hold the device for this process (a served or booting chip has one owner).

    Two owners would each keep a copy of the chip in memory and overwrite each other's
    flash and eFuses on save; the second one is refused instead.
    """
    path = Path(directory) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise WorkspaceError(
                f"virtual device {Path(directory).name} is in use by process {owner} "
                "(e.g. `espfleet vdev serve`): stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
