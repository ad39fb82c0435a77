"""Pin the public surface of the provisioning modules others build on (the flasher,
the audit, the virtual device's firmware): a change must be deliberate."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

SURFACE = {
    "bundle": {"Artifact", "Bundle", "CertificateInfo", "FirmwareInfo", "KeyFingerprints",
               "KeyPolicy", "MANIFEST_NAME", "MERGED_NAME", "Manifest", "SEALED_SECRETS",
               "load_bundle", "merge_images", "wipe_secrets", "write_bundle"},
    "vault": {"DeviceSecrets", "Vault", "shred"},
    "efuse_plan": {"Action", "EfusePlan", "EfuseStep", "Mode", "Phase", "plan_for",
                   "SOURCE_FLASH_ENCRYPTION_KEY", "SOURCE_SECURE_BOOT_DIGEST"},
    "identity": {"DeviceIdentity", "NVS_NAMESPACE", "NvsKey", "REQUIRED_KEYS",
                 "hash_recovery_secret", "new_recovery_secret", "verify_recovery_secret"},
    "macs": {"LOCAL_PREFIX", "MAC_STRIDE", "MacEntry", "allocate_macs", "check_wifi",
             "is_locally_administered", "parse_mac_list"},
    "plan": {"DeviceKeys", "DevicePlan", "DeviceRequest", "FleetPolicy", "plan_device"},
    "batch": {"BatchReport", "DeviceResult", "batch_lock", "bundle_sha256", "clean_leftovers",
              "done_devices", "run_batch"},
    "inputs": {"CheckedFirmware", "FirmwareSource", "ImageFacts", "check_firmware",
               "image_facts", "load_firmware", "parse_flash_size"},
    "prepare": {"Allocation", "RETIRED_STATUSES", "build_policy", "is_signed",
                "record_allocation", "requests_for", "sign_or_verify",
                "unfinished_allocations"},
    "demo_firmware": {"DemoFirmware", "demo_firmware", "with_min_revision"},
    "locks": {"directory_lock"},
}


@pytest.mark.parametrize("name", sorted(SURFACE))
def test_surface_is_pinned(name: str) -> None:
    module = importlib.import_module(f"espfleet.provisioning.{name}")
    assert set(module.__all__) == SURFACE[name]
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.{attr}"


def test_pure_modules_do_no_io_imports() -> None:
    """plan and efuse_plan are pure: no registry, workspace, device or CLI imports."""
    for name in ("plan", "efuse_plan", "identity", "macs"):
        source = importlib.import_module(f"espfleet.provisioning.{name}").__file__
        assert source is not None
        text = Path(source).read_text()
        for forbidden in ("espfleet.backend", "espfleet.workspace", "espfleet.device.",
                          "espfleet.cli", "sqlalchemy", "subprocess"):
            assert forbidden not in text, f"{name} imports {forbidden}"
