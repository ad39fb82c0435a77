"""SLIP framing as the ESP ROM serial loader speaks it (RFC 1055 subset).

A frame is delimited by 0xC0 on both ends; inside it 0xC0 is sent as 0xDB 0xDC and
0xDB as 0xDB 0xDD. Pure functions over bytes: no sockets here.
"""

from __future__ import annotations

__all__ = ["END", "SlipDecoder", "encode"]

END = 0xC0
ESC = 0xDB
ESC_END = 0xDC
ESC_ESC = 0xDD


def encode(payload: bytes) -> bytes:
    """One SLIP frame (with both delimiters) carrying ``payload``."""
    body = payload.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + body + b"\xc0"


class SlipDecoder:
    """Incremental decoder: feed raw bytes, get back every frame completed so far.

    Bytes outside a frame (line noise, a boot log) are dropped, as the ROM does. An
    invalid escape ends nothing: the frame is discarded at its closing delimiter.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._in_frame = False
        self._escape = False
        self._corrupt = False

    def feed(self, data: bytes) -> list[bytes]:
        frames: list[bytes] = []
        for byte in data:
            if byte == END:
                if self._in_frame and self._buf and not self._corrupt:
                    frames.append(bytes(self._buf))
                # A delimiter both ends one frame and may start the next one.
                self._buf.clear()
                self._in_frame = True
                self._escape = False
                self._corrupt = False
            elif not self._in_frame:
                continue
            elif self._escape:
                self._escape = False
                if byte == ESC_END:
                    self._buf.append(END)
                elif byte == ESC_ESC:
                    self._buf.append(ESC)
                else:
                    self._corrupt = True
            elif byte == ESC:
                self._escape = True
            else:
                self._buf.append(byte)
        return frames
