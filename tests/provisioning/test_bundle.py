"""Bundle manifest contract: round trip, sha256 verification, no overlaps, secrets wipe."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@pytest.mark.parametrize("file", ["../../vault/kdf.json", "/etc/passwd", ".hidden.bin", ""])
def test_tampered_manifest_artifact_outside_the_bundle_is_refused(
    tmp_path: Path, file: str
) -> None:
    """An edited manifest cannot make load_bundle read (and flash) a file from elsewhere."""
    path = _write(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["artifacts"][0]["file"] = file
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ProvisioningError, match="not a plain file name"):
        load_bundle(path)


def test_tampered_manifest_mac_is_refused(tmp_path: Path) -> None:
    """A manifest MAC cut short never reaches the flasher (which compares it to the chip),
    and is reported as a damaged bundle, not as a MAC the user typed."""
    path = _write(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "mac": "02:aa:bb"}))
    with pytest.raises(ProvisioningError, match=r"malformed .*not a MAC address.* rebuild"):
        load_bundle(path)


def test_wipe_secrets(tmp_path: Path) -> None:
    path = _write(tmp_path)
    wipe_secrets(path)
    wipe_secrets(path)
    assert load_bundle(path).sealed_secrets is None


def test_symlinked_secrets_dir_in_a_copied_bundle_does_not_wipe_its_target(
    tmp_path: Path,
) -> None:
    """A bundle whose secrets/ names another directory: the destroy policy's wipe after
    flashing removes the link and overwrites nothing there."""
    path = _write(tmp_path, sealed=None)
    elsewhere = tmp_path / "documents"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_bytes(b"keep me")
    (path / "secrets").symlink_to(elsewhere, target_is_directory=True)
    wipe_secrets(path)
    assert not (path / "secrets").exists()
    assert (elsewhere / "notes.txt").read_bytes() == b"keep me"


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 0x3000), min_size=1, max_size=6),
    gaps=st.lists(st.integers(0, 4), min_size=6, max_size=6),
    mode=st.sampled_from(["release", "development"]),
    chip=st.sampled_from(["esp32", "esp32s3", "esp32c3"]),
    mac=st.binary(min_size=5, max_size=5),
    policy=st.sampled_from(["escrow", "destroy"]),
)
def test_manifest_json_round_trip(
    sizes: list[int], gaps: list[int], mode: str, chip: str, mac: bytes, policy: str
) -> None:
    offset, arts = 0, []
    for i, (size, gap) in enumerate(zip(sizes, gaps, strict=False)):
        offset += gap * 0x1000
        arts.append(Artifact(f"part{i}", f"part{i}.bin", offset, size, "ab" * 32, i % 2 == 0))
        offset += -(-size // 0x1000) * 0x1000
    full_mac = b"\x02" + mac
    manifest = Manifest(
        device_id=f"{chip}-{full_mac.hex()}", chip=chip, mode=mode,  # type: ignore[arg-type]
        mac=full_mac.hex(), flash_size="4MB", key_policy=policy,  # type: ignore[arg-type]
        artifacts=tuple(arts), efuse_plan=plan_for(chip, mode),
        certificate=CertificateInfo("1", "00" * 32, "2030-01-01T00:00:00+00:00"),
        key_fingerprints=KeyFingerprints("11" * 32, "22" * 32, "33" * 32),
        firmware=FirmwareInfo("p", "v", 1, "44" * 32),
    )
    assert Manifest.decode(manifest.encode()) == manifest
