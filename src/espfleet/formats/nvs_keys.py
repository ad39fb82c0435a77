"""The nvs_keys partition: the XTS key pair that encrypts NVS entries.

Layout (as ``nvs_partition_gen`` writes the keys file and ESP-IDF's
``nvs_flash_read_security_cfg`` reads it): encryption key (32 bytes), tweak key
(32 bytes), CRC32 of those 64 bytes (little-endian, zlib's crc32 with initial value
0xFFFFFFFF), then 0xFF to 4 KB. On flash the partition itself is under flash encryption.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
import zlib
from dataclasses import dataclass

from espfleet.errors import FormatError, InputError

__all__ = ["KEY_SIZE", "PARTITION_SIZE", "NvsKeys", "decode", "generate"]

KEY_SIZE = 32
PARTITION_SIZE = 0x1000
_CRC = struct.Struct("<I")


def _crc(raw: bytes) -> int:
    return zlib.crc32(raw, 0xFFFFFFFF)


@dataclass(frozen=True, repr=False)
class NvsKeys:
    """Encryption key ``eky`` and tweak key ``tky`` (never printed by ``repr``)."""

    eky: bytes
    tky: bytes

    def __post_init__(self) -> None:
        for name, key in (("eky", self.eky), ("tky", self.tky)):
            if not isinstance(key, bytes) or len(key) != KEY_SIZE:
                raise InputError(f"NVS {name} must be {KEY_SIZE} bytes")
        if self.eky == self.tky:
            raise InputError(
                "NVS encryption and tweak keys are identical: XTS needs two different keys; "
                "generate them with NvsKeys.generate()"
            )
        if self.eky in (b"\xff" * KEY_SIZE, b"\x00" * KEY_SIZE) or self.tky in (
            b"\xff" * KEY_SIZE,
            b"\x00" * KEY_SIZE,
        ):
            raise InputError("NVS keys must not be all 0x00 or all 0xFF: generate fresh keys")

    def __repr__(self) -> str:
        return f"NvsKeys(fingerprint={self.fingerprint()})"

    @classmethod
    def generate(cls) -> NvsKeys:
        """Fresh keys from the OS CSPRNG (never nvs_partition_gen's ``random`` keygen)."""
        return cls(secrets.token_bytes(KEY_SIZE), secrets.token_bytes(KEY_SIZE))

    @classmethod
    def from_raw(cls, raw: bytes) -> NvsKeys:
        """The inverse of :attr:`raw`: keys from the 64-byte ``eky || tky`` (as a vault
        entry keeps them)."""
        if len(raw) != 2 * KEY_SIZE:
            raise InputError(f"NVS keys are {2 * KEY_SIZE} bytes (eky || tky), not {len(raw)}")
        return cls(raw[:KEY_SIZE], raw[KEY_SIZE:])

    @property
    def raw(self) -> bytes:
        """The 64-byte XTS key (``eky || tky``) that nvs_partition_gen and AES-XTS take."""
        return self.eky + self.tky

    def fingerprint(self) -> str:
        """16 hex digits of the keys' SHA-256: identifies them in logs without revealing them."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def encode(self) -> bytes:
        """The 4096-byte partition image / keys file."""
        body = self.raw + _CRC.pack(_crc(self.raw))
        return body + b"\xff" * (PARTITION_SIZE - len(body))

    @staticmethod
    def decode(data: bytes) -> NvsKeys:
        return decode(data)


def generate() -> NvsKeys:
    return NvsKeys.generate()


def decode(data: bytes) -> NvsKeys:
    """Parse a (decrypted) nvs_keys partition; FormatError on an erased or corrupt one."""
    data = bytes(data)
    need = 2 * KEY_SIZE + _CRC.size
    if len(data) < need:
        raise FormatError(
            f"nvs_keys is {len(data)} bytes, truncated at offset {len(data):#x}: it needs "
            f"at least {need} (two 32-byte keys and a CRC32)",
            len(data),
        )
    raw = data[: 2 * KEY_SIZE]
    if raw == b"\xff" * len(raw):
        raise FormatError(
            "nvs_keys at offset 0x0: erased (all 0xFF): no keys were written yet; ESP-IDF "
            "would generate them on first boot",
            0,
        )
    (stored,) = _CRC.unpack_from(data, 2 * KEY_SIZE)
    if stored != _crc(raw):
        raise FormatError(
            f"nvs_keys at offset {2 * KEY_SIZE:#x}: CRC32 {stored:#010x} does not match the keys "
            f"({_crc(raw):#010x}): the partition is corrupt, or still flash-encrypted (decrypt it "
            "with the device's flash-encryption key first)",
            2 * KEY_SIZE,
        )
    try:
        return NvsKeys(raw[:KEY_SIZE], raw[KEY_SIZE:])
    except InputError as error:
        raise FormatError(f"nvs_keys at offset 0x0: {error}", 0) from None
