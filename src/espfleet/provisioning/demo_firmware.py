"""Synthetic firmware for demos, tests and benchmarks (never for a real product).

A real fleet passes its own app and a security-enabled bootloader built once with
ESP-IDF. For rehearsals this builds both with :mod:`espfleet.formats.app_image`: the
bootloader is marked for the chip's Secure Boot V2 minimum revision (ESP32 v3.0, as
an ESP-IDF SBV2 build is) and signed with the fleet key, as ``espfleet provision``
requires in release mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from espfleet.chips import chip_facts
from espfleet.formats import app_image, secure_boot

__all__ = ["DemoFirmware", "demo_firmware", "with_min_revision"]


@dataclass(frozen=True)
class DemoFirmware:
    app: bytes
    #: Signed with the given key, marked for the Secure Boot V2 minimum revision.
    bootloader: bytes


def with_min_revision(image: bytes, chip: str, revision: int) -> bytes:
    """``image`` re-saved by esptool with minimum chip revision ``revision`` (major*100+minor);
    esptool recomputes the checksum and the appended SHA-256."""
    import esptool.bin_image as bin_image

    loaded = bin_image.LoadFirmwareImage(chip, image)
    loaded.min_rev = revision // 100
    loaded.min_rev_full = revision
    loaded.segments = [
        bin_image.ELFSection(b".seg%d" % i, seg.addr, seg.data, 0)
        for i, seg in enumerate(loaded.segments)
    ]
    out: bytes = loaded.save(None)
    return out


def demo_firmware(
    chip: str,
    signing_key: secure_boot.PrivateKey,
    *,
    version: str = "1.0.0",
    project_name: str = "espfleet-demo",
    secure_version: int = 0,
    app_payload_size: int = 0x30000,
) -> DemoFirmware:
    """An app of about ``app_payload_size`` bytes and a signed bootloader for ``chip``."""
    payload = (project_name.encode() + b"\0") * (app_payload_size // (len(project_name) + 1) + 1)
    app = app_image.build_app(
        chip, version=version, project_name=project_name, secure_version=secure_version,
        payload=payload[:app_payload_size],
    )
    revision = chip_facts(chip).sb_v2_min_revision
    bootloader = with_min_revision(app_image.build_bootloader(chip), chip, revision)
    return DemoFirmware(app, secure_boot.sign(bootloader, [signing_key]))
