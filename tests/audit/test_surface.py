"""Pin espfleet.audit's public surface: a change to it must be deliberate."""

from __future__ import annotations

import espfleet.audit


def test_audit_surface() -> None:
    assert sorted(espfleet.audit.__all__) == [
        "BlockClass", "EfuseFinding", "EfuseReport", "EntropyMap", "Finding", "FlashReport",
        "KnownSecret", "Severity", "audit_efuses", "entropy_map", "read_efuse_file",
        "read_efuse_port", "scan_flash",
    ]
    for name in espfleet.audit.__all__:
        assert hasattr(espfleet.audit, name), name


def test_severity_parse_and_order() -> None:
    import pytest

    from espfleet.audit import Severity
    from espfleet.errors import InputError

    assert Severity.parse(" High ") is Severity.HIGH
    assert Severity.CRITICAL > Severity.HIGH > Severity.MEDIUM > Severity.LOW > Severity.INFO
    with pytest.raises(InputError, match="use one of info, low, medium, high, critical"):
        Severity.parse("urgent")
