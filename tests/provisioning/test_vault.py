"""The key vault: sealed at rest, bound to the device id, refuses a wrong passphrase."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from espfleet.errors import InputError, PassphraseError, ProvisioningError
from espfleet.provisioning.vault import DeviceSecrets, Vault, shred

DEV = "esp32-02aabbccdd01"
OTHER = "esp32-02aabbccdd02"


def _secrets() -> DeviceSecrets:
    return DeviceSecrets(os.urandom(32), os.urandom(64), "r3cov3ry-s3cret", "wifi-pass-123")


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Vault:
    return Vault.open(tmp_path_factory.mktemp("ws") / "vault", b"correct horse battery")


def test_store_load_round_trip_and_nothing_plaintext_on_disk(vault: Vault) -> None:
    secrets = _secrets()
    vault.store(DEV, secrets)
    assert vault.load(DEV) == secrets
    blob = vault.path_for(DEV).read_bytes()
    for needle in (secrets.flash_encryption_key, secrets.nvs_keys, b"r3cov3ry", b"wifi-pass"):
        assert needle not in blob
    assert vault.path_for(DEV).stat().st_mode & 0o077 == 0
    assert "r3cov3ry" not in repr(secrets)


def test_reopen_with_same_passphrase_reads_secrets(vault: Vault) -> None:
    secrets = _secrets()
    vault.store(DEV, secrets)
    again = Vault.open(vault.directory, b"correct horse battery", create=False)
    assert again.load(DEV) == secrets


def test_wrong_passphrase_is_refused(vault: Vault) -> None:
    with pytest.raises(PassphraseError, match="does not open the key vault"):
        Vault.open(vault.directory, b"wrong horse battery")


def test_swapped_sealed_file_for_another_device_is_refused(vault: Vault) -> None:
    vault.store(DEV, _secrets())
    vault.path_for(OTHER).write_bytes(vault.path_for(DEV).read_bytes())
    with pytest.raises(ProvisioningError, match="belong to another device"):
        vault.load(OTHER)


def test_tampered_sealed_file_is_refused(vault: Vault) -> None:
    vault.store(DEV, _secrets())
    blob = bytearray(vault.path_for(DEV).read_bytes())
    blob[-1] ^= 1
    vault.path_for(DEV).write_bytes(bytes(blob))
    with pytest.raises(ProvisioningError, match="tampered"):
        vault.load(DEV)


def test_destroy_wipes_and_load_then_explains(vault: Vault) -> None:
    vault.store(DEV, _secrets())
    vault.destroy(DEV)
    vault.destroy(DEV)
    assert not vault.contains(DEV)
    with pytest.raises(InputError, match="destroy policy"):
        vault.load(DEV)


def test_bad_secret_lengths_are_refused() -> None:
    with pytest.raises(ProvisioningError, match="64 bytes"):
        DeviceSecrets(os.urandom(32), os.urandom(32), "x")
    with pytest.raises(ProvisioningError, match="flash-encryption key"):
        DeviceSecrets(os.urandom(31), os.urandom(64), "x")


@settings(max_examples=25)
@given(
    fe=st.sampled_from([24, 32, 64]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    nvs=st.binary(min_size=64, max_size=64),
    rec=st.text(min_size=1),
    wifi=st.none() | st.text(),
)
def test_seal_unseal_round_trip(
    vault: Vault, fe: bytes, nvs: bytes, rec: str, wifi: str | None
) -> None:
    secrets = DeviceSecrets(fe, nvs, rec, wifi)
    assert vault.unseal(DEV, vault.seal(DEV, secrets)) == secrets


def test_missing_vault_without_create(tmp_path: Path) -> None:
    with pytest.raises(ProvisioningError, match="no key vault"):
        Vault.open(tmp_path / "vault", b"whatever123", create=False)


def test_disk_readout_after_shred_finds_no_sealed_bytes(tmp_path: Path) -> None:
    """shred overwrites the file's own blocks before unlinking it: a second link to the
    same inode (what a disk read-out would still see) no longer holds the sealed bytes."""
    sealed = tmp_path / "device.sealed"
    sealed.write_bytes(b"SEALED-SECRET" * 100)
    other_link = tmp_path / "readout"
    os.link(sealed, other_link)
    shred(sealed)
    shred(sealed)  # idempotent
    assert not sealed.exists()
    left = other_link.read_bytes()
    assert len(left) == 1300 and b"SEALED-SECRET" not in left


def test_symlinked_sealed_file_does_not_make_shred_overwrite_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"not a secret of espfleet")
    link = tmp_path / "device.sealed"
    link.symlink_to(victim)
    shred(link)
    assert not link.is_symlink()
    assert victim.read_bytes() == b"not a secret of espfleet"
