from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from espfleet.chips import chip_names
from espfleet.device_id import DeviceId, device_id_for, format_mac, parse_device_id, parse_mac
from espfleet.errors import InputError


def test_chip_id_splits_into_chip_and_mac() -> None:
    did = parse_device_id("esp32-24a1600a1b2c")
    assert (did.chip, did.mac) == ("esp32", bytes.fromhex("24a1600a1b2c"))
    assert str(did) == "esp32-24a1600a1b2c"


def test_generic_id_has_no_chip() -> None:
    did = parse_device_id("bench-rig-01")
    assert did.chip is None and did.mac is None


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "ab",
        "-abc",
        "Esp32-24a1600a1b2c",
        "esp32-24A1600A1B2C",
        "esp32-24a1600a1b2",
        "esp32-24a1600a1b2c0",
        "esp32-xyz",
        "esp32s3-",
        "a" * 64,
        "dev_1",
        "dev.1",
        "dev 1",
    ],
)
def test_invalid_device_ids_are_refused_with_the_rule(bad: str) -> None:
    with pytest.raises(InputError, match="invalid device id"):
        parse_device_id(bad)


def test_device_id_for_accepts_bytes_and_text_macs() -> None:
    mac = bytes.fromhex("24a1600a1b2c")
    assert device_id_for("esp32s3", mac) == "esp32s3-24a1600a1b2c"
    assert device_id_for("esp32", "24:A1:60:0A:1B:2C") == "esp32-24a1600a1b2c"
    assert device_id_for("esp32c3", "24-a1-60-0a-1b-2c") == "esp32c3-24a1600a1b2c"
    assert format_mac(mac) == "24:a1:60:0a:1b:2c"


@pytest.mark.parametrize("bad", ["24:a1:60:0a:1b", "24:a1-60:0a:1b:2c", "zz:a1:60:0a:1b:2c"])
def test_malformed_mac_is_refused(bad: str) -> None:
    with pytest.raises(InputError, match="not a MAC address"):
        parse_mac(bad)


def test_unknown_chip_is_refused() -> None:
    with pytest.raises(InputError, match="unknown chip"):
        device_id_for("esp8266", b"\x00" * 6)


@given(st.sampled_from(chip_names()), st.binary(min_size=6, max_size=6))
def test_chip_id_round_trip(chip: str, mac: bytes) -> None:
    did = parse_device_id(device_id_for(chip, mac))
    assert (did.chip, did.mac) == (chip, mac)
    assert parse_mac(format_mac(mac)) == mac


@given(st.from_regex(r"[a-z0-9][a-z0-9-]{2,62}", fullmatch=True))
def test_generic_ids_are_accepted_unless_they_look_like_a_broken_chip_id(value: str) -> None:
    prefix = value.partition("-")[0]
    if prefix in chip_names():
        try:
            DeviceId(value)
        except InputError as error:
            assert prefix in str(error)
    else:
        assert DeviceId(value).value == value
