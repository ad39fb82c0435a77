"""The flash read-out audit: what an attacker with `esptool read-flash` learns.

Pure over the bytes of a dump (``esptool read-flash 0 <size>`` or ``espfleet vdev
dump``): secret detectors, known workspace secrets by exact bytes, plaintext
structures that prove flash encryption is off, and an entropy map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from espfleet.audit.entropy import BlockClass, EntropyMap, entropy_map
from espfleet.audit.findings import Finding, Severity, failing, worst
from espfleet.audit.known_secrets import KnownSecret, scan_known_secrets
from espfleet.audit.plaintext_scan import scan_plaintext_structures
from espfleet.audit.secrets_scan import scan_secrets
from espfleet.chips import CHIPS, ChipFacts
from espfleet.errors import InputError

__all__ = ["FlashReport", "scan_flash"]

_FIX_REGION = (
    "if this region holds anything but public data, encrypt it: provision in release "
    "mode so every partition except nvs is flash-encrypted"
)


@dataclass(frozen=True)
class FlashReport:
    size: int
    chip: str | None
    findings: tuple[Finding, ...]
    entropy: EntropyMap
    known_secrets_searched: int = 0
    notes: tuple[str, ...] = field(default=())

    def failing(self, threshold: Severity) -> list[Finding]:
        return [f for f in failing(self.findings, threshold) if isinstance(f, Finding)]

    @property
    def worst(self) -> Severity | None:
        return worst(self.findings)

    def to_json(self) -> dict[str, Any]:
        top = self.worst
        return {
            "size": self.size,
            "chip": self.chip,
            "worst": top.label if top is not None else None,
            "known_secrets_searched": self.known_secrets_searched,
            "findings": [f.to_json() for f in self.findings],
            "entropy": self.entropy.to_json(),
            "notes": list(self.notes),
        }


def scan_flash(
    data: bytes,
    *,
    chip: ChipFacts | None = None,
    known_secrets: Sequence[KnownSecret] = (),
) -> FlashReport:
    """Audit a raw flash dump. ``chip`` is recorded in the report; every supported
    chip's bootloader offset is checked regardless, so a wrong ``chip`` cannot hide a
    plaintext bootloader."""
    if not data:
        raise InputError("the flash dump is empty: read it with `esptool read-flash 0 <size>`")
    bootloader_offsets = tuple(sorted({c.bootloader_offset for c in CHIPS.values()}))
    findings = [
        *scan_secrets(data),
        *scan_known_secrets(data, known_secrets),
        *scan_plaintext_structures(data, bootloader_offsets),
    ]
    emap = entropy_map(data)
    findings += _unexplained_plaintext(emap, findings)
    findings.sort(key=lambda f: (f.offset, -f.severity, f.kind))
    notes = []
    if emap.blocks and all(b.cls is BlockClass.ERASED for b in emap.blocks):
        notes.append("the dump is entirely erased (0xFF): nothing was written to this flash")
    return FlashReport(
        size=len(data),
        chip=chip.name if chip else None,
        findings=tuple(findings),
        entropy=emap,
        known_secrets_searched=len(known_secrets),
        notes=tuple(notes),
    )


def _unexplained_plaintext(emap: EntropyMap, findings: Sequence[Finding]) -> list[Finding]:
    """Plaintext-looking runs that no other finding already accounts for."""
    explained = [(f.offset, f.offset + max(f.length, 1)) for f in findings]
    out = []
    for start, length, cls in emap.runs():
        if cls is not BlockClass.PLAINTEXT:
            continue
        end = start + length
        if any(s < end and start < e for s, e in explained):
            continue
        out.append(
            Finding(
                Severity.LOW,
                "plaintext-region",
                start,
                length,
                f"{length // 1024} KB of low-entropy data that does not look encrypted",
                _FIX_REGION,
            )
        )
    return out
