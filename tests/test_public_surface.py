"""Pin the public surface: a change to any __all__ must be deliberate."""

from __future__ import annotations

import importlib

import espfleet
import espfleet.chips
import espfleet.errors


def test_top_level_surface() -> None:
    assert sorted(espfleet.__all__) == ["EspfleetError", "FormatError", "InputError", "__version__"]


def test_errors_surface_has_one_root() -> None:
    for name in espfleet.errors.__all__:
        cls = getattr(espfleet.errors, name)
        assert issubclass(cls, espfleet.errors.EspfleetError), name


def test_chips_surface() -> None:
    assert set(espfleet.chips.__all__) == {
        "CHIPS", "ChipFacts", "EncryptionScheme", "SecureBootScheme", "chip_facts", "chip_names"
    }


def test_every_all_name_exists() -> None:
    for mod in ("espfleet", "espfleet.errors", "espfleet.chips", "espfleet.cli"):
        m = importlib.import_module(mod)
        for name in m.__all__:
            assert hasattr(m, name), f"{mod}.{name}"
