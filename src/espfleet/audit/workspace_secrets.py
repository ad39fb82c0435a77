"""The exact secret bytes a fleet workspace knows, for the flash read-out audit.

Per device (from the vault, or from a destroy-policy bundle's sealed secrets until
they are wiped): the flash-encryption key, the NVS keys (and their two halves), the
recovery secret, the Wi-Fi password, and the device's TLS private key, read from the
bundle's encrypted NVS with those NVS keys. Fleet-wide: the secure boot signing key,
the issuing CA key and the broker/OTA server keys.
A dump that contains any of them, raw or encoded, leaked it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from espfleet.audit.known_secrets import KnownSecret
from espfleet.errors import EspfleetError, InputError
from espfleet.formats import nvs
from espfleet.formats.nvs_keys import NvsKeys
from espfleet.provisioning.bundle import MANIFEST_NAME, Bundle, load_bundle
from espfleet.provisioning.identity import NVS_NAMESPACE, NvsKey
from espfleet.provisioning.vault import DeviceSecrets, Vault
from espfleet.workspace import Workspace
from espfleet.workspace.layout import SERVERS

__all__ = ["WorkspaceSecrets", "workspace_secrets"]


@dataclass(frozen=True)
class WorkspaceSecrets:
    secrets: tuple[KnownSecret, ...]
    devices: tuple[str, ...]
    #: Devices whose secrets could not be read (destroy policy, wiped), with why.
    skipped: tuple[str, ...] = ()


def workspace_secrets(
    workspace: Workspace, passphrase: bytes, device_ids: Sequence[str] = ()
) -> WorkspaceSecrets:
    """Collect every secret of ``device_ids`` (default: every device with a bundle or
    vault entry) and the fleet's signing key. Raises PassphraseError on a wrong one."""
    found: list[KnownSecret] = list(_fleet_keys(workspace, passphrase))
    ids = list(device_ids) or _known_devices(workspace)
    if not ids:  # nothing provisioned yet: only the fleet's own keys are known
        return WorkspaceSecrets(tuple(found), ())
    vault = Vault.open(workspace.vault_dir, passphrase, create=False)
    unknown = [d for d in device_ids
               if not vault.contains(d) and not (workspace.bundles_dir / d).is_dir()]
    if unknown:
        raise InputError(
            f"no device {', '.join(unknown)} in this workspace (no vault entry, no bundle): "
            "check the id (bundles/<device-id>/), or leave out --device to search every "
            "device's secrets"
        )
    skipped: list[str] = []
    for device_id in ids:
        bundle = _bundle(workspace.bundles_dir / device_id, needed=not vault.contains(device_id))
        device = _device_secrets(vault, device_id, bundle)
        if device is None:
            skipped.append(f"{device_id}: no keys in the vault or its bundle (destroy policy)")
            continue
        found.extend(_from_device(device_id, device))
        found.extend(_device_private_key(device_id, device, bundle))
    return WorkspaceSecrets(tuple(found), tuple(ids), tuple(skipped))


def _known_devices(workspace: Workspace) -> list[str]:
    ids = {p.stem for p in workspace.vault_dir.glob("*.sealed")}
    if workspace.bundles_dir.is_dir():
        ids |= {p.parent.name for p in workspace.bundles_dir.glob(f"*/{MANIFEST_NAME}")}
    return sorted(ids)


def _bundle(bundle_dir: Path, *, needed: bool) -> Bundle | None:
    """The device's bundle, loaded (and verified) once for its secrets and its TLS key;
    a damaged one is an error only when it is ``needed`` (the vault has no keys)."""
    if not bundle_dir.is_dir():
        return None
    try:
        return load_bundle(bundle_dir)
    except EspfleetError:
        if needed:
            raise
        return None


def _device_secrets(vault: Vault, device_id: str, bundle: Bundle | None) -> DeviceSecrets | None:
    if vault.contains(device_id):
        return vault.load(device_id)
    if bundle is not None and bundle.sealed_secrets is not None:
        return vault.unseal(device_id, bundle.sealed_secrets)
    return None


def _secret(label: str, value: bytes) -> Iterator[KnownSecret]:
    if len(value) >= KnownSecret.MIN_LENGTH:
        yield KnownSecret(label, value)


def _from_device(device_id: str, device: DeviceSecrets) -> Iterator[KnownSecret]:
    yield from _secret(f"flash-encryption key of {device_id}", device.flash_encryption_key)
    yield from _secret(f"NVS keys of {device_id}", device.nvs_keys)
    half = len(device.nvs_keys) // 2
    yield from _secret(f"NVS encryption key of {device_id}", device.nvs_keys[:half])
    yield from _secret(f"NVS tweak key of {device_id}", device.nvs_keys[half:])
    yield from _secret(f"recovery secret of {device_id}", device.recovery_secret.encode())
    if device.wifi_password:
        yield from _secret(f"Wi-Fi password of {device_id}", device.wifi_password.encode())


def _key_forms(label: str, key: Any) -> Iterator[KnownSecret]:
    """A private key as firmware would embed it: PEM or DER, PKCS#8 or traditional,
    and an EC key's bare private scalar (mbedtls_mpi_read_binary, a key blob in NVS)."""
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        for name, encoding in (("PEM", serialization.Encoding.PEM),
                               ("DER", serialization.Encoding.DER)):
            blob = key.private_bytes(encoding, fmt, serialization.NoEncryption())
            yield from _secret(f"{label} ({name})", blob.strip())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = (key.curve.key_size + 7) // 8
        scalar = key.private_numbers().private_value.to_bytes(size, "big")
        yield from _secret(f"{label} (raw EC scalar)", scalar)


def _private_key_forms(label: str, pem: bytes) -> Iterator[KnownSecret]:
    key = load_pem_private_key(pem, None, unsafe_skip_rsa_key_validation=True)
    yield from _secret(f"{label} (PEM)", pem.strip())
    yield from _key_forms(label, key)


def _device_private_key(
    device_id: str, device: DeviceSecrets, bundle: Bundle | None
) -> Iterator[KnownSecret]:
    """The TLS key provisioning put into the device's encrypted NVS."""
    if bundle is None:
        return
    try:
        keys = NvsKeys.from_raw(device.nvs_keys)
        namespaces = nvs.read(bundle.image("nvs"), keys)
    except (EspfleetError, KeyError):
        return  # no readable identity in this bundle: the other secrets still count
    entry = namespaces.get(NVS_NAMESPACE, {}).get(NvsKey.DEVICE_KEY.value)
    if entry is not None and isinstance(entry.value, str):
        yield from _private_key_forms(f"TLS private key of {device_id}", entry.value.encode())


def _fleet_keys(workspace: Workspace, passphrase: bytes) -> Iterator[KnownSecret]:
    """The fleet's own private keys: secure boot signing, issuing CA, server TLS."""
    yield from _key_forms("fleet secure boot signing key", workspace.signing_key(passphrase))
    with workspace.ca(passphrase) as ca:
        yield from _key_forms("fleet issuing CA key", ca.issuing_key)
    for name in SERVERS:
        key = workspace.server_key(name, passphrase)
        yield from _key_forms(f"fleet {name} server TLS key", key)
