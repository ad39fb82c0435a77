"""The secrets a fleet workspace knows, searched for by exact bytes in a flash dump.

Not guessing: each secret is searched raw, as hex (both cases) and as base64 at any
alignment. A fleet's worth of secrets (thousands of needles) is matched in one numpy
pass instead of one ``bytes.find`` per needle.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from espfleet.audit.findings import Finding, Severity

__all__ = ["KnownSecret", "encodings", "find_all", "scan_known_secrets"]


@dataclass(frozen=True)
class KnownSecret:
    """Secret bytes a workspace knows, to be searched for exactly."""

    label: str
    value: bytes
    #: Shorter values match by chance; WPA2 passwords have at least 8 characters.
    MIN_LENGTH: ClassVar[int] = 8

    def __post_init__(self) -> None:
        if len(self.value) < self.MIN_LENGTH:
            raise ValueError(f"{self.label}: a secret shorter than {self.MIN_LENGTH} bytes")


def encodings(value: bytes) -> list[tuple[str, bytes]]:
    """The forms a secret is searched in: raw, hex (both cases), base64 (any alignment).

    Base64 of a secret depends on where it starts in the encoded stream; for each of
    the three alignments the characters that depend only on the secret are searched.
    """
    forms = [("raw", value), ("hex", value.hex().encode()), ("HEX", value.hex().upper().encode())]
    for shift in range(3):
        encoded = base64.b64encode(b"\x00" * shift + value)
        head = (shift * 8 + 5) // 6  # characters holding bits of the bytes before it
        full = (shift + len(value)) * 8 // 6  # characters made of its bits only
        if full - head >= 8:
            forms.append(("base64", encoded[head:full]))
    return forms


def scan_known_secrets(data: bytes, secrets: Sequence[KnownSecret]) -> list[Finding]:
    """Every occurrence of every known secret, raw or encoded."""
    needles = [(secret, form, needle) for secret in secrets for form, needle in encodings(
        secret.value)]
    hits = find_all(data, [needle for _, _, needle in needles])
    findings: list[Finding] = []
    seen: set[tuple[str, int]] = set()
    for index, start in hits:
        secret, form, needle = needles[index]
        if (secret.label, start) in seen:
            continue
        seen.add((secret.label, start))
        findings.append(
            Finding(
                Severity.CRITICAL,
                "known-secret",
                start,
                len(needle),
                f"the workspace's {secret.label} is readable in plaintext ({form})",
                "this secret is leaked: rotate it (re-provision the device) and make sure "
                "flash encryption is on in release mode",
            )
        )
    return findings


#: Below this many needles one ``bytes.find`` pass each is faster than the index.
_INDEX_THRESHOLD = 24
_PREFIX = 8
_HASH_BITS = 24


def find_all(data: bytes, needles: Sequence[bytes]) -> list[tuple[int, int]]:
    """``(needle index, offset)`` of every occurrence of every needle (>= 8 bytes each).

    Many needles (a fleet's worth of keys) are matched in one pass: every 8-byte window
    of the dump is filtered by a bit table of the needles' prefixes with numpy, and only
    the few windows that pass are compared in full.
    """
    if any(len(n) < _PREFIX for n in needles):
        raise ValueError(f"needles must have at least {_PREFIX} bytes")
    if len(needles) < _INDEX_THRESHOLD:
        return [
            (index, start)
            for index, needle in enumerate(needles)
            for start in _find_each(data, needle)
        ]
    by_prefix: dict[bytes, list[int]] = {}
    for index, needle in enumerate(needles):
        by_prefix.setdefault(needle[:_PREFIX], []).append(index)
    mask = np.uint64((1 << _HASH_BITS) - 1)
    table = np.zeros(1 << _HASH_BITS, dtype=bool)
    table[[int.from_bytes(p, "little") & int(mask) for p in by_prefix]] = True
    out: list[tuple[int, int]] = []
    # Eight zero-copy little-endian uint64 views, shifted by 0..7 bytes, hold every
    # 8-byte window; a bit table of the prefixes' low 24 bits filters them in one gather.
    for shift in range(_PREFIX):
        count = (len(data) - shift) // _PREFIX
        if count <= 0:
            continue
        windows = np.frombuffer(data, dtype="<u8", count=count, offset=shift)
        for pos in np.nonzero(table[windows & mask])[0]:
            start = shift + _PREFIX * int(pos)
            for index in by_prefix.get(data[start : start + _PREFIX], ()):
                if data.startswith(needles[index], start):
                    out.append((index, start))
    return sorted(out, key=lambda hit: (hit[1], hit[0]))


def _find_each(data: bytes, needle: bytes) -> Iterator[int]:
    start = data.find(needle)
    while start >= 0:
        yield start
        start = data.find(needle, start + 1)
