"""Provisioning throughput: ``espfleet provision`` vs the seeds' per-device CLI pipeline.

    python benchmarks/provisioning.py [--devices 50] [--baseline-sample K] [--jobs N]

Same run, same inputs (one workspace, one app and bootloader from
``espfleet.provisioning.demo_firmware``), in a temporary directory:

* **ours**: ``espfleet provision --count N`` as a fresh process, end to end (Python
  start-up, CA and signing-key loading, signing once, N bundles across ``--jobs``
  processes, registry, vault).
* **seeds**: per device, the shell-script way: ``openssl`` (P-256 key, CSR, certificate
  signed by the issuing CA), ``espsecure generate-flash-encryption-key``,
  ``nvs_partition_gen encrypt`` (NVS from a CSV), ``espsecure encrypt-flash-data``
  once per encrypted partition (bootloader, partition table, otadata, nvs_keys, app)
  and ``espefuse --virt`` for the flash-encryption key, crypt config and counter.
  It is sequential, as those scripts are. With ``--baseline-sample K`` only K devices
  run and the total is extrapolated linearly (each device is independent).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from espfleet.formats.partition_table import default_secure_table
from espfleet.pki.store import read_private_key
from espfleet.provisioning.demo_firmware import demo_firmware
from espfleet.workspace import Workspace

PASS = "benchmark passphrase"
BIN = Path(sys.executable).parent


def _run(*cmd: str | Path, cwd: Path | None = None) -> None:
    subprocess.run([str(c) for c in cmd], check=True, cwd=cwd,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ours(ws: Path, app: Path, bootloader: Path, devices: int, jobs: int | None) -> float:
    env = {**os.environ, "ESPFLEET_PASSPHRASE": PASS}
    cmd = [str(BIN / "espfleet"), "-w", str(ws), "provision", "--count", str(devices),
           "--firmware", str(app), "--bootloader", str(bootloader), "--json"]
    if jobs:
        cmd += ["--jobs", str(jobs)]
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    report = json.loads(out.stdout)
    assert report["built"] == devices, report
    return elapsed


def seeds(work: Path, ws_path: Path, app: Path, bootloader: Path, devices: int) -> float:
    """The per-device CLI pipeline; returns the time of ``devices`` devices."""
    ws = Workspace.open(ws_path)
    issuing_key = read_private_key(ws_path / "pki/issuing-ca.key.pem", PASS.encode(),
                                   name="issuing CA key")
    ca_key = work / "issuing.key"
    ca_key.write_bytes(issuing_key.private_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ca_cert = ws_path / "pki/issuing-ca.pem"
    table = default_secure_table(0x400000)
    parts = {p.name: p for p in table.entries}
    table_bin = work / "partitions.bin"
    table_bin.write_bytes(table.encode())
    otadata_bin = work / "otadata.bin"
    otadata_bin.write_bytes(b"\xff" * parts["otadata"].size)
    chain = ws.chain_pem().decode().replace("\n", "\\n")
    py = sys.executable
    start = time.perf_counter()
    for n in range(devices):
        d = work / f"dev{n}"
        d.mkdir()
        device_id = f"esp32-02aa00{n:06x}"
        _run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out",
             d / "dev.key")
        _run("openssl", "req", "-new", "-key", d / "dev.key", "-subj",
             f"/O=Bench/CN={device_id}", "-out", d / "dev.csr")
        _run("openssl", "x509", "-req", "-in", d / "dev.csr", "-CA", ca_cert, "-CAkey", ca_key,
             "-CAcreateserial", "-days", "730", "-sha256", "-out", d / "dev.pem")
        _run(BIN / "espsecure", "generate-flash-encryption-key", d / "fe.bin")
        cert = (d / "dev.pem").read_text().replace("\n", "\\n")
        key = (d / "dev.key").read_text().replace("\n", "\\n")
        (d / "nvs.csv").write_text(
            "key,type,encoding,value\nespfleet,namespace,,\n"
            f"device_cert,data,string,{cert}\ndevice_key,data,string,{key}\n"
            f"ca_chain,data,string,{chain}\nbroker_uri,data,string,mqtts://localhost:8883\n"
            "recovery_uri,data,string,mqtts://localhost:8884\n"
            f"recovery_secret,data,string,{os.urandom(32).hex()}\n"
        )
        _run(py, "-m", "esp_idf_nvs_partition_gen", "encrypt", d / "nvs.csv", "nvs.bin",
             hex(parts["nvs"].size), "--keygen", "--keyfile", "nvs_keys.bin", "--outdir", d)
        nvs_keys = d / "keys" / "nvs_keys.bin"
        for name, src, offset in (
            ("bootloader", bootloader, 0x1000),
            ("partitions", table_bin, 0x8000),
            ("otadata", otadata_bin, parts["otadata"].offset),
            ("nvs_keys", nvs_keys, parts["nvs_keys"].offset),
            ("app", app, parts["ota_0"].offset),
        ):
            _run(BIN / "espsecure", "encrypt-flash-data", "--keyfile", d / "fe.bin",
                 "--address", hex(offset), "--output", d / f"{name}-enc.bin", src)
        efuse = ["--chip", "esp32", "--virt", "--path-efuse-file", d / "efuse.bin",
                 "--do-not-confirm"]
        _run(BIN / "espefuse", *efuse, "burn-key", "flash_encryption", d / "fe.bin")
        _run(BIN / "espefuse", *efuse, "burn-efuse", "FLASH_CRYPT_CNT", "127",
             "FLASH_CRYPT_CONFIG", "0xF")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--baseline-sample", type=int, default=None,
                        help="run the seeds pipeline on K devices and extrapolate")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--app-size", type=lambda s: int(s, 0), default=0x30000)
    args = parser.parse_args()
    n = args.devices
    sample = min(args.baseline_sample or n, n)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws_path = root / "fleet"
        ws = Workspace.create(ws_path, org="Bench", passphrase=PASS.encode())
        fw = demo_firmware("esp32", ws.signing_key(PASS.encode()),
                           app_payload_size=args.app_size)
        app, bootloader = root / "app.bin", root / "bootloader.bin"
        app.write_bytes(fw.app)
        bootloader.write_bytes(fw.bootloader)
        ours_s = ours(ws_path, app, bootloader, n, args.jobs)
        seeds_dir = root / "seeds"
        seeds_dir.mkdir()
        seeds_s = seeds(seeds_dir, ws_path, app, bootloader, sample) * n / sample
    jobs = args.jobs or os.cpu_count()
    print(f"devices: {n}, app {len(fw.app)} bytes, {os.cpu_count()} CPUs, jobs {jobs}")
    print(f"espfleet provision : {ours_s:8.2f} s  ({ours_s / n * 1000:7.1f} ms/device, "
          "end to end incl. start-up)")
    label = "" if sample == n else f", extrapolated from {sample}"
    print(f"seeds CLI pipeline : {seeds_s:8.2f} s  ({seeds_s / n * 1000:7.1f} ms/device{label})")
    print(f"ratio              : {seeds_s / ours_s:8.1f}x")


if __name__ == "__main__":
    main()
