"""NVS in a flash read-out: readable without keys, or decryptable with keys lying next to it.

NVS is never flash-encrypted; encrypted NVS encrypts each 32-byte entry with the
nvs_keys partition, which *is* flash-encrypted. So in a dump:

* an NVS page header (state, CRC) is plaintext either way; a page counts as readable
  when its *entries* pass their CRC, as only plaintext entries do;
* an nvs_keys partition that reads as 64 key bytes + their CRC32 + erased flash is
  plaintext (flash encryption off): it decrypts every encrypted NVS page of the
  device, which the audit then does, as an attacker would.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from espfleet.audit.findings import Finding, Severity
from espfleet.audit.secrets_scan import redact
from espfleet.errors import FormatError, InputError
from espfleet.formats import nvs, nvs_keys
from espfleet.formats._nvs_reader import (
    ENTRIES_PER_PAGE,
    READABLE_PAGES,
    STATE_WRITTEN,
    TYPE_BLOB_DATA,
    TYPE_BLOB_INDEX,
    TYPE_CODES,
    TYPE_STRING,
    VARIABLE,
)
from espfleet.formats.nvs_keys import NvsKeys

__all__ = ["NvsEntry", "nvs_entries", "scan_nvs"]

_FIX_NVS = (
    "use encrypted NVS (an nvs_keys partition, itself flash-encrypted): espfleet provision "
    "builds it; move every credential into it"
)
_FIX_NVS_KEYS = (
    "the nvs_keys partition must be flash-encrypted: provision in release mode (flash "
    "encryption on); treat every secret in this device's NVS as leaked and re-provision"
)

PAGE = 4096
_NVS_TYPES = {*TYPE_CODES, TYPE_BLOB_DATA, TYPE_BLOB_INDEX}
#: Key names that hold secrets (ESP-IDF's Wi-Fi driver keeps ``sta.pswd`` and the PSK
#: derived from it, ``sta.pmk``, as good as the password, in NVS namespace nvs.net80211).
_SECRET_KEY_NAME = re.compile(
    rb"(?i)pass|pswd|pwd|psk|pmk|secret|token|priv|key|recovery|cred|auth"
)
#: nvs_keys: two 32-byte keys, their CRC32, then erased flash to the end of the page.
_KEYS_BODY = 68
_ERASED_TAIL = b"\xff" * (PAGE - _KEYS_BODY)


def _crc(data: bytes) -> int:
    return zlib.crc32(data, 0xFFFFFFFF) & 0xFFFFFFFF


@dataclass(frozen=True)
class NvsEntry:
    """One plaintext NVS entry whose CRC checks out, with its value if it has one."""

    offset: int
    namespace: int
    type: int
    key: str
    value: bytes

    @property
    def looks_secret(self) -> bool:
        return bool(_SECRET_KEY_NAME.search(self.key.encode()))


def _nvs_page_ok(data: bytes, offset: int) -> bool:
    state, stored_crc = struct.unpack_from("<I24xI", data, offset)
    return state in READABLE_PAGES and stored_crc == _crc(data[offset + 4 : offset + 28])


def nvs_entries(data: bytes, page: int) -> list[NvsEntry]:
    """The written entries of the NVS page at ``page`` whose entry CRC is valid.

    Encrypted NVS keeps its page header plaintext but encrypts each entry, so none of
    its entries pass; a plaintext NVS page gives its keys and values away.
    """
    bitmap = data[page + 32 : page + 64]
    entries: list[NvsEntry] = []
    index = 0
    while index < ENTRIES_PER_PAGE:
        state = (bitmap[index // 4] >> ((index % 4) * 2)) & 3
        base = page + 64 + 32 * index
        raw = data[base : base + 32]
        if state != STATE_WRITTEN or len(raw) < 32:
            index += 1
            continue
        ns, etype, span = raw[0], raw[1], raw[2]
        crc_ok = struct.unpack_from("<I", raw, 4)[0] == _crc(raw[0:4] + raw[8:32])
        if not crc_ok or etype not in _NVS_TYPES or not 1 <= span <= ENTRIES_PER_PAGE - index:
            index += 1
            continue
        key = raw[8:24].split(b"\x00")[0].decode("ascii", "replace")
        value = raw[24:32]
        if etype in VARIABLE:
            size = struct.unpack_from("<H", raw, 24)[0]
            value = data[base + 32 : base + 32 + min(size, 32 * (span - 1))]
        entries.append(NvsEntry(base, ns, etype, key, value))
        index += span
    return entries


def _strict_read(region: bytes) -> str:
    """What espfleet's strict NVS reader makes of the region, for the report."""
    try:
        namespaces = nvs.read(region)
    except FormatError as error:
        return f"the strict reader stops: {error}"
    return "namespaces: " + ", ".join(
        f"{name} ({len(keys)} keys)" for name, keys in namespaces.items()
    )


def scan_nvs(data: bytes) -> list[Finding]:
    """Readable NVS regions, plaintext nvs_keys, and NVS those keys decrypt."""
    keys = list(_plaintext_nvs_keys(data))
    findings = [
        Finding(Severity.CRITICAL, "plaintext-nvs-keys", offset, _KEYS_BODY,
                f"plaintext nvs_keys partition (keys fingerprint {found.fingerprint()}): "
                "anyone with this dump decrypts the device's encrypted NVS", _FIX_NVS_KEYS)
        for offset, found in keys
    ]
    for start, end in _nvs_regions(data):
        entries = [e for page in range(start, end, PAGE) for e in nvs_entries(data, page)]
        if entries:
            findings += _readable_region(data, start, end, entries)
        else:
            findings += _decrypted_region(data, start, end, keys)
    return findings


def _plaintext_nvs_keys(data: bytes) -> Iterator[tuple[int, NvsKeys]]:
    for offset in range(0, len(data) - PAGE + 1, PAGE):
        if data[offset + _KEYS_BODY : offset + PAGE] != _ERASED_TAIL:
            continue
        try:
            yield offset, nvs_keys.decode(data[offset : offset + PAGE])
        except (FormatError, InputError):
            continue


def _nvs_regions(data: bytes) -> Iterator[tuple[int, int]]:
    """Runs of consecutive pages with a valid NVS page header, as (start, end)."""
    start: int | None = None
    offset = 0
    for offset in range(0, len(data) - PAGE + 1, PAGE):
        if _nvs_page_ok(data, offset):
            start = offset if start is None else start
        elif start is not None:
            yield start, offset
            start = None
    if start is not None:
        yield start, offset + PAGE


def _readable_region(
    data: bytes, start: int, end: int, entries: list[NvsEntry]
) -> list[Finding]:
    # An all-zero or erased value is a placeholder (nvs_partition_gen writes sta.pmk as
    # 32 zero bytes when it has no password), not a secret.
    secrets = [e for e in entries if e.looks_secret and e.type != TYPE_BLOB_INDEX
               and e.value.strip(b"\x00\xff")]
    findings = [Finding(
        Severity.HIGH,
        "plaintext-nvs",
        start,
        end - start,
        f"NVS readable without keys: {len(entries)} entries in plaintext"
        + (f", {len(secrets)} of them look secret" if secrets else "")
        + f" ({_strict_read(data[start:end])})",
        _FIX_NVS,
    )]
    for entry in secrets:
        findings.append(Finding(
            Severity.CRITICAL,
            "nvs-secret",
            entry.offset,
            32 + len(entry.value),
            f"plaintext NVS entry {entry.key!r} (type 0x{entry.type:02x}, "
            f"{len(entry.value)} bytes) holds what its name says is a secret"
            + (f": {redact(entry.value.rstrip(bytes(1)))}" if entry.type == TYPE_STRING else ""),
            _FIX_NVS,
        ))
    return findings


def _decrypted_region(
    data: bytes, start: int, end: int, keys: list[tuple[int, NvsKeys]]
) -> list[Finding]:
    """Encrypted NVS: opened with any plaintext nvs_keys found in the same dump."""
    for keys_offset, found in keys:
        try:
            namespaces = nvs.read(data[start:end], found)
        except FormatError:
            continue
        secret_names = sorted(
            f"{ns}/{key}" for ns, items in namespaces.items() for key in items
            if _SECRET_KEY_NAME.search(key.encode())
        )
        count = sum(len(items) for items in namespaces.values())
        return [Finding(
            Severity.CRITICAL,
            "nvs-decrypted",
            start,
            end - start,
            f"encrypted NVS decrypted with the plaintext nvs_keys at 0x{keys_offset:x}: "
            f"{count} entries readable"
            + (f", secrets: {', '.join(secret_names)}" if secret_names else ""),
            _FIX_NVS_KEYS,
        )]
    return []
