"""Pin the public surface of espfleet.formats: the package and every codec module."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import subprocess
import sys
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
    "espfleet.formats.app_image": {
        "APP_DESC_MAGIC", "AppDescriptor", "AppImage", "Segment", "build_app",
        "build_bootloader", "parse",
    },
    "espfleet.formats.efuse": {"DigestSlot", "EfuseImage", "FieldDef", "field_names"},
    "espfleet.formats.flash_encryption": {"decrypt", "encrypt", "key_lengths"},
    "espfleet.formats.secure_boot": {
        "PrivateKey", "PublicKey", "SECTOR_SIZE", "SIGNATURE_BLOCK_SIZE", "Scheme",
        "SignatureBlock", "generate_signing_key", "load_private_key", "public_key_digest",
        "sign", "signature_blocks", "signed_length", "verify", "verify_with_digests",
    },
}  # fmt: skip
#: Every module of the package, public and private, as on disk.
MODULES = sorted(
    f"espfleet.formats.{info.name}"
    for info in pkgutil.iter_modules(importlib.import_module("espfleet.formats").__path__)
)


def test_package_exports_exactly_its_public_codec_modules() -> None:
    import espfleet.formats as formats

    public = {m.rsplit(".", 1)[1] for m in MODULES if not m.rsplit(".", 1)[1].startswith("_")}
    assert set(formats.__all__) == public == {m.rsplit(".", 1)[1] for m in SURFACES}
    for name in formats.__all__:
        assert getattr(formats, name) is importlib.import_module(f"espfleet.formats.{name}")
    assert set(formats.__all__) <= set(dir(formats))
    with pytest.raises(AttributeError):
        formats._aes_vec_not_a_module  # noqa: B018


def test_package_import_loads_no_codec_until_used() -> None:
    """``import espfleet.formats`` stays cheap: numpy, espefuse and friends load on use."""
    code = (
        "import sys, espfleet.formats as f\n"
        "print(sorted(m for m in sys.modules if m.startswith('espfleet.formats.')))\n"
        "f.otadata\n"
        "print(sorted(m for m in sys.modules if m.startswith('espfleet.formats.')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines() == ["[]", "['espfleet.formats.otadata']"]


@pytest.mark.parametrize("module", sorted(SURFACES))
def test_surface(module: str) -> None:
    m = importlib.import_module(module)
    assert set(m.__all__) == SURFACES[module]
    for name in m.__all__:
        assert hasattr(m, name), f"{module}.{name}"


@pytest.mark.parametrize("module", MODULES)
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
