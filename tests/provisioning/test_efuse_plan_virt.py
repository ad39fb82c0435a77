"""Running each chip's eFuse plan through espefuse on a ``--virt`` file gives the posture
the chip table expects. The oracle is espefuse's own ``summary --format json`` of the
resulting file, read back by a fresh espefuse instance."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import espefuse
import pytest

from espfleet.chips import chip_facts
from espfleet.errors import FlashError
from espfleet.provisioning.efuse_plan import EfuseStep, plan_for
from espfleet.provisioning.espefuse_driver import EfuseDriver
from espfleet.provisioning.preflight import assess_steps

FE_KEY = os.urandom(32)
DIGEST = bytes(range(0x40, 0x60))
MATERIAL = {"flash_encryption_key": FE_KEY, "secure_boot_digest": DIGEST}


def _fresh(tmp_path: Path, chip: str) -> Path:
    path = tmp_path / f"{chip}.efuse"
    esp = espefuse.get_esp(chip=chip, virt=True, virt_efuse_file=str(path))
    esp.set_chip_revision(300 if chip == "esp32" else 4)
    esp.save_to_file()
    return path


def _summary(chip: str, path: Path, tmp_path: Path) -> dict[str, Any]:
    esp = espefuse.get_esp(chip=chip, virt=True, virt_efuse_file=str(path))
    commands = espefuse.init_commands(esp=esp, do_not_confirm=True)
    out = tmp_path / "summary.json"
    with out.open("w") as fh:
        commands.summary(format="json", file=fh)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _raw(summary: dict[str, Any], name: str) -> int:
    return int(summary[name]["raw_value"], 16)


@pytest.mark.parametrize("chip", ["esp32", "esp32s3", "esp32c3"])
@pytest.mark.parametrize("mode", ["release", "development"])
def test_plan_on_virt_file_gives_chip_table_posture(tmp_path: Path, chip: str, mode: str) -> None:
    facts = chip_facts(chip)
    plan = plan_for(chip, mode)
    path = _fresh(tmp_path, chip)
    driver = EfuseDriver.virtual(chip, path)
    driver.burn(plan.pre_flash(), MATERIAL)
    driver.burn(plan.post_flash(), {})

    s = _summary(chip, path, tmp_path)
    release = mode == "release"
    counter = facts.crypt_cnt_release if release else facts.crypt_cnt_development
    assert _raw(s, facts.crypt_cnt_field) == counter
    if facts.crypt_config_field:
        assert _raw(s, facts.crypt_config_field) == facts.crypt_config_value
    assert _raw(s, facts.sb_enable_field) == 1

    fe_block = facts.fe_key_blocks[0]
    assert s[fe_block]["readable"] is False, "the flash-encryption key must be read-protected"
    assert s[fe_block]["writeable"] is False
    digest_step = next(st for st in plan.steps if st.action == "burn_key_digest")
    assert bytes.fromhex(s[digest_step.target]["raw_value"][2:]) == DIGEST
    assert s[digest_step.target]["readable"] is True
    if facts.sb_digest_purposes:
        assert s["KEY_PURPOSE_0"]["value"] == facts.fe_key_purpose[32]
        purpose_field = f"KEY_PURPOSE_{int(digest_step.target[-1])}"
        assert s[purpose_field]["value"] == "SECURE_BOOT_DIGEST0"
        for revoke in facts.sb_revoke_fields[1:]:
            assert _raw(s, revoke) == (1 if release else 0)

    for name in facts.release_hardening:
        assert _raw(s, name) == (1 if release else 0), name
    for name in facts.release_write_protect:
        assert s[name]["writeable"] is (not release), name
    if not release:
        assert s[facts.crypt_cnt_field]["writeable"] is True


@pytest.mark.parametrize("chip", ["esp32", "esp32s3", "esp32c3"])
def test_plan_on_virt_file_then_reassessed_is_all_done(tmp_path: Path, chip: str) -> None:
    """After the plan ran, pre-flight on the same chip finds nothing left to burn."""
    plan = plan_for(chip, "release")
    path = _fresh(tmp_path, chip)
    driver = EfuseDriver.virtual(chip, path)
    driver.burn(plan.steps, MATERIAL)
    state = EfuseDriver.virtual(chip, path).read_state()
    checks = assess_steps(plan, state, digest=DIGEST, resuming=True)
    assert [c.step for c in checks if not c.done] == []


def test_missing_key_material_refuses_before_burning(tmp_path: Path) -> None:
    plan = plan_for("esp32s3", "release")
    path = _fresh(tmp_path, "esp32s3")
    driver = EfuseDriver.virtual("esp32s3", path)
    before = path.read_bytes()
    with pytest.raises(FlashError, match="no flash_encryption_key"):
        driver.burn(plan.pre_flash(), {"secure_boot_digest": DIGEST})
    assert path.read_bytes() == before


def test_esp32s3_xts_aes_256_key_spans_two_blocks_and_reassesses_done(tmp_path: Path) -> None:
    plan = plan_for("esp32s3", "release", fe_key_len=64)
    path = _fresh(tmp_path, "esp32s3")
    driver = EfuseDriver.virtual("esp32s3", path)
    driver.burn(plan.pre_flash(), {"flash_encryption_key": os.urandom(64),
                                   "secure_boot_digest": DIGEST})
    s = _summary("esp32s3", path, tmp_path)
    assert s["KEY_PURPOSE_0"]["value"] == "XTS_AES_256_KEY_1"
    assert s["KEY_PURPOSE_1"]["value"] == "XTS_AES_256_KEY_2"
    assert s["KEY_PURPOSE_2"]["value"] == "SECURE_BOOT_DIGEST0"
    state = EfuseDriver.virtual("esp32s3", path).read_state()
    checks = assess_steps(plan, state, digest=DIGEST, resuming=True)
    assert all(c.done for c in checks if c.step.phase == "pre_flash")


def test_esp32s3_xts_aes_256_refused_when_second_key_block_used(tmp_path: Path) -> None:
    path = _fresh(tmp_path, "esp32s3")
    driver = EfuseDriver.virtual("esp32s3", path)
    foreign = EfuseStep("pre_flash", "burn_key", "BLOCK_KEY1", purpose="XTS_AES_128_KEY",
                        source="flash_encryption_key")
    driver.burn([foreign], {"flash_encryption_key": os.urandom(32)})
    plan = plan_for("esp32s3", "release", fe_key_len=64)
    with pytest.raises(FlashError, match="BLOCK_KEY1 is already used: the XTS-AES-256 key"):
        assess_steps(plan, driver.read_state(), digest=DIGEST, resuming=False)
