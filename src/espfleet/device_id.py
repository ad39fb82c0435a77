"""Device ids: the name a device has everywhere (certificate CN, MQTT client id, registry key).

A real chip's id is ``<chip>-<base MAC as 12 lowercase hex>``, e.g. ``esp32-24a1600a1b2c``,
with ``<chip>`` one of :func:`espfleet.chips.chip_names`. Any other id (a bench rig, a
gateway, a test double) must match ``[a-z0-9][a-z0-9-]{2,62}`` and must not look like a
chip id with a malformed MAC (``esp32-xyz`` is refused rather than taken as a free-form id,
because it is almost always a typo).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from espfleet.chips import CHIPS, chip_facts
from espfleet.errors import InputError

__all__ = ["DeviceId", "device_id_for", "format_mac", "parse_device_id", "parse_mac"]

_GENERIC = re.compile(r"[a-z0-9][a-z0-9-]{2,62}")
_HEX12 = re.compile(r"[0-9a-f]{12}")
_MAC_SEPARATED = re.compile(r"[0-9a-fA-F]{2}([:-]?)(?:[0-9a-fA-F]{2}\1){4}[0-9a-fA-F]{2}")


@dataclass(frozen=True)
class DeviceId:
    """A validated device id; :attr:`chip` and :attr:`mac` are set for real-chip ids."""

    value: str

    def __post_init__(self) -> None:
        _split(self.value)

    def __str__(self) -> str:
        return self.value

    @property
    def chip(self) -> str | None:
        return _split(self.value)[0]

    @property
    def mac(self) -> bytes | None:
        return _split(self.value)[1]


def parse_mac(mac: bytes | str) -> bytes:
    """A base MAC as 6 bytes, from bytes or ``aa:bb:cc:dd:ee:ff`` / ``aa-bb-..`` / 12 hex."""
    if isinstance(mac, bytes | bytearray):
        if len(mac) != 6:
            raise InputError(f"a MAC address has 6 bytes, got {len(mac)}: pass the base MAC")
        return bytes(mac)
    text = mac.strip()
    if not _MAC_SEPARATED.fullmatch(text):
        raise InputError(
            f"{mac!r} is not a MAC address: write it as 24:a1:60:0a:1b:2c or 24a1600a1b2c"
        )
    return bytes.fromhex(re.sub(r"[:-]", "", text))


def format_mac(mac: bytes) -> str:
    """``24:a1:60:0a:1b:2c`` form, as esptool prints it."""
    return ":".join(f"{b:02x}" for b in parse_mac(mac))


def device_id_for(chip: str, mac: bytes | str) -> str:
    """The id of a real chip: ``device_id_for("esp32", "24:a1:60:0a:1b:2c")``."""
    facts = chip_facts(chip)
    return f"{facts.name}-{parse_mac(mac).hex()}"


def parse_device_id(value: str) -> DeviceId:
    """Validate ``value`` (raises :class:`InputError` naming the rule it breaks)."""
    return DeviceId(value)


def _split(value: str) -> tuple[str | None, bytes | None]:
    if not isinstance(value, str) or not _GENERIC.fullmatch(value):
        raise InputError(
            f"invalid device id {value!r}: use <chip>-<12 hex digits of the base MAC> "
            "(e.g. esp32-24a1600a1b2c) or 3 to 63 characters of a-z, 0-9 and '-', "
            "starting with a letter or digit"
        )
    prefix, _, rest = value.partition("-")
    if prefix not in CHIPS:
        return None, None
    if not _HEX12.fullmatch(rest):
        raise InputError(
            f"invalid device id {value!r}: an {prefix} id is {prefix}-<base MAC as 12 "
            f"lowercase hex digits>, e.g. {prefix}-24a1600a1b2c"
        )
    return prefix, bytes.fromhex(rest)
