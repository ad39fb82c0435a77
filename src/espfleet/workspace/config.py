"""``fleet.toml``: the workspace settings, as a validated frozen dataclass.

Read with :mod:`tomllib`; written by a small emitter (:func:`render_fleet_toml`) that
documents every setting with a comment, so a team can read and review the file.
Validation errors name the key (``fleet.toml: [lifetimes] device_days must be ...``).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from espfleet.chips import chip_facts, chip_names
from espfleet.errors import InputError, WorkspaceError

__all__ = [
    "DEFAULT_HOSTS",
    "KEY_POLICIES",
    "MAX_DAYS",
    "SCHEMA_VERSION",
    "FleetConfig",
    "Lifetimes",
    "parse_fleet_toml",
    "render_fleet_toml",
    "validate_host",
]

SCHEMA_VERSION = 1
KEY_POLICIES = ("escrow", "destroy")
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
#: No lifetime beyond 100 years (and datetime arithmetic stays far from year 9999).
MAX_DAYS = 36500
_KIND_NAMES = {int: "an integer", str: "a string", bool: "true or false"}
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def validate_host(host: str) -> str:
    """A DNS name or an IP address (what a server certificate SAN can hold)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise InputError(
                f"{host!r} names an interface of this machine (%{address.scope_id}): a "
                "certificate and the devices cannot; give the address without it, or a "
                "DNS name"
            )
        return str(address)
    name = host.rstrip(".")  # a certificate SAN holds the name without the root's dot
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise InputError(
            f"{host!r} is neither a DNS name nor an IP address: give e.g. mqtt.example.com "
            "or 192.168.1.10"
        )
    if labels[-1].isdigit():  # no top-level domain is numeric (RFC 1123): a mistyped IP
        raise InputError(
            f"{host!r} is not an IP address (each of the 4 numbers is 0 to 255) and, ending "
            "in a number, not a DNS name either: check it, e.g. 192.168.1.10"
        )
    return name.lower()


@dataclass(frozen=True)
class Lifetimes:
    """Certificate lifetimes in days, and how long a CRL is valid."""

    root_ca_days: int = 7300
    issuing_ca_days: int = 1825
    server_days: int = 825
    device_days: int = 730
    crl_days: int = 30

    def __post_init__(self) -> None:
        for name in ("root_ca_days", "issuing_ca_days", "server_days", "device_days", "crl_days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InputError(f"[lifetimes] {name} must be a positive number of days")
            if value > MAX_DAYS:
                raise InputError(
                    f"[lifetimes] {name} = {value} is more than {MAX_DAYS} days (100 years): "
                    "check the number"
                )
        if self.crl_days > self.issuing_ca_days:
            raise InputError(
                "[lifetimes] crl_days must not exceed issuing_ca_days: a CRL is re-signed "
                "at least every crl_days, and its signer lives issuing_ca_days"
            )
        if self.issuing_ca_days > self.root_ca_days:
            raise InputError("[lifetimes] issuing_ca_days must not exceed root_ca_days")
        if max(self.server_days, self.device_days) > self.issuing_ca_days:
            raise InputError(
                "[lifetimes] server_days and device_days must not exceed issuing_ca_days"
            )


def _check_port(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InputError(f"[hosts] {name} must be a TCP port (1-65535)")


@dataclass(frozen=True)
class FleetConfig:
    """Everything in fleet.toml. Paths are relative to the workspace root."""

    org: str
    chip: str = "esp32"
    flash_size: str = "4MB"
    secure_boot_scheme: str = "rsa3072"
    broker_hosts: tuple[str, ...] = DEFAULT_HOSTS
    broker_port: int = 8883
    recovery_port: int = 8884
    ota_hosts: tuple[str, ...] = DEFAULT_HOSTS
    ota_port: int = 8443
    lifetimes: Lifetimes = field(default_factory=Lifetimes)
    key_policy: str = "escrow"
    registry_url: str = "sqlite:///registry.db"

    def __post_init__(self) -> None:
        if not isinstance(self.org, str) or not self.org.strip() or len(self.org) > 64:
            raise InputError("[fleet] org must be 1 to 64 characters (it goes in O= of certs)")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in self.org):
            raise InputError("[fleet] org must not contain control characters")
        if self.chip not in chip_names():
            raise InputError(
                f"[fleet] chip {self.chip!r} is not supported: use {', '.join(chip_names())}"
            )
        facts = chip_facts(self.chip)
        if self.flash_size not in facts.flash_sizes:
            raise InputError(
                f"[fleet] flash_size {self.flash_size!r}: use one of {', '.join(facts.flash_sizes)}"
            )
        if self.secure_boot_scheme not in facts.secure_boot_schemes:
            raise InputError(
                f"[secure_boot] scheme {self.secure_boot_scheme!r} is not Secure Boot V2 on "
                f"{self.chip}: use {', '.join(facts.secure_boot_schemes)}"
            )
        for name in ("broker_hosts", "ota_hosts"):
            hosts = getattr(self, name)
            if not isinstance(hosts, tuple) or not hosts:
                raise InputError(f"[hosts] {name.removesuffix('_hosts')} needs at least one host")
            object.__setattr__(self, name, tuple(dict.fromkeys(validate_host(h) for h in hosts)))
        for name in ("broker_port", "recovery_port", "ota_port"):
            _check_port(name, getattr(self, name))
        if self.key_policy not in KEY_POLICIES:
            raise InputError(
                f"[key_vault] policy {self.key_policy!r}: use escrow or destroy"
            )
        _check_registry_url(self.registry_url)


def _check_registry_url(url: str) -> None:
    try:
        if not isinstance(url, str) or "://" not in url:
            raise ArgumentError("no scheme")
        password = make_url(url).password
    except (ArgumentError, ValueError):
        raise InputError(
            "[registry] url must be an SQLAlchemy URL, e.g. sqlite:///registry.db"
        ) from None
    if password:
        raise InputError(
            "[registry] url contains a password, and fleet.toml is meant for version "
            "control: remove it from the URL and give it to the driver instead (for "
            "PostgreSQL: PGPASSWORD or ~/.pgpass)"
        )


def _toml_string(value: str) -> str:
    out = []
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def render_fleet_toml(config: FleetConfig) -> str:
    """fleet.toml text for ``config``, each setting with its explanation."""
    v = _toml_value
    life = config.lifetimes
    return f"""\
# espfleet fleet workspace settings. Read by every espfleet command.
# This file is signed (pki/workspace-manifest.json): after a deliberate edit run
# `espfleet ca reseal` so espfleet accepts it again; an unsigned change is refused.
schema = {SCHEMA_VERSION}

[fleet]
# Organization name: the O= of every certificate the fleet CA issues.
org = {v(config.org)}
# Chip family of the product: esp32 (revision v3.0+ for Secure Boot V2), esp32s3, esp32c3.
chip = {v(config.chip)}
# Flash size of the module; the default partition layout is made for it.
flash_size = {v(config.flash_size)}

[secure_boot]
# Secure Boot V2 signature scheme. ESP32 supports only rsa3072 for V2.
# The signing key is keys/secure_boot_signing_key.pem (encrypted with the passphrase).
scheme = {v(config.secure_boot_scheme)}

[hosts]
# DNS names and IP addresses devices use to reach the MQTT broker; each one becomes
# a subjectAltName of pki/broker.pem. Devices verify the broker against the fleet CA.
# After editing the hosts, `espfleet ca reseal` re-issues the server certificates.
broker = {v(config.broker_hosts)}
# Mutual-TLS listener (device certificates) and the recovery listener (server-auth only).
broker_port = {v(config.broker_port)}
recovery_port = {v(config.recovery_port)}
# DNS names and IP addresses of the HTTPS OTA server (SANs of pki/ota.pem).
ota = {v(config.ota_hosts)}
ota_port = {v(config.ota_port)}

[lifetimes]
# Days. A certificate never outlives its issuer. Devices renew at two thirds of
# device_days; the CRL is re-signed at least every crl_days.
root_ca_days = {v(life.root_ca_days)}
issuing_ca_days = {v(life.issuing_ca_days)}
server_days = {v(life.server_days)}
device_days = {v(life.device_days)}
crl_days = {v(life.crl_days)}

[key_vault]
# What happens to each device's flash-encryption and NVS keys after flashing:
#   escrow  (default) kept in vault/, encrypted with the passphrase: allows rebuilding
#           a bundle and re-flashing a development-mode device over serial.
#   destroy deleted once the device is flashed: nobody, including you, can decrypt that
#           device's flash again; lost bundles cannot be rebuilt. Stronger, less forgiving.
policy = {v(config.key_policy)}

[registry]
# SQLAlchemy URL of the device/certificate registry. A relative sqlite path is relative
# to the workspace. For production use PostgreSQL, e.g.
#   url = "postgresql+psycopg://espfleet@db.example.com/espfleet"
# No password here (this file goes into version control): PGPASSWORD or ~/.pgpass.
url = {v(config.registry_url)}
"""


def _table(doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, Mapping):
        raise InputError(f"[{name}] must be a table")
    return value


def _get(table: Mapping[str, Any], section: str, key: str, kind: type, default: Any) -> Any:
    if key not in table:
        return default
    value = table[key]
    if kind is tuple:
        if not isinstance(value, list) or not all(isinstance(h, str) for h in value):
            raise InputError(f"[{section}] {key} must be a list of strings")
        return tuple(value)
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise InputError(f"[{section}] {key} must be {_KIND_NAMES[kind]}, got {value!r}")
    return value


def parse_fleet_toml(text: bytes | str) -> FleetConfig:
    """Parse fleet.toml; any problem is a :class:`WorkspaceError` naming the key."""
    try:
        raw = text.decode("utf-8") if isinstance(text, bytes) else text
        doc = tomllib.loads(raw)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise WorkspaceError(f"fleet.toml is not valid TOML ({error}): fix the file") from None
    try:
        if doc.get("schema") != SCHEMA_VERSION:
            raise InputError(
                f"schema is {doc.get('schema')!r}; this espfleet reads schema {SCHEMA_VERSION}"
            )
        fleet, sb, hosts = (_table(doc, name) for name in ("fleet", "secure_boot", "hosts"))
        life, vault, reg = (_table(doc, name) for name in ("lifetimes", "key_vault", "registry"))
        if "org" not in fleet:
            raise InputError("[fleet] org is missing")
        defaults = FleetConfig(org="x")
        lifetimes = Lifetimes(
            **{
                name: _get(life, "lifetimes", name, int, getattr(defaults.lifetimes, name))
                for name in Lifetimes.__dataclass_fields__
            }
        )
        return FleetConfig(
            org=_get(fleet, "fleet", "org", str, None),
            chip=_get(fleet, "fleet", "chip", str, defaults.chip),
            flash_size=_get(fleet, "fleet", "flash_size", str, defaults.flash_size),
            secure_boot_scheme=_get(sb, "secure_boot", "scheme", str, defaults.secure_boot_scheme),
            broker_hosts=_get(hosts, "hosts", "broker", tuple, defaults.broker_hosts),
            broker_port=_get(hosts, "hosts", "broker_port", int, defaults.broker_port),
            recovery_port=_get(hosts, "hosts", "recovery_port", int, defaults.recovery_port),
            ota_hosts=_get(hosts, "hosts", "ota", tuple, defaults.ota_hosts),
            ota_port=_get(hosts, "hosts", "ota_port", int, defaults.ota_port),
            lifetimes=lifetimes,
            key_policy=_get(vault, "key_vault", "policy", str, defaults.key_policy),
            registry_url=_get(reg, "registry", "url", str, defaults.registry_url),
        )
    except InputError as error:
        raise WorkspaceError(f"fleet.toml: {error}") from None
