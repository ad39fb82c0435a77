"""NVS partitions: written by Espressif's nvs_partition_gen, read by our own decoder.

:func:`write` drives ``esp_idf_nvs_partition_gen`` in-process (page format version 2,
multi-page blobs) and, with :class:`~espfleet.formats.nvs_keys.NvsKeys`, encrypts every
entry as ESP-IDF's NVS encryption does. :func:`read` is espfleet's decoder (the tool has
none): it checks every CRC and reassembles blobs split across pages.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from espfleet.errors import FormatError, InputError
from espfleet.formats._nvs_reader import PAGE_SIZE, PRIMITIVES, decode_items
from espfleet.formats.nvs_keys import NvsKeys

__all__ = [
    "MAX_KEY_LENGTH",
    "MIN_SIZE",
    "NVS_TYPES",
    "NvsValue",
    "from_json",
    "read",
    "to_json",
    "write",
]

NVS_TYPES = (*PRIMITIVES, "string", "blob")
MAX_KEY_LENGTH = 15
MAX_NAMESPACES = 254
#: A read/write NVS needs two data pages and one page kept free for garbage collection.
MIN_SIZE = 3 * PAGE_SIZE
MAX_STRING = 4000  # bytes including the terminating NUL (page format version 2)
_INT_BITS = {name: (int(name[1:]), name.startswith("i")) for name in PRIMITIVES}


@dataclass(frozen=True)
class NvsValue:
    """A typed NVS value: ``NvsValue("u32", 7)``, ``NvsValue("string", "x")``,
    ``NvsValue("blob", b"...")``."""

    type: str
    value: int | str | bytes

    def __post_init__(self) -> None:
        if self.type not in NVS_TYPES:
            raise InputError(f"unknown NVS type {self.type!r}; use one of {', '.join(NVS_TYPES)}")
        if self.type in _INT_BITS:
            bits, signed = _INT_BITS[self.type]
            low, high = (
                (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
            )
            if isinstance(self.value, bool) or not isinstance(self.value, int):
                raise InputError(f"NVS {self.type} value must be an int, got {self.value!r}")
            if not low <= self.value <= high:
                raise InputError(f"NVS {self.type} value {self.value} is outside {low}..{high}")
        elif self.type == "string":
            if not isinstance(self.value, str):
                raise InputError(f"NVS string value must be str, got {type(self.value).__name__}")
            raw = self.value.encode("utf-8")
            if b"\x00" in raw or len(raw) + 1 > MAX_STRING:
                raise InputError(
                    f"NVS string must be at most {MAX_STRING - 1} UTF-8 bytes without NUL; "
                    "store longer data as a blob"
                )
        elif not isinstance(self.value, bytes):
            raise InputError(f"NVS blob value must be bytes, got {type(self.value).__name__}")

    def to_json(self) -> dict[str, Any]:
        value = self.value.hex() if isinstance(self.value, bytes) else self.value
        return {"type": self.type, "value": value}


def _check_name(name: str, what: str) -> None:
    raw = name.encode("utf-8") if isinstance(name, str) else b""
    if not raw or len(raw) > MAX_KEY_LENGTH or b"\x00" in raw:
        raise InputError(f"NVS {what} {name!r} must be 1 to {MAX_KEY_LENGTH} bytes without NUL")


def _check_size(size: int) -> None:
    if size % PAGE_SIZE or size < MIN_SIZE:
        raise InputError(
            f"NVS partition size {size:#x} must be a multiple of 0x1000 and at least "
            f"{MIN_SIZE:#x} (two data pages and one spare page)"
        )


def write(
    namespaces: Mapping[str, Mapping[str, NvsValue]], size: int, keys: NvsKeys | None = None
) -> bytes:
    """Build an NVS partition image of exactly ``size`` bytes (encrypted with ``keys``).

    Writes through nvs_partition_gen's NVS object directly, so keys such as
    ``sta.ssid`` are stored as given (its ``write_entry`` wrapper would add Wi-Fi
    driver entries of its own).
    """
    from esp_idf_nvs_partition_gen import nvs_partition_gen as gen

    _check_size(size)
    if len(namespaces) > MAX_NAMESPACES:
        raise InputError(f"NVS holds at most {MAX_NAMESPACES} namespaces, got {len(namespaces)}")
    for ns, entries in namespaces.items():
        _check_name(ns, "namespace")
        for key, value in entries.items():
            _check_name(key, f"key in namespace {ns!r}:")
            if not isinstance(value, NvsValue):
                raise InputError(f"NVS {ns}/{key}: expected an NvsValue, got {value!r}")
    out = io.BytesIO()
    try:
        nvs = gen.nvs_open(
            out,
            size - PAGE_SIZE,
            gen.Page.VERSION2,
            is_encrypt=keys is not None,
            key=keys.raw if keys is not None else None,
        )
        for ns, entries in namespaces.items():
            nvs.write_namespace(ns)
            for key, value in entries.items():
                nvs.write_entry(key, *_gen_value(value))
        gen.nvs_close(nvs)
    except (gen.InsufficientSizeError, gen.PageFullError) as error:
        raise InputError(
            f"the NVS data does not fit in a {size:#x}-byte partition ({error or 'page full'}): "
            "make the nvs partition larger or store less"
        ) from None
    except gen.InputError as error:
        raise InputError(f"nvs_partition_gen refused the NVS data: {error}") from None
    image = out.getvalue()
    if len(image) != size:
        raise InputError(f"nvs_partition_gen produced {len(image)} bytes instead of {size:#x}")
    return image


def _gen_value(value: NvsValue) -> tuple[int | str | bytes, str]:
    if value.type == "blob":
        return value.value, "binary"
    return value.value, value.type


def read(data: bytes, keys: NvsKeys | None = None) -> dict[str, dict[str, NvsValue]]:
    """Decode an NVS partition image into ``{namespace: {key: NvsValue}}``.

    Raises :class:`FormatError` naming the page, entry and offset of anything corrupt;
    on an encrypted partition read without ``keys`` the message says keys are needed.
    """
    names, items = decode_items(bytes(data), keys)
    result: dict[str, dict[str, NvsValue]] = {name: {} for name in names.values()}
    for item in sorted(items, key=lambda i: i.offset):
        try:
            result[names[item.ns]][item.key] = NvsValue(item.type, item.value)
        except InputError as error:
            raise FormatError(
                f"NVS entry at offset {item.offset:#x}: {error}", item.offset
            ) from None
    return result


def to_json(namespaces: Mapping[str, Mapping[str, NvsValue]]) -> dict[str, Any]:
    """``{"namespaces": {NS: {KEY: {"type": T, "value": V}}}}``, blobs as lowercase hex."""
    return {
        "namespaces": {
            ns: {key: value.to_json() for key, value in entries.items()}
            for ns, entries in namespaces.items()
        }
    }


def from_json(document: Mapping[str, Any]) -> dict[str, dict[str, NvsValue]]:
    """Inverse of :func:`to_json` (blobs from hex)."""
    try:
        return {
            ns: {
                key: NvsValue(
                    v["type"], bytes.fromhex(v["value"]) if v["type"] == "blob" else v["value"]
                )
                for key, v in entries.items()
            }
            for ns, entries in document["namespaces"].items()
        }
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise FormatError(f"NVS JSON document is malformed: {error!r}") from None
