"""The key vault: each device's flash-encryption key, NVS keys and recovery secret,
encrypted at rest with a key derived from the workspace passphrase.

Layout of ``<workspace>/vault/``::

    kdf.json              scrypt parameters, salt, and a check value for the passphrase
    <device-id>.sealed    AES-256-GCM(kek, nonce, secrets JSON, aad=device id)

The passphrase is stretched once per process (:meth:`Vault.open`); sealing one
device is then one AES-GCM call, so provisioning thousands of devices stays fast.
The device id is the associated data: a sealed file renamed to another device's
name does not open.

Under the ``destroy`` key policy the vault directory keeps only ``kdf.json``: the
secrets are sealed into the bundle's ``secrets/`` folder instead, and wiped once
``espfleet flash`` verified the device (see :func:`espfleet.provisioning.bundle.wipe_secrets`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from espfleet._io import atomic_write
from espfleet.device_id import parse_device_id
from espfleet.errors import InputError, PassphraseError, ProvisioningError

__all__ = ["DeviceSecrets", "Vault", "shred"]

_MAGIC = b"EFV1"
_NONCE_LEN = 12
_KDF_FILE = "kdf.json"
_CHECK_PLAINTEXT = b"espfleet key vault"
#: scrypt cost: about 0.1 s and 32 MB, paid once per process.
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}
_NVS_KEYS_LEN = 64
_FE_KEY_LENGTHS = (24, 32, 64)


@dataclass(frozen=True)
class DeviceSecrets:
    """What a device's bundle cannot be rebuilt or re-flashed without. Never printed."""

    flash_encryption_key: bytes = field(repr=False)
    #: The 64 bytes of the nvs_keys partition (XTS encryption key + tweak key).
    nvs_keys: bytes = field(repr=False)
    recovery_secret: str = field(repr=False)
    wifi_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.flash_encryption_key) not in _FE_KEY_LENGTHS:
            raise ProvisioningError(
                f"a flash-encryption key has {' or '.join(map(str, _FE_KEY_LENGTHS))} bytes, "
                f"got {len(self.flash_encryption_key)}"
            )
        if len(self.nvs_keys) != _NVS_KEYS_LEN:
            raise ProvisioningError(f"nvs_keys has 64 bytes, got {len(self.nvs_keys)}")
        if not self.recovery_secret:
            raise ProvisioningError("a device needs a non-empty recovery secret")

    def to_bytes(self) -> bytes:
        return json.dumps({
            "v": 1,
            "flash_encryption_key": self.flash_encryption_key.hex(),
            "nvs_keys": self.nvs_keys.hex(),
            "recovery_secret": self.recovery_secret,
            "wifi_password": self.wifi_password,
        }, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceSecrets:
        try:
            obj = json.loads(data)
            if obj.get("v") != 1:
                raise ValueError(f"unknown version {obj.get('v')!r}")
            return cls(
                flash_encryption_key=bytes.fromhex(obj["flash_encryption_key"]),
                nvs_keys=bytes.fromhex(obj["nvs_keys"]),
                recovery_secret=str(obj["recovery_secret"]),
                wifi_password=obj.get("wifi_password"),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ProvisioningError(f"sealed device secrets are malformed: {error}") from None


class Vault:
    """Seals and stores device secrets under a key derived from the workspace passphrase."""

    def __init__(self, directory: Path, kek: bytes) -> None:
        if len(kek) != 32:
            raise ProvisioningError("the vault key has 32 bytes")
        self.directory = Path(directory)
        self._aead = AESGCM(kek)

    @classmethod
    def open(cls, directory: Path, passphrase: bytes, *, create: bool = True) -> Vault:
        """Derive the vault key; creates ``kdf.json`` on first use if ``create``.

        Raises :class:`PassphraseError` if ``passphrase`` is not the vault's.
        """
        directory = Path(directory)
        kdf_path = directory / _KDF_FILE
        if not kdf_path.exists():
            if not create:
                raise ProvisioningError(
                    f"no key vault at {directory}: run `espfleet provision` in this workspace"
                )
            salt = os.urandom(16)
            kek = _derive(passphrase, salt, _SCRYPT)
            nonce = os.urandom(_NONCE_LEN)
            check = nonce + AESGCM(kek).encrypt(nonce, _CHECK_PLAINTEXT, None)
            params = {**_SCRYPT, "v": 1, "kdf": "scrypt", "salt": _b64(salt), "check": _b64(check)}
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(kdf_path, json.dumps(params, indent=2).encode(), 0o600)
            return cls(directory, kek)
        try:
            params = json.loads(kdf_path.read_bytes())
            salt = base64.b64decode(params["salt"])
            check = base64.b64decode(params["check"])
            cost = {k: int(params[k]) for k in ("n", "r", "p")}
        except (ValueError, KeyError, TypeError) as error:
            raise ProvisioningError(
                f"{kdf_path} is damaged ({error}): restore it from backup; without it no "
                "sealed secret can be opened"
            ) from None
        kek = _derive(passphrase, salt, cost)
        try:
            AESGCM(kek).decrypt(check[:_NONCE_LEN], check[_NONCE_LEN:], None)
        except InvalidTag:
            raise PassphraseError(
                f"the passphrase does not open the key vault at {directory}: check "
                "ESPFLEET_PASSPHRASE"
            ) from None
        return cls(directory, kek)

    def seal(self, device_id: str, secrets: DeviceSecrets) -> bytes:
        nonce = os.urandom(_NONCE_LEN)
        return _MAGIC + nonce + self._aead.encrypt(nonce, secrets.to_bytes(), device_id.encode())

    def unseal(self, device_id: str, blob: bytes) -> DeviceSecrets:
        if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + _NONCE_LEN + 16:
            raise ProvisioningError(f"the sealed secrets of {device_id} are not a vault file")
        nonce = blob[len(_MAGIC) : len(_MAGIC) + _NONCE_LEN]
        try:
            plain = self._aead.decrypt(nonce, blob[len(_MAGIC) + _NONCE_LEN :], device_id.encode())
        except InvalidTag:
            raise ProvisioningError(
                f"the sealed secrets of {device_id} do not decrypt: they were tampered with, "
                "belong to another device, or were sealed by another workspace"
            ) from None
        return DeviceSecrets.from_bytes(plain)

    def path_for(self, device_id: str) -> Path:
        return self.sealed_path(self.directory, device_id)

    @staticmethod
    def sealed_path(directory: Path, device_id: str) -> Path:
        """Where the vault in ``directory`` keeps ``device_id``'s secrets (no key needed:
        deleting them must not ask for the passphrase)."""
        return Path(directory) / f"{parse_device_id(device_id).value}.sealed"

    def contains(self, device_id: str) -> bool:
        return self.path_for(device_id).exists()

    def store(self, device_id: str, secrets: DeviceSecrets) -> None:
        atomic_write(self.path_for(device_id), self.seal(device_id, secrets), 0o600)

    def load(self, device_id: str) -> DeviceSecrets:
        path = self.path_for(device_id)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise InputError(
                f"the vault holds no keys for {device_id}: under the destroy policy they "
                "were wiped after flashing (the device can only be updated over OTA)"
            ) from None
        return self.unseal(device_id, blob)

    def destroy(self, device_id: str) -> None:
        """Overwrite and delete the device's sealed secrets (idempotent)."""
        shred(self.path_for(device_id))


def shred(path: Path) -> None:
    """Overwrite the file ``path`` with random bytes (synced), then delete it; a missing
    file is fine. A sealed secret is not left readable in the freed blocks. A symlink is
    only removed, never followed: a bundle copied from elsewhere must not make this
    overwrite a file outside it."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(info.st_mode):
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(info.st_size))
            fh.flush()
            os.fsync(fh.fileno())
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _derive(passphrase: bytes, salt: bytes, cost: dict[str, Any]) -> bytes:
    return hashlib.scrypt(
        passphrase, salt=salt, n=cost["n"], r=cost["r"], p=cost["p"], maxmem=2**26, dklen=32
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
