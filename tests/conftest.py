"""Shared fixtures. Espressif's vectors live in ../shared/vectors/espressif (CI has
shared/ beside the checkout)."""

from __future__ import annotations

from collections.abc import Callable
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


# --- fleet workspace fixtures (espfleet.workspace) --------------------------------------

FLEET_PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="session")
def _fleet_workspace_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from espfleet.workspace import Workspace

    path = tmp_path_factory.mktemp("fleet-template") / "fleet"
    Workspace.create(path, org="Test Fleet", passphrase=FLEET_PASSPHRASE.encode())
    return path


@pytest.fixture
def fleet_workspace(
    _fleet_workspace_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A fresh copy of an initialised workspace (org "Test Fleet", esp32, escrow);
    ESPFLEET_PASSPHRASE is set to :data:`FLEET_PASSPHRASE` and ESPFLEET_WORKSPACE to it."""
    import shutil

    path = tmp_path / "fleet"
    shutil.copytree(_fleet_workspace_template, path)
    monkeypatch.setenv("ESPFLEET_PASSPHRASE", FLEET_PASSPHRASE)
    monkeypatch.setenv("ESPFLEET_WORKSPACE", str(path))
    return path


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file (and "dir" for directories) under ``root``:
    compare before/after to prove an operation changed nothing on disk."""
    import hashlib

    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (
            "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        )
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def snapshot() -> Callable[[Path], dict[str, str]]:
    """``snapshot(path)`` -> tree digest (see :func:`tree_digest`)."""
    return tree_digest
