"""`espfleet cert` through CliRunner; every bad input leaves the workspace byte-for-byte."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from espfleet.cli import main
from espfleet.pki.keys import decrypt_private_key, is_encrypted_pem
from espfleet.pki.verify import verify_client_chain
from espfleet.workspace import Workspace

Snapshot = Callable[[Path], dict[str, str]]
DEVICE = "esp32-24a1600a1b2c"
PASS = b"correct horse battery staple"


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def run_json(*args: str) -> Any:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def make_csr(tmp_path: Path, common_name: str, *, broken: bool = False) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    if broken:
        der[-1] ^= 0x01
    path = tmp_path / f"{common_name}{'-broken' if broken else ''}.csr"
    path.write_bytes(bytes(der))
    return path


def openssl_verify(workspace: Path, cert: Path) -> None:
    subprocess.run(
        [
            "openssl",
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            str(workspace / "pki/root-ca.pem"),
            "-untrusted",
            str(workspace / "pki/issuing-ca.pem"),
            str(cert),
        ],
        check=True,
        capture_output=True,
    )


def test_issue_factory_path_stores_an_encrypted_key(fleet_workspace: Path) -> None:
    info = run_json("cert", "issue", DEVICE)
    files = {name: Path(path) for name, path in info["files"].items()}
    assert files["cert"].parent == fleet_workspace / "pki/devices" / DEVICE
    assert info["key_encrypted"] is True and info["status"] == "active"
    key_pem = files["key"].read_bytes()
    assert is_encrypted_pem(key_pem)
    key = decrypt_private_key(key_pem, PASS, name="device key")
    cert = x509.load_pem_x509_certificate(files["cert"].read_bytes())
    assert cert.public_key() == key.public_key()
    openssl_verify(fleet_workspace, files["cert"])
    ws = Workspace.open(fleet_workspace)
    verify_client_chain(cert, ws.issuing_cert, ws.root_cert, at=cert.not_valid_before_utc)
    assert files["chain"].read_bytes() == ws.chain_pem()
    with ws.registry() as registry:
        assert registry.active_certificate(DEVICE).serial == info["serial"]  # type: ignore[union-attr]
        assert registry.get_device(DEVICE).mac == "24a1600a1b2c"  # type: ignore[union-attr]


def test_issue_out_of_workspace_writes_a_plain_key_with_a_warning(
    fleet_workspace: Path, tmp_path: Path
) -> None:
    out = tmp_path / "to-device"
    result = CliRunner().invoke(main, ["cert", "issue", DEVICE, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert "UNENCRYPTED" in result.stderr
    info = json.loads(result.stdout)
    assert info["key_encrypted"] is False
    key_path = out / "device.key.pem"
    assert (key_path.stat().st_mode & 0o777) == 0o600
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    openssl_verify(fleet_workspace, out / "device.pem")


def test_out_dir_of_another_device_is_not_overwritten(
    fleet_workspace: Path, tmp_path: Path
) -> None:
    """Outside the workspace the --out directory holds the only copy of a device's key:
    issuing the next device into the same directory would destroy it."""
    out = tmp_path / "certs"
    assert run("cert", "issue", "esp32-aaaaaaaaaaaa", "--out", str(out)).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = run("cert", "issue", "esp32-bbbbbbbbbbbb", "--out", str(out))
    assert result.exit_code == 2, result.output
    assert "already holds the files of esp32-aaaaaaaaaaaa" in result.output
    assert str(out / "esp32-bbbbbbbbbbbb") in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert run("cert", "list", "--json").output.count("esp32-bbbbbbbbbbbb") == 0
    renewed = run("cert", "issue", "esp32-aaaaaaaaaaaa", "--out", str(out), "--renew")
    assert renewed.exit_code == 0, renewed.output  # its own files: renewal replaces them


def test_issue_from_csr(fleet_workspace: Path, tmp_path: Path) -> None:
    info = run_json("cert", "issue", DEVICE, "--csr", str(make_csr(tmp_path, DEVICE)))
    assert "key" not in info["files"] and info["key_encrypted"] is None
    openssl_verify(fleet_workspace, Path(info["files"]["cert"]))


def test_renew_supersedes_the_active_certificate(fleet_workspace: Path) -> None:
    first = run_json("cert", "issue", DEVICE)
    second = run_json("cert", "issue", DEVICE, "--renew")
    assert second["renewed"] is True and second["superseded"] == first["serial"]
    listed = {c["serial"]: c["status"] for c in run_json("cert", "list")}
    assert listed == {first["serial"]: "superseded", second["serial"]: "active"}


def test_factory_key_for_a_provisioned_device_is_refused(
    fleet_workspace: Path, tmp_path: Path, snapshot: Snapshot
) -> None:
    """A provisioned device's identity is in its bundle: a key generated here would
    supersede it, and flashing the bundle would install a superseded certificate."""
    ws = Workspace.open(fleet_workspace)
    with ws.ca(PASS) as ca:
        ca.record(ca.issue_device_cert(DEVICE))
        ca.registry.update_device(DEVICE, status="provisioned", bundle_sha256="ab" * 32)
    before = snapshot(fleet_workspace)
    refused = run("cert", "issue", DEVICE, "--renew")
    assert refused.exit_code == 2, refused.output
    assert "has a provisioned bundle" in refused.output and "--csr" in refused.output
    assert snapshot(fleet_workspace) == before
    from_device = run("cert", "issue", DEVICE, "--renew", "--csr", str(make_csr(tmp_path, DEVICE)))
    assert from_device.exit_code == 0, from_device.output  # the device's own key: fine


def test_renewal_from_a_csr_removes_the_old_factory_key(
    fleet_workspace: Path, tmp_path: Path
) -> None:
    first = run_json("cert", "issue", DEVICE)
    old_key = Path(first["files"]["key"])
    renewed = run_json("cert", "issue", DEVICE, "--renew", "--csr", str(make_csr(tmp_path, DEVICE)))
    assert renewed["removed"] == [str(old_key)] and not old_key.exists()
    assert sorted(p.name for p in old_key.parent.iterdir()) == ["ca-chain.pem", "device.pem"]


def test_revoke_by_serial_publishes_the_crl(fleet_workspace: Path) -> None:
    issued = run_json("cert", "issue", DEVICE)
    info = run_json("cert", "revoke", issued["serial"], "--reason", "key_compromise")
    assert [r["serial"] for r in info["revoked"]] == [issued["serial"]]
    text = subprocess.run(
        ["openssl", "crl", "-in", str(fleet_workspace / "pki/crl.pem"), "-text", "-noout"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert issued["serial"].upper() in text.replace(":", "").upper()
    assert "Key Compromise" in text
    crl = run_json("ca", "crl")
    assert [r["serial"] for r in crl["revoked"]] == [issued["serial"]]
    assert crl["number"] == 2


def test_revoke_by_device_id_marks_the_device_revoked(fleet_workspace: Path) -> None:
    run_json("cert", "issue", DEVICE)
    run_json("cert", "revoke", DEVICE)
    with Workspace.open(fleet_workspace).registry() as registry:
        assert registry.get_device(DEVICE).status == "revoked"  # type: ignore[union-attr]
    refused = run("cert", "issue", DEVICE, "--renew")
    assert refused.exit_code == 2 and "revoked device gets no certificate" in refused.output


def test_revoked_stolen_device_cannot_use_its_superseded_certificate(
    fleet_workspace: Path,
) -> None:
    old = run_json("cert", "issue", DEVICE)
    new = run_json("cert", "issue", DEVICE, "--renew")
    run_json("cert", "revoke", DEVICE, "--reason", "key_compromise")
    text = subprocess.run(
        ["openssl", "crl", "-in", str(fleet_workspace / "pki/crl.pem"), "-text", "-noout"],
        check=True, capture_output=True, text=True,
    ).stdout.replace(":", "").upper()
    assert old["serial"].upper() in text and new["serial"].upper() in text


def test_list_expiring_within(fleet_workspace: Path) -> None:
    run_json("cert", "issue", DEVICE)
    assert run_json("cert", "list", "--expiring-within", "30") == []
    [soon] = run_json("cert", "list", "--expiring-within", "800")
    assert soon["device_id"] == DEVICE
    table = run("cert", "list")
    assert table.exit_code == 0
    header, row = table.output.splitlines()
    assert header.split() == ["device", "status", "not", "after", "(UTC)", "serial"]
    assert row.split()[0] == DEVICE and row.split()[-1] == soon["serial"]  # whole, never cut


def test_list_marks_an_expired_certificate(fleet_workspace: Path) -> None:
    """Expired ones are what --expiring-within is for: the table must not call them active."""
    import sqlite3

    expired = run_json("cert", "issue", DEVICE)
    with sqlite3.connect(fleet_workspace / "registry.db") as db:
        db.execute("update certificates set not_after = '2025-01-01 00:00:00.000000' "
                   "where serial = ?", (expired["serial"],))
    table = run("cert", "list", "--expiring-within", "0")
    assert table.exit_code == 0, table.output
    [row] = table.output.splitlines()[1:]
    assert row.split()[:2] == [DEVICE, "expired"] and row.split()[-1] == expired["serial"]
    [listed] = run_json("cert", "list", "--expiring-within", "0")
    assert listed["status"] == "active"  # the registry state; JSON readers compare not_after


# -- bad input: a clear error, the right exit code, and nothing changed on disk ----------


def _bad_input_cases(tmp_path: Path) -> dict[str, tuple[list[str], int, str]]:
    return {
        "invalid_device_id": (["cert", "issue", "ESP32 bad"], 2, "invalid device id"),
        "device_of_another_chip": (
            ["cert", "issue", "esp32c3-24a1600a1b2c"], 2, "this workspace's product is an esp32"
        ),
        "csr_for_another_device": (
            ["cert", "issue", DEVICE, "--csr", str(make_csr(tmp_path, "esp32-000000000001"))],
            2,
            "only request a certificate for its own id",
        ),
        "csr_with_broken_signature": (
            ["cert", "issue", DEVICE, "--csr", str(make_csr(tmp_path, DEVICE, broken=True))],
            2,
            "broken signature",
        ),
        "missing_csr_file": (
            ["cert", "issue", DEVICE, "--csr", str(tmp_path / "nope.csr")],
            2,
            "cannot read the CSR",
        ),
        "already_active_without_renew": (["cert", "issue", "esp32-aaaaaaaaaaaa"], 2, "--renew"),
        "revoke_unknown_serial": (["cert", "revoke", "0123abcd"], 2, "neither a device id nor"),
        "revoke_garbage": (["cert", "revoke", "not-a-thing!"], 2, "neither a device id nor"),
        "revoke_twice": (["cert", "revoke", "esp32-bbbbbbbbbbbb"], 2, "already revoked"),
        "bad_reason": (["cert", "revoke", "esp32-aaaaaaaaaaaa", "--reason", "meh"], 2, "meh"),
        "expiring_within_past_year_9999": (
            ["cert", "list", "--expiring-within", "99999999999"], 2, "--expiring-within"
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "invalid_device_id",
        "device_of_another_chip",
        "csr_for_another_device",
        "csr_with_broken_signature",
        "missing_csr_file",
        "already_active_without_renew",
        "revoke_unknown_serial",
        "revoke_garbage",
        "revoke_twice",
        "bad_reason",
        "expiring_within_past_year_9999",
    ],
)
def test_bad_input_changes_nothing(
    fleet_workspace: Path, tmp_path: Path, snapshot: Snapshot, case: str
) -> None:
    run_json("cert", "issue", "esp32-aaaaaaaaaaaa")
    run_json("cert", "issue", "esp32-bbbbbbbbbbbb")
    run_json("cert", "revoke", "esp32-bbbbbbbbbbbb")
    args, code, message = _bad_input_cases(tmp_path)[case]
    before = snapshot(fleet_workspace)
    result = run(*args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert snapshot(fleet_workspace) == before


def test_wrong_passphrase_changes_nothing(
    fleet_workspace: Path, snapshot: Snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_json("cert", "issue", "esp32-aaaaaaaaaaaa")
    monkeypatch.setenv("ESPFLEET_PASSPHRASE", "wrong passphrase")
    before = snapshot(fleet_workspace)
    for args in (["cert", "issue", DEVICE], ["cert", "revoke", "esp32-aaaaaaaaaaaa"]):
        result = run(*args)
        assert result.exit_code == 2
        assert "the passphrase does not decrypt pki/issuing-ca.key.pem" in result.output
    assert snapshot(fleet_workspace) == before


@pytest.mark.parametrize("victim", ["fleet.toml", "pki/issuing-ca.pem", "registry.db"])
def test_missing_or_tampered_workspace_file_changes_nothing(
    fleet_workspace: Path, snapshot: Snapshot, victim: str
) -> None:
    # registry.db changes with every operation, so it is not signed: only its loss is caught
    for damage in ("tamper", "remove") if victim != "registry.db" else ("remove",):
        path = fleet_workspace / victim
        original = path.read_bytes()
        if damage == "remove":
            path.unlink()
        else:
            path.write_bytes(
                original.replace(b"30", b"31", 1) if victim == "fleet.toml" else original[:-40]
            )
        before = snapshot(fleet_workspace)
        for args in (["cert", "issue", DEVICE], ["cert", "list"], ["ca", "show"]):
            result = run(*args)
            assert result.exit_code == 1, (victim, damage, args, result.output)
            assert "Traceback" not in result.output
        assert snapshot(fleet_workspace) == before
        path.write_bytes(original)


def test_unwritable_out_dir_records_nothing(
    fleet_workspace: Path, tmp_path: Path, snapshot: Snapshot
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a directory")
    before = snapshot(fleet_workspace)
    result = run("cert", "issue", DEVICE, "--out", str(blocker / "device"))
    assert result.exit_code == 2, result.output
    assert "cannot write to" in result.output and "Traceback" not in result.output
    assert snapshot(fleet_workspace) == before
    assert run_json("cert", "issue", DEVICE)["status"] == "active"  # no --renew needed


def test_failed_write_of_the_key_records_nothing_and_leaves_no_file(
    fleet_workspace: Path, snapshot: Snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    from espfleet import _io
    from espfleet.cli import cert_cmd

    real = _io.atomic_write

    def full_disk_on_key(path: Path, data: bytes, mode: int = 0o644) -> None:
        if path.name == "device.key.pem":
            raise OSError(28, "No space left on device", str(path))
        real(path, data, mode)

    monkeypatch.setattr(cert_cmd, "atomic_write", full_disk_on_key)
    before = snapshot(fleet_workspace)
    result = run("cert", "issue", DEVICE)
    assert result.exit_code == 2, result.output
    assert "No space left on device" in result.output and "nothing was recorded" in result.output
    assert snapshot(fleet_workspace) == before


def test_failed_renewal_restores_the_previous_files(
    fleet_workspace: Path, snapshot: Snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    from espfleet.errors import RegistryError
    from espfleet.workspace.authority import IssuingAuthority

    run_json("cert", "issue", DEVICE)
    before = snapshot(fleet_workspace)

    def refused(*_args: object, **_kwargs: object) -> None:
        raise RegistryError("the registry refused the change (conflicting record)")

    monkeypatch.setattr(IssuingAuthority, "record", refused)
    result = run("cert", "issue", DEVICE, "--renew")
    assert result.exit_code == 1 and "conflicting record" in result.output
    assert snapshot(fleet_workspace) == before
    csr = make_csr(fleet_workspace.parent, DEVICE)  # renewal from a CSR removes the old key
    result = run("cert", "issue", DEVICE, "--renew", "--csr", str(csr))
    assert result.exit_code == 1 and "conflicting record" in result.output
    assert snapshot(fleet_workspace) == before
    key = fleet_workspace / "pki/devices" / DEVICE / "device.key.pem"
    assert (key.stat().st_mode & 0o777) == 0o600


def test_concurrent_issue_waits_for_the_output_directory(tmp_path: Path) -> None:
    """Files go in before the registry row: a second `cert issue` for the same device must
    not snapshot, overwrite or roll back the first one's files while it records."""
    import fcntl
    import os

    from espfleet.cli.cert_cmd import _undo_on_failure

    out = tmp_path / "new" / "device"
    with _undo_on_failure(out, [out / "device.pem"]):
        fd = os.open(out, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    with pytest.raises(RuntimeError), _undo_on_failure(out, [out / "device.pem"]):
        (out / "device.pem").write_bytes(b"half")
        raise RuntimeError("registry refused")
    assert (tmp_path / "new").is_dir() and not (out / "device.pem").exists()


def test_debug_shows_a_traceback(fleet_workspace: Path) -> None:
    result = run("--debug", "cert", "issue", "nope nope")
    assert result.exit_code == 2 and "Traceback" in result.output


@pytest.mark.parametrize(
    "command",
    [
        ["cert", "issue"],
        ["cert", "revoke"],
        ["cert", "list"],
        ["ca", "show"],
        ["ca", "crl"],
        ["ca", "reseal"],
        ["init"],
    ],
)
def test_every_subcommand_has_help(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output
