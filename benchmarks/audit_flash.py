"""The flash read-out audit against the seeds' naive approach, on the same dump.

    python benchmarks/audit_flash.py [--size-mb 4] [--repeat 5] [--devices 100]

Builds a dump (ciphertext-like random bytes, an erased quarter) with secrets planted
the ways they occur on real devices: a PEM key and certificate, a DER private key, a
Wi-Fi password after its key, an AWS key, a URL with credentials, and an encrypted
and a plaintext NVS partition. Then times, best of ``--repeat``:

* ``espfleet.audit.flash_scan.scan_flash`` (every detector + entropy map),
* the same with the exact-bytes search for ``--devices`` devices' workspace secrets,
* the seeds' pipeline ``strings -n 6 DUMP | grep -iE 'BEGIN|pass|AKIA|://'``,

and prints what each found: the pipeline cannot see DER keys (binary), NVS secrets
whose key and value sit in different entries, or offsets; the audit reports each
with its offset. Exits non-zero if the audit misses a planted secret.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from espfleet.audit.flash_scan import FlashReport, scan_flash
from espfleet.audit.known_secrets import KnownSecret, encodings
from espfleet.formats import nvs
from espfleet.formats.nvs_keys import NvsKeys

T = TypeVar("T")
_PIPELINE = "strings -n 6 {dump} | grep -iE 'BEGIN|pass|AKIA|://'"


def _best(run: Callable[[], T], repeat: int) -> tuple[float, T]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    assert result is not None
    return best, result


def build_dump(size: int) -> tuple[bytes, dict[int, str]]:
    rng = random.Random(42)
    dump = bytearray(rng.randbytes(size))
    dump[size * 3 // 4 :] = b"\xff" * (size - size * 3 // 4)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    der = key.private_bytes(serialization.Encoding.DER,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    plaintext_nvs = nvs.write({"app": {"wifi_pass": nvs.NvsValue("string", "nvs-wifi-pass-1"),
                                       "boot": nvs.NvsValue("u32", 3)}}, 0x3000)
    encrypted_nvs = nvs.write({"app": {"wifi_pass": nvs.NvsValue("string", "hidden-pass-2")}},
                              0x3000, NvsKeys.generate())
    planted = {
        0x10010: (pem, "pem-private-key"),
        0x20003: (der, "der-private-key"),
        0x30001: (b"wifi_password=hunter2hunter", "password-like"),
        0x40000: (b"AKIAIOSFODNN7EXAMPLE", "aws-access-key"),
        0x50000: (b"mqtts://fleet:S3cretPass@broker.example.com", "url-credentials"),
        0x60000: (plaintext_nvs, "plaintext-nvs"),
        0x70000: (encrypted_nvs, ""),
    }
    expected: dict[int, str] = {}
    for offset, (blob, kind) in planted.items():
        dump[offset - 1] = 0
        dump[offset : offset + len(blob)] = blob
        dump[offset + len(blob)] = 0
        if kind:
            expected[offset + (len(b"wifi_password=") if kind == "password-like" else 0)] = kind
    return bytes(dump), expected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--devices", type=int, default=100)
    args = parser.parse_args()

    data, expected = build_dump(args.size_mb << 20)
    known = [KnownSecret(f"{label} of device {n}", os.urandom(length))
             for n in range(args.devices)
             for label, length in (("fe key", 32), ("nvs keys", 64), ("recovery", 24))]
    scan_flash(data)  # warm up numpy and the regular expressions

    t_scan, report = _best(lambda: scan_flash(data), args.repeat)
    t_known, _ = _best(lambda: scan_flash(data, known_secrets=known), args.repeat)
    needles = [n for secret in known for _, n in encodings(secret.value)]
    t_find, _ = _best(lambda: [data.find(n) for n in needles], 1)
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "dump.bin"
        dump.write_bytes(data)
        cmd = _PIPELINE.format(dump=dump)
        t_naive, lines = _best(
            lambda: subprocess.run(cmd, shell=True, capture_output=True, check=False).stdout,
            args.repeat,
        )

    mb = len(data) / (1 << 20)
    print(f"dump: {mb:.0f} MB, best of {args.repeat}")
    print(f"  espfleet audit (detectors + entropy map): {t_scan * 1000:8.1f} ms "
          f"({mb / t_scan:6.1f} MB/s), {len(report.findings)} findings")
    print(f"  + {len(known)} workspace secrets ({args.devices} devices, raw/hex/base64): "
          f"{t_known * 1000:8.1f} ms")
    print(f"  (the same {len(needles)} needles by one bytes.find each: {t_find * 1000:8.1f} ms)")
    print(f"  seeds' pipeline `{_PIPELINE.format(dump='DUMP')}`: {t_naive * 1000:8.1f} ms, "
          f"{len(lines.splitlines())} lines, no offsets, no severity")
    missed = _missed(report, expected)
    for offset, kind in sorted(expected.items()):
        mark = "MISSED" if offset in missed else "found "
        print(f"  {mark} {kind:<16} at 0x{offset:06x}")
    naive_text = lines.decode("ascii", "replace")
    print("  the pipeline's output:")
    for line in naive_text.splitlines():
        print(f"    | {line[:90]}")
    print("  (no DER key: it is binary; the NVS Wi-Fi password only if the grep happens to "
          "match its value, never tied to its key or offset)")
    return 1 if missed else 0


def _missed(report: FlashReport, expected: dict[int, str]) -> set[int]:
    found = {(f.offset, f.kind) for f in report.findings}
    return {offset for offset, kind in expected.items() if (offset, kind) not in found}


if __name__ == "__main__":
    sys.exit(main())
