"""The ROM loader on a TCP socket, so the real esptool/espefuse reach it as ``socket://``.

One client at a time, like a serial port. Each new connection is a reset into
download mode: eFuse changes that apply "after reset" (download-mode locks) take
effect then, and a chip whose eFuses disable download mode closes the connection
without a word, as the silicon stays silent on UART.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from types import TracebackType

from espfleet.device.chip import VirtualChip
from espfleet.device.flash import PowerCut
from espfleet.device.loader import Op, RomLoader
from espfleet.device.slip import SlipDecoder, encode
from espfleet.errors import DeviceError, InputError

__all__ = ["LoaderServer"]

log = logging.getLogger(__name__)

_DATA_OPS = frozenset({Op.FLASH_DATA, Op.FLASH_DEFL_DATA})
_POLL_S = 0.1


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoaderServer:
    """Serve ``chip``'s ROM loader on ``host:port`` (port 0: any free port) in a thread.

    ``persist`` is called with the chip after a command changed flash or eFuses
    (batched over a write's data blocks) and when a client disconnects.
    """

    def __init__(
        self,
        chip: VirtualChip,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        persist: Callable[[VirtualChip], None] | None = None,
        allow_non_loopback: bool = False,
    ) -> None:
        if not _is_loopback(host) and not allow_non_loopback:
            raise InputError(
                f"refusing to serve a virtual chip on {host}: anyone on that network could "
                "burn its eFuses; use 127.0.0.1, or allow it explicitly"
            )
        self.chip = chip
        self.lock = threading.Lock()
        self._persist = persist
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind((host, port))
        except OSError as error:
            self._listener.close()
            raise DeviceError(f"cannot listen on {host}:{port}: {error}") from None
        self._listener.listen(1)
        self._listener.settimeout(_POLL_S)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._thread: threading.Thread | None = None
        #: Connections served so far (each one a reset into download mode).
        self.sessions = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"socket://{host}:{self.port}"

    def start(self) -> LoaderServer:
        self._thread = threading.Thread(
            target=self.serve_forever, name=f"vdev-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> LoaderServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def serve_forever(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                self._serve(conn, f"{peer[0]}:{peer[1]}")

    def _serve(self, conn: socket.socket, peer: str) -> None:
        with self.lock:
            self.sessions += 1
            self.chip.reset()
            if self.chip.download_mode == "disabled":
                fields = ", ".join(self.chip.rom.loader_disable_fields)
                message = (
                    f"{peer}: download mode is disabled by eFuse ({fields}): "
                    "the ROM does not enter the serial loader; closing"
                )
                self.chip.console.append(f"[rom-loader] {message}")
                log.warning("%s", message)
                return
            loader = RomLoader(self.chip)
            if loader.secure:
                self.chip.console.append("[rom-loader] secure download mode")
        decoder = SlipDecoder()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(_POLL_S)
        try:
            while not self._stop.is_set() and not loader.exit_requested:
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                for frame in decoder.feed(data):
                    with self.lock:
                        responses = loader.handle(frame)
                        if len(frame) > 1 and frame[1] not in _DATA_OPS:
                            self._save(loader)
                    if responses:
                        conn.sendall(b"".join(encode(r) for r in responses))
        except PowerCut as cut:
            # Power is gone: the UART goes silent and the next connection is a power-on.
            self.chip.console.append(f"[rom-loader] {cut}")
            log.warning("%s: %s", peer, cut)
        except OSError as error:
            log.info("%s: connection ended: %s", peer, error)
        finally:
            with self.lock:
                self._save(loader)

    def _save(self, loader: RomLoader) -> None:
        if not (loader.flash_dirty or self.chip.efuse.changed):
            return
        if self._persist is not None:
            self._persist(self.chip)
        loader.flash_dirty = False
        self.chip.efuse.changed = False
