"""Bundle manifest contract: round trip, sha256 verification, no overlaps, secrets wipe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from espfleet._io import atomic_directory
from espfleet.errors import InputError, ProvisioningError
from espfleet.provisioning.bundle import (
    SEALED_SECRETS,
    Artifact,
    CertificateInfo,
    FirmwareInfo,
    KeyFingerprints,
    Manifest,
    load_bundle,
    merge_images,
    wipe_secrets,
    write_bundle,
)
from espfleet.provisioning.efuse_plan import plan_for

DEV = "esp32-02aabbccdd01"


def _manifest(images: dict[str, tuple[int, bytes]], merged: Artifact | None = None) -> Manifest:
    return Manifest(
        device_id=DEV, chip="esp32", mode="release", mac="02:aa:bb:cc:dd:01",
        flash_size="4MB", key_policy="destroy",
        artifacts=tuple(Artifact.of(n, off, d, encrypted=True) for n, (off, d) in images.items()),
        efuse_plan=plan_for("esp32", "release"),
        certificate=CertificateInfo("1a2b", "ab" * 32, "2036-01-01T00:00:00+00:00"),
        key_fingerprints=KeyFingerprints("cd" * 32, "ef" * 32, "01" * 32),
        firmware=FirmwareInfo("app", "1.0.0", 0, "23" * 32),
        merged=merged,
    )


def _images() -> dict[str, tuple[int, bytes]]:
    return {
        "bootloader": (0x1000, os.urandom(0x5000)),
        "partition_table": (0x8000, os.urandom(0xC00)),
    }


def _write(tmp_path: Path, *, sealed: bytes | None = b"SEALED") -> Path:
    images = _images()
    arts = {Artifact.of(n, o, d, encrypted=True): d for n, (o, d) in images.items()}
    merged = merge_images(arts)
    manifest = _manifest(images, Artifact.of("merged", 0, merged, encrypted=True))
    target = tmp_path / "bundles" / DEV
    with atomic_directory(target) as tmp:
        write_bundle(tmp, manifest, {n: d for n, (_, d) in images.items()},
                     merged=merged, sealed_secrets=sealed)
    return target


def test_write_load_round_trip(tmp_path: Path) -> None:
    path = _write(tmp_path)
    bundle = load_bundle(path)
    assert Manifest.decode(bundle.manifest.encode()) == bundle.manifest
    layout = bundle.flash_layout()
    assert [off for off, _ in layout] == [0x1000, 0x8000]
    assert bundle.merged is not None
    for off, data in layout:
        assert bundle.merged[off : off + len(data)] == data
    assert bundle.merged[:0x1000] == b"\xff" * 0x1000
    assert bundle.sealed_secrets == b"SEALED"
    assert (path / SEALED_SECRETS).stat().st_mode & 0o077 == 0


def test_tampered_image_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path)
    data = bytearray((path / "bootloader.bin").read_bytes())
    data[100] ^= 0x01
    (path / "bootloader.bin").write_bytes(bytes(data))
    with pytest.raises(ProvisioningError, match="does not match its manifest sha256"):
        load_bundle(path)


def test_tampered_manifest_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path)
    (path / "manifest.json").write_text('{"v": 1, "device_id": "esp32-02aabbccdd01"}')
    with pytest.raises(ProvisioningError, match="malformed"):
        load_bundle(path)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a bundle"):
        load_bundle(tmp_path)


def test_overlapping_artifacts_are_refused() -> None:
    with pytest.raises(ProvisioningError, match="overlap"):
        _manifest({"bootloader": (0x1000, b"x" * 0x8000), "partition_table": (0x8000, b"y")})


def test_device_id_must_match_mac() -> None:
    with pytest.raises(ProvisioningError, match="does not match chip"):
        Manifest(**{**vars(_manifest(_images())), "mac": "02:aa:bb:cc:dd:02"})


def test_wipe_secrets(tmp_path: Path) -> None:
    path = _write(tmp_path)
    wipe_secrets(path)
    wipe_secrets(path)
    assert load_bundle(path).sealed_secrets is None
