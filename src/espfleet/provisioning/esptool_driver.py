"""The one place that opens a port to a chip: esptool's ROM loader connection.

:func:`open_session` connects with esptool (any port pyserial's ``serial_for_url``
accepts: ``/dev/ttyUSB0``, ``COM3``, ``rfc2217://host:port``, ``socket://host:port``),
picking the reset behaviour from the port (:class:`PortProfile`), and returns a
:class:`ChipSession` whose identity, eFuses (:class:`EfuseDriver`, espefuse over the
same connection) and flash (:class:`EsptoolFlash`) the flasher uses. Flash writes go
through ``esptool.cmds.write_flash`` with raw bytes: the images are pre-encrypted on
the host, so esptool's ``encrypt`` option is never used.

:class:`MemoryFlash` is the in-memory flash for tests that run the eFuse part on an
``espefuse --virt`` file.

Why in-process rather than ``python -m esptool``/``espefuse`` subprocesses: one
connection serves the whole run (identity, eFuse reads and burns, flash writes,
MD5 read-back), so the chip is never reset between the phases. That matters: the
download-mode locks take effect at the next reset, and on ``socket://`` every new
connection is a reset. It also saves a connect + sync per step, and esptool's errors
arrive as exceptions to wrap, not as text to parse.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from espfleet.device_id import format_mac
from espfleet.errors import FlashError
from espfleet.provisioning.espefuse_driver import EfuseDriver, silenced_esptool

__all__ = [
    "ChipIdentity",
    "ChipSession",
    "EsptoolFlash",
    "FlashAccess",
    "MemoryFlash",
    "PortProfile",
    "open_session",
]

ResetBefore = Literal["default-reset", "no-reset"]
ResetAfter = Literal["hard-reset", "no-reset"]


@dataclass(frozen=True)
class PortProfile:
    """How esptool talks to a port: reset lines, stub, connect attempts."""

    port: str
    before: ResetBefore
    after: ResetAfter
    use_stub: bool
    connect_attempts: int

    def __post_init__(self) -> None:
        if not self.port or self.port != self.port.strip():
            raise FlashError(
                f"port {self.port!r} is empty or padded: pass e.g. /dev/ttyUSB0, "
                "rfc2217://host:4000 or socket://127.0.0.1:5555"
            )
        if self.connect_attempts < 1:
            raise FlashError("connect_attempts must be at least 1")

    @classmethod
    def for_port(cls, port: str, *, connect_attempts: int | None = None) -> PortProfile:
        """``socket://`` has no DTR/RTS lines: no reset, and the ROM loader without the
        stub (the chip stays in the state the flasher left it). Serial and
        ``rfc2217://`` ports use esptool's defaults: reset into the ROM loader, load
        the stub, hard-reset at the end."""
        if port.startswith("socket://"):
            return cls(port, "no-reset", "no-reset", False, connect_attempts or 2)
        return cls(port, "default-reset", "hard-reset", True, connect_attempts or 7)

    def no_chip_message(self, error: object) -> str:
        hint = (
            "check that the virtual device (or bridge) is running and listening on that "
            "address (a chip whose download mode was disabled by a release flash stays "
            "silent for good)"
            if self.port.startswith(("socket://", "rfc2217://"))
            else "check the cable and the port name, that no other program (a serial "
            "monitor) holds the port, and hold BOOT while pressing RESET if the board has "
            "no auto-reset circuit (a chip whose download mode was disabled by a release "
            "flash stays silent for good)"
        )
        return f"no chip answered on {self.port} ({_one_line(error)}): {hint}; nothing was changed"


def _one_line(error: object) -> str:
    """esptool's message without its multi-line hint (ours follows)."""
    text = str(error).split("Hint:")[0]
    return " ".join(text.split()).rstrip(" .")


@dataclass(frozen=True)
class ChipIdentity:
    """What the ROM loader says the chip is."""

    chip: str
    revision: int
    mac: bytes
    description: str = ""
    #: Flash size from the flash chip's JEDEC id ("4MB"), None when esptool cannot tell.
    flash_size: str | None = None

    def __post_init__(self) -> None:
        if len(self.mac) != 6:
            raise FlashError(f"the chip reported a {len(self.mac)}-byte MAC: expected 6")

    @property
    def mac_text(self) -> str:
        return format_mac(self.mac)

    @property
    def revision_text(self) -> str:
        return f"v{self.revision // 100}.{self.revision % 100}"


class FlashAccess(Protocol):
    """Raw SPI flash access (bytes exactly as they lie on flash)."""

    def write(self, offset: int, data: bytes) -> None: ...

    def md5(self, offset: int, size: int) -> str:
        """Lowercase hex MD5 of ``size`` bytes at ``offset``, computed by the chip."""
        ...


@dataclass
class ChipSession:
    """A connection to one chip: identity, eFuses and flash over one port."""

    port: str
    identity: ChipIdentity
    efuses: EfuseDriver
    flash: FlashAccess
    _close: Any = field(default=None, repr=False)

    def close(self) -> None:
        if self._close is not None:
            close, self._close = self._close, None
            close()


class EsptoolFlash:
    """:class:`FlashAccess` through a connected esptool loader."""

    def __init__(self, esp: Any, port: str, *, quiet: bool = True) -> None:
        self._esp = esp
        self._port = port
        self.quiet = quiet

    def write(self, offset: int, data: bytes) -> None:
        from esptool import cmds

        # Raw bytes, never ``encrypt``: the image is already encrypted for this offset.
        # flash_* "keep" leaves the bootloader header alone (it is ciphertext).
        with silenced_esptool(self.quiet), _wrapped(
            f"write {len(data)} bytes at {offset:#x} on {self._port}"
        ):
            cmds.write_flash(
                self._esp,
                [(offset, data)],
                flash_freq="keep",
                flash_mode="keep",
                flash_size="keep",
                no_progress=True,
            )

    def md5(self, offset: int, size: int) -> str:
        with silenced_esptool(self.quiet), _wrapped(
            f"read back the MD5 of {size} bytes at {offset:#x} on {self._port}"
        ):
            return str(self._esp.flash_md5sum(offset, size)).lower()


class MemoryFlash:
    """In-memory :class:`FlashAccess` (erased = 0xFF), for tests without a loader."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(b"\xff" * size)
        self.writes: list[tuple[int, int]] = []

    def write(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > len(self.data):
            raise FlashError(f"{len(data)} bytes at {offset:#x} do not fit the flash")
        self.data[offset : offset + len(data)] = data
        self.writes.append((offset, len(data)))

    def md5(self, offset: int, size: int) -> str:
        return hashlib.md5(bytes(self.data[offset : offset + size])).hexdigest()


@contextlib.contextmanager
def _wrapped(what: str) -> Iterator[None]:
    """Turn esptool/pyserial failures into a FlashError naming the operation."""
    import esptool

    try:
        yield
    except (esptool.FatalError, OSError, ValueError) as error:
        raise FlashError(f"esptool could not {what}: {_one_line(error)}") from error


def open_session(
    port: str, *, baud: int = 115200, connect_attempts: int | None = None, quiet: bool = True
) -> ChipSession:
    """Connect to the chip on ``port`` and read its identity (read-only).

    Raises :class:`FlashError` naming the port when no chip answers.
    """
    import esptool
    from esptool import cmds
    from esptool.util import strip_chip_name

    profile = PortProfile.for_port(port, connect_attempts=connect_attempts)
    with silenced_esptool(quiet):
        try:
            esp = cmds.detect_chip(
                port, baud, profile.before, connect_attempts=profile.connect_attempts
            )
        except (esptool.FatalError, OSError, ValueError) as error:
            raise FlashError(profile.no_chip_message(error)) from error
        if getattr(esp, "secure_download_mode", False):
            _close_loader(esp, profile)
            raise FlashError(
                f"the chip on {port} is in Secure Download Mode: its download mode is locked "
                "(a device already flashed in release mode). It cannot be flashed or "
                "inspected over serial any more; update it over OTA. Nothing was changed"
            )
        try:
            if profile.use_stub and not esp.IS_STUB:
                esp = cmds.run_stub(esp)
            chip = strip_chip_name(esp.CHIP_NAME)
            identity = ChipIdentity(
                chip=chip,
                revision=int(esp.get_chip_revision()),
                mac=bytes(esp.read_mac()),
                description=str(esp.get_chip_description()),
                flash_size=_detect_flash_size(esp),
            )
        except (esptool.FatalError, OSError, ValueError) as error:
            _close_loader(esp, profile)
            raise FlashError(
                f"the chip on {port} answered but could not be identified "
                f"({_one_line(error)}): reset "
                "it into download mode and try again; nothing was changed"
            ) from error

    def close() -> None:
        with silenced_esptool(quiet):
            _close_loader(esp, profile)

    return ChipSession(
        port=port,
        identity=identity,
        efuses=EfuseDriver(esp, chip, quiet=quiet),
        flash=EsptoolFlash(esp, port, quiet=quiet),
        _close=close,
    )


def _detect_flash_size(esp: Any) -> str | None:
    """The attached flash's size as esptool detects it (read-only), or None."""
    import esptool
    from esptool import cmds

    try:
        cmds.attach_flash(esp)
        size = cmds.detect_flash_size(esp)
    except (esptool.FatalError, OSError, ValueError):
        return None
    return str(size) if size else None


def _close_loader(esp: Any, profile: PortProfile) -> None:
    import esptool

    with contextlib.suppress(esptool.FatalError, OSError, ValueError):
        if profile.after != "no-reset":
            esptool.reset_chip(esp, profile.after)
    with contextlib.suppress(OSError, AttributeError):
        esp._port.close()
