"""Advisory locks on workspace directories (no lock file is created or left behind).

``espfleet provision`` holds ``bundles/`` for the whole batch (two runs would allocate
the same MACs and remove each other's half-built bundles); ``espfleet flash`` holds
``bundles/<device-id>/`` (two runs on one device would race its journal and, on two
ports, could flash two chips with one identity). The lock is the kernel's ``flock`` on
the directory itself, so a killed process releases it at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from espfleet.errors import EspfleetError

__all__ = ["directory_lock"]


@contextlib.contextmanager
def directory_lock(path: Path, busy: EspfleetError) -> Iterator[None]:
    """Hold an exclusive lock on the directory ``path``; raise ``busy`` if another
    process holds it (without waiting)."""
    fd = os.open(Path(path), os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
        yield
    finally:
        os.close(fd)
