"""espfleet.audit: what a flash read-out gives away, and whether the eFuses lock the chip.

Pure cores over bytes and eFuse snapshots:

* :func:`scan_flash` (flash dump -> :class:`FlashReport`: findings + entropy map),
* :func:`audit_efuses` (eFuse snapshot + mode -> :class:`EfuseReport`),

and the edges that feed them: :func:`read_efuse_file` / :func:`read_efuse_port`
(through espefuse) and ``espfleet.audit.workspace_secrets.workspace_secrets`` (the
exact secret bytes a fleet workspace knows, as :class:`KnownSecret`).

Names load on first use (numpy, esptool and the provisioning plan are behind them),
so ``espfleet --help``, which imports the audit command for its summary, stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from espfleet.audit.efuse_posture import EfuseReport, audit_efuses
    from espfleet.audit.efuse_source import read_efuse_file, read_efuse_port
    from espfleet.audit.entropy import BlockClass, EntropyMap, entropy_map
    from espfleet.audit.findings import EfuseFinding, Finding, Severity
    from espfleet.audit.flash_scan import FlashReport, scan_flash
    from espfleet.audit.known_secrets import KnownSecret

#: public name -> the submodule that defines it
_HOMES = {
    "EfuseReport": "efuse_posture",
    "audit_efuses": "efuse_posture",
    "read_efuse_file": "efuse_source",
    "read_efuse_port": "efuse_source",
    "BlockClass": "entropy",
    "EntropyMap": "entropy",
    "entropy_map": "entropy",
    "EfuseFinding": "findings",
    "Finding": "findings",
    "Severity": "findings",
    "FlashReport": "flash_scan",
    "scan_flash": "flash_scan",
    "KnownSecret": "known_secrets",
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
