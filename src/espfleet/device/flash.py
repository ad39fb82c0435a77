"""NOR flash as the silicon behaves: erase sets 0xFF by 4 KB sector, program only clears bits.

A power cut can be armed: the next erase or program stops after a given number of
affected bytes, leaving the prefix as the silicon leaves it (erased or programmed)
and the rest untouched, then raises :class:`PowerCut`.
"""

from __future__ import annotations

from espfleet.errors import DeviceError, InputError

__all__ = ["SECTOR_SIZE", "NorFlash", "PowerCut", "parse_flash_size"]

SECTOR_SIZE = 0x1000

#: Flash sizes a virtual chip may have; esptool's RDID capacity code for each.
FLASH_SIZES: dict[str, int] = {
    "1MB": 1 << 20,
    "2MB": 2 << 20,
    "4MB": 4 << 20,
    "8MB": 8 << 20,
    "16MB": 16 << 20,
}


def parse_flash_size(text: str) -> int:
    """``"4MB"`` -> 4194304, with an error that lists the accepted sizes."""
    size = FLASH_SIZES.get(text.strip().upper())
    if size is None:
        raise InputError(f"unsupported flash size {text!r}: use one of {', '.join(FLASH_SIZES)}")
    return size


class PowerCut(DeviceError):
    """Power was cut in the middle of a flash erase or program (an armed fault)."""


class NorFlash:
    """A NOR flash chip of ``size`` bytes (a power of two, at least one sector)."""

    def __init__(self, size: int, data: bytes | None = None) -> None:
        if size < SECTOR_SIZE or size & (size - 1):
            raise InputError(f"flash size {size:#x} is not a power of two of at least 4 KB")
        if data is not None and len(data) != size:
            raise InputError(
                f"flash image is {len(data)} bytes but the chip has {size} bytes of flash: "
                "use a dump of the same flash size"
            )
        self.size = size
        self._mem = bytearray(data) if data is not None else bytearray(b"\xff" * size)
        self._cut_after: int | None = None

    def _check_range(self, addr: int, length: int, what: str) -> None:
        if addr < 0 or length < 0 or addr + length > self.size:
            raise DeviceError(
                f"flash {what} {addr:#x}..{addr + length:#x} is outside the {self.size:#x}-byte "
                "flash: check the address and the chip's flash size"
            )

    def read(self, addr: int, length: int) -> bytes:
        """Raw bytes, what a clip on the flash chip reads."""
        self._check_range(addr, length, "read")
        return bytes(self._mem[addr : addr + length])

    def snapshot(self) -> bytes:
        """The whole flash content."""
        return bytes(self._mem)

    def arm_power_cut(self, after_bytes: int) -> None:
        """Cut power during the next erase/program once ``after_bytes`` bytes were affected."""
        if after_bytes < 0:
            raise InputError("a power cut needs a non-negative byte count")
        self._cut_after = after_bytes

    def disarm_power_cut(self) -> None:
        self._cut_after = None

    def _take_cut(self, length: int) -> int | None:
        """How many of ``length`` bytes complete before an armed cut (None: no cut)."""
        if self._cut_after is None or self._cut_after >= length:
            if self._cut_after is not None:
                self._cut_after -= length
            return None
        done = self._cut_after
        self._cut_after = None
        return done

    def erase(self, addr: int, length: int) -> None:
        """Erase whole 4 KB sectors to 0xFF."""
        if addr % SECTOR_SIZE or length % SECTOR_SIZE:
            raise DeviceError(
                f"flash erase {addr:#x}+{length:#x} is not 4 KB sector aligned: "
                "NOR flash erases whole sectors only"
            )
        self._check_range(addr, length, "erase")
        done = self._take_cut(length)
        count = length if done is None else done
        self._mem[addr : addr + count] = b"\xff" * count
        if done is not None:
            raise PowerCut(
                f"power cut while erasing {addr:#x}+{length:#x} after {done} bytes: "
                "the sector is left partially erased"
            )

    def program(self, addr: int, data: bytes) -> None:
        """Program ``data``: each new byte is ``old & data`` (NOR only clears bits)."""
        self._check_range(addr, len(data), "program")
        done = self._take_cut(len(data))
        count = len(data) if done is None else done
        if count:
            old = int.from_bytes(self._mem[addr : addr + count], "little")
            new = old & int.from_bytes(data[:count], "little")
            self._mem[addr : addr + count] = new.to_bytes(count, "little")
        if done is not None:
            raise PowerCut(
                f"power cut while programming {addr:#x}+{len(data):#x} after {done} bytes: "
                "the rest of the write never reached the flash"
            )

    def erase_all(self) -> None:
        self.erase(0, self.size)
