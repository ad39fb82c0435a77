"""SLIP framing as the ESP ROM serial loader speaks it (RFC 1055 subset).

A frame is delimited by 0xC0 on both ends; inside it 0xC0 is sent as 0xDB 0xDC and
0xDB as 0xDB 0xDD. Pure functions over bytes: no sockets here.
"""

from __future__ import annotations

import re

__all__ = ["SlipDecoder", "encode"]


def encode(payload: bytes) -> bytes:
    """One SLIP frame (with both delimiters) carrying ``payload``."""
    body = payload.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + body + b"\xc0"


_BAD_ESCAPE = re.compile(b"\xdb(?![\xdc\xdd])")


class SlipDecoder:
    """Incremental decoder: feed raw bytes, get back every frame completed so far.

    Bytes before the first delimiter (line noise, a boot log) are dropped, as the ROM
    does. A frame with an invalid escape is dropped whole.
    """

    def __init__(self) -> None:
        self._pending = b""
        self._synced = False

    def feed(self, data: bytes) -> list[bytes]:
        parts = (self._pending + data).split(b"\xc0")
        self._pending = parts.pop()
        frames: list[bytes] = []
        for part in parts:
            if not self._synced:
                self._synced = True
                continue
            if part and not _BAD_ESCAPE.search(part):
                frames.append(part.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb"))
        return frames
