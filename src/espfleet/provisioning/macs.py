"""MAC lists (``--macs FILE``) and locally administered MAC allocation (``--count N``).

A MAC list is CSV text: one base MAC per line (``24:a1:60:0a:1b:2c``, ``24-a1-..`` or 12
hex digits), optionally followed by a Wi-Fi SSID and password. A header line
(``mac,wifi_ssid,wifi_pass``) is optional; blank lines and ``#`` comments are skipped.
A spreadsheet's export is read as is: a UTF-8 byte-order mark is ignored, and a file
whose first line separates with ``;`` and not ``,`` (Excel in many locales) is read
with ``;``. Wi-Fi credentials must fit ESP-IDF's ``wifi_config_t`` (SSID at most 32
bytes, password at most 64; 64 characters are a hex PSK). Every problem names its line.

Allocated MACs are locally administered unicast addresses (first octet ``0x02``) in
espfleet's own range, spaced four apart: an ESP32 derives its Wi-Fi AP, Bluetooth and
Ethernet MACs as base + 1..3, so consecutive devices must not overlap.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field

from espfleet.device_id import format_mac, parse_mac
from espfleet.errors import InputError

__all__ = [
    "LOCAL_PREFIX",
    "MAC_STRIDE",
    "MacEntry",
    "allocate_macs",
    "check_wifi",
    "is_locally_administered",
    "parse_mac_list",
]

#: espfleet's locally administered range: 02:e5:f1:xx:xx:xx.
LOCAL_PREFIX = bytes([0x02, 0xE5, 0xF1])
#: Base MACs are 4 apart: each chip uses base+0..3 for its interfaces.
MAC_STRIDE = 4
#: ESP-IDF's wifi_config_t: ssid[32], password[64] (64 = a raw hex PSK).
WIFI_SSID_MAX = 32
WIFI_PASS_MAX = 64
_COLUMNS = {"mac": "mac", "base_mac": "mac", "wifi_ssid": "wifi_ssid", "ssid": "wifi_ssid",
            "wifi_pass": "wifi_pass", "wifi_password": "wifi_pass", "password": "wifi_pass"}


@dataclass(frozen=True)
class MacEntry:
    """One line of a MAC list."""

    line: int
    mac: bytes
    wifi_ssid: str | None = None
    wifi_pass: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.mac) != 6:
            raise InputError(f"line {self.line}: a MAC address has 6 bytes")


def is_locally_administered(mac: bytes) -> bool:
    return bool(mac[0] & 0x02)


def check_wifi(ssid: str | None, password: str | None) -> None:
    """Refuse Wi-Fi credentials a device could never use (:class:`InputError`)."""
    if password is not None and ssid is None:
        raise InputError("a Wi-Fi password without an SSID")
    if ssid is not None and len(ssid.encode()) > WIFI_SSID_MAX:
        raise InputError(
            f"Wi-Fi SSID {ssid!r} is {len(ssid.encode())} bytes; an SSID has at most "
            f"{WIFI_SSID_MAX} (the device would truncate it and never find the network)"
        )
    if password is None:
        return
    size = len(password.encode())
    if size > WIFI_PASS_MAX or (size == WIFI_PASS_MAX and not _is_hex(password)):
        raise InputError(
            f"the Wi-Fi password for {ssid!r} is {size} bytes; a WPA passphrase has at "
            f"most {WIFI_PASS_MAX - 1} characters ({WIFI_PASS_MAX} only as a hex PSK)"
        )


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def parse_mac_list(text: str, *, source: str = "MAC list") -> tuple[MacEntry, ...]:
    """Parse a MAC list; raises :class:`InputError` naming ``source`` and the line."""
    entries: list[MacEntry] = []
    seen: dict[bytes, int] = {}
    columns: list[str] | None = None
    delimiter: str | None = None
    for number, raw in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if delimiter is None:
            delimiter = ";" if ";" in line and "," not in line else ","
        fields = [f.strip() for f in next(csv.reader(io.StringIO(line), delimiter=delimiter))]
        is_header = any(_COLUMNS.get(f.lower()) == "mac" for f in fields)
        if columns is None and not entries and is_header:
            columns = _header(fields, source, number)
            continue
        names = columns or ["mac", "wifi_ssid", "wifi_pass"]
        if len(fields) > len(names):
            raise InputError(
                f"{source} line {number}: {len(fields)} columns, expected at most "
                f"{len(names)} ({', '.join(names)})"
            )
        row = dict(zip(names, fields, strict=False))
        try:
            mac = parse_mac(row.get("mac", ""))
        except InputError as error:
            raise InputError(f"{source} line {number}: {error}") from None
        if mac[0] & 0x01:
            raise InputError(
                f"{source} line {number}: {format_mac(mac)} is a multicast address; a chip's "
                "base MAC is unicast (even first octet)"
            )
        if mac in seen:
            raise InputError(
                f"{source} line {number}: duplicate MAC {format_mac(mac)} (also on line "
                f"{seen[mac]}): every device needs its own MAC"
            )
        seen[mac] = number
        ssid = row.get("wifi_ssid") or None
        password = row.get("wifi_pass") or None
        try:
            check_wifi(ssid, password)
        except InputError as error:
            raise InputError(f"{source} line {number}: {error}") from None
        entries.append(MacEntry(number, mac, ssid, password))
    if not entries:
        raise InputError(f"{source} lists no MAC address: one base MAC per line")
    return tuple(entries)


def _header(fields: list[str], source: str, number: int) -> list[str]:
    names = []
    for name in fields:
        key = _COLUMNS.get(name.lower())
        if key is None:
            raise InputError(
                f"{source} line {number}: unknown column {name!r}; use mac, wifi_ssid, wifi_pass"
            )
        names.append(key)
    return names


def allocate_macs(
    count: int, used: Iterable[bytes], *, prefix: bytes = LOCAL_PREFIX
) -> list[bytes]:
    """``count`` fresh base MACs in ``prefix``'s range, after every ``used`` one."""
    if count < 1:
        raise InputError(f"--count must be at least 1, got {count}")
    if len(prefix) != 3 or not is_locally_administered(prefix) or prefix[0] & 0x01:
        raise InputError(
            "the allocation prefix must be 3 bytes of a locally administered unicast range"
        )
    suffixes = [
        int.from_bytes(mac[3:], "big") for mac in used if mac[:3] == prefix
    ]
    # The first free stride-aligned base past the interfaces (base + 0..3) of every used MAC.
    start = -(-(max(suffixes) + MAC_STRIDE) // MAC_STRIDE) * MAC_STRIDE if suffixes else 0
    last = start + (count - 1) * MAC_STRIDE
    if last + MAC_STRIDE - 1 > 0xFFFFFF:
        raise InputError(
            f"the range {format_mac(prefix + bytes(3))[:8]}:xx:xx:xx has room for "
            f"{(0x1000000 - start) // MAC_STRIDE} more devices, not {count}"
        )
    return [prefix + (start + i * MAC_STRIDE).to_bytes(3, "big") for i in range(count)]
