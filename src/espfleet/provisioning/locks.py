"""Advisory locks on workspace directories (no lock file is created or left behind).

``espfleet provision`` holds ``bundles/`` for the whole batch (two runs would allocate
the same MACs and remove each other's half-built bundles), and ``bundles/<device-id>/``
of every bundle it may rebuild or remove, from its decision until the new bundle, vault
entry and registry row are committed; ``espfleet flash`` holds ``bundles/<device-id>/``
(two runs on one device would race its journal and, on two ports, could flash two chips
with one identity; a rebuild under a running flash would burn a key that the new bundle
and vault no longer hold). The lock is the kernel's ``flock`` on the directory itself,
so a killed process releases it at once.

A bundle is replaced by removing it and renaming a new directory into place: a lock
taken on the old directory guards nothing after that. So a lock is only granted if the
path still names the directory locked, and ``espfleet flash`` re-checks under its lock
that the bundle it loaded is still the one on disk.
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
def directory_lock(
    path: Path, busy: EspfleetError, *, replaced: EspfleetError | None = None
) -> Iterator[None]:
    """Hold an exclusive lock on the directory ``path``; raise ``busy`` if another
    process holds it (without waiting). Raise ``replaced`` (default ``busy``) if ``path``
    was removed or renamed over while the lock was being taken. A missing ``path``
    raises ``replaced`` if given, else :class:`FileNotFoundError`."""
    try:
        fd = os.open(Path(path), os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        if replaced is None:
            raise
        raise replaced from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
        if not _names(Path(path), fd):
            raise replaced or busy
        yield
    finally:
        os.close(fd)


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` (still) names the directory open as ``fd``."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
