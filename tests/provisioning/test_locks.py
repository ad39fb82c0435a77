"""The device lock shared by `espfleet flash` and `espfleet provision` (``bundles/<id>/``):
a bundle is replaced by rename, so a lock on the old directory must not be taken for a
lock on the new one; leftovers are removed only under the lock."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from espfleet.errors import FlashError, ProvisioningError
from espfleet.provisioning import locks
from espfleet.provisioning.batch import clean_leftovers
from espfleet.provisioning.flash_journal import JOURNAL_NAME, FlashJournal
from espfleet.provisioning.vault import DeviceSecrets, Vault

PASS = b"correct horse battery staple"
DEVICE = "esp32-24a1600a1b2c"


def test_lock_is_exclusive_across_open_descriptions(tmp_path: Path) -> None:
    busy = ProvisioningError("busy")
    with (
        locks.directory_lock(tmp_path, busy),
        pytest.raises(ProvisioningError, match="busy"),
        locks.directory_lock(tmp_path, busy),
    ):
        pytest.fail("a second lock was granted")
    with locks.directory_lock(tmp_path, busy):  # released: granted again
        pass


def test_bundle_renamed_over_while_locking_is_refused_not_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provision rebuild swaps the directory between flash's open() and flock(): the
    lock then holds the removed directory, which guards nothing."""
    bundle = tmp_path / DEVICE
    bundle.mkdir()
    flock = fcntl.flock

    def swap_then_flock(fd: int, operation: int) -> None:
        os.rename(bundle, tmp_path / "old")
        bundle.mkdir()
        flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", swap_then_flock)
    journal = FlashJournal(bundle / JOURNAL_NAME, DEVICE)
    with pytest.raises(FlashError, match="was replaced or removed"), journal.exclusive():
        pytest.fail("a lock on the replaced directory was granted")


def test_bundle_removed_before_flash_locks_it_is_refused(tmp_path: Path) -> None:
    journal = FlashJournal(tmp_path / DEVICE / JOURNAL_NAME, DEVICE)
    with pytest.raises(FlashError, match="was replaced or removed"), journal.exclusive():
        pytest.fail("a lock on a missing directory was granted")


@pytest.fixture
def orphan(tmp_path: Path) -> tuple[Path, Vault]:
    """An unrecorded bundle and its vault entry, as an interrupted run leaves them."""
    vault = Vault.open(tmp_path / "vault", PASS)
    vault.store(DEVICE, DeviceSecrets(os.urandom(32), os.urandom(64), "recovery"))
    bundles = tmp_path / "bundles"
    (bundles / DEVICE).mkdir(parents=True)
    (bundles / DEVICE / "manifest.json").write_text("{}")
    return bundles, vault


def test_leftover_bundle_being_flashed_keeps_bundle_and_vault_key(
    orphan: tuple[Path, Vault],
) -> None:
    bundles, vault = orphan
    with FlashJournal(bundles / DEVICE / JOURNAL_NAME, DEVICE).exclusive():
        assert clean_leftovers(bundles, [DEVICE], vault) == []
    assert (bundles / DEVICE / "manifest.json").exists() and vault.contains(DEVICE)


def test_leftover_bundle_not_being_flashed_is_removed_with_its_vault_key(
    orphan: tuple[Path, Vault],
) -> None:
    bundles, vault = orphan
    assert clean_leftovers(bundles, [DEVICE], vault) == [DEVICE]
    assert not (bundles / DEVICE).exists() and not vault.contains(DEVICE)
