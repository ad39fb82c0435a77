"""espfleet.audit: what a flash read-out gives away, and whether the eFuses lock the chip.

Pure cores over bytes and eFuse snapshots:

* :func:`scan_flash` (flash dump -> :class:`FlashReport`: findings + entropy map),
* :func:`audit_efuses` (eFuse snapshot + mode -> :class:`EfuseReport`),

and the edges that feed them: :func:`read_efuse_file` / :func:`read_efuse_port`
(through espefuse) and ``espfleet.audit.workspace_secrets.workspace_secrets`` (the
exact secret bytes a fleet workspace knows, as :class:`KnownSecret`).
"""

from __future__ import annotations

from espfleet.audit.efuse_posture import EfuseReport, audit_efuses
from espfleet.audit.efuse_source import read_efuse_file, read_efuse_port
from espfleet.audit.entropy import BlockClass, EntropyMap, entropy_map
from espfleet.audit.findings import EfuseFinding, Finding, Severity
from espfleet.audit.flash_scan import FlashReport, scan_flash
from espfleet.audit.known_secrets import KnownSecret

__all__ = [
    "BlockClass",
    "EfuseFinding",
    "EfuseReport",
    "EntropyMap",
    "Finding",
    "FlashReport",
    "KnownSecret",
    "Severity",
    "audit_efuses",
    "entropy_map",
    "read_efuse_file",
    "read_efuse_port",
    "scan_flash",
]
