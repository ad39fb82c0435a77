"""eFuse posture audit on eFuse files made by the real espefuse (``--virt``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import espefuse
import pytest

from espfleet.audit.efuse_posture import EfuseReport, audit_efuses
from espfleet.audit.efuse_source import read_efuse_file
from espfleet.audit.findings import Severity
from espfleet.chips import chip_facts
from espfleet.errors import InputError
from espfleet.provisioning.efuse_plan import EfuseStep, plan_for
from espfleet.provisioning.espefuse_driver import EfuseDriver

DIGEST = bytes(range(0x40, 0x60))
MATERIAL = {"flash_encryption_key": os.urandom(32), "secure_boot_digest": DIGEST}
CHIPS = ["esp32", "esp32s3", "esp32c3"]


_BUILT: dict[tuple[str, str, str], bytes] = {}


def _blank_file(path: Path, chip: str) -> None:
    esp = espefuse.get_esp(chip=chip, virt=True, virt_efuse_file=str(path))
    esp.set_chip_revision(300 if chip == "esp32" else 4)  # SBv2 needs ESP32 v3.0
    esp.save_to_file()


def blank(tmp_path: Path, chip: str) -> Path:
    path = tmp_path / f"{chip}.efuse"
    _blank_file(path, chip)
    return path


def provisioned(
    tmp_path: Path, chip: str, mode: str, skip: Callable[[EfuseStep], bool] = lambda s: False,
    *, variant: str = "",
) -> Path:
    """A chip after espfleet's eFuse plan for ``mode``, burned by espefuse, minus ``skip``.

    Built once per (chip, mode, variant) per session (espefuse burns are slow), then
    copied: ``variant`` names the ``skip`` rule.
    """
    path = tmp_path / f"{chip}-{mode}{variant}.efuse"
    key = (chip, mode, variant)
    if key not in _BUILT:
        _blank_file(path, chip)
        plan = plan_for(chip, mode)
        driver = EfuseDriver.virtual(chip, path)
        driver.burn([s for s in plan.pre_flash() if not skip(s)], MATERIAL)
        driver.burn([s for s in plan.post_flash() if not skip(s)], {})
        _BUILT[key] = path.read_bytes()
    path.write_bytes(_BUILT[key])
    return path


def audit(chip: str, path: Path, mode: str = "release") -> EfuseReport:
    return audit_efuses(read_efuse_file(chip, path), mode, expected_digest=DIGEST)


def kinds(report: EfuseReport) -> set[tuple[str, str]]:
    return {(f.kind, f.efuse) for f in report.findings}


@pytest.mark.parametrize("chip", CHIPS)
def test_blank_chip_fails_everything_with_fix_commands(tmp_path: Path, chip: str) -> None:
    facts = chip_facts(chip)
    report = audit(chip, blank(tmp_path, chip))
    found = kinds(report)
    assert ("flash-encryption-off", facts.crypt_cnt_field) in found
    assert ("fe-key-missing", facts.fe_key_blocks[0]) in found
    assert ("secure-boot-off", facts.sb_enable_field) in found
    assert ("not-write-protected", facts.rd_dis_field) in found
    assert any(k == "download-mode-open" for k, _ in found)
    for name in facts.release_hardening:
        if name not in facts.download_lock_fields:
            assert ("hardening-missing", name) in found, name
    if facts.crypt_config_field:
        assert ("crypt-config", facts.crypt_config_field) in found
    assert report.worst == Severity.CRITICAL
    for f in report.findings:  # a blank chip is reachable: every finding has a command
        assert f.command and f.command.startswith(f"espefuse --chip {chip} --port PORT ")
        assert f.found and f.required
        assert f.efuse in f.command or "burn-key" in f.command  # ESP32 names keys by alias


@pytest.mark.parametrize("chip", CHIPS)
def test_release_mode_chip_has_no_findings(tmp_path: Path, chip: str) -> None:
    report = audit(chip, provisioned(tmp_path, chip, "release"))
    assert report.findings == ()
    assert report.notes == ()


@pytest.mark.parametrize("chip", CHIPS)
def test_development_mode_chip(tmp_path: Path, chip: str) -> None:
    state = read_efuse_file(chip, provisioned(tmp_path, chip, "development"))
    as_development = audit_efuses(state, "development", expected_digest=DIGEST)
    assert as_development.findings == ()
    assert as_development.notes  # says what development mode leaves open
    as_release = audit_efuses(state, "release", expected_digest=DIGEST)
    facts = chip_facts(chip)
    found = kinds(as_release)
    assert ("crypt-counter-not-final", facts.crypt_cnt_field) in found
    assert ("not-write-protected", facts.crypt_cnt_field) in found
    assert as_release.worst is not None and as_release.worst >= Severity.HIGH


@pytest.mark.parametrize("chip", CHIPS)
def test_development_notes_describe_the_chip_not_the_plan(tmp_path: Path, chip: str) -> None:
    """Notes say what the chip leaves open: a locked chip audited as development mode
    must not be described as open (writable counter, JTAG, download mode)."""
    facts = chip_facts(chip)
    dev = audit(chip, provisioned(tmp_path, chip, "development"), "development")
    assert any(n.startswith(f"{facts.crypt_cnt_field} stays writable") and
               f"({facts.plaintext_reflashes} plaintext re-flash(es) left" in n
               for n in dev.notes), dev.notes
    assert any(n.startswith("JTAG stays enabled") for n in dev.notes), dev.notes
    assert any(n.startswith("UART download mode stays open") for n in dev.notes), dev.notes
    locked = audit(chip, provisioned(tmp_path, chip, "release"), "development")
    assert locked.findings == ()
    assert locked.notes == (), locked.notes


@pytest.mark.parametrize("chip", CHIPS)
def test_release_without_jtag_disabled(tmp_path: Path, chip: str) -> None:
    jtag = {"JTAG_DISABLE", "DIS_PAD_JTAG"}
    path = provisioned(tmp_path, chip, "release", skip=lambda s: s.target in jtag,
                       variant="-jtag")
    report = audit(chip, path)
    (finding,) = report.findings
    assert finding.kind == "hardening-missing" and finding.efuse in jtag
    assert (finding.found, finding.required) == ("0", "1")
    assert finding.severity == Severity.HIGH
    # the download mode is locked already: no espefuse command can reach the chip
    assert finding.command is None
    assert "download mode is locked" in finding.fix


@pytest.mark.parametrize("chip", ["esp32s3", "esp32c3"])
def test_secure_boot_without_digest_revocation(tmp_path: Path, chip: str) -> None:
    path = provisioned(tmp_path, chip, "release",
                       skip=lambda s: s.target.startswith("SECURE_BOOT_KEY_REVOKE"),
                       variant="-norevoke")
    report = audit(chip, path)
    assert kinds(report) == {("sb-slot-not-revoked", "SECURE_BOOT_KEY_REVOKE1"),
                             ("sb-slot-not-revoked", "SECURE_BOOT_KEY_REVOKE2")}
    assert all(f.severity == Severity.HIGH for f in report.findings)


@pytest.mark.parametrize("chip", ["esp32s3", "esp32c3"])
def test_secure_boot_without_revocation_before_download_lock_has_a_fix(
    tmp_path: Path, chip: str
) -> None:
    """Same posture on a chip whose download mode is still open: espefuse can fix it."""
    path = provisioned(tmp_path, chip, "release", skip=lambda s: s.phase == "post_flash"
                       or s.target.startswith("SECURE_BOOT_KEY_REVOKE"), variant="-open")
    report = audit(chip, path)
    revoke = [f for f in report.findings if f.kind == "sb-slot-not-revoked"]
    assert {f.command for f in revoke} == {
        f"espefuse --chip {chip} --port PORT burn-efuse SECURE_BOOT_KEY_REVOKE{n} 1"
        for n in (1, 2)
    }


@pytest.mark.parametrize("chip", CHIPS)
def test_wrong_signing_key_digest_is_critical(tmp_path: Path, chip: str) -> None:
    path = provisioned(tmp_path, chip, "release")
    report = audit_efuses(read_efuse_file(chip, path), "release", expected_digest=b"\x11" * 32)
    (finding,) = report.findings
    assert finding.kind == "sb-digest-foreign" and finding.severity == Severity.CRITICAL
    assert DIGEST.hex() in finding.found and finding.command is None


def test_readable_flash_encryption_key_is_critical(tmp_path: Path) -> None:
    """A key written as plain block data (not burn-key) stays readable by software."""
    path = blank(tmp_path, "esp32")
    commands = espefuse.init_commands(
        esp=espefuse.get_esp(chip="esp32", virt=True, virt_efuse_file=str(path)),
        do_not_confirm=True,
    )
    import io

    commands.burn_block_data(["BLOCK1"], [io.BytesIO(os.urandom(32))])
    report = audit("esp32", path)
    finding = next(f for f in report.findings if f.kind == "fe-key-readable")
    assert finding.severity == Severity.CRITICAL and finding.efuse == "BLOCK1"
    assert finding.command == "espefuse --chip esp32 --port PORT read-protect-efuse BLOCK1"


def test_audit_leaves_the_efuse_file_unchanged(tmp_path: Path) -> None:
    path = provisioned(tmp_path, "esp32s3", "development")
    before = path.read_bytes()
    audit("esp32s3", path)
    assert path.read_bytes() == before


def test_wrong_size_file_is_bad_input(tmp_path: Path) -> None:
    path = blank(tmp_path, "esp32")
    with pytest.raises(InputError, match=r"288 bytes.*esp32s3 eFuse file"):
        read_efuse_file("esp32s3", path)
    with pytest.raises(InputError, match="cannot read"):
        read_efuse_file("esp32", tmp_path / "missing.bin")


def test_cli_release_file_passes_and_foreign_fleet_fails(
    tmp_path: Path, fleet_workspace: Path
) -> None:
    """With --workspace the digest must be this fleet's signing key's."""
    import json

    from click.testing import CliRunner

    from espfleet.cli import main
    from espfleet.workspace import Workspace

    path = provisioned(tmp_path, "esp32c3", "release")
    ok = CliRunner().invoke(main, ["audit", "efuse", str(path), "--chip", "esp32c3"])
    assert ok.exit_code == 0, ok.output
    assert "PASS: no finding at or above high (0 below)" in ok.output
    assert "note: the secure boot digest was not compared with the fleet's signing key" in (
        ok.output)  # without --workspace nobody may think the key was checked

    fleet = Workspace.open(fleet_workspace).secure_boot_digest()
    assert fleet != DIGEST
    result = CliRunner().invoke(main, ["audit", "efuse", str(path), "--chip", "esp32c3",
                                       "--workspace", str(fleet_workspace), "--json"])
    assert result.exit_code == 1
    out = json.loads(result.output)
    assert out["expected_digest"] == fleet.hex()
    assert [f["kind"] for f in out["findings"]] == ["sb-digest-foreign"]


def test_cli_development_chip_audited_as_development(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from espfleet.cli import main

    path = provisioned(tmp_path, "esp32", "development")
    dev = CliRunner().invoke(main, ["audit", "efuse", str(path), "--chip", "esp32",
                                    "--mode", "development"])
    assert dev.exit_code == 0, dev.output
    assert "note: JTAG stays enabled" in dev.output
    rel = CliRunner().invoke(main, ["audit", "efuse", str(path), "--chip", "esp32"])
    assert rel.exit_code == 1


def _served_chip(chip: str, efuse_file: Path) -> object:
    from espfleet.device.chip import VirtualChip
    from espfleet.device.efuse import EfuseController
    from espfleet.device.flash import NorFlash

    data = efuse_file.read_bytes()
    return VirtualChip(chip, revision=4, flash=NorFlash(4 << 20),
                       efuse=EfuseController(chip, data, data))


@pytest.mark.parametrize("variant", ["", "-norevoke", "-jtag"])
def test_locked_chip_audited_over_port_through_security_info(
    tmp_path: Path, variant: str
) -> None:
    """A release S3 is in Secure Download Mode: espefuse cannot read it, the ROM's
    GET_SECURITY_INFO still shows the counter, purposes, secure boot, revocations and
    JTAG; the report names what it could not verify."""
    from espfleet.audit.efuse_source import read_efuse_port
    from espfleet.device.server import LoaderServer

    skips: dict[str, Callable[[EfuseStep], bool]] = {
        "": lambda s: False,
        "-norevoke": lambda s: s.target.startswith("SECURE_BOOT_KEY_REVOKE"),
        "-jtag": lambda s: s.target in {"JTAG_DISABLE", "DIS_PAD_JTAG"},
    }
    path = provisioned(tmp_path, "esp32s3", "release", skip=skips[variant], variant=variant)
    from_file = audit("esp32s3", path)
    with LoaderServer(_served_chip("esp32s3", path)) as server:  # type: ignore[arg-type]
        state, unverified = read_efuse_port("esp32s3", server.url)
    over_port = audit_efuses(state, "release", unverified=unverified)
    assert kinds(over_port) == kinds(from_file)
    assert any("not verified, assumed as required" in n and "DIS_USB_JTAG" in n
               for n in over_port.notes)


def test_blank_chip_over_port_reads_every_field(tmp_path: Path) -> None:
    from espfleet.audit.efuse_source import read_efuse_port
    from espfleet.device.server import LoaderServer

    path = blank(tmp_path, "esp32c3")
    with LoaderServer(_served_chip("esp32c3", path)) as server:  # type: ignore[arg-type]
        state, unverified = read_efuse_port("esp32c3", server.url)
    assert unverified == ()
    assert kinds(audit_efuses(state, "release", expected_digest=DIGEST)) == kinds(
        audit("esp32c3", path))


@pytest.mark.parametrize("chip", ["esp32s3", "esp32c3"])
def test_second_signing_key_in_unrevoked_slot_is_critical(tmp_path: Path, chip: str) -> None:
    """The fleet digest is there, but a foreign digest sits in another slot that was
    never revoked: secure boot also boots images signed by that other key."""
    path = provisioned(tmp_path, chip, "release", skip=lambda s: s.phase == "post_flash"
                       or s.target.startswith("SECURE_BOOT_KEY_REVOKE"), variant="-open")
    commands = espefuse.init_commands(
        esp=espefuse.get_esp(chip=chip, virt=True, virt_efuse_file=str(path)),
        do_not_confirm=True,
    )
    commands.burn_key(["BLOCK_KEY3"], [None], ["SECURE_BOOT_DIGEST1"], digest=[b"\x66" * 32])
    report = audit(chip, path)
    extra = [f for f in report.findings if f.kind == "sb-digest-extra"]
    assert [(f.efuse, f.severity) for f in extra] == [
        ("SECURE_BOOT_KEY_REVOKE1", Severity.CRITICAL)]
    assert ("66" * 32) in extra[0].found
    assert extra[0].command == (
        f"espefuse --chip {chip} --port PORT burn-efuse SECURE_BOOT_KEY_REVOKE1 1")
    assert ("sb-slot-not-revoked", "SECURE_BOOT_KEY_REVOKE2") in kinds(report)
    assert ("sb-slot-not-revoked", "SECURE_BOOT_KEY_REVOKE1") not in kinds(report)

    commands.burn_efuse({"SECURE_BOOT_KEY_REVOKE1": 1})
    revoked = audit(chip, path)
    assert not [f for f in revoked.findings if f.kind.startswith("sb-digest")]


def test_fleet_digest_only_in_a_revoked_slot_is_not_trusted(tmp_path: Path) -> None:
    """A revoked slot's digest no longer counts: the fleet's images will not boot."""
    path = provisioned(tmp_path, "esp32s3", "release", skip=lambda s: s.phase == "post_flash"
                       or s.target.startswith("SECURE_BOOT_KEY_REVOKE"), variant="-open")
    commands = espefuse.init_commands(
        esp=espefuse.get_esp(chip="esp32s3", virt=True, virt_efuse_file=str(path)),
        do_not_confirm=True,
    )
    commands.burn_efuse({"SECURE_BOOT_KEY_REVOKE0": 1})
    assert "sb-digest-foreign" in {f.kind for f in audit("esp32s3", path).findings}


@pytest.mark.parametrize("chip", CHIPS)
def test_fix_commands_are_safe_to_run_top_to_bottom(tmp_path: Path, chip: str) -> None:
    """Following a blank chip's fixes in order must not lock espefuse out half way, and
    the burns that brick a chip without matching images say so."""
    facts = chip_facts(chip)
    path = blank(tmp_path, chip)
    report = audit(chip, path)
    lock = facts.release_hardening[-1]
    chained = f"espefuse --chip {chip} --port PORT burn-efuse {lock} 1" + "".join(
        f" write-protect-efuse {n}" for n in facts.write_protect_after_download_lock)
    tail = [(f.kind, f.efuse) for f in report.findings][-1 - len(
        facts.write_protect_after_download_lock):]
    assert tail == [("download-mode-open", lock)] + [
        ("not-write-protected", n) for n in facts.write_protect_after_download_lock]
    assert {f.command for f in report.findings if (f.kind, f.efuse) in tail} == {chained}
    assert all("burn this last" in f.fix for f in report.findings if (f.kind, f.efuse) in tail)
    by_kind = {f.kind: f for f in report.findings}
    assert "only once the key is burned" in by_kind["flash-encryption-off"].fix
    assert "only once the digest is burned" in by_kind["secure-boot-off"].fix

    # the chained command really does both (ESP32: WR_DIS of FLASH_CRYPT_CNT also
    # write-protects UART_DOWNLOAD_DIS, so it cannot come first)
    commands = espefuse.init_commands(
        esp=espefuse.get_esp(chip=chip, virt=True, virt_efuse_file=str(path)),
        do_not_confirm=True,
    )
    commands.use_batch_mode()
    commands.burn_efuse({lock: 1})
    for name in facts.write_protect_after_download_lock:
        commands.write_protect_efuse([name])
    commands.burn_all(check_batch_mode=True)
    after = kinds(audit(chip, path))
    assert not {k for k in after if k in tail}


@pytest.mark.parametrize("chip, revision", [("esp32", 0), ("esp32c3", 2)])
def test_chip_below_secure_boot_v2_revision_cannot_pass(
    tmp_path: Path, chip: str, revision: int
) -> None:
    """An ESP32 below v3.0 (common on cheap modules) has no Secure Boot V2: the audit
    says so, and offers no command for it."""
    path = tmp_path / f"{chip}-old.efuse"
    esp = espefuse.get_esp(chip=chip, virt=True, virt_efuse_file=str(path))
    if revision:  # a new virtual eFuse file is v0.0
        esp.set_chip_revision(revision)
    esp.save_to_file()
    report = audit(chip, path)
    (old,) = [f for f in report.findings if f.kind == "revision-too-old"]
    assert old.severity == Severity.CRITICAL and old.command is None
    assert old.found == f"v{revision // 100}.{revision % 100}"
    assert "none possible" in old.fix
    assert not [f for f in audit(chip, blank(tmp_path, chip)).findings
                if f.kind == "revision-too-old"]
