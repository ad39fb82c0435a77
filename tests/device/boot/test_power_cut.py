"""Power cuts during an OTA update: whatever byte the cut lands on, the device boots.

The flash is left as the silicon leaves it (a partially erased sector, a partially
programmed write); the next reset must boot the previous image, or the new one only
once otadata selects it completely.
"""

from __future__ import annotations

import random

import pytest
from bootkit import Device, clone, make_device, running_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from espfleet.device.boot import boot
from espfleet.device.chip import VirtualChip
from espfleet.device.flash import PowerCut
from espfleet.formats.secure_boot import PrivateKey


@pytest.fixture(scope="module")
def installed(keys: list[PrivateKey]) -> tuple[Device, bytes]:
    """A release-mode ESP32 running v1 from ota_0, and a signed v2 image to install."""
    dev = make_device("esp32", signing_keys=keys[:1])
    assert boot(dev.chip).started
    return dev, dev.app("2.0.0", secure_version=1)


def _ota_bytes(image: bytes) -> int:
    """Bytes an OTA write touches: the erase of its sectors, then the programming."""
    return -(-len(image) // 0x1000) * 0x1000 + len(image)


def _cut_ota(chip: VirtualChip, image: bytes, after: int) -> bool:
    """Start an OTA on ``chip`` with a power cut armed after ``after`` bytes; True if
    the cut happened (False: the whole update, otadata included, completed)."""
    fw = running_app(chip)
    chip.flash.arm_power_cut(after)
    try:
        fw.write_ota(image)
    except PowerCut:
        return True
    finally:
        chip.flash.disarm_power_cut()
    return False


def _assert_boots(chip: VirtualChip, versions: set[str]) -> str:
    result = boot(chip)
    assert result.started, result.log
    assert result.app is not None
    assert result.app.fw_version in versions, result.log
    return result.app.fw_version


def test_power_cut_during_ota_slot_write_boots_previous_image(
    installed: tuple[Device, bytes],
) -> None:
    dev, image = installed
    total = _ota_bytes(image)
    rng = random.Random(1234)
    points = sorted({0, 1, 4095, 4096, total - 1, *(rng.randrange(total) for _ in range(10))})
    for after in points:
        chip = clone(dev.chip)
        assert _cut_ota(chip, image, after)
        assert _assert_boots(chip, {"1.0.0"}) == "1.0.0"


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(fraction=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_power_cut_anywhere_in_the_slot_write_keeps_the_old_app(
    installed: tuple[Device, bytes], fraction: float
) -> None:
    dev, image = installed
    chip = clone(dev.chip)
    assert _cut_ota(chip, image, int(fraction * _ota_bytes(image)))
    assert _assert_boots(chip, {"1.0.0"}) == "1.0.0"


def test_power_cut_during_otadata_update_boots_a_complete_image(
    installed: tuple[Device, bytes],
) -> None:
    """The cut lands in otadata's erase or program (after the slot is written): the
    old entry is in the other sector and untouched, so the device boots the old app
    (or, once the new entry is whole, the new one); never nothing."""
    dev, image = installed
    start = _ota_bytes(image)  # the slot is written; otadata: erase 4 KB, program 4 KB
    erase_points = (0, 1, 2048, 4095)
    program_points = (4096, 4097, 4100, 4112, 4120, 4127, 4128, 6000, 8191)
    outcomes: dict[int, str] = {}
    for after in (*erase_points, *program_points):
        chip = clone(dev.chip)
        assert _cut_ota(chip, image, start + after), after
        outcomes[after] = _assert_boots(chip, {"1.0.0", "2.0.0"})
    # Erase cut, or the new 32-byte entry not fully programmed: the old entry rules.
    assert {outcomes[p] for p in erase_points + program_points[:6]} == {"1.0.0"}
    # The whole entry (one 32-byte engine block) reached the flash: the update is on.
    assert {outcomes[p] for p in program_points[6:]} == {"2.0.0"}


def test_power_cut_while_the_bootloader_marks_pending_verify(
    installed: tuple[Device, bytes],
) -> None:
    """The bootloader's own otadata write (NEW -> PENDING_VERIFY) is cut: the next
    reset still boots an image and the update is not lost silently."""
    dev, image = installed
    chip = clone(dev.chip)
    assert not _cut_ota(chip, image, 10**9)  # the update completes
    for after in (0, 100, 0x1000, 0x1000 + 31, 0x1000 + 4095):
        trial = clone(chip)
        trial.flash.arm_power_cut(after)
        with pytest.raises(PowerCut):
            boot(trial)
        trial.flash.disarm_power_cut()
        assert _assert_boots(trial, {"1.0.0", "2.0.0"})


def test_power_cut_during_the_first_boot_otadata_write(keys: list[PrivateKey]) -> None:
    fresh = make_device("esp32", signing_keys=keys[:1])
    for after in (0, 2048, 4096, 4096 + 16, 4096 + 32, 8191):
        chip = clone(fresh.chip)
        chip.flash.arm_power_cut(after)
        with pytest.raises(PowerCut):
            boot(chip)
        chip.flash.disarm_power_cut()
        assert _assert_boots(chip, {"1.0.0"}) == "1.0.0"


def test_completed_update_boots_the_new_image(installed: tuple[Device, bytes]) -> None:
    dev, image = installed
    chip = clone(dev.chip)
    assert not _cut_ota(chip, image, 10**9)
    assert _assert_boots(chip, {"2.0.0"}) == "2.0.0"
