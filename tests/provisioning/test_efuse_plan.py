"""The eFuse plan follows ESP-IDF's host-based workflow order, with espefuse's names."""

from __future__ import annotations

import espefuse
import pytest
from hypothesis import given
from hypothesis import strategies as st

from espfleet.chips import CHIPS, chip_facts
from espfleet.errors import InputError, ProvisioningError
from espfleet.provisioning.efuse_plan import EfusePlan, EfuseStep, plan_for

CASES = [(chip, mode) for chip in CHIPS for mode in ("release", "development")]


def _espefuse_names(chip: str) -> set[str]:
    """Every field and block name (and alias) espefuse knows for ``chip``."""
    efuses = espefuse.init_commands(
        esp=espefuse.get_esp(chip=chip, virt=True), do_not_confirm=True
    ).efuses
    names: set[str] = set()
    for field in efuses:
        names.add(field.name)
        names.update(getattr(field, "alt_names", ()))
    for block in efuses.blocks:
        names.add(block.name)
        names.update(block.alias)
    return names


def _espefuse_purposes(chip: str) -> set[str]:
    """The key purposes espefuse's burn_key takes for ``chip``: its key-purpose field's
    names, or on ESP32 (no purpose fields) the block aliases that stand for one."""
    efuses = espefuse.init_commands(
        esp=espefuse.get_esp(chip=chip, virt=True), do_not_confirm=True
    ).efuses
    purposes = {name for field in efuses for name in getattr(field, "KEY_PURPOSES_NAME", ())}
    return purposes or {alias for block in efuses.blocks for alias in block.alias}


def _index(plan: EfusePlan, target: str, action: str | None = None) -> int:
    for i, step in enumerate(plan.steps):
        if step.target == target and (action is None or step.action == action):
            return i
    raise AssertionError(f"{target} not in plan")


@pytest.mark.parametrize(("chip", "mode"), CASES)
def test_every_target_is_an_espefuse_name(chip: str, mode: str) -> None:
    names = _espefuse_names(chip)
    purposes = _espefuse_purposes(chip)
    for step in plan_for(chip, mode).steps:
        assert step.target in names, step
        if step.is_key_burn:
            assert step.purpose in purposes, step


@pytest.mark.parametrize(("chip", "mode"), CASES)
def test_flash_encryption_precedes_secure_boot(chip: str, mode: str) -> None:
    plan = plan_for(chip, mode)
    facts = chip_facts(chip)
    fe_key = next(i for i, s in enumerate(plan.steps) if s.source == "flash_encryption_key")
    sb_digest = next(i for i, s in enumerate(plan.steps) if s.source == "secure_boot_digest")
    counter = _index(plan, facts.crypt_cnt_field, "burn_efuse")
    enable = _index(plan, facts.sb_enable_field)
    assert fe_key < counter < sb_digest < enable
    # All of that must precede the first boot of the pre-encrypted images.
    assert all(plan.steps[i].phase == "pre_flash" for i in (fe_key, counter, sb_digest, enable))


@pytest.mark.parametrize("chip", list(CHIPS))
def test_release_locks_download_mode_last(chip: str) -> None:
    plan = plan_for(chip, "release")
    facts = chip_facts(chip)
    burns = [s.target for s in plan.steps if s.action == "burn_efuse"]
    lock = [f for f in facts.release_hardening if f in facts.download_lock_fields]
    assert burns[-len(lock):] == lock, "no eFuse can be burned after the download-mode lock"
    # The write protection of RD_DIS comes after the FE key's read protection (burn_key).
    assert _index(plan, "RD_DIS", "write_protect_efuse") > 0
    assert plan.steps[-1].phase == "post_flash"
    assert plan.expected_fields()[facts.crypt_cnt_field] == facts.crypt_cnt_release


def test_esp32_write_protects_crypt_cnt_after_uart_download_dis() -> None:
    plan = plan_for("esp32", "release")
    dl_dis = _index(plan, "UART_DOWNLOAD_DIS", "burn_efuse")
    wp_cnt = _index(plan, "FLASH_CRYPT_CNT", "write_protect_efuse")
    assert wp_cnt == dl_dis + 1 == len(plan.steps) - 1
    assert plan.expected_fields()["FLASH_CRYPT_CONFIG"] == 0xF
    assert plan.pre_flash()[0].espefuse_args("k.bin") == ["burn-key", "flash_encryption", "k.bin"]


def test_s3_revokes_unused_digest_slots_in_release_only() -> None:
    release = plan_for("esp32s3", "release").expected_fields()
    assert release["SECURE_BOOT_KEY_REVOKE1"] == release["SECURE_BOOT_KEY_REVOKE2"] == 1
    assert "SECURE_BOOT_KEY_REVOKE0" not in release
    assert "SECURE_BOOT_KEY_REVOKE1" not in plan_for("esp32s3", "development").expected_fields()


def test_s3_xts256_key_takes_two_blocks_so_digest_moves() -> None:
    plan = plan_for("esp32s3", "release", fe_key_len=64)
    assert plan.steps[0].purpose == "XTS_AES_256_KEY"
    digest = next(s for s in plan.steps if s.source == "secure_boot_digest")
    assert digest.target == "BLOCK_KEY2"


@pytest.mark.parametrize("chip", list(CHIPS))
def test_development_mode_has_no_locks_and_says_what_is_open(chip: str) -> None:
    plan = plan_for(chip, "development")
    facts = chip_facts(chip)
    assert plan.post_flash() == ()
    assert plan.expected_fields()[facts.crypt_cnt_field] == facts.crypt_cnt_development
    assert not set(plan.expected_fields()) & set(facts.download_lock_fields)
    assert any("JTAG" in line for line in plan.leaves_open())
    assert plan_for(chip, "release").leaves_open() == ()


@pytest.mark.parametrize(("chip", "mode"), CASES)
def test_json_round_trip(chip: str, mode: str) -> None:
    plan = plan_for(chip, mode)
    assert EfusePlan.from_json(chip, mode, plan.to_json()) == plan


def test_bad_mode_chip_and_key_length_are_input_errors() -> None:
    with pytest.raises(InputError, match="development must be asked for by name"):
        plan_for("esp32", "dev")
    with pytest.raises(InputError, match="unknown chip"):
        plan_for("esp8266", "release")
    with pytest.raises(InputError, match="64-byte"):
        plan_for("esp32", "release", fe_key_len=64)


def test_tampered_plan_json_is_refused() -> None:
    data = plan_for("esp32", "release").to_json()
    with pytest.raises(ProvisioningError, match="malformed"):
        EfusePlan.from_json("esp32", "release", [{**data[0], "extra": 1}])
    swapped = [data[-1], *data[:-1]]
    with pytest.raises(ProvisioningError, match="after a post_flash step"):
        EfusePlan.from_json("esp32", "release", swapped)
    with pytest.raises(ProvisioningError, match="needs a non-negative value"):
        EfusePlan.from_json("esp32", "release", [{**data[1], "value": None}])


@given(
    action=st.sampled_from(["burn_efuse", "write_protect_efuse", "read_protect_efuse"]),
    target=st.text(min_size=1, max_size=20),
    value=st.integers(min_value=0, max_value=2**32),
)
def test_step_json_round_trip(action: str, target: str, value: int) -> None:
    step = EfuseStep(
        "post_flash", action,  # type: ignore[arg-type]
        target, value=value if action == "burn_efuse" else None, why="x",
    )
    assert EfuseStep(**step.to_json()) == step
