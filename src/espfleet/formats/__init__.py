"""espfleet.formats: pure codecs for what ESP32 chips keep in flash and eFuse.

Bytes in, bytes or values out; no file, device or network I/O. One module per
format, each with its own ``__all__``::

    from espfleet.formats import partition_table, flash_encryption

Submodules load on first use (``espfleet.formats.nvs`` works after a bare
``import espfleet.formats``), so importing the package stays cheap for the CLI.
Modules whose names start with ``_`` are implementation details.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from espfleet.formats import (
        app_image,
        efuse,
        flash_encryption,
        nvs,
        nvs_keys,
        otadata,
        partition_table,
        secure_boot,
    )

__all__ = [
    "app_image",
    "efuse",
    "flash_encryption",
    "nvs",
    "nvs_keys",
    "otadata",
    "partition_table",
    "secure_boot",
]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
