"""`espfleet flash` through click's CliRunner, against a virtual ESP32 on socket://."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import espsecure
import pytest
from click.testing import CliRunner, Result

from espfleet.cli import main
from espfleet.device.chip import VirtualChip
from espfleet.device.server import LoaderServer
from espfleet.provisioning.bundle import (
    SEALED_SECRETS,
    Artifact,
    CertificateInfo,
    FirmwareInfo,
    KeyFingerprints,
    Manifest,
    write_bundle,
)
from espfleet.provisioning.efuse_plan import plan_for
from espfleet.provisioning.flash_journal import JOURNAL_NAME, FlashJournal
from espfleet.provisioning.vault import DeviceSecrets, Vault
from espfleet.workspace import Workspace

MAC = bytes.fromhex("246f28c0ffee")
DEVICE = f"esp32-{MAC.hex()}"
PASSPHRASE = b"correct horse battery staple"
PLAIN = {0x1000: os.urandom(0x4000), 0x8000: os.urandom(0x1000), 0x20000: os.urandom(0x8000)}


def _encrypt(key: bytes, offset: int, data: bytes) -> bytes:
    out = io.BytesIO()
    espsecure.encrypt_flash_data(io.BytesIO(key), out, offset, 0xF, False, io.BytesIO(data))
    return out.getvalue()


def make_bundle(root: Path, *, mode: str = "release", policy: str = "escrow") -> bytes:
    """A bundle + vault entry as `espfleet provision` leaves them; returns the key."""
    workspace = Workspace.open(root)
    key = os.urandom(32)
    secrets = DeviceSecrets(key, os.urandom(64), "recovery-secret")
    vault = Vault.open(workspace.vault_dir, PASSPHRASE)
    images = {f"p{o:x}": (o, _encrypt(key, o, d)) for o, d in PLAIN.items()}
    manifest = Manifest(
        device_id=DEVICE, chip="esp32", mode=mode, mac=MAC.hex(), flash_size="4MB",  # type: ignore[arg-type]
        key_policy=policy,  # type: ignore[arg-type]
        artifacts=tuple(Artifact.of(n, o, d, encrypted=True) for n, (o, d) in images.items()),
        efuse_plan=plan_for("esp32", mode),
        certificate=CertificateInfo("01", "ab" * 32, "2036-01-01T00:00:00+00:00"),
        key_fingerprints=KeyFingerprints(
            hashlib.sha256(key).hexdigest(), "ef" * 32, workspace.secure_boot_digest().hex()
        ),
        firmware=FirmwareInfo("app", "1.0.0", 0, "23" * 32),
    )
    target = workspace.bundles_dir / DEVICE
    target.mkdir(parents=True)
    sealed = vault.seal(DEVICE, secrets) if policy == "destroy" else None
    if sealed is None:
        vault.store(DEVICE, secrets)
    write_bundle(target, manifest, {n: d for n, (_, d) in images.items()}, sealed_secrets=sealed)
    return key


@pytest.fixture
def chip() -> Iterator[tuple[VirtualChip, str]]:
    vchip = VirtualChip.new("esp32", revision=300, mac=MAC)
    with LoaderServer(vchip) as server:
        yield vchip, server.url


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["flash", *args], input=input)


def test_dry_run_shows_plan_and_changes_nothing(
    fleet_workspace: Path,
    chip: tuple[VirtualChip, str],
    snapshot: Callable[[Path], dict[str, str]],
) -> None:
    make_bundle(fleet_workspace)
    vchip, url = chip
    before, efuses = snapshot(fleet_workspace), vchip.efuse_bytes()
    result = run(DEVICE, "--port", url, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "burn_key BLOCK1 (flash_encryption)" in result.output
    assert "UART_DOWNLOAD_DIS" in result.output
    assert "0x20000" in result.output
    assert "nothing was changed" in result.output
    assert vchip.efuse_bytes() == efuses
    assert snapshot(fleet_workspace) == before


def test_dry_run_json_lists_phases(fleet_workspace: Path, chip: tuple[VirtualChip, str]) -> None:
    make_bundle(fleet_workspace)
    result = run(DEVICE, "--port", chip[1], "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)["plan"]
    assert [i["offset"] for i in plan["images"]] == sorted(PLAIN)
    assert plan["post_flash"][-1]["step"] == "write_protect_efuse FLASH_CRYPT_CNT"
    assert not any(s["done"] for s in plan["pre_flash"])


def test_flash_yes_json_records_registry_and_journal(
    fleet_workspace: Path, chip: tuple[VirtualChip, str]
) -> None:
    make_bundle(fleet_workspace)
    vchip, url = chip
    result = run(DEVICE, "--port", url, "--yes", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["result"]["status"] == "flashed"
    assert out["key_destroyed"] is False
    for offset, data in PLAIN.items():
        assert vchip.read_decrypted(offset, len(data)) == data
    with Workspace.open(fleet_workspace).registry() as registry:
        record = registry.get_device(DEVICE)
        assert record is not None and record.status == "flashed"
    journal = json.loads((fleet_workspace / "bundles" / DEVICE / JOURNAL_NAME).read_text())
    assert journal["status"] == "flashed"
    assert "registry:flashed" in [s["step"] for s in journal["steps"]]
    assert (fleet_workspace / "vault" / f"{DEVICE}.sealed").exists()


def test_declined_confirmation_burns_nothing(
    fleet_workspace: Path, chip: tuple[VirtualChip, str]
) -> None:
    make_bundle(fleet_workspace)
    vchip, url = chip
    efuses = vchip.efuse_bytes()
    result = run(DEVICE, "--port", url, input="n\n")
    assert result.exit_code == 1
    assert vchip.efuse_bytes() == efuses
    assert "Not flashed: nothing was burned or written" in result.output
    assert "Aborted!" not in result.output



def test_declined_then_confirmed_flashes_on_the_second_run(
    fleet_workspace: Path, chip: tuple[VirtualChip, str]
) -> None:
    make_bundle(fleet_workspace)
    vchip, url = chip
    assert run(DEVICE, "--port", url, input="n\n").exit_code == 1
    result = run(DEVICE, "--port", url, input="y\n")
    assert result.exit_code == 0, result.output
    assert f"{DEVICE} flashed" in result.output
    for offset, data in PLAIN.items():
        assert vchip.read_decrypted(offset, len(data)) == data


def _use_destroy_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workspace's key policy reads ``destroy`` (the template workspace escrows)."""
    real_open = Workspace.open

    def open_destroy(path: Path) -> Workspace:
        workspace = real_open(path)
        workspace.config = dataclasses.replace(workspace.config, key_policy="destroy")
        return workspace

    monkeypatch.setattr(Workspace, "open", open_destroy)


def test_destroy_policy_wipes_key_after_verified_flash(
    fleet_workspace: Path, chip: tuple[VirtualChip, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_bundle(fleet_workspace, mode="development", policy="destroy")
    _use_destroy_policy(monkeypatch)
    result = run(DEVICE, "--port", chip[1], "--yes")
    assert result.exit_code == 0, result.output
    assert "destroyed" in result.output
    assert not (fleet_workspace / "bundles" / DEVICE / SEALED_SECRETS).exists()
    # development mode: the loader still answers; a re-run finds nothing to do and
    # needs no key any more.
    again = run(DEVICE, "--port", chip[1], "--yes")
    assert again.exit_code == 0, again.output
    assert "already flashed" in again.output


def test_rerun_on_flashed_development_device_is_not_a_resume_and_destroys_nothing_new(
    fleet_workspace: Path, chip: tuple[VirtualChip, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second `flash` of a finished device said "(resuming an earlier run)" and
    "Flash-encryption key destroyed" again, as if the first run had not completed."""
    make_bundle(fleet_workspace, mode="development", policy="destroy")
    _use_destroy_policy(monkeypatch)
    first = run(DEVICE, "--port", chip[1], "--yes")
    assert first.exit_code == 0, first.output
    assert "Flash-encryption key destroyed" in first.output
    again = run(DEVICE, "--port", chip[1], "--yes")
    assert again.exit_code == 0, again.output
    assert "already flashed" in again.output
    assert "resuming" not in again.output
    assert "destroyed" not in again.output


def test_resumed_destroy_policy_flash_wipes_the_key_without_asking_a_passphrase(
    fleet_workspace: Path, chip: tuple[VirtualChip, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first run burned the key, then lost the link writing the images; the re-run
    needs no key, and deleting the sealed secrets after the flash must not need the
    passphrase either (it failed with exit 2 after a finished flash, every time)."""
    from espfleet.errors import FlashError
    from espfleet.provisioning.esptool_driver import EsptoolFlash

    make_bundle(fleet_workspace, mode="development", policy="destroy")
    _use_destroy_policy(monkeypatch)
    with monkeypatch.context() as patched:
        def link_lost(*_args: object) -> None:
            raise FlashError("link lost while writing")

        patched.setattr(EsptoolFlash, "write", link_lost)
        first = run(DEVICE, "--port", chip[1], "--yes")
    assert first.exit_code == 1 and "link lost" in first.output, first.output
    assert chip[0].flash_encryption_enabled()  # the key and counter were burned
    monkeypatch.delenv("ESPFLEET_PASSPHRASE")
    again = run(DEVICE, "--port", chip[1], "--yes")
    assert again.exit_code == 0, again.output
    assert "Flash-encryption key destroyed" in again.output
    assert not (fleet_workspace / "bundles" / DEVICE / SEALED_SECRETS).exists()


def test_another_device_on_port_refused_exit_1(
    fleet_workspace: Path, snapshot: Callable[[Path], dict[str, str]]
) -> None:
    make_bundle(fleet_workspace)
    other = VirtualChip.new("esp32", revision=300, mac=bytes.fromhex("246f28c0ffe0"))
    before = snapshot(fleet_workspace)
    with LoaderServer(other) as server:
        result = run(DEVICE, "--port", server.url, "--yes")
    assert result.exit_code == 1
    assert "another device" in result.output
    assert snapshot(fleet_workspace) == before


def test_no_chip_on_port_exit_1_names_port(
    fleet_workspace: Path, snapshot: Callable[[Path], dict[str, str]]
) -> None:
    make_bundle(fleet_workspace)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"socket://127.0.0.1:{probe.getsockname()[1]}"
    before = snapshot(fleet_workspace)
    result = run(DEVICE, "--port", url, "--yes")
    assert result.exit_code == 1
    assert f"no chip answered on {url}" in result.output
    assert snapshot(fleet_workspace) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["esp32-xyz", "--port", "socket://127.0.0.1:1"], "invalid device id"),
        ([DEVICE, "--port", "socket://127.0.0.1:1", "--json"], "--json cannot ask"),
        (["esp32-246f28000001", "--port", "socket://127.0.0.1:1", "--dry-run"], "not a bundle"),
    ],
)
def test_bad_input_exit_2(fleet_workspace: Path, args: list[str], message: str) -> None:
    make_bundle(fleet_workspace)
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_rerun_on_locked_release_device_explains_journal(
    fleet_workspace: Path, chip: tuple[VirtualChip, str]
) -> None:
    make_bundle(fleet_workspace)
    assert run(DEVICE, "--port", chip[1], "--yes").exit_code == 0
    again = run(DEVICE, "--port", chip[1], "--yes")
    assert again.exit_code == 1
    assert "the journal says" in again.output and "nothing left to do" in again.output


def test_second_concurrent_flash_of_same_device_refused(
    fleet_workspace: Path, chip: tuple[VirtualChip, str]
) -> None:
    make_bundle(fleet_workspace)
    journal = FlashJournal.load(fleet_workspace / "bundles" / DEVICE, DEVICE)
    with journal.exclusive():
        result = run(DEVICE, "--port", chip[1], "--yes")
    assert result.exit_code == 1
    assert "another `espfleet flash" in result.output


def test_wrong_passphrase_exit_2_before_any_burn(
    fleet_workspace: Path, chip: tuple[VirtualChip, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_bundle(fleet_workspace)
    vchip, url = chip
    efuses = vchip.efuse_bytes()
    monkeypatch.setenv("ESPFLEET_PASSPHRASE", "not the passphrase")
    result = run(DEVICE, "--port", url, "--yes")
    assert result.exit_code == 2, result.output
    assert "passphrase" in result.output
    assert vchip.efuse_bytes() == efuses


def _rewrite_manifest(root: Path, **changes: object) -> None:
    path = root / "bundles" / DEVICE / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_tampered_manifest_plan_without_locks_is_refused_before_any_burn(
    fleet_workspace: Path, chip: tuple[VirtualChip, str]
) -> None:
    """An edited manifest whose image hashes still match, but whose eFuse plan drops the
    download-mode and JTAG locks: flashing it would ship an open device as "release"."""
    make_bundle(fleet_workspace)
    vchip, url = chip
    efuses = vchip.efuse_bytes()
    weakened = [s.to_json() for s in plan_for("esp32", "release").steps
                if s.target not in ("UART_DOWNLOAD_DIS", "JTAG_DISABLE", "DISABLE_DL_DECRYPT")]
    _rewrite_manifest(fleet_workspace, efuse_plan=weakened)
    result = run(DEVICE, "--port", url, "--yes")
    assert result.exit_code == 1, result.output
    assert "is not the release plan espfleet derives for esp32" in result.output
    assert vchip.efuse_bytes() == efuses


def test_tampered_manifest_switched_to_development_is_refused_by_the_registry_hash(
    fleet_workspace: Path, chip: tuple[VirtualChip, str]
) -> None:
    """A self-consistent edit (development mode with the development plan) passes the
    plan check; the registry's bundle hash, recorded by `espfleet provision`, does not."""
    make_bundle(fleet_workspace)
    vchip, url = chip
    efuses = vchip.efuse_bytes()
    manifest = fleet_workspace / "bundles" / DEVICE / "manifest.json"
    with Workspace.open(fleet_workspace).registry() as registry:
        registry.add_device(DEVICE, chip="esp32", mac=MAC.hex(), status="provisioned",
                            mode="release")
        registry.update_device(
            DEVICE, bundle_sha256=hashlib.sha256(manifest.read_bytes()).hexdigest())
    _rewrite_manifest(fleet_workspace, mode="development",
                      efuse_plan=plan_for("esp32", "development").to_json())
    result = run(DEVICE, "--port", url, "--yes")
    assert result.exit_code == 1, result.output
    assert "hash differs from the registry's" in result.output
    assert vchip.efuse_bytes() == efuses


@pytest.mark.parametrize("status", ["revoked", "decommissioned"])
def test_revoked_device_is_never_flashed_back_to_life(
    fleet_workspace: Path, chip: tuple[VirtualChip, str], status: str
) -> None:
    """Recording a retired device as ``flashed`` would let it get certificates again."""
    make_bundle(fleet_workspace)
    vchip, url = chip
    efuses = vchip.efuse_bytes()
    with Workspace.open(fleet_workspace).registry() as registry:
        registry.add_device(DEVICE, chip="esp32", mac=MAC.hex(), status=status, mode="release")
    result = run(DEVICE, "--port", url, "--yes")
    assert result.exit_code == 2, result.output
    assert f"is {status} in the registry" in result.output
    assert vchip.efuse_bytes() == efuses
    with Workspace.open(fleet_workspace).registry() as registry:
        record = registry.get_device(DEVICE)
        assert record is not None and record.status == status


def test_interrupted_flash_leaves_device_flashing_so_provision_never_rebuilds_its_key(
    fleet_workspace: Path, chip: tuple[VirtualChip, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry says ``flashing`` before the first burn: even with its bundle folder
    lost, a re-provision skips the device instead of replacing the vault's only copy of
    the key the chip may already hold."""
    import espfleet.cli.flash_cmd as flash_cmd
    from espfleet.errors import FlashError
    from espfleet.provisioning.batch import done_devices

    make_bundle(fleet_workspace)

    def link_lost(*_args: object, **_kwargs: object) -> None:
        raise FlashError("link lost after burning BLOCK1")

    monkeypatch.setattr(flash_cmd, "execute", link_lost)
    result = run(DEVICE, "--port", chip[1], "--yes")
    assert result.exit_code == 1 and "link lost" in result.output
    workspace = Workspace.open(fleet_workspace)
    with workspace.registry() as registry:
        record = registry.get_device(DEVICE)
        assert record is not None and record.status == "flashing"
        shutil.rmtree(workspace.bundles_dir / DEVICE)
        assert done_devices(registry, workspace.bundles_dir, [DEVICE]) == {DEVICE}
    assert Vault.open(workspace.vault_dir, PASSPHRASE, create=False).contains(DEVICE)


@pytest.mark.parametrize("passphrase", [None, "not the passphrase"])
def test_wrong_or_missing_passphrase_leaves_registry_status_untouched(
    fleet_workspace: Path,
    chip: tuple[VirtualChip, str],
    monkeypatch: pytest.MonkeyPatch,
    passphrase: str | None,
) -> None:
    """Nothing was burned, so the registry must not say ``flashing`` (which keeps
    `espfleet provision` from ever rebuilding the device's bundle)."""
    make_bundle(fleet_workspace)
    with Workspace.open(fleet_workspace).registry() as registry:
        registry.add_device(DEVICE, chip="esp32", mac=MAC.hex(), status="provisioned",
                            mode="release")
    if passphrase is None:
        monkeypatch.delenv("ESPFLEET_PASSPHRASE")
    else:
        monkeypatch.setenv("ESPFLEET_PASSPHRASE", passphrase)
    result = run(DEVICE, "--port", chip[1], "--yes")
    assert result.exit_code == 2, result.output
    assert "passphrase" in result.output
    with Workspace.open(fleet_workspace).registry() as registry:
        record = registry.get_device(DEVICE)
        assert record is not None and record.status == "provisioned"


@pytest.mark.parametrize("chip_name", ["esp32", "esp32s3", "esp32c3"])
def test_efuse_plan_table_keeps_every_column_at_80_columns(
    chip_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan shown before an irreversible burn: at 80 columns the long S3/C3 key steps
    squeezed '#', 'why' and the status ('to …') out of the table."""
    from types import SimpleNamespace

    from rich.console import Console

    import espfleet.cli.flash_cmd as flash_cmd
    from espfleet.provisioning.preflight import StepCheck

    out = io.StringIO()
    monkeypatch.setattr(flash_cmd, "console", Console(file=out, width=80, highlight=False))
    steps = [s for s in plan_for(chip_name, "release").steps if s.phase == "pre_flash"]
    inspection = SimpleNamespace(efuse=[StepCheck(step, done=False) for step in steps])
    flash_cmd._render_steps(inspection, "pre_flash", "eFuses")  # type: ignore[arg-type]
    text = out.getvalue()
    header = next(line for line in text.splitlines() if "step" in line)
    assert "#" in header and "why" in header and "status" in header
    assert text.count("to burn") == len(steps)
    for step in steps:
        assert step.target in text
        assert step.why.split()[0] in text
