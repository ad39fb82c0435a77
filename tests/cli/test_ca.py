from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509

from espfleet.cli import main
from espfleet.pki.ca import fingerprint_sha256, utcnow
from espfleet.pki.crl import crl_number, load_crl
from espfleet.workspace import Workspace

Snapshot = Callable[[Path], dict[str, str]]


def test_ca_show_json(fleet_workspace: Path) -> None:
    result = CliRunner().invoke(main, ["ca", "show", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    ws = Workspace.open(fleet_workspace)
    assert info["root_ca"]["path"] == str(fleet_workspace / "pki/root-ca.pem")
    assert info["issuing_ca"]["fingerprint_sha256"] == fingerprint_sha256(ws.issuing_cert)
    assert set(info["servers"]) == {"broker", "ota"}
    assert info["crl"]["path"] == str(fleet_workspace / "pki/crl.pem")
    for entry, command in ((info["crl"], "crl"), (info["servers"]["broker"], "x509")):
        openssl = subprocess.run(
            ["openssl", command, "-in", entry["path"], "-noout", "-fingerprint", "-sha256"],
            check=True, capture_output=True, text=True,
        ).stdout
        assert openssl.split("=")[1].strip().replace(":", "").lower() == entry["fingerprint_sha256"]
    assert info["secure_boot"]["public_key_digest_sha256"] == ws.secure_boot_digest().hex()


def test_ca_show_text_and_workspace_option(
    fleet_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ESPFLEET_WORKSPACE")
    result = CliRunner().invoke(main, ["-w", str(fleet_workspace), "ca", "show"])
    assert result.exit_code == 0, result.output
    assert "Fleet Root CA" in result.output and "secure boot" in result.output


def test_workspace_is_found_from_option_then_environment_then_cwd(
    fleet_workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "not-a-workspace"
    elsewhere.mkdir()

    def shown(*args: str) -> str:
        result = CliRunner().invoke(main, [*args, "ca", "show", "--json"])
        assert result.exit_code == 0, result.output
        return str(json.loads(result.output)["workspace"])

    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("ESPFLEET_WORKSPACE", str(elsewhere))
    assert shown("--workspace", str(fleet_workspace)) == str(fleet_workspace)
    monkeypatch.setenv("ESPFLEET_WORKSPACE", str(fleet_workspace))
    assert shown() == str(fleet_workspace)
    monkeypatch.delenv("ESPFLEET_WORKSPACE")
    monkeypatch.chdir(fleet_workspace)
    assert shown() == str(fleet_workspace)


def test_ca_show_outside_a_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESPFLEET_WORKSPACE", str(tmp_path))
    result = CliRunner().invoke(main, ["ca", "show", "--json"])
    assert result.exit_code == 1
    assert "not an espfleet workspace" in result.output


def test_ca_crl_json_and_out(fleet_workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "published.crl.pem"
    result = CliRunner().invoke(main, ["ca", "crl", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["revoked"] == [] and info["this_update"] and info["next_update"]
    assert "Issuing CA" in info["issuer"]
    assert out.read_bytes() == (fleet_workspace / "pki/crl.pem").read_bytes()
    text = subprocess.run(
        ["openssl", "crl", "-in", str(out), "-noout", "-text"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "Next Update" in text


def test_ca_crl_out_to_an_unwritable_path_is_an_input_error(
    fleet_workspace: Path, tmp_path: Path, snapshot: Snapshot
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"x")
    before = snapshot(fleet_workspace)
    result = CliRunner().invoke(main, ["ca", "crl", "--out", str(blocker / "crl.pem")])
    assert result.exit_code == 2, result.output
    assert "cannot write the CRL to" in result.output and "Traceback" not in result.output
    assert snapshot(fleet_workspace) == before


def test_rolled_back_crl_is_not_published(fleet_workspace: Path, tmp_path: Path) -> None:
    """An older CRL is validly signed too: putting it back must not un-revoke anything."""
    issued = CliRunner().invoke(main, ["cert", "issue", "esp32-24a1600a1b2c", "--json"])
    serial = json.loads(issued.output)["serial"]
    crl_path = fleet_workspace / "pki/crl.pem"
    old_crl = crl_path.read_bytes()
    assert CliRunner().invoke(main, ["cert", "revoke", serial]).exit_code == 0
    crl_path.write_bytes(old_crl)
    out = tmp_path / "published.pem"
    refused = CliRunner().invoke(main, ["ca", "crl", "--out", str(out)])
    assert refused.exit_code == 1, refused.output
    assert f"e.g. serial {serial}" in refused.output and "--refresh" in refused.output
    assert not out.exists() and crl_path.read_bytes() == old_crl
    fixed = CliRunner().invoke(main, ["ca", "crl", "--refresh", "--json"])
    assert fixed.exit_code == 0, fixed.output
    assert [r["serial"] for r in json.loads(fixed.output)["revoked"]] == [serial]
    assert CliRunner().invoke(main, ["ca", "crl"]).exit_code == 0


@pytest.mark.parametrize("damage", [b"garbage", None])
def test_damaged_crl_error_gives_advice_that_works(
    fleet_workspace: Path, damage: bytes | None
) -> None:
    """The error once said "regenerate it with `espfleet ca crl`", which fails the same
    way: it must say to restore the file, and then --refresh brings it up to date."""
    crl_path = fleet_workspace / "pki/crl.pem"
    backup = crl_path.read_bytes()
    issued = CliRunner().invoke(main, ["cert", "issue", "esp32-24a1600a1b2c", "--json"])
    assert CliRunner().invoke(main, ["cert", "revoke", "esp32-24a1600a1b2c"]).exit_code == 0
    if damage is None:
        crl_path.unlink()
    else:
        crl_path.write_bytes(damage)
    for args in (["ca", "crl"], ["ca", "crl", "--refresh"], ["cert", "list"]):
        refused = CliRunner().invoke(main, args)
        assert refused.exit_code == 1, refused.output
        assert refused.output.count("pki/crl.pem") >= 1 and "Traceback" not in refused.output
        assert "restore" in refused.output and "regenerate it with" not in refused.output
        assert not refused.output.startswith("error: pki/crl.pem: pki/crl.pem")
    crl_path.write_bytes(backup)  # as the message says, then --refresh
    fixed = CliRunner().invoke(main, ["ca", "crl", "--refresh", "--json"])
    assert fixed.exit_code == 0, fixed.output
    serial = json.loads(issued.output)["serial"]
    assert [r["serial"] for r in json.loads(fixed.output)["revoked"]] == [serial]


def test_tampered_registry_cannot_unrevoke_through_a_crl_refresh(fleet_workspace: Path) -> None:
    """registry.db changes with every operation, so the manifest cannot sign it: a row
    edited back to "active" must not drop the serial from the next CRL."""
    import sqlite3

    issued = CliRunner().invoke(main, ["cert", "issue", "esp32-24a1600a1b2c", "--json"])
    serial = json.loads(issued.output)["serial"]
    revoked = CliRunner().invoke(main, ["cert", "revoke", serial, "--reason", "key_compromise"])
    assert revoked.exit_code == 0, revoked.output
    with sqlite3.connect(fleet_workspace / "registry.db") as db:
        db.execute("update certificates set status = 'active', revoked_at = null")
    refreshed = CliRunner().invoke(main, ["ca", "crl", "--refresh", "--json"])
    assert refreshed.exit_code == 0, refreshed.output
    [entry] = list(load_crl((fleet_workspace / "pki/crl.pem").read_bytes()))
    assert f"{entry.serial_number:x}" == serial
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise
    other = CliRunner().invoke(main, ["cert", "issue", "esp32-000000000001", "--json"])
    other_serial = json.loads(other.output)["serial"]
    assert CliRunner().invoke(main, ["cert", "revoke", other_serial]).exit_code == 0
    crl = load_crl((fleet_workspace / "pki/crl.pem").read_bytes())
    listed = {f"{e.serial_number:x}" for e in crl}
    assert listed == {serial, other_serial}


def test_ca_crl_pem_and_refresh(fleet_workspace: Path) -> None:
    plain = CliRunner().invoke(main, ["ca", "crl"])
    assert plain.output.startswith("-----BEGIN X509 CRL-----")
    result = CliRunner().invoke(main, ["ca", "crl", "--refresh", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["number"] == 2
    assert crl_number(load_crl((fleet_workspace / "pki/crl.pem").read_bytes())) == 2


def test_ca_crl_refresh_with_wrong_passphrase_changes_nothing(
    fleet_workspace: Path, snapshot: Snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESPFLEET_PASSPHRASE", "definitely wrong")
    before = snapshot(fleet_workspace)
    result = CliRunner().invoke(main, ["ca", "crl", "--refresh"])
    assert result.exit_code == 2 and "check ESPFLEET_PASSPHRASE" in result.output
    assert snapshot(fleet_workspace) == before


def test_ca_reseal_after_edit(fleet_workspace: Path) -> None:
    toml = fleet_workspace / "fleet.toml"
    toml.write_text(toml.read_text().replace("crl_days = 30", "crl_days = 7"))
    refused = CliRunner().invoke(main, ["ca", "show"])
    assert refused.exit_code == 1 and "espfleet ca reseal" in refused.output
    result = CliRunner().invoke(main, ["ca", "reseal", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["changed"] == ["fleet.toml"]
    assert CliRunner().invoke(main, ["ca", "show"]).exit_code == 0


def test_ca_reseal_unsafe_accept_all_files_recovers_a_damaged_manifest(
    fleet_workspace: Path,
) -> None:
    (fleet_workspace / "pki/workspace-manifest.json").write_text("{}")
    refused = CliRunner().invoke(main, ["ca", "reseal"])
    assert refused.exit_code == 1 and "--unsafe-accept-all-files" in refused.output
    result = CliRunner().invoke(main, ["ca", "reseal", "--unsafe-accept-all-files"])
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(main, ["ca", "show"]).exit_code == 0


def test_stale_crl_is_flagged(fleet_workspace: Path) -> None:
    ws = Workspace.open(fleet_workspace)
    with ws.ca(b"correct horse battery staple") as authority:
        authority.regenerate_crl(now=utcnow() - dt.timedelta(days=40))
    result = CliRunner().invoke(main, ["ca", "crl", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stale"] is True
    assert "--refresh" in result.stderr
    refreshed = json.loads(CliRunner().invoke(main, ["ca", "crl", "--refresh", "--json"]).stdout)
    assert refreshed["stale"] is False
