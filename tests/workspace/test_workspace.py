"""Workspace creation, opening, integrity checks and the issuing authority on top of it."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

import espfleet.workspace._create as create_module
from espfleet.errors import InputError, PassphraseError, WorkspaceError
from espfleet.pki.crl import load_crl, revoked_serials
from espfleet.pki.keys import is_encrypted_pem
from espfleet.pki.verify import check_not_revoked, verify_client_chain, verify_server_chain
from espfleet.workspace import Workspace, secure_boot_digest

Snapshot = Callable[[Path], dict[str, str]]
PASS = b"correct horse battery staple"
DEVICE = "esp32-24a1600a1b2c"


def test_layout_and_gitignore(fleet_workspace: Path) -> None:
    for name in (
        "fleet.toml",
        ".gitignore",
        "registry.db",
        "pki/root-ca.pem",
        "pki/issuing-ca.key.pem",
        "pki/crl.pem",
        "pki/broker.pem",
        "pki/ota.key.pem",
        "pki/ca-chain.pem",
        "keys/secure_boot_signing_key.pem",
    ):
        assert (fleet_workspace / name).is_file(), name
    for name in ("vault", "releases", "bundles", "vdevs", "pki/devices"):
        assert (fleet_workspace / name).is_dir(), name
    ignored = (fleet_workspace / ".gitignore").read_text().split()
    for pattern in ("*.key.pem", "keys/", "vault/", "registry.db", "bundles/", "vdevs/"):
        assert pattern in ignored


@pytest.mark.skipif(
    shutil.which("git") is None, reason="git is not installed (apt-get install git)"
)
def test_gitignore_keeps_every_secret_out_of_git(fleet_workspace: Path) -> None:
    subprocess.run(["git", "init", "-q", str(fleet_workspace)], check=True)
    out = subprocess.run(
        ["git", "-C", str(fleet_workspace), "status", "--porcelain", "--untracked-files=all"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    tracked = {line[3:] for line in out.splitlines()}
    assert "fleet.toml" in tracked and "pki/root-ca.pem" in tracked
    assert not [name for name in tracked if name.endswith(".key.pem") or "registry" in name]
    assert not [name for name in tracked if name.startswith(("keys/", "vault/"))]


def test_org_of_64_characters_makes_a_workspace(tmp_path: Path) -> None:
    """fleet.toml allows 64 characters, O='s bound; "<org> Fleet Issuing CA" is longer than
    a CN may be: init died in a ValueError traceback."""
    from cryptography.x509.oid import NameOID

    org = "Acme Sensors International " + "x" * 37
    ws = Workspace.create(tmp_path / "ws", org=org, passphrase=PASS)
    certs = [ws.root_cert, ws.issuing_cert, ws.server_cert("broker"), ws.server_cert("ota")]
    for cert, suffix in zip(certs, (" Fleet Root CA", " Fleet Issuing CA", " broker", " ota"),
                            strict=True):
        [o] = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        [cn] = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        assert o.value == org
        assert isinstance(cn.value, str) and len(cn.value) <= 64
        assert cn.value.endswith(suffix) and cn.value.startswith("Acme Sensors International")
    with ws.ca(PASS) as ca:
        ca.record(ca.issue_device_cert(DEVICE))
    subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ws/pki/root-ca.pem"),
                    "-untrusted", str(tmp_path / "ws/pki/issuing-ca.pem"),
                    str(tmp_path / "ws/pki/broker.pem")], check=True, capture_output=True)


def test_every_private_key_file_is_an_encrypted_pem(fleet_workspace: Path) -> None:
    ws = Workspace.open(fleet_workspace)
    with ws.ca(PASS) as ca:
        ca.record(ca.issue_device_cert(DEVICE))
    keys = [
        path
        for path in fleet_workspace.rglob("*")
        if path.is_file() and b"PRIVATE KEY" in path.read_bytes()
    ]
    assert len(keys) >= 5
    for path in keys:
        assert is_encrypted_pem(path.read_bytes()), path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_server_certificates_verify_for_their_hosts(fleet_workspace: Path) -> None:
    ws = Workspace.open(fleet_workspace)
    now = ws.server_cert("broker").not_valid_before_utc + dt.timedelta(minutes=10)
    for name in ("broker", "ota"):
        for host in ws.config.broker_hosts:
            verify_server_chain(
                ws.server_cert(name), ws.issuing_cert, ws.root_cert, host=host, at=now
            )
            check = "-verify_ip" if host[0].isdigit() else "-verify_hostname"
            subprocess.run(
                [
                    "openssl",
                    "verify",
                    "-purpose",
                    "sslserver",
                    check,
                    host,
                    "-CAfile",
                    str(fleet_workspace / "pki/root-ca.pem"),
                    "-untrusted",
                    str(fleet_workspace / "pki/issuing-ca.pem"),
                    str(fleet_workspace / f"pki/{name}.pem"),
                ],
                check=True,
                capture_output=True,
            )


def test_init_in_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ws = Workspace.create(Path("."), org="Acme", passphrase=PASS)
    assert ws.root == tmp_path and (tmp_path / "fleet.toml").is_file()
    assert Path.cwd() == tmp_path and Workspace.open(Path(".")).root == tmp_path


def espsecure_digest(keyfile: Path, tmp_path: Path) -> bytes:
    """The reference: `espsecure digest-sbv2-public-key` run as a command."""
    out = tmp_path / "digest.bin"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "espsecure",
            "digest-sbv2-public-key",
            "-k",
            str(keyfile),
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


def test_secure_boot_key_and_digest_match_espsecure(fleet_workspace: Path, tmp_path: Path) -> None:
    ws = Workspace.open(fleet_workspace)
    key = ws.signing_key(PASS)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 3072
    pub = fleet_workspace / "keys/secure_boot_signing_key.pub.pem"
    assert ws.secure_boot_digest() == espsecure_digest(pub, tmp_path)


def test_secure_boot_digest_of_espressif_vector_key(vectors: Path, tmp_path: Path) -> None:
    pem = (vectors / "rsa_secure_boot_signing_pubkey.pem").read_bytes()
    reference = espsecure_digest(vectors / "rsa_secure_boot_signing_key.pem", tmp_path)
    assert secure_boot_digest(pem) == reference


def test_wrong_passphrase_is_a_passphrase_error(fleet_workspace: Path, snapshot: Snapshot) -> None:
    before = snapshot(fleet_workspace)
    ws = Workspace.open(fleet_workspace)
    with pytest.raises(
        PassphraseError, match=r"pki/issuing-ca\.key\.pem: check ESPFLEET_PASSPHRASE"
    ):
        ws.ca(b"not the passphrase")
    with pytest.raises(PassphraseError, match="secure_boot_signing_key"):
        ws.signing_key(b"not the passphrase")
    assert snapshot(fleet_workspace) == before


def test_issue_record_revoke_and_crl(fleet_workspace: Path) -> None:
    ws = Workspace.open(fleet_workspace)
    with ws.ca(PASS) as ca:
        issued = ca.issue_device_cert(DEVICE)
        now = issued.not_before
        verify_client_chain(issued.certificate, ws.issuing_cert, ws.root_cert, at=now)
        record = ca.record(issued)
        assert record.serial == issued.serial_hex
        [revoked] = ca.revoke(issued.serial_hex.upper(), "key_compromise")
        assert revoked.status == "revoked"
        crl = load_crl(ca.crl_pem())
    assert issued.serial in revoked_serials(crl)
    with pytest.raises(Exception, match="revoked"):
        check_not_revoked(issued.certificate, crl, ws.issuing_cert)
    Workspace.open(fleet_workspace)  # the new CRL is signed by the issuing CA


def test_revocation_racing_another_one_publishes_the_next_crl_number(
    fleet_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another `cert revoke` commits between this one's first look at the CRL and its
    registry transaction: this CRL must follow that one (number + 1, both serials)."""
    from espfleet.backend.registry import Registry
    from espfleet.pki.crl import crl_number

    ws = Workspace.open(fleet_workspace)
    with ws.ca(PASS) as ca:
        first = ca.record(ca.issue_device_cert("esp32-000000000001"))
        second = ca.record(ca.issue_device_cert("esp32-000000000002"))
    real_revoke = Registry.revoke

    def raced(self: Registry, *args: object, **kwargs: object) -> object:
        monkeypatch.setattr(Registry, "revoke", real_revoke)
        with ws.ca(PASS) as other:
            other.revoke(second.serial)
        return real_revoke(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Registry, "revoke", raced)
    with ws.ca(PASS) as ca:
        ca.revoke(first.serial)
        crl = load_crl(ca.crl_pem())
    assert crl_number(crl) == 3
    assert revoked_serials(crl) == {int(first.serial, 16), int(second.serial, 16)}


@pytest.mark.parametrize(
    "victim",
    [
        "fleet.toml",
        "pki/root-ca.pem",
        "pki/issuing-ca.pem",
        "pki/broker.pem",
        "pki/issuing-ca.key.pem",
        "keys/secure_boot_signing_key.pub.pem",
        "pki/workspace-manifest.json",
        "pki/crl.pem",
        "registry.db",
    ],
)
def test_missing_workspace_file_is_refused(fleet_workspace: Path, victim: str) -> None:
    (fleet_workspace / victim).unlink()
    with pytest.raises(WorkspaceError):
        Workspace.open(fleet_workspace)


def test_tampered_fleet_toml_is_refused(fleet_workspace: Path) -> None:
    path = fleet_workspace / "fleet.toml"
    path.write_text(path.read_text().replace("device_days = 730", "device_days = 1800"))
    with pytest.raises(WorkspaceError, match=r"fleet.toml was modified .*espfleet ca reseal"):
        Workspace.open(fleet_workspace)


def test_tampered_manifest_is_refused(fleet_workspace: Path) -> None:
    toml = fleet_workspace / "fleet.toml"
    toml.write_text(toml.read_text().replace('policy = "escrow"', 'policy = "destroy"'))
    import hashlib
    import json

    manifest = fleet_workspace / "pki/workspace-manifest.json"
    doc = json.loads(manifest.read_text())
    doc["files"]["fleet.toml"] = hashlib.sha256(toml.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(doc))
    with pytest.raises(WorkspaceError, match="not signed by this workspace's issuing CA"):
        Workspace.open(fleet_workspace)


def test_swapped_issuing_ca_is_refused(fleet_workspace: Path, tmp_path: Path) -> None:
    other = Workspace.create(tmp_path / "other", org="Test Fleet", passphrase=PASS)
    (fleet_workspace / "pki/issuing-ca.pem").write_bytes(
        (other.root / "pki/issuing-ca.pem").read_bytes()
    )
    with pytest.raises(WorkspaceError, match=r"was not issued by pki/root-ca\.pem"):
        Workspace.open(fleet_workspace)


def test_damaged_certificate_is_refused(fleet_workspace: Path) -> None:
    (fleet_workspace / "pki/root-ca.pem").write_bytes(b"garbage")
    with pytest.raises(WorkspaceError, match="not a PEM certificate"):
        Workspace.open(fleet_workspace)


def test_reseal_accepts_a_deliberate_edit(fleet_workspace: Path) -> None:
    path = fleet_workspace / "fleet.toml"
    path.write_text(path.read_text().replace("device_days = 730", "device_days = 365"))
    with pytest.raises(PassphraseError):
        Workspace.reseal(fleet_workspace, b"wrong passphrase")
    assert Workspace.reseal(fleet_workspace, PASS) == ["fleet.toml"]
    assert Workspace.open(fleet_workspace).config.lifetimes.device_days == 365


def test_reseal_after_a_hosts_edit_reissues_the_broker_certificate(
    fleet_workspace: Path,
) -> None:
    """Devices check the broker's name: a host added to fleet.toml must be in its SANs."""
    from espfleet.pki.keys import public_key_pem

    ota_before = (fleet_workspace / "pki/ota.pem").read_bytes()
    toml = fleet_workspace / "fleet.toml"
    text = toml.read_text()
    old_hosts = 'broker = ["localhost", "127.0.0.1"]'
    assert old_hosts in text
    toml.write_text(text.replace(old_hosts, 'broker = ["mqtt.acme.example", "10.0.0.5"]'))
    changed = Workspace.reseal(fleet_workspace, PASS)
    assert changed == ["fleet.toml", "pki/broker.key.pem", "pki/broker.pem"]
    ws = Workspace.open(fleet_workspace)
    broker = ws.server_cert("broker")
    at = broker.not_valid_before_utc + dt.timedelta(minutes=10)
    for host in ("mqtt.acme.example", "10.0.0.5"):
        verify_server_chain(broker, ws.issuing_cert, ws.root_cert, host=host, at=at)
    with pytest.raises(Exception, match="subjectAltName"):
        verify_server_chain(broker, ws.issuing_cert, ws.root_cert, host="localhost", at=at)
    key = ws.server_key("broker", PASS)
    assert public_key_pem(key) == public_key_pem(broker.public_key())  # type: ignore[arg-type]
    assert is_encrypted_pem((fleet_workspace / "pki/broker.key.pem").read_bytes())
    assert (fleet_workspace / "pki/ota.pem").read_bytes() == ota_before
    assert Workspace.reseal(fleet_workspace, PASS) == []  # nothing left to do


def test_reseal_refuses_an_invalid_edit(fleet_workspace: Path, snapshot: Snapshot) -> None:
    path = fleet_workspace / "fleet.toml"
    path.write_text(path.read_text().replace('chip = "esp32"', 'chip = "esp8266"'))
    before = snapshot(fleet_workspace)
    with pytest.raises(WorkspaceError, match="esp8266"):
        Workspace.reseal(fleet_workspace, PASS)
    assert snapshot(fleet_workspace) == before


def test_reseal_refuses_a_chip_edit_once_devices_exist(
    fleet_workspace: Path, snapshot: Snapshot
) -> None:
    """esp32 devices are registered: switching the fleet to esp32s3 would orphan them
    (their ids, bundles and eFuse plans are esp32's)."""
    with Workspace.open(fleet_workspace).ca(PASS) as authority:
        authority.record(authority.issue_device_cert(DEVICE))
    path = fleet_workspace / "fleet.toml"
    path.write_text(path.read_text().replace('chip = "esp32"', 'chip = "esp32s3"'))
    before = snapshot(fleet_workspace)
    with pytest.raises(WorkspaceError, match=r"registry holds esp32 devices.*chip = 'esp32'"):
        Workspace.reseal(fleet_workspace, PASS)
    assert snapshot(fleet_workspace) == before


def test_reseal_accepts_a_chip_edit_before_any_device(fleet_workspace: Path) -> None:
    path = fleet_workspace / "fleet.toml"
    path.write_text(path.read_text().replace('chip = "esp32"', 'chip = "esp32s3"'))
    assert Workspace.reseal(fleet_workspace, PASS) == ["fleet.toml"]
    assert Workspace.open(fleet_workspace).config.chip == "esp32s3"


def test_swapped_ca_chain_cannot_ride_along_with_a_reseal(
    fleet_workspace: Path, tmp_path: Path, snapshot: Snapshot
) -> None:
    """ca-chain.pem is what devices and TLS peers are given: a foreign chain slipped in
    while fleet.toml is edited must not be re-signed with it."""
    other = Workspace.create(tmp_path / "other", org="Test Fleet", passphrase=PASS)
    (fleet_workspace / "pki/ca-chain.pem").write_bytes(other.chain_pem())
    toml = fleet_workspace / "fleet.toml"
    toml.write_text(toml.read_text().replace("device_days = 730", "device_days = 365"))
    before = snapshot(fleet_workspace)
    with pytest.raises(WorkspaceError, match=r"pki/ca-chain\.pem changed .*fleet\.toml only"):
        Workspace.reseal(fleet_workspace, PASS)
    assert snapshot(fleet_workspace) == before
    with pytest.raises(WorkspaceError, match=r"^fleet\.toml, pki/ca-chain\.pem were modified"):
        Workspace.open(fleet_workspace)


def test_swapped_issuing_key_is_not_resealed(
    fleet_workspace: Path, tmp_path: Path, snapshot: Snapshot
) -> None:
    """Another CA's key (same passphrase) in place of pki/issuing-ca.key.pem must not
    re-sign the manifest, even with a deliberate fleet.toml edit to accept."""
    other = Workspace.create(tmp_path / "other", org="Test Fleet", passphrase=PASS)
    shutil.copy(other.root / "pki/issuing-ca.key.pem", fleet_workspace / "pki/issuing-ca.key.pem")
    toml = fleet_workspace / "fleet.toml"
    toml.write_text(toml.read_text().replace("device_days = 730", "device_days = 365"))
    before = snapshot(fleet_workspace)
    with pytest.raises(WorkspaceError, match="issuing CA key does not match the issuing CA cert"):
        Workspace.reseal(fleet_workspace, PASS)
    assert snapshot(fleet_workspace) == before


def test_damaged_manifest_is_re_signed_only_when_asked_by_its_unsafe_name(
    fleet_workspace: Path, snapshot: Snapshot
) -> None:
    (fleet_workspace / "pki/workspace-manifest.json").write_bytes(b"{not json")
    before = snapshot(fleet_workspace)
    with pytest.raises(WorkspaceError, match="--unsafe-accept-all-files"):
        Workspace.reseal(fleet_workspace, PASS)
    assert snapshot(fleet_workspace) == before
    assert "fleet.toml" in Workspace.reseal(fleet_workspace, PASS, unsafe_accept_all_files=True)
    Workspace.open(fleet_workspace)


def test_not_a_workspace(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="not an espfleet workspace"):
        Workspace.open(tmp_path)


def test_create_over_existing_workspace_is_refused(
    fleet_workspace: Path, snapshot: Snapshot
) -> None:
    before = snapshot(fleet_workspace)
    with pytest.raises(WorkspaceError, match="already an espfleet workspace"):
        Workspace.create(fleet_workspace, org="Other", passphrase=PASS)
    assert snapshot(fleet_workspace) == before


def test_create_in_non_empty_directory_is_refused(tmp_path: Path, snapshot: Snapshot) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(WorkspaceError, match="not an empty directory"):
        Workspace.create(tmp_path, org="Acme", passphrase=PASS)
    assert snapshot(tmp_path) == before


def test_create_in_an_empty_directory(tmp_path: Path) -> None:
    target = tmp_path / "fleet"
    target.mkdir()
    ws = Workspace.create(
        target,
        org="Acme",
        chip="esp32s3",
        passphrase=PASS,
        broker_hosts=("mqtt.acme.io",),
        key_policy="destroy",
    )
    assert ws.config.chip == "esp32s3" and ws.config.key_policy == "destroy"
    assert sorted(p.name for p in target.iterdir() if p.name.startswith(".")) == [".gitignore"]


def test_failed_create_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> rsa.RSAPrivateKey:
        raise OSError("no entropy")

    monkeypatch.setattr(create_module, "generate_rsa3072_key", boom)
    with pytest.raises(WorkspaceError, match=r"cannot create the workspace.*no entropy"):
        Workspace.create(tmp_path / "fleet", org="Acme", passphrase=PASS)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkspaceError, match=r"cannot create the workspace.*no entropy"):
        Workspace.create(tmp_path / "empty", org="Acme", passphrase=PASS)
    assert list((tmp_path / "empty").iterdir()) == []


def test_bad_arguments_create_nothing(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="neither a DNS name nor an IP"):
        Workspace.create(
            tmp_path / "fleet", org="Acme", broker_hosts=("bad host",), passphrase=PASS
        )
    with pytest.raises(InputError, match="chip"):
        Workspace.create(tmp_path / "fleet", org="Acme", chip="esp8266", passphrase=PASS)
    assert list(tmp_path.iterdir()) == []


def test_registry_url_is_resolved_against_the_workspace(fleet_workspace: Path) -> None:
    ws = Workspace.open(fleet_workspace)
    assert ws.registry_url == f"sqlite:///{fleet_workspace / 'registry.db'}"
    with ws.registry() as registry:
        assert registry.list_devices() == []


def test_chain_pem_is_issuing_then_root(fleet_workspace: Path) -> None:
    ws = Workspace.open(fleet_workspace)
    certs = x509.load_pem_x509_certificates(ws.chain_pem())
    assert certs == [ws.issuing_cert, ws.root_cert]
    assert (fleet_workspace / "pki/ca-chain.pem").read_bytes() == ws.chain_pem()
    assert os.path.samefile(ws.pki_dir, fleet_workspace / "pki")


def test_secret_directories_are_owner_only(tmp_path: Path) -> None:
    """keys/, vault/, pki/, bundles/ and vdevs/ hold secrets: no group or other access."""
    from espfleet.workspace import Workspace
    from espfleet.workspace.layout import PRIVATE_DIRS

    ws = Workspace.create(tmp_path / "fleet", org="Acme", passphrase=b"correct horse battery")
    for name in PRIVATE_DIRS:
        mode = stat.S_IMODE((ws.root / name).stat().st_mode)
        assert mode == 0o700, f"{name} is {oct(mode)}"
