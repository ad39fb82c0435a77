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


def test_audit_command_import_loads_no_scanner() -> None:
    """``espfleet --help`` imports the audit command for its summary: that must not load
    numpy, esptool or the provisioning plan behind the scanners (they load on use)."""
    import subprocess
    import sys

    code = (
        "import sys, espfleet.cli.audit_cmd, espfleet.audit as a\n"
        "print(sorted(m for m in ('numpy', 'esptool', 'espfleet.provisioning') "
        "if m in sys.modules))\n"
        "a.scan_flash\n"
        "print('numpy' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.splitlines() == ["[]", "True"]
