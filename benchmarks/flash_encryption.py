"""Throughput of espfleet's flash encryption against espsecure's, side by side.

    python benchmarks/flash_encryption.py [--size-kb 1536] [--repeat 5]

Encrypts the same random image at the same address with the same random key using
``espfleet.formats.flash_encryption.encrypt`` and ``espsecure.encrypt_flash_data``
(both schemes), prints MB/s and the speed ratio (best of ``--repeat`` runs each), and
exits non-zero if the outputs are not byte-identical. Wall-clock time is what a user
waits; CPU time (also shown) is the fairer ratio on a machine shared with other work.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable

import espsecure
from esptool.logger import log

from espfleet.formats import flash_encryption

_CASES = (("esp32", False, 32, "ESP32 AES-256 (FLASH_CRYPT_CONFIG 0xF)"),
          ("esp32s3", True, 32, "XTS-AES-128"),
          ("esp32s3", True, 64, "XTS-AES-256"))


def _best(run: Callable[[], bytes], repeat: int) -> tuple[float, float, bytes]:
    """Best wall-clock and best CPU seconds of ``repeat`` runs, and the output."""
    wall, cpu, result = float("inf"), float("inf"), b""
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = run()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return wall, cpu, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-kb", type=int, default=1536)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--address", type=lambda v: int(v, 0), default=0x10000)
    args = parser.parse_args()
    log.set_verbosity("silent")
    data = os.urandom(args.size_kb * 1024)
    megabytes = len(data) / 1e6
    failed = False
    print(f"{args.size_kb} KB at {args.address:#x}, best of {args.repeat}")
    for chip, xts, key_length, label in _CASES:
        key = os.urandom(key_length)

        def ours(key: bytes = key, chip: str = chip) -> bytes:
            return flash_encryption.encrypt(data, key, args.address, chip, 0xF)

        def reference(key: bytes = key, xts: bool = xts) -> bytes:
            out = io.BytesIO()
            espsecure.encrypt_flash_data(io.BytesIO(key), out, args.address, 0xF, xts,
                                         io.BytesIO(data))
            return out.getvalue()

        ours_s, ours_cpu, ours_out = _best(ours, args.repeat)
        ref_s, ref_cpu, ref_out = _best(reference, args.repeat)
        same = ours_out == ref_out
        failed |= not same
        print(f"{label:38s} espfleet {megabytes / ours_s:6.1f} MB/s ({ours_s * 1e3:5.1f} ms)  "
              f"espsecure {megabytes / ref_s:5.1f} MB/s ({ref_s * 1e3:5.1f} ms)  "
              f"x{ref_s / ours_s:4.1f} wall, x{ref_cpu / ours_cpu:4.1f} CPU  "
              f"{'identical' if same else 'DIFFERENT'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
