"""A device bundle: ``bundles/<device-id>/`` with the flash images, their offsets and
``manifest.json``, the contract between ``espfleet provision`` and ``espfleet flash``.

``manifest.json`` (``v`` 1)::

    {"v": 1, "device_id", "chip", "mode", "mac", "flash_size", "key_policy",
     "artifacts": [{"name", "file", "offset", "size", "sha256", "encrypted"}],
     "merged": {"name", "file", "offset", "size", "sha256", "encrypted"} | null,
     "efuse_plan": EfusePlan.to_json(),
     "certificate": {"serial", "fingerprint_sha256", "not_after"},
     "key_fingerprints": {"flash_encryption_key_sha256", "nvs_keys_sha256",
                          "secure_boot_digest"},
     "firmware": {"project_name", "version", "secure_version", "app_sha256"}}

It never holds a key: fingerprints are SHA-256 of the keys, and ``secure_boot_digest``
is the public-key digest burned into eFuse. Under the ``destroy`` key policy the
bundle also carries ``secrets/device.sealed`` (vault-sealed, mode 0600) until the
device is flashed and verified.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from espfleet.chips import chip_facts
from espfleet.device_id import format_mac, parse_device_id, parse_mac
from espfleet.errors import InputError, ProvisioningError
from espfleet.provisioning.efuse_plan import EfusePlan, Mode
from espfleet.provisioning.vault import shred

__all__ = [
    "MANIFEST_NAME",
    "MERGED_NAME",
    "SEALED_SECRETS",
    "Artifact",
    "Bundle",
    "CertificateInfo",
    "FirmwareInfo",
    "KeyFingerprints",
    "KeyPolicy",
    "Manifest",
    "load_bundle",
    "merge_images",
    "wipe_secrets",
    "write_bundle",
]

MANIFEST_NAME = "manifest.json"
SECRETS_DIR = "secrets"
SEALED_SECRETS = f"{SECRETS_DIR}/device.sealed"
MERGED_NAME = "merged.bin"
KeyPolicy = Literal["escrow", "destroy"]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Artifact:
    """One flash image of a bundle, written at ``offset`` exactly as stored."""

    name: str
    file: str
    offset: int
    size: int
    sha256: str
    encrypted: bool

    def __post_init__(self) -> None:
        if not self.file or "/" in self.file or self.file.startswith("."):
            raise ProvisioningError(f"artifact file name {self.file!r} is not a plain file name")
        if self.offset < 0 or self.offset % 0x1000:
            raise ProvisioningError(
                f"artifact {self.name} offset {self.offset:#x} is not 4 KB aligned"
            )
        if self.size <= 0 or len(self.sha256) != 64:
            raise ProvisioningError(f"artifact {self.name} has no size or sha256")

    @classmethod
    def of(cls, name: str, offset: int, data: bytes, *, encrypted: bool) -> Artifact:
        return cls(name, f"{name}.bin", offset, len(data), _sha256(data), encrypted)

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class CertificateInfo:
    serial: str
    fingerprint_sha256: str
    not_after: str


@dataclass(frozen=True)
class KeyFingerprints:
    flash_encryption_key_sha256: str
    nvs_keys_sha256: str
    #: Hex of the Secure Boot V2 public-key digest (public: it is burned readable).
    secure_boot_digest: str


@dataclass(frozen=True)
class FirmwareInfo:
    project_name: str
    version: str
    secure_version: int
    app_sha256: str


@dataclass(frozen=True)
class Manifest:
    device_id: str
    chip: str
    mode: Mode
    mac: str
    flash_size: str
    key_policy: KeyPolicy
    artifacts: tuple[Artifact, ...]
    efuse_plan: EfusePlan
    certificate: CertificateInfo
    key_fingerprints: KeyFingerprints
    firmware: FirmwareInfo
    merged: Artifact | None = None

    def __post_init__(self) -> None:
        did = parse_device_id(self.device_id)
        chip_facts(self.chip)
        object.__setattr__(self, "mac", format_mac(parse_mac(self.mac)))
        if did.mac is not None and (did.chip, did.mac) != (self.chip, parse_mac(self.mac)):
            raise ProvisioningError(
                f"manifest device id {self.device_id} does not match chip {self.chip} and "
                f"MAC {self.mac}"
            )
        if (self.efuse_plan.chip, self.efuse_plan.mode) != (self.chip, self.mode):
            raise ProvisioningError("the manifest's eFuse plan is for another chip or mode")
        if self.key_policy not in ("escrow", "destroy"):
            raise ProvisioningError(f"unknown key policy {self.key_policy!r}")
        ordered = sorted(self.artifacts, key=lambda a: a.offset)
        for before, after in itertools.pairwise(ordered):
            if before.end > after.offset:
                raise ProvisioningError(
                    f"artifacts {before.name} and {after.name} overlap at {after.offset:#x}"
                )
        if len({a.file for a in self.artifacts}) != len(self.artifacts):
            raise ProvisioningError("two artifacts share a file name")

    def artifact(self, name: str) -> Artifact:
        for art in self.artifacts:
            if art.name == name:
                return art
        raise InputError(f"bundle of {self.device_id} has no artifact {name!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "v": 1,
            "device_id": self.device_id,
            "chip": self.chip,
            "mode": self.mode,
            "mac": self.mac,
            "flash_size": self.flash_size,
            "key_policy": self.key_policy,
            "artifacts": [vars(a) for a in self.artifacts],
            "merged": vars(self.merged) if self.merged else None,
            "efuse_plan": self.efuse_plan.to_json(),
            "certificate": vars(self.certificate),
            "key_fingerprints": vars(self.key_fingerprints),
            "firmware": vars(self.firmware),
        }

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Manifest:
        try:
            if obj.get("v") != 1:
                raise ValueError(f"unsupported manifest version {obj.get('v')!r}")
            return cls(
                device_id=obj["device_id"],
                chip=obj["chip"],
                mode=obj["mode"],
                mac=obj["mac"],
                flash_size=obj["flash_size"],
                key_policy=obj["key_policy"],
                artifacts=tuple(Artifact(**a) for a in obj["artifacts"]),
                efuse_plan=EfusePlan.from_json(obj["chip"], obj["mode"], obj["efuse_plan"]),
                certificate=CertificateInfo(**obj["certificate"]),
                key_fingerprints=KeyFingerprints(**obj["key_fingerprints"]),
                firmware=FirmwareInfo(**obj["firmware"]),
                merged=Artifact(**obj["merged"]) if obj.get("merged") else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError, InputError) as error:
            # InputError: a field the constructors refuse (MAC, device id, chip, mode),
            # whose own advice is for typed input, not for a damaged file
            raise ProvisioningError(
                f"manifest is malformed ({error!r}): rebuild the bundle with `espfleet provision`"
            ) from None

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        try:
            obj = json.loads(data)
        except ValueError as error:
            raise ProvisioningError(f"manifest is not JSON: {error}") from None
        if not isinstance(obj, dict):
            raise ProvisioningError("manifest is not a JSON object")
        return cls.from_json(obj)


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle whose every image matched its manifest sha256."""

    path: Path
    manifest: Manifest
    images: Mapping[str, bytes]
    merged: bytes | None
    #: ``secrets/device.sealed`` under the destroy policy, until wiped.
    sealed_secrets: bytes | None

    def image(self, name: str) -> bytes:
        return self.images[self.manifest.artifact(name).name]

    def flash_layout(self) -> list[tuple[int, bytes]]:
        """``(offset, image)`` pairs in offset order, as esptool write-flash takes them."""
        return [(a.offset, self.images[a.name]) for a in sorted(
            self.manifest.artifacts, key=lambda a: a.offset)]


def merge_images(artifacts: Mapping[Artifact, bytes]) -> bytes:
    """One image from offset 0 to the end of the last artifact, gaps 0xFF (erased flash)."""
    end = max(a.end for a in artifacts)
    out = bytearray(b"\xff" * end)
    for art, data in artifacts.items():
        out[art.offset : art.end] = data
    return bytes(out)


def write_bundle(
    directory: Path,
    manifest: Manifest,
    images: Mapping[str, bytes],
    *,
    merged: bytes | None = None,
    sealed_secrets: bytes | None = None,
) -> None:
    """Fill ``directory`` (a temporary one from ``atomic_directory``) with a bundle.

    Files are written plainly: the bundle becomes visible only when ``atomic_directory``
    renames the whole directory, so no reader ever sees a half-written file. They are
    not fsynced one by one (that was a third of the per-device cost); the batch runner
    syncs once before it records the device, and ``load_bundle`` checks every sha256.
    """
    directory = Path(directory)
    if set(images) != {a.name for a in manifest.artifacts}:
        raise ProvisioningError("bundle images and manifest artifacts differ")
    for art in manifest.artifacts:
        if _sha256(images[art.name]) != art.sha256:
            raise ProvisioningError(f"artifact {art.name} does not match its manifest entry")
        _write_new(directory / art.file, images[art.name])
    if (merged is None) != (manifest.merged is None):
        raise ProvisioningError("merged image and manifest disagree")
    if merged is not None and manifest.merged is not None:
        _write_new(directory / manifest.merged.file, merged)
    if sealed_secrets is not None:
        (directory / SECRETS_DIR).mkdir(mode=0o700, exist_ok=True)
        _write_new(directory / SEALED_SECRETS, sealed_secrets, 0o600)
    _write_new(directory / MANIFEST_NAME, manifest.encode())


def _write_new(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def load_bundle(path: Path) -> Bundle:
    """Load ``bundles/<device-id>/``, verifying every image against the manifest."""
    path = Path(path)
    try:
        manifest = Manifest.decode((path / MANIFEST_NAME).read_bytes())
    except FileNotFoundError:
        raise InputError(
            f"{path} is not a bundle (no {MANIFEST_NAME}): run `espfleet provision` first"
        ) from None
    images = {a.name: _read_verified(path, a) for a in manifest.artifacts}
    merged = _read_verified(path, manifest.merged) if manifest.merged else None
    sealed_path = path / SEALED_SECRETS
    sealed = sealed_path.read_bytes() if sealed_path.exists() else None
    return Bundle(path, manifest, images, merged, sealed)


def _read_verified(path: Path, art: Artifact) -> bytes:
    try:
        data = (path / art.file).read_bytes()
    except FileNotFoundError:
        raise ProvisioningError(
            f"bundle {path.name} lacks {art.file}: rebuild it with `espfleet provision`"
        ) from None
    if len(data) != art.size or _sha256(data) != art.sha256:
        raise ProvisioningError(
            f"{path / art.file} does not match its manifest sha256: the bundle was modified "
            "or damaged; do not flash it, rebuild it with `espfleet provision`"
        )
    return data


def wipe_secrets(path: Path) -> None:
    """Overwrite and delete the bundle's sealed secrets (destroy policy, after flashing)."""
    secrets_dir = Path(path) / SECRETS_DIR
    if secrets_dir.is_symlink():  # never follow it: it could name any directory
        secrets_dir.unlink()
        return
    if not secrets_dir.exists():
        return
    for item in secrets_dir.iterdir():
        shred(item)
    shutil.rmtree(secrets_dir)
