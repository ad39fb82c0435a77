"""Shared fixtures. Espressif's vectors live in ../shared/vectors/espressif (CI has
shared/ beside the checkout)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO.parent / "shared" / "vectors" / "espressif"


@pytest.fixture(scope="session")
def vectors() -> Path:
    """Directory of Espressif's reference binaries and keys."""
    if not VECTORS.is_dir():
        pytest.fail(f"Espressif vectors not found at {VECTORS}: check out shared/ beside the repo")
    return VECTORS


@pytest.fixture(autouse=True)
def _quiet_esptool() -> None:
    from esptool.logger import log

    log.set_verbosity("silent")
