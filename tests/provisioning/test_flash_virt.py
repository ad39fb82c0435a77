"""The flasher against espefuse's virtual eFuses (``--virt`` file) and an in-memory flash.

The eFuse side is the real espefuse over its emulated controller; the flash side is
:class:`MemoryFlash`. End-to-end tests over ``socket://`` with the real esptool live in
``test_flash_socket.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import espefuse
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from espfleet.chips import chip_facts
from espfleet.errors import FlashError
from espfleet.provisioning.efuse_plan import plan_for
from espfleet.provisioning.espefuse_driver import EfuseDriver
from espfleet.provisioning.esptool_driver import ChipIdentity, ChipSession, MemoryFlash
from espfleet.provisioning.flash_journal import JOURNAL_NAME, FlashJournal
from espfleet.provisioning.flasher import FlashImage, FlashJob, execute, inspect_chip
from espfleet.provisioning.macs import LOCAL_PREFIX

MAC = bytes.fromhex("24a1600a1b2c")
DIGEST = bytes(range(0x80, 0xA0))
FE_KEY = os.urandom(32)
REVISION = {"esp32": 300, "esp32s3": 2, "esp32c3": 4}


def _efuse_file(tmp_path: Path, chip: str, revision: int) -> Path:
    path = tmp_path / "efuse.bin"
    if not path.exists():
        esp = espefuse.get_esp(chip=chip, virt=True, virt_efuse_file=str(path))
        esp.set_chip_revision(revision)
        esp.save_to_file()
    return path


def session(
    tmp_path: Path,
    chip: str = "esp32s3",
    *,
    identity_chip: str | None = None,
    revision: int | None = None,
    mac: bytes = MAC,
    flash: MemoryFlash | None = None,
) -> ChipSession:
    rev = REVISION[chip] if revision is None else revision
    path = _efuse_file(tmp_path, chip, rev)
    return ChipSession(
        port="socket://127.0.0.1:1",
        identity=ChipIdentity(identity_chip or chip, rev, mac),
        efuses=EfuseDriver.virtual(chip, path),
        flash=flash if flash is not None else MemoryFlash(0x400000),
    )


def job(chip: str = "esp32s3", mode: str = "release") -> FlashJob:
    facts = chip_facts(chip)
    images = (
        FlashImage("bootloader", facts.bootloader_offset, os.urandom(0x5000), True),
        FlashImage("partition-table", 0x8000, os.urandom(0x1000), True),
        FlashImage("app", 0x20000, os.urandom(0x18000), True),
    )
    return FlashJob(f"{chip}-{MAC.hex()}", chip, MAC, plan_for(chip, mode), images, DIGEST)


def journal(tmp_path: Path, j: FlashJob) -> FlashJournal:
    return FlashJournal.load(tmp_path, j.device_id)


def key() -> bytes:
    return FE_KEY


def run(tmp_path: Path, j: FlashJob, s: ChipSession) -> None:
    execute(inspect_chip(j, s, journal(tmp_path, j)), s, journal(tmp_path, j), key_provider=key)


class FailingFlash(MemoryFlash):
    """Flash that loses power at the n-th write."""

    def __init__(self, size: int, fail_at: int) -> None:
        super().__init__(size)
        self.fail_at = fail_at

    def write(self, offset: int, data: bytes) -> None:
        if len(self.writes) + 1 == self.fail_at:
            raise FlashError("serial port went away")
        super().write(offset, data)


class CorruptingFlash(MemoryFlash):
    def write(self, offset: int, data: bytes) -> None:
        super().write(offset, data)
        self.data[offset] ^= 0x01


@pytest.mark.parametrize("chip", ["esp32", "esp32s3", "esp32c3"])
def test_release_flash_burns_writes_verifies_and_locks(tmp_path: Path, chip: str) -> None:
    j = job(chip)
    flash = MemoryFlash(0x400000)
    s = session(tmp_path, chip, flash=flash)
    inspection = inspect_chip(j, s, journal(tmp_path, j))
    assert not inspection.complete and not inspection.resuming
    result = execute(inspection, s, journal(tmp_path, j), key_provider=key)

    for image in j.images:
        assert bytes(flash.data[image.offset : image.offset + len(image.data)]) == image.data
    assert result.images_verified == tuple(i.label for i in j.images)
    assert len(result.efuses_burned) == len(j.plan.pre_flash())
    assert len(result.locks_burned) == len(j.plan.post_flash())
    state = s.efuses.read_state()
    facts = chip_facts(chip)
    for lock in facts.download_lock_fields:
        if lock in facts.release_hardening:
            assert state.get(lock).as_int == 1
    assert state.get(facts.crypt_cnt_field).writeable is False
    data = json.loads((tmp_path / JOURNAL_NAME).read_text())
    assert data["status"] == "flashed"
    assert "verified:app@0x20000" in [step["step"] for step in data["steps"]]


def test_development_mode_leaves_counter_writable_and_download_open(tmp_path: Path) -> None:
    j = job("esp32", "development")
    s = session(tmp_path, "esp32")
    run(tmp_path, j, s)
    state = s.efuses.read_state()
    assert state.get("FLASH_CRYPT_CNT").as_int == 1
    assert state.get("FLASH_CRYPT_CNT").writeable
    assert state.get("UART_DOWNLOAD_DIS").as_int == 0


def test_rerun_of_flashed_device_burns_and_writes_nothing(tmp_path: Path) -> None:
    j = job("esp32c3")
    flash = MemoryFlash(0x400000)
    run(tmp_path, j, session(tmp_path, "esp32c3", flash=flash))
    efuses_before = (tmp_path / "efuse.bin").read_bytes()
    writes_before = list(flash.writes)

    s = session(tmp_path, "esp32c3", flash=flash)
    inspection = inspect_chip(j, s, journal(tmp_path, j))
    assert inspection.complete
    result = execute(
        inspection, s, journal(tmp_path, j), key_provider=lambda: pytest.fail("key needed")
    )
    assert result.efuses_burned == () and result.images_written == ()
    assert (tmp_path / "efuse.bin").read_bytes() == efuses_before
    assert flash.writes == writes_before


def test_power_loss_mid_images_reports_progress_and_rerun_resumes(tmp_path: Path) -> None:
    j = job("esp32")
    flaky = FailingFlash(0x400000, fail_at=2)
    s = session(tmp_path, "esp32", flash=flaky)
    with pytest.raises(FlashError) as failure:
        execute(inspect_chip(j, s, journal(tmp_path, j)), s, journal(tmp_path, j), key_provider=key)
    message = str(failure.value)
    assert "stopped during images" in message
    assert "burn_key BLOCK1" in message
    assert "bootloader@0x1000" in message
    assert "nothing locked yet" in message
    assert f"espfleet flash {j.device_id} --port" in message
    assert json.loads((tmp_path / JOURNAL_NAME).read_text())["status"] == "failed"

    good = MemoryFlash(0x400000)
    good.data[:] = flaky.data
    s2 = session(tmp_path, "esp32", flash=good)
    inspection = inspect_chip(j, s2, journal(tmp_path, j))
    assert inspection.resuming
    assert all(c.done for c in inspection.efuse if c.step.phase == "pre_flash")
    assert [i.done for i in inspection.images] == [True, False, False]
    result = execute(
        inspection, s2, journal(tmp_path, j), key_provider=lambda: pytest.fail("re-burn")
    )
    assert result.efuses_burned == ()
    assert result.images_written == ("partition-table@0x8000", "app@0x20000")
    assert len(result.locks_burned) == len(j.plan.post_flash())


def test_corrupted_readback_stops_before_any_lock(tmp_path: Path) -> None:
    j = job("esp32s3")
    s = session(tmp_path, "esp32s3", flash=CorruptingFlash(0x400000))
    with pytest.raises(FlashError, match="reads back MD5"):
        run(tmp_path, j, s)
    state = s.efuses.read_state()
    assert state.get("ENABLE_SECURITY_DOWNLOAD").as_int == 0
    assert state.get("DIS_PAD_JTAG").as_int == 0


def _assert_untouched(tmp_path: Path, s: ChipSession, before: bytes) -> None:
    assert (tmp_path / "efuse.bin").read_bytes() == before
    assert isinstance(s.flash, MemoryFlash) and s.flash.writes == []


def _refused(tmp_path: Path, j: FlashJob, s: ChipSession, match: str) -> None:
    before = (tmp_path / "efuse.bin").read_bytes()
    with pytest.raises(FlashError, match=match):
        run(tmp_path, j, s)
    _assert_untouched(tmp_path, s, before)


def test_wrong_chip_refused_before_anything(tmp_path: Path) -> None:
    s = session(tmp_path, "esp32c3")
    _refused(tmp_path, job("esp32s3"), s, "wrong chip .* bundle is for an esp32s3 but the chip is")


def test_esp32_below_v3_refused_for_secure_boot_v2(tmp_path: Path) -> None:
    s = session(tmp_path, "esp32", revision=100)
    _refused(tmp_path, job("esp32"), s, r"revision v1\.0, below v3\.0 which Secure Boot V2")


def test_mac_of_another_device_refused(tmp_path: Path) -> None:
    s = session(tmp_path, "esp32s3", mac=bytes.fromhex("24a1600a1b2d"))
    _refused(tmp_path, job("esp32s3"), s, "24:a1:60:0a:1b:2d, not .*another device")



def test_count_allocated_bundle_on_a_real_board_says_to_provision_its_own_mac(
    tmp_path: Path,
) -> None:
    """`provision --count` bundles carry allocated 02:e5:f1 MACs that no real chip has: the
    refusal said "this is another device; flash the bundle made for it", which does not
    exist."""
    local = LOCAL_PREFIX + bytes(3)
    j = dataclasses.replace(job("esp32s3"), mac=local, device_id=f"esp32s3-{local.hex()}")
    s = session(tmp_path, "esp32s3")
    _refused(tmp_path, j, s, r"made by `espfleet provision --count` .* no chip has from the "
             r"factory .*`espfleet provision --device-id esp32s3-24a1600a1b2c`")


def test_key_block_already_used_refused(tmp_path: Path) -> None:
    s = session(tmp_path, "esp32s3")
    foreign = plan_for("esp32s3", "development").pre_flash()[:1]
    s.efuses.burn(foreign, {"flash_encryption_key": os.urandom(32)})
    _refused(tmp_path, job("esp32s3"), s, "key block BLOCK_KEY0 is already used")


def test_crypt_counter_already_odd_refused(tmp_path: Path) -> None:
    s = session(tmp_path, "esp32")
    counter = [st for st in plan_for("esp32", "development").pre_flash() if "CNT" in st.target]
    s.efuses.burn(counter, {})
    _refused(tmp_path, job("esp32"), s, r"FLASH_CRYPT_CNT is already 0x1 \(an odd number")


def test_secure_boot_on_with_another_digest_refused(tmp_path: Path) -> None:
    s = session(tmp_path, "esp32c3")
    dev = plan_for("esp32c3", "development").pre_flash()
    sb = [st for st in dev if st.source != "flash_encryption_key" and "CNT" not in st.target]
    s.efuses.burn(sb, {"secure_boot_digest": os.urandom(32)})
    _refused(tmp_path, job("esp32c3"), s, "secure boot is already on .* another public-key digest")


def test_journal_of_another_device_refused(tmp_path: Path) -> None:
    (tmp_path / JOURNAL_NAME).write_text(json.dumps({"v": 1, "device_id": "esp32-000000000001"}))
    with pytest.raises(FlashError, match="belongs to"):
        FlashJournal.load(tmp_path, "esp32-24a1600a1b2c")


def test_wrong_key_for_bundle_refused_before_any_burn(tmp_path: Path) -> None:
    j = job("esp32")
    j = FlashJob(j.device_id, j.chip, j.mac, j.plan, j.images, DIGEST,
                 fe_key_sha256=hashlib.sha256(FE_KEY).hexdigest())
    s = session(tmp_path, "esp32")
    before = (tmp_path / "efuse.bin").read_bytes()
    with pytest.raises(FlashError, match="not the one its images were encrypted with") as err:
        execute(inspect_chip(j, s, journal(tmp_path, j)), s, journal(tmp_path, j),
                key_provider=lambda: os.urandom(32))
    assert "nothing was burned" in str(err.value)
    assert json.loads((tmp_path / JOURNAL_NAME).read_text())["status"] == "failed"
    _assert_untouched(tmp_path, s, before)


class InterruptedFlash(MemoryFlash):
    def write(self, offset: int, data: bytes) -> None:
        raise KeyboardInterrupt


def test_ctrl_c_mid_write_is_reported_and_journaled(tmp_path: Path) -> None:
    j = job("esp32c3")
    s = session(tmp_path, "esp32c3", flash=InterruptedFlash(0x400000))
    with pytest.raises(FlashError, match=r"interrupted \(Ctrl-C\).*nothing locked yet"):
        run(tmp_path, j, s)
    data = json.loads((tmp_path / JOURNAL_NAME).read_text())
    assert data["status"] == "failed"
    assert data["burn_started_mac"] == "24:a1:60:0a:1b:2c"



def test_ctrl_c_inside_the_pre_flash_burn_does_not_claim_none_burned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report said "eFuses burned: none ... some pre-flash eFuses may be burned" while
    the burn had completed; lists were printed as Python lists (['burn_key ...'])."""
    j = job("esp32")
    s = session(tmp_path, "esp32")
    real_burn = s.efuses.burn

    def burn_then_ctrl_c(*args: Any, **kwargs: Any) -> None:
        real_burn(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(s.efuses, "burn", burn_then_ctrl_c)
    with pytest.raises(FlashError) as failure:
        run(tmp_path, j, s)
    message = str(failure.value)
    assert "stopped during pre_flash: interrupted (Ctrl-C)" in message
    assert "eFuses burned: not known" in message and "eFuses burned: none" not in message
    assert "images written: none; verified: none" in message
    monkeypatch.setattr(s.efuses, "burn", real_burn)
    stopped = FailingFlash(0x400000, fail_at=3)
    s2 = session(tmp_path, "esp32", flash=stopped)
    with pytest.raises(FlashError) as second:
        run(tmp_path, j, s2)
    assert "[" not in str(second.value).split("stopped during images")[1]
    assert "images written: bootloader@0x1000, partition-table@0x8000" in str(second.value)


def _posture(s: ChipSession) -> dict[str, object]:
    """Every field's value and protection (the emulator's scratch registers differ
    with the burn sequence, so the raw file is not compared)."""
    return s.efuses.read_state().to_json()


_CLEAN: dict[tuple[str, str], dict[str, object]] = {}


def _clean_run_posture(tmp_path: Path, chip: str, j: FlashJob) -> dict[str, object]:
    """The posture after an uninterrupted run (the same for every job of chip+mode)."""
    if (chip, j.plan.mode) not in _CLEAN:
        clean = tmp_path / "clean"
        clean.mkdir()
        s = session(clean, chip)
        run(clean, j, s)
        _CLEAN[chip, j.plan.mode] = _posture(s)
    return _CLEAN[chip, j.plan.mode]


@pytest.mark.slow
@settings(
    max_examples=4,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@example(chip="esp32s3", mode="release", cut=2, images_done=0)
@example(chip="esp32", mode="release", cut=7, images_done=2)
@given(
    chip=st.sampled_from(["esp32", "esp32s3", "esp32c3"]),
    mode=st.sampled_from(["release", "development"]),
    cut=st.integers(min_value=0, max_value=20),
    images_done=st.integers(min_value=0, max_value=3),
)
def test_any_interrupted_prefix_resumes_to_the_clean_posture(
    tmp_path_factory: pytest.TempPathFactory, chip: str, mode: str, cut: int, images_done: int
) -> None:
    """A run cut after any number of eFuse steps (and images) resumes, with the journal,
    to exactly the eFuse file of an uninterrupted run, and never asks for the key once
    the key is burned."""
    base = tmp_path_factory.mktemp("prefix")
    j = job(chip, mode)
    expected = _clean_run_posture(base, chip, j)

    work = base / "work"
    work.mkdir()
    flash = MemoryFlash(0x400000)
    s = session(work, chip, flash=flash)
    burned = j.plan.steps[: min(cut, len(j.plan.steps))]
    journal(work, j).mark_burn_started("24:a1:60:0a:1b:2c")
    s.efuses.burn(burned, {"flash_encryption_key": FE_KEY, "secure_boot_digest": DIGEST})
    if len(burned) >= len(j.plan.pre_flash()):
        for image in j.images[:images_done]:
            flash.write(image.offset, image.data)

    key_burned = any(step.source == "flash_encryption_key" for step in burned)
    provider = (lambda: pytest.fail("key asked again")) if key_burned else key
    inspection = inspect_chip(j, s, journal(work, j))
    assert inspection.resuming
    assert [c.done for c in inspection.efuse][: len(burned)] == [True] * len(burned)
    execute(inspection, s, journal(work, j), key_provider=provider)
    assert _posture(s) == expected


def test_crypt_counter_spent_by_earlier_plaintext_reflash_refused(tmp_path: Path) -> None:
    """Counter 0b11 (two bits: encryption turned off again by a plaintext re-flash):
    development's 0b01 can no longer be reached."""
    s = session(tmp_path, "esp32s3")
    s.efuses.burn([dataclasses.replace(plan_for("esp32s3", "development").pre_flash()[1],
                                       value=3)], {})
    _refused(tmp_path, job("esp32s3", "development"), s,
             r"SPI_BOOT_CRYPT_CNT is already 0x3, and eFuse bits cannot be cleared")

