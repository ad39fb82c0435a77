"""Cost of the fleet CA operations the factory line and the CLI pay.

    python benchmarks/pki_issue.py [--count 500]

Creates a workspace in a temporary directory and times (best of 3 where it matters):

* ``Workspace.create`` (CA hierarchy, two server certs, RSA-3072 signing key, registry),
* ``Workspace.open`` (chain, signed manifest, CRL checks),
* ``Workspace.ca(passphrase)`` (decrypting the issuing key),
* ``issue_device_cert`` with a key generated here, and from a CSR (pure, no I/O),
* ``record`` (one registry transaction per certificate, SQLite),
* ``revoke`` (registry + CRL re-signed), and the reference: ``openssl`` issuing one
  certificate per process, as a shell script around openssl would.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from espfleet.workspace import Workspace

PASS = b"benchmark passphrase"


def timed(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=500)
    args = parser.parse_args()
    n = args.count
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        counter = iter(range(1000))
        create = timed(
            lambda: Workspace.create(root / f"w{next(counter)}", org="B", passphrase=PASS)
        )
        ws_path = root / "w0"
        open_ = timed(lambda: Workspace.open(ws_path))
        ws = Workspace.open(ws_path)
        load = timed(lambda: ws.ca(PASS).close())
        with ws.ca(PASS) as ca:
            ids = [f"esp32-{i:012x}" for i in range(n)]
            start = time.perf_counter()
            issued = [ca.issue_device_cert(device_id) for device_id in ids]
            issue = (time.perf_counter() - start) / n
            key = ec.generate_private_key(ec.SECP256R1())
            csrs = [
                x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, i)]))
                .sign(key, hashes.SHA256())
                for i in ids[:100]
            ]
            start = time.perf_counter()
            for device_id, csr in zip(ids, csrs, strict=False):
                ca.issue_device_cert(device_id, csr=csr)
            from_csr = (time.perf_counter() - start) / len(csrs)
            start = time.perf_counter()
            for cert in issued:
                ca.record(cert)
            record = (time.perf_counter() - start) / n
            start = time.perf_counter()
            for cert in issued[:20]:
                ca.revoke(cert.serial_hex, "key_compromise")
            revoke = (time.perf_counter() - start) / 20
        openssl = _openssl_reference(root, 20)
    print(f"Workspace.create            {create * 1000:8.1f} ms")
    print(f"Workspace.open              {open_ * 1000:8.2f} ms")
    print(f"Workspace.ca (decrypt key)  {load * 1000:8.2f} ms")
    print(f"issue_device_cert (new key) {issue * 1e6:8.0f} us  = {1 / issue:8.0f}/s per core")
    print(f"issue_device_cert (CSR)     {from_csr * 1e6:8.0f} us  = {1 / from_csr:8.0f}/s")
    print(f"record (registry, SQLite)   {record * 1000:8.2f} ms  = {1 / record:8.0f}/s")
    print(f"revoke + CRL re-sign        {revoke * 1000:8.2f} ms")
    print(f"openssl, 1 process/cert     {openssl * 1000:8.1f} ms  = {1 / openssl:8.0f}/s")


def _openssl_reference(root: Path, count: int) -> float:
    """Key + CSR + sign with the openssl CLI, what a hand-rolled factory script does."""
    ca_key, ca_cert = root / "ca.key", root / "ca.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(ca_key),
            "-out",
            str(ca_cert),
            "-subj",
            "/CN=ref",
            "-days",
            "30",
        ],
        check=True,
        capture_output=True,
    )
    start = time.perf_counter()
    for i in range(count):
        key, csr, cert = root / f"{i}.key", root / f"{i}.csr", root / f"{i}.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(csr),
                "-subj",
                f"/CN=dev{i}",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                "openssl",
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(ca_cert),
                "-CAkey",
                str(ca_key),
                "-CAcreateserial",
                "-out",
                str(cert),
                "-days",
                "730",
            ],
            check=True,
            capture_output=True,
        )
    return (time.perf_counter() - start) / count


if __name__ == "__main__":
    main()
