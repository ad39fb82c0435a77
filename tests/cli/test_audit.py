"""`espfleet audit flash|efuse` through click's CliRunner: exit codes, output, JSON."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from espfleet.cli import main
from espfleet.device.chip import VirtualChip
from espfleet.device.server import LoaderServer
from espfleet.provisioning.vault import DeviceSecrets, Vault

DEVICE = "esp32-246f28c0ffee"
OTHER = "esp32-246f28c0ff00"


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["audit", *args])


def clean_dump(path: Path, size: int = 0x80000) -> bytearray:
    data = bytearray(random.Random(7).randbytes(size))
    data[size // 2 :] = b"\xff" * (size - size // 2)
    path.write_bytes(data)
    return data


def test_clean_dump_passes(tmp_path: Path) -> None:
    dump = tmp_path / "dump.bin"
    clean_dump(dump)
    result = run("flash", str(dump))
    assert result.exit_code == 0, result.output
    assert "PASS: no finding at or above high" in result.output
    assert "0x00000000 ################################################################" in (
        result.output)
    assert "0x00040000 ................................................................" in (
        result.output)


def test_flash_audit_without_workspace_says_fleet_secrets_were_not_searched(
    tmp_path: Path,
) -> None:
    """A PASS without --workspace never searched for the fleet's keys: say so, even when
    the workspace was given as `espfleet -w` or $ESPFLEET_WORKSPACE (not used here)."""
    dump = tmp_path / "dump.bin"
    clean_dump(dump)
    result = run("flash", str(dump))
    assert result.exit_code == 0, result.output
    assert "note: the fleet's own secrets" in result.output
    assert "add --workspace DIR" in result.output
    out = json.loads(run("flash", str(dump), "--json").output)
    assert any("were not searched" in note for note in out["notes"])


def test_flash_json_lists_findings_and_entropy(tmp_path: Path) -> None:
    dump = tmp_path / "dump.bin"
    data = clean_dump(dump)
    data[0x2000:0x2016] = b"\x00AKIAIOSFODNN7EXAMPLE\x00"
    dump.write_bytes(data)
    result = run("flash", str(dump), "--json")
    assert result.exit_code == 1
    out = json.loads(result.output)
    (finding,) = out["findings"]
    assert finding == {
        "severity": "critical", "kind": "aws-access-key", "offset": 0x2001,
        "offset_hex": "0x2001", "length": 20,
        "message": "AWS access key id (its secret key is usually stored next to it): "
        "AKIA**************LE",
        "fix": finding["fix"],
    }
    assert out["passed"] is False and out["fail_on"] == "high"
    assert len(out["entropy"]["blocks"]) == 0x80
    assert out["entropy"]["blocks"][0x7F] == {"offset": 0x7F000, "entropy": 0.0,
                                              "class": "erased", "written": 0}


def test_fail_on_threshold(tmp_path: Path) -> None:
    dump = tmp_path / "dump.bin"
    data = clean_dump(dump)
    data[0x3000:0x3040] = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKJ8d9ZiZ3mZPzZ0Xc2y user\x00"
    dump.write_bytes(data)
    assert run("flash", str(dump)).exit_code == 0  # medium only
    assert run("flash", str(dump), "--fail-on", "medium").exit_code == 1


@pytest.mark.parametrize("args, message", [
    (["flash", "missing.bin"], "cannot read flash dump"),
    (["flash", "dump.bin", "--device", DEVICE], "--device needs --workspace"),
    (["efuse", "--chip", "esp32"], "either an eFuse FILE"),
    (["efuse", "dump.bin", "--port", "socket://127.0.0.1:1", "--chip", "esp32"],
     "either an eFuse FILE"),
    (["efuse", "dump.bin", "--chip", "esp32"], "an esp32 eFuse file (espefuse --virt) is 288"),
])
def test_bad_input_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
                           message: str) -> None:
    monkeypatch.chdir(tmp_path)
    clean_dump(tmp_path / "dump.bin")
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def _vault_device(workspace: Path, device_id: str) -> DeviceSecrets:
    from espfleet.workspace import Workspace

    secrets = DeviceSecrets(os.urandom(32), os.urandom(64), "recovery-" + os.urandom(8).hex(),
                            wifi_password="fleet-wifi-passw0rd")
    vault = Vault.open(Workspace.open(workspace).vault_dir,
                       os.environ["ESPFLEET_PASSPHRASE"].encode())
    vault.store(device_id, secrets)
    return secrets


def test_workspace_secrets_found_by_exact_bytes(
    fleet_workspace: Path, tmp_path: Path, snapshot: Callable[[Path], dict[str, str]]
) -> None:
    mine, other = _vault_device(fleet_workspace, DEVICE), _vault_device(fleet_workspace, OTHER)
    dump = tmp_path / "dump.bin"
    data = clean_dump(dump)
    data[0x1000:0x1020] = mine.flash_encryption_key
    data[0x2000:0x2000 + 64] = mine.nvs_keys.hex().encode()
    data[0x3001:0x3001 + len(other.recovery_secret)] = other.recovery_secret.encode()
    dump.write_bytes(data)
    before = snapshot(fleet_workspace)

    result = run("flash", str(dump), "--workspace", str(fleet_workspace), "--json")
    assert result.exit_code == 1, result.output
    known = {(f["offset"], f["message"]) for f in json.loads(result.output)["findings"]
             if f["kind"] == "known-secret"}
    assert (0x1000, f"the workspace's flash-encryption key of {DEVICE} is readable in "
            "plaintext (raw)") in known
    assert any(o == 0x2000 and f"NVS keys of {DEVICE}" in m and "(hex)" in m for o, m in known)
    assert any(o == 0x3001 and f"recovery secret of {OTHER}" in m for o, m in known)
    assert not any("were not searched" in n for n in json.loads(result.output)["notes"])

    only_other = run("flash", str(dump), "--workspace", str(fleet_workspace), "--device", OTHER,
                     "--json")
    messages = [f["message"] for f in json.loads(only_other.output)["findings"]]
    assert not any(DEVICE in m for m in messages) and any(OTHER in m for m in messages)
    # --device-id, as `espfleet provision` names it, selects the same way
    same = run("flash", str(dump), "--workspace", str(fleet_workspace), "--device-id", OTHER,
               "--json")
    assert same.exit_code == only_other.exit_code
    assert [f["message"] for f in json.loads(same.output)["findings"]] == messages
    assert snapshot(fleet_workspace) == before


def test_unknown_device_is_bad_input_not_a_silent_pass(
    fleet_workspace: Path, tmp_path: Path
) -> None:
    """A mistyped --device must not make the audit pass without searching anything."""
    _vault_device(fleet_workspace, DEVICE)
    dump = tmp_path / "dump.bin"
    clean_dump(dump)
    result = run("flash", str(dump), "--workspace", str(fleet_workspace), "--device", DEVICE,
                 "--device", "esp32-246f28c0fe0e")
    assert result.exit_code == 2, result.output
    assert "no device esp32-246f28c0fe0e in this workspace" in result.output
    assert run("flash", str(dump), "--workspace", str(fleet_workspace), "--device",
               DEVICE).exit_code == 0


def test_wrong_passphrase_exits_2(
    fleet_workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _vault_device(fleet_workspace, DEVICE)
    monkeypatch.setenv("ESPFLEET_PASSPHRASE", "not the passphrase")
    dump = tmp_path / "dump.bin"
    clean_dump(dump)
    result = run("flash", str(dump), "--workspace", str(fleet_workspace))
    assert result.exit_code == 2, result.output


def test_efuse_audit_over_port_of_virtual_esp32(tmp_path: Path) -> None:
    """The real espefuse reads the virtual chip's eFuses over socket://."""
    chip = VirtualChip.new("esp32", revision=300)
    with LoaderServer(chip) as server:
        over_port = run("efuse", "--port", server.url, "--chip", "esp32", "--json")
    assert over_port.exit_code == 1, over_port.output
    port_findings = json.loads(over_port.output)["findings"]
    assert {f["kind"] for f in port_findings} >= {
        "fe-key-missing", "flash-encryption-off", "secure-boot-off", "download-mode-open"}
    efuse_file = tmp_path / "chip.efuse"
    efuse_file.write_bytes(chip.efuse_bytes())
    from_file = run("efuse", str(efuse_file), "--chip", "esp32", "--json")
    assert json.loads(from_file.output)["findings"] == port_findings


def test_efuse_audit_over_port_with_the_wrong_chip_is_bad_input() -> None:
    chip = VirtualChip.new("esp32", revision=300)
    with LoaderServer(chip) as server:
        result = run("efuse", "--port", server.url, "--chip", "esp32s3")
    assert result.exit_code == 2, result.output
    assert f"the chip on {server.url} is not an esp32s3" in result.output
    assert "pass its family as --chip" in result.output
    assert "download mode" not in result.output and "?." not in result.output


def test_efuse_human_output_names_fix_commands(tmp_path: Path) -> None:
    efuse_file = tmp_path / "chip.efuse"
    efuse_file.write_bytes(VirtualChip.new("esp32s3").efuse_bytes())
    result = run("efuse", str(efuse_file), "--chip", "esp32s3")
    assert result.exit_code == 1
    assert ("CRITICAL SPI_BOOT_CRYPT_CNT: flash encryption is off: every `esptool read-flash` "
            "returns plaintext") in result.output
    assert "found 0x0 (even: off), required an odd number of bits (0x7)" in result.output
    assert ("fix: run: espefuse --chip esp32s3 --port PORT burn-efuse SECURE_BOOT_KEY_REVOKE2 1"
            in result.output)
    assert "FAIL:" in result.output


def test_efuse_port_unreachable_is_an_operation_failure() -> None:
    result = run("efuse", "--port", "socket://127.0.0.1:9", "--chip", "esp32")
    assert result.exit_code == 1
    assert "could not read the eFuses of the esp32 on socket://127.0.0.1:9" in result.output


def test_fleet_keys_found_by_name(fleet_workspace: Path, tmp_path: Path) -> None:
    """The issuing CA key and the broker's TLS key compiled into firmware are named."""
    from cryptography.hazmat.primitives import serialization

    from espfleet.workspace import Workspace

    workspace = Workspace.open(fleet_workspace)
    passphrase = os.environ["ESPFLEET_PASSPHRASE"].encode()
    with workspace.ca(passphrase) as ca:
        ca_der = ca.issuing_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
    broker_pem = workspace.server_key("broker", passphrase).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption())
    dump = tmp_path / "dump.bin"
    data = clean_dump(dump)
    data[0x1000 : 0x1000 + len(ca_der)] = ca_der
    data[0x4000 : 0x4000 + len(broker_pem)] = broker_pem
    dump.write_bytes(data)
    result = run("flash", str(dump), "--workspace", str(fleet_workspace), "--json")
    assert result.exit_code == 1
    named = {(f["offset"], f["message"]) for f in json.loads(result.output)["findings"]
             if f["kind"] == "known-secret"}
    assert (0x1000, "the workspace's fleet issuing CA key (DER) is readable in plaintext (raw)"
            ) in named
    assert (0x4000, "the workspace's fleet broker server TLS key (PEM) is readable in "
            "plaintext (raw)") in named


def test_fleet_key_as_a_bare_ec_scalar_is_found(fleet_workspace: Path, tmp_path: Path) -> None:
    """Firmware that keeps a P-256 key as its 32 raw bytes (no DER around it) leaks it
    all the same: the exact-bytes search knows that form too."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from espfleet.workspace import Workspace

    with Workspace.open(fleet_workspace).ca(os.environ["ESPFLEET_PASSPHRASE"].encode()) as ca:
        key = ca.issuing_key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    dump = tmp_path / "dump.bin"
    data = clean_dump(dump)
    data[0x2010 : 0x2030] = scalar
    dump.write_bytes(data)
    result = run("flash", str(dump), "--workspace", str(fleet_workspace), "--json")
    assert result.exit_code == 1, result.output
    assert (0x2010, "the workspace's fleet issuing CA key (raw EC scalar) is readable in "
            "plaintext (raw)") in {(f["offset"], f["message"])
                                   for f in json.loads(result.output)["findings"]}


def test_escape_sequence_in_a_planted_certificate_does_not_reach_the_terminal(
    tmp_path: Path,
) -> None:
    """The dump is attacker-controlled: a certificate subject with an escape sequence
    (clear screen, retitle) is printed with the control characters replaced."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ok\x1b[2J\x1b]0;pwned\x07")])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    dump = tmp_path / "dump.bin"
    data = clean_dump(dump)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    data[0x1000 : 0x1000 + len(pem)] = pem
    dump.write_bytes(data)
    result = run("flash", str(dump))
    assert r"pem-certificate: plaintext PEM certificate (subject CN=ok?[2J?]0\;pwned?)" in (
        result.output)
    assert "\x1b" not in result.output and "\x07" not in result.output


def test_human_output_is_capped_json_is_not(tmp_path: Path) -> None:
    dump = tmp_path / "dump.bin"
    data = clean_dump(dump)
    for n in range(250):
        data[0x100 * n : 0x100 * n + 22] = b"\x00AKIAIOSFODNN7EXAMPLE\x00"
    dump.write_bytes(data)
    human = run("flash", str(dump))
    assert "... and 50 more findings: use --json for all of them" in human.output
    assert len(json.loads(run("flash", str(dump), "--json").output)["findings"]) == 250


@pytest.mark.parametrize("command", ["flash", "efuse"])
def test_every_option_has_help(command: str) -> None:
    from espfleet.cli.audit_cmd import audit

    sub = audit.commands[command]
    bare = [p.name for p in sub.params if isinstance(p, click.Option) and not p.help]
    assert bare == [], f"audit {command}: options without help text: {bare}"
