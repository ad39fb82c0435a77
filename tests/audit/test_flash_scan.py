"""Flash read-out audit: plant each kind of secret into an otherwise clean dump."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from espfleet.audit.entropy import BlockClass, entropy_map
from espfleet.audit.findings import Severity
from espfleet.audit.flash_scan import scan_flash
from espfleet.audit.known_secrets import KnownSecret, encodings
from espfleet.audit.secrets_scan import scan_secrets
from espfleet.chips import chip_facts
from espfleet.errors import InputError


def kinds_at(report: Any) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for f in report.findings:
        out.setdefault(f.offset, set()).add(f.kind)
    return out


def test_clean_dump_has_no_findings(kit: Any) -> None:
    report = scan_flash(bytes(kit.clean_dump()))
    assert [f for f in report.findings if f.severity >= Severity.LOW] == []
    counts = report.entropy.counts()
    assert counts["ciphertext"] == 192 and counts["erased"] == 64


def test_empty_dump_is_bad_input() -> None:
    with pytest.raises(InputError, match="empty"):
        scan_flash(b"")


def test_stock_espressif_images_raise_no_secret_findings(vectors: Any) -> None:
    """No false positives on real ESP-IDF builds (error-name tables, log strings)."""
    for name in ("hello-world-signed.bin", "bootloader_esp32.bin", "esp_idf_blink_esp32s2.bin",
                 "bootloader_esp32_v5_2.bin", "bootloader_esp32c3.bin"):
        assert scan_secrets((vectors / name).read_bytes()) == [], name


def test_flash_readout_finds_every_planted_secret_at_its_offset(
    kit: Any, pem_key_and_cert: tuple[bytes, bytes], rsa_key: Any
) -> None:
    key_pem, cert_pem = pem_key_and_cert
    cert, ec_key = kit.make_cert("broker.example.com")
    der_cert = cert.public_bytes(serialization.Encoding.DER)
    sec1 = ec_key.private_bytes(serialization.Encoding.DER,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    pkcs1 = rsa_key.private_bytes(serialization.Encoding.DER,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption())
    openssh = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption())
    ssh_pub = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    dump = kit.clean_dump()
    planted = {
        kit.plant(dump, 0x1234, b"\x00" + key_pem): "pem-private-key",
        kit.plant(dump, 0x5000, cert_pem): "pem-certificate",
        kit.plant(dump, 0x9003, der_cert): "der-certificate",
        kit.plant(dump, 0xB001, sec1): "der-private-key",
        kit.plant(dump, 0xC000, pkcs1): "der-private-key",
        kit.plant(dump, 0xE000, openssh): "pem-private-key",
        kit.plant(dump, 0x10000, ssh_pub + b"\x00"): "ssh-public-key",
        kit.plant(dump, 0x11000, b"\x00AKIAIOSFODNN7EXAMPLE\x00"): "aws-access-key",
        kit.plant(dump, 0x12000, b"mqtts://fleet:Sup3rS3cret@mqtt.example.com\x00"):
            "url-credentials",
    }
    planted[0x1235] = planted.pop(0x1234)  # the PEM starts after the NUL
    planted[0x11001] = planted.pop(0x11000)
    wifi_at = kit.plant(dump, 0x13000, b"\x00wifi_password=correct-horse-9\x00")
    planted[wifi_at + len(b"\x00wifi_password=")] = "password-like"
    mqtt_at = kit.plant(dump, 0x14000, b"\x00mqtt_pass\x00\x00\x00Br0k3rPa55\x00")
    planted[mqtt_at + len(b"\x00mqtt_pass\x00\x00\x00")] = "password-like"

    report = scan_flash(bytes(dump))
    found = kinds_at(report)
    for offset, kind in planted.items():
        assert kind in found.get(offset, set()), (hex(offset), kind, found.get(offset))
    secrets = {f.offset for f in report.findings if f.severity == Severity.CRITICAL}
    assert {0x1235, 0xB001, 0xC000, 0xE000, 0x11001, 0x12000} <= secrets
    assert all(f.fix and f.message for f in report.findings)
    assert b"correct-horse-9" not in repr(report.to_json()).encode()  # redacted


def test_plaintext_nvs_entries_found_at_their_offsets(kit: Any) -> None:
    cert, _ = kit.make_cert()
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    nvs = kit.nvs_partition([
        ("sta.ssid", "string", "HomeNet"),
        ("wifi_pass", "string", "hunter2-but-longer"),
        ("client_cert", "string", cert_pem),
        ("api_token", "string", "tok-5f1e9c2a7b"),
        ("boot_count", "u32", "7"),
    ])
    dump = kit.clean_dump()
    kit.plant(dump, 0x9000, nvs)
    report = scan_flash(bytes(dump))
    by_kind: dict[str, list[Any]] = {}
    for f in report.findings:
        by_kind.setdefault(f.kind, []).append(f)
    assert [f.offset for f in by_kind["plaintext-nvs"]] == [0x9000]
    secret_entries = {f.message.split("'")[1]: f.offset for f in by_kind["nvs-secret"]}
    assert set(secret_entries) == {"wifi_pass", "api_token"}  # a certificate is public
    for name, offset in secret_entries.items():
        entry_key = dump[offset + 8 : offset + 24].split(b"\x00")[0]
        assert entry_key == name.encode()
    pem_at = bytes(dump).find(b"-----BEGIN CERTIFICATE-----")
    assert any(f.offset == pem_at for f in by_kind["pem-certificate"])
    value_at = bytes(dump).find(b"hunter2-but-longer")
    wifi = next(f for f in by_kind["nvs-secret"] if "wifi_pass" in f.message)
    assert wifi.offset < value_at < wifi.offset + wifi.length
    assert "hunt" in wifi.message and "hunter2-but-longer" not in wifi.message


def test_each_kind_of_secret_in_a_plaintext_nvs_is_found_at_its_value(
    kit: Any, pem_key_and_cert: tuple[bytes, bytes]
) -> None:
    """The detectors see inside NVS values too, whatever the entry's key is called."""
    key_pem, cert_pem = pem_key_and_cert
    der_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    openssh = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption())
    values = {
        "cfg_a": (key_pem, "pem-private-key"),
        "cfg_b": (cert_pem, "pem-certificate"),
        "cfg_c": (openssh, "pem-private-key"),
        "cfg_d": (b"AKIAIOSFODNN7EXAMPLE", "aws-access-key"),
        "cfg_e": (b"mqtts://fleet:Sup3rS3cret@mqtt.example.com", "url-credentials"),
    }
    entries = [(name, "string", blob.decode()) for name, (blob, _) in values.items()]
    entries.append(("cfg_f", "hex2bin", der_key.hex()))
    dump = kit.clean_dump()
    kit.plant(dump, 0x9000, kit.nvs_partition(entries, size=0x8000))
    found = kinds_at(scan_flash(bytes(dump)))
    region = bytes(dump[0x9000:0x11000])
    for blob, kind in [*values.values(), (der_key, "der-private-key")]:
        at = 0x9000 + region.find(blob)
        assert at >= 0x9000 and kind in found.get(at, set()), (kind, hex(at))


def test_plaintext_wifi_pmk_in_nvs_is_a_secret(kit: Any) -> None:
    """ESP-IDF's Wi-Fi driver caches the PMK (the WPA2 PSK) as blob ``sta.pmk``: as
    good as the password to join the network."""
    nvs = kit.nvs_partition([("sta.pmk", "hex2bin", "5a" * 32), ("boot_count", "u32", "7")])
    dump = kit.clean_dump()
    kit.plant(dump, 0x9000, nvs)
    secrets = [f for f in scan_flash(bytes(dump)).findings if f.kind == "nvs-secret"]
    assert len(secrets) == 1 and "'sta.pmk'" in secrets[0].message
    assert secrets[0].severity == Severity.CRITICAL


def test_plaintext_nvs_v1_blob_secret_is_reported_with_its_value(tmp_path: Path) -> None:
    """A page-version-1 NVS (older ESP-IDF) keeps blobs as type 0x41 with the data in
    the entries after the header: the finding covers those bytes, not the 8-byte header."""
    from esp_idf_nvs_partition_gen import nvs_partition_gen as gen

    out_path = tmp_path / "nvs.bin"
    with open(out_path, "wb") as out:
        nvs = gen.nvs_open(out, 0x3000, gen.Page.VERSION1, is_encrypt=False, key=None)
        gen.write_entry(nvs, "identity", "namespace", "", "")
        gen.write_entry(nvs, "wifi_psk", "data", "hex2bin", "5a" * 32)
        gen.nvs_close(nvs)
    dump = bytearray(b"\xff" * 0x10000)
    dump[0x9000 : 0x9000 + 0x3000] = out_path.read_bytes()
    secrets = [f for f in scan_flash(bytes(dump)).findings if f.kind == "nvs-secret"]
    assert len(secrets) == 1 and "'wifi_psk' (type 0x41, 32 bytes)" in secrets[0].message
    assert secrets[0].length == 32 + 32
    start = secrets[0].offset
    assert bytes(dump[start + 32 : start + 64]) == b"\x5a" * 32


def test_terminal_escape_planted_in_nvs_does_not_reach_the_report(kit: Any) -> None:
    """A dump is attacker-controlled: a secret's redacted form must not carry escape
    sequences or line breaks into the auditor's terminal or log."""
    from espfleet.audit.secrets_scan import redact

    nvs = kit.nvs_partition([("wifi_pass", "string", "\x1b[2J\x1b]0;pwned\x07longer\n")])
    dump = kit.clean_dump()
    kit.plant(dump, 0x9000, nvs)
    (secret,) = [f for f in scan_flash(bytes(dump)).findings if f.kind == "nvs-secret"]
    assert secret.message.isprintable(), secret.message
    assert redact(b"\x1b[2Jsecret-value\n") == "?[2J***********e?"


def test_encrypted_nvs_is_not_readable(kit: Any) -> None:
    """Page headers stay plaintext under NVS encryption; the entries do not."""
    nvs = kit.nvs_partition([("wifi_pass", "string", "hunter2-but-longer")], key=os.urandom(64))
    dump = kit.clean_dump()
    kit.plant(dump, 0x9000, nvs)
    report = scan_flash(bytes(dump))
    assert [f for f in report.findings if f.severity >= Severity.HIGH] == []


def test_plaintext_boot_chain_means_flash_encryption_off(kit: Any, vectors: Any) -> None:
    dump = kit.clean_dump()
    kit.plant(dump, 0x1000, (vectors / "bootloader_esp32.bin").read_bytes())
    kit.plant(dump, 0x8000, (vectors / "partitions_singleapp.bin").read_bytes())
    kit.plant(dump, 0x20000, (vectors / "hello-world-signed.bin").read_bytes())
    report = scan_flash(bytes(dump), chip=chip_facts("esp32"))
    high = {(f.kind, f.offset) for f in report.findings if f.severity == Severity.HIGH}
    assert {("plaintext-bootloader", 0x1000), ("plaintext-partition-table", 0x8000),
            ("plaintext-app", 0x20000)} <= high
    app = next(f for f in report.findings if f.kind == "plaintext-app")
    assert "hello-world" in app.message


def test_plaintext_image_of_any_esp_chip_is_found(kit: Any, vectors: Any) -> None:
    """esptool's chip table, not only espfleet's: an ESP32-S2 app is an app too."""
    dump = kit.clean_dump()
    kit.plant(dump, 0x30000, (vectors / "esp_idf_blink_esp32s2.bin").read_bytes())
    kit.plant(dump, 0x0, (vectors / "bootloader_esp32c3.bin").read_bytes())
    report = scan_flash(bytes(dump))
    found = {(f.kind, f.offset) for f in report.findings}
    assert {("plaintext-app", 0x30000), ("plaintext-bootloader", 0x0)} <= found


def test_wrong_chip_does_not_hide_a_plaintext_bootloader(kit: Any, vectors: Any) -> None:
    """An ESP32 dump audited as esp32s3 (bootloader at 0x0) still shows the plaintext
    ESP32 bootloader at 0x1000 at high, not as an anonymous low-entropy region."""
    dump = kit.clean_dump()
    kit.plant(dump, 0x1000, (vectors / "bootloader_esp32.bin").read_bytes())
    report = scan_flash(bytes(dump), chip=chip_facts("esp32s3"))
    assert ("plaintext-bootloader", 0x1000) in {
        (f.kind, f.offset) for f in report.failing(Severity.HIGH)}


def test_encrypted_boot_chain_is_not_flagged(kit: Any, vectors: Any) -> None:
    dump = kit.clean_dump()
    kit.plant(dump, 0x1000, (vectors / "bootloader-encrypted.bin").read_bytes())
    kit.plant(dump, 0x20000, (vectors / "hello-world-signed-encrypted.bin").read_bytes())
    report = scan_flash(bytes(dump), chip=chip_facts("esp32"))
    assert [f for f in report.findings if f.severity >= Severity.MEDIUM] == []


def test_partition_table_with_md5_row(kit: Any) -> None:
    import hashlib
    import struct

    from espfleet.audit.plaintext_scan import scan_plaintext_structures

    rows = b"".join(struct.pack("<2sBBII16sI", b"\xaa\x50", t, s, o, z, n.ljust(16, b"\0"), 0)
                    for t, s, o, z, n in [(1, 2, 0x9000, 0x6000, b"nvs"),
                                          (0, 0, 0x10000, 0x100000, b"factory")])
    table = rows + b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(rows).digest()
    dump = kit.clean_dump()
    kit.plant(dump, 0x8000, table)
    (finding,) = scan_plaintext_structures(bytes(dump), (0x1000,))
    assert finding.offset == 0x8000 and "MD5 row valid" in finding.message
    assert finding.length == len(table)


def test_known_secrets_found_raw_hex_and_base64(kit: Any) -> None:
    fe_key, recovery = os.urandom(32), os.urandom(24)
    dump = kit.clean_dump()
    kit.plant(dump, 0x4000, fe_key)
    kit.plant(dump, 0x5000, b"key=" + fe_key.hex().encode())
    kit.plant(dump, 0x6000, b"r=" + base64.b64encode(b"xx" + recovery))
    secrets = [KnownSecret("flash-encryption key of esp32-aa", fe_key),
               KnownSecret("recovery secret of esp32-aa", recovery),
               KnownSecret("wifi password of esp32-bb", b"never-planted-pw")]
    report = scan_flash(bytes(dump), known_secrets=secrets)
    known = [(f.offset, f.message) for f in report.findings if f.kind == "known-secret"]
    assert (0x4000, "the workspace's flash-encryption key of esp32-aa is readable in "
            "plaintext (raw)") in known
    assert any(o == 0x5004 and "(hex)" in m for o, m in known)
    assert any(0x6002 <= o < 0x6010 and "recovery" in m and "(base64)" in m for o, m in known)
    assert not any("esp32-bb" in m for _, m in known)
    assert report.known_secrets_searched == 3


def test_known_secret_too_short_is_refused() -> None:
    with pytest.raises(ValueError):
        KnownSecret("pin", b"1234")


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=8, max_size=80), prefix=st.binary(max_size=7),
       suffix=st.binary(max_size=7))
def test_base64_forms_match_any_alignment(secret: bytes, prefix: bytes, suffix: bytes) -> None:
    encoded = base64.b64encode(prefix + secret + suffix)
    assert any(form in encoded for kind, form in encodings(secret) if kind == "base64")


@settings(max_examples=25, deadline=None)
@given(offset=st.integers(min_value=0, max_value=0x3F000), seed=st.integers(0, 2**16))
def test_planted_private_key_found_wherever_it_lands(offset: int, seed: int) -> None:
    import random

    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    dump = bytearray(random.Random(seed).randbytes(0x40000))
    dump[offset : offset + len(key)] = key
    findings = [f for f in scan_secrets(bytes(dump)) if f.kind == "der-private-key"]
    assert [f.offset for f in findings] == [offset]


def test_entropy_map_classes() -> None:
    text = (b"The quick brown fox jumps over the lazy dog. " * 100)[:4096]
    emap = entropy_map(os.urandom(4096) + b"\xff" * 4096 + text + b"\x00" * 4096 + b"ab")
    assert [b.cls for b in emap.blocks] == [BlockClass.CIPHERTEXT, BlockClass.ERASED,
                                            BlockClass.PLAINTEXT, BlockClass.LOW, BlockClass.LOW]
    assert emap.blocks[-1].entropy == pytest.approx(1.0)
    assert emap.render(width=3) == ["0x00000000 #.P", "0x00003000 --"]
    assert emap.runs()[3] == (0x3000, 0x2000, BlockClass.LOW)


@pytest.mark.soak  # a timing bound: not for the unit run (benchmarks/audit_flash.py measures)
def test_scan_of_4mb_dump_is_fast(kit: Any) -> None:
    dump = bytes(kit.clean_dump(size=0x400000))
    scan_flash(dump)  # warm-up (numpy, regex compilation)
    start = time.perf_counter()
    scan_flash(dump)
    elapsed = time.perf_counter() - start
    assert elapsed < 5, f"{elapsed:.2f}s"  # generous: a sanity bound, not a benchmark


@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=0, max_size=3000),
       needles=st.lists(st.binary(min_size=8, max_size=20), min_size=1, max_size=60),
       plant=st.lists(st.tuples(st.integers(0, 59), st.integers(0, 3000)), max_size=6))
def test_find_all_matches_a_naive_search(
    data: bytes, needles: list[bytes], plant: list[tuple[int, int]]
) -> None:
    """The numpy prefix index (>= 24 needles) and bytes.find agree with a naive scan."""
    from espfleet.audit.known_secrets import find_all

    buf = bytearray(data)
    for index, offset in plant:
        if index < len(needles):
            needle = needles[index]
            buf[offset : offset + len(needle)] = needle
    blob = bytes(buf)
    naive = sorted(
        ((i, pos) for i, n in enumerate(needles) for pos in range(len(blob))
         if blob.startswith(n, pos)),
        key=lambda hit: (hit[1], hit[0]),
    )
    assert sorted(find_all(blob, needles), key=lambda hit: (hit[1], hit[0])) == naive


def test_entropy_of_partly_written_blocks() -> None:
    """A sector holding 512 bytes then erased flash is judged on those 512 bytes."""
    text = (b"wifi connected, mqtt session up, ota idle. " * 20)[:512]
    import random

    noise = random.Random(3).randbytes(551).replace(b"\xff", b"\x00")
    emap = entropy_map(noise[:512] + b"\xff" * 3584 + text + b"\xff" * 3584
                       + noise[512:] + b"\xff" * 4057)
    assert [b.cls for b in emap.blocks] == [BlockClass.CIPHERTEXT, BlockClass.PLAINTEXT,
                                            BlockClass.LOW]
    assert [b.written for b in emap.blocks] == [512, 512, 39]
