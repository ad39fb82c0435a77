"""Pin the public surface of the partition table, otadata, NVS and nvs_keys codecs."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

SURFACES = {
    "espfleet.formats.partition_table": {
        "APP", "DATA", "MAX_ENTRIES", "SUBTYPES", "TABLE_LENGTH", "TYPES", "Partition",
        "PartitionTable", "decode", "default_secure_table", "from_csv", "parse_size",
        "subtype_name", "type_name",
    },
    "espfleet.formats.otadata": {
        "OTADATA_SIZE", "SECTOR_SIZE", "OtaData", "OtaSelectEntry", "OtaState", "blank",
        "boot_slot", "bootloader_step", "decode", "select", "set_state",
    },
    "espfleet.formats.nvs": {
        "MAX_KEY_LENGTH", "MIN_SIZE", "NVS_TYPES", "NvsValue", "from_json", "read", "to_json",
        "write",
    },
    "espfleet.formats.nvs_keys": {"KEY_SIZE", "PARTITION_SIZE", "NvsKeys", "decode", "generate"},
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(SURFACES))
def test_surface(module: str) -> None:
    m = importlib.import_module(module)
    assert set(m.__all__) == SURFACES[module]
    for name in m.__all__:
        assert hasattr(m, name), f"{module}.{name}"


@pytest.mark.parametrize(
    "module",
    [*sorted(SURFACES), "espfleet.formats._nvs_reader", "espfleet.formats._partition_rules"],
)
def test_formats_import_no_device_backend_or_cli_code(module: str) -> None:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    imported: set[str] = set()
    for node in ast.walk(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    forbidden = ("espfleet.device", "espfleet.backend", "espfleet.cli", "espfleet.provisioning")
    assert not [name for name in imported if name.startswith(forbidden)]
