from __future__ import annotations

import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from espfleet.errors import InputError, WorkspaceError
from espfleet.workspace.config import FleetConfig, Lifetimes, parse_fleet_toml, render_fleet_toml

orgs = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=64
).filter(lambda s: s.strip())
hosts = st.lists(
    st.one_of(
        st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9](\.[a-z]{2,6}){0,2}", fullmatch=True),
        st.ip_addresses().map(str),
    ),
    min_size=1,
    max_size=4,
)


@given(
    org=orgs,
    chip=st.sampled_from(["esp32", "esp32s3", "esp32c3"]),
    broker=hosts,
    ota=hosts,
    policy=st.sampled_from(["escrow", "destroy"]),
    device_days=st.integers(min_value=1, max_value=1825),
)
def test_fleet_toml_round_trip(
    org: str, chip: str, broker: list[str], ota: list[str], policy: str, device_days: int
) -> None:
    config = FleetConfig(
        org=org,
        chip=chip,
        broker_hosts=tuple(broker),
        ota_hosts=tuple(ota),
        key_policy=policy,
        lifetimes=Lifetimes(device_days=device_days),
    )
    text = render_fleet_toml(config)
    assert tomllib.loads(text)["fleet"]["org"] == org
    assert parse_fleet_toml(text) == config


def test_every_setting_is_documented() -> None:
    text = render_fleet_toml(FleetConfig(org="Acme"))
    doc = tomllib.loads(text)
    assert set(doc) == {
        "schema",
        "fleet",
        "secure_boot",
        "hosts",
        "lifetimes",
        "key_vault",
        "registry",
    }
    assert text.count("\n#") >= 15
    assert "destroy" in text and "escrow" in text and "postgresql" in text


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("device_days = 730", 'device_days = "x"'),
            r"\[lifetimes\] device_days must be an integer",
        ),
        (("device_days = 730", "device_days = 9999"), r"device_days must not exceed"),
        (('chip = "esp32"', 'chip = "esp8266"'), r"\[fleet\] chip 'esp8266' is not supported"),
        (('policy = "escrow"', 'policy = "shred"'), r"\[key_vault\] policy 'shred'"),
        (("broker_port = 8883", "broker_port = 70000"), r"broker_port must be a TCP port"),
        (("schema = 1", "schema = 2"), r"schema 1"),
        (('flash_size = "4MB"', 'flash_size = "3MB"'), r"\[fleet\] flash_size"),
        (('scheme = "rsa3072"', 'scheme = "ecdsa256"'), r"not Secure Boot V2 on esp32"),
        (("[fleet]", "[fleet"), r"not valid TOML"),
        (('url = "sqlite:///registry.db"', 'url = "registry.db"'), r"SQLAlchemy URL"),
        (('url = "sqlite:///registry.db"', 'url = "postgresql://:bad:port"'), r"SQLAlchemy URL"),
        (
            ('url = "sqlite:///registry.db"', 'url = "postgresql://fleet:s3cret@db/fleet"'),
            r"contains a password.*PGPASSWORD",
        ),
    ],
)
def test_bad_settings_name_the_key(edit: tuple[str, str], message: str) -> None:
    text = render_fleet_toml(FleetConfig(org="Acme"))
    assert edit[0] in text
    with pytest.raises(WorkspaceError, match=message):
        parse_fleet_toml(text.replace(edit[0], edit[1], 1))


@pytest.mark.parametrize("host", ["", "bad host", "-x.com", "a" * 64 + ".com", "x_y.com"])
def test_bad_host_is_refused(host: str) -> None:
    with pytest.raises(InputError, match="neither a DNS name nor an IP"):
        FleetConfig(org="Acme", broker_hosts=(host,))


@pytest.mark.parametrize("host", ["999.1.1.1", "192.168.1.300", "10.0.0"])
def test_mistyped_ip_address_is_refused_not_taken_as_a_dns_name(host: str) -> None:
    """A device would look the "name" up in DNS and never reach the broker."""
    with pytest.raises(InputError, match="is not an IP address"):
        FleetConfig(org="Acme", broker_hosts=(host,))


def test_ipv6_address_with_a_zone_is_refused() -> None:
    """fe80::1%eth0 went into fleet.toml while the SAN held fe80::1."""
    with pytest.raises(InputError, match="names an interface of this machine"):
        FleetConfig(org="Acme", broker_hosts=("fe80::1%eth0",))


def test_dns_name_with_a_trailing_dot_is_stored_without_it() -> None:
    """The SAN must be mqtt.example.com: TLS clients match the name without the dot."""
    config = FleetConfig(org="Acme", broker_hosts=("MQTT.Example.com.",))
    assert config.broker_hosts == ("mqtt.example.com",)


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"crl_days": 99999999999}, "crl_days = 99999999999 is more than 36500 days"),
     ({"root_ca_days": 10**12, "issuing_ca_days": 10**11}, "root_ca_days = "),
     ({"crl_days": 1826}, "crl_days must not exceed issuing_ca_days")],
)
def test_absurd_lifetime_is_refused(changes: dict[str, int], message: str) -> None:
    """crl_days = 99999999999 passed `ca reseal`, then `ca crl --refresh` died in an
    OverflowError traceback."""
    with pytest.raises(InputError, match=message):
        Lifetimes(**changes)


def test_bad_org_is_refused() -> None:
    for org in ("", "   ", "x" * 65, "evil\nO=root"):
        with pytest.raises(InputError, match=r"\[fleet\] org"):
            FleetConfig(org=org)
