from __future__ import annotations

import pytest

from espfleet.chips import CHIPS, chip_facts
from espfleet.errors import InputError


def test_unknown_chip_names_the_supported_ones() -> None:
    with pytest.raises(InputError, match="esp32, esp32s3, esp32c3"):
        chip_facts("esp8266")


@pytest.mark.parametrize("chip", sorted(CHIPS))
def test_chip_fields_exist_in_espefuse_definitions(chip: str) -> None:
    """Every eFuse name in the table is a real espefuse field of that chip."""
    from pathlib import Path

    import espefuse
    import yaml  # espefuse depends on PyYAML

    defs = Path(espefuse.__file__).parent / "efuse_defs" / f"{chip}.yaml"
    fields = set(yaml.safe_load(defs.read_text())["EFUSES"])
    f = chip_facts(chip)
    names = [
        f.crypt_cnt_field, f.sb_enable_field, f.secure_version_field, f.rd_dis_field,
        *f.release_hardening, *f.release_write_protect, *f.sb_revoke_fields,
        *f.fe_key_blocks, *f.sb_digest_blocks, *f.download_lock_fields,
    ]
    if f.crypt_config_field:
        names.append(f.crypt_config_field)
    missing = [n for n in names if n not in fields]
    assert not missing, missing


@pytest.mark.parametrize("chip", sorted(CHIPS))
def test_release_counter_is_all_bits_and_development_one_bit(chip: str) -> None:
    f = chip_facts(chip)
    assert f.crypt_cnt_release == (1 << f.crypt_cnt_bits) - 1
    assert bin(f.crypt_cnt_development).count("1") == 1
    assert f.plaintext_reflashes == (f.crypt_cnt_bits - 1) // 2


def test_download_lock_is_the_last_hardening_burn() -> None:
    for f in CHIPS.values():
        assert f.release_hardening[-1] in f.download_lock_fields
