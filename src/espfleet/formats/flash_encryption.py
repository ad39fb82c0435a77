"""Flash encryption as the chips' hardware applies it, byte-identical to espsecure.

Two schemes, chosen by the chip table (:attr:`ChipFacts.encryption_scheme`):

``esp32-aes256`` (ESP32)
    AES-256 with a key that changes every 32 bytes of flash: the eFuse key is XORed
    with "tweak" bits derived from the 32-byte block's address, masked by the key
    bits FLASH_CRYPT_CONFIG selects. Each 16-byte block is byte-reversed, run
    through AES in the *inverted* direction (encrypting flash is AES decryption) and
    reversed again. The per-block keys make one-cipher-per-block libraries slow, so
    the AES here is :mod:`espfleet.formats._aes_vec`, vectorised over all blocks.

``xts-aes`` (ESP32-S3, ESP32-C3)
    XTS-AES-128/256 with a 128-byte data unit whose tweak is the unit's flash
    address, on byte-reversed units. Each unit is independent, so all tweaks and all
    blocks go through two AES-ECB calls of :mod:`cryptography` at once.

Both take and return bytes; the address is the flash offset the data will live at,
because the ciphertext depends on it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from espfleet.chips import EncryptionScheme, chip_facts
from espfleet.errors import FormatError, InputError
from espfleet.formats._aes_vec import (
    aes256_decrypt_blocks,
    aes256_encrypt_blocks,
    with_inv_mixed,
)

__all__ = ["decrypt", "encrypt", "key_lengths"]

_BLOCK: Final = 16
_XTS_UNIT: Final = 0x80
_ESP32_KEY_BLOCK: Final = 32
#: Block addresses (offset >> 5) below this give a tweak that is linear in the
#: address bits (no carries between the shifted copies): all of a 16 MB flash.
_LINEAR_ADDRESS_BITS: Final = 19
_LOW_BITS: Final = 10
_ADDRESS_LIMIT: Final = 1 << 32


@dataclass(frozen=True)
class _Scheme:
    #: Key lengths accepted besides the chip's own eFuse key lengths.
    extra_key_lengths: tuple[int, ...]
    uses_crypt_config: bool
    #: (data, key, address, flash_crypt_conf, decrypting) -> bytes
    run: Callable[[bytes, bytes, int, int, bool], bytes]


# The ESP32 tweak, as the hardware (and espsecure) computes it from the block address.
_MUL1: Final = 0x0000200004000080000004000080001000000200004000080000040000800010
_MUL2: Final = 0x0000000000000000200000000000000010000000000000002000000000000001
_MUL2_MASK: Final = 0x000000000000007FE00000000000000FF000000000000007E00000000000000F
_CONFIG_BITS: Final = (
    0xFFFFFFFFFFFFFFFFE00000000000000000000000000000000000000000000000,
    0x00000000000000001FFFFFFFFFFFFFFFF0000000000000000000000000000000,
    0x000000000000000000000000000000000FFFFFFFFFFFFFFFE000000000000000,
    0x0000000000000000000000000000000000000000000000001FFFFFFFFFFFFFFF,
)


def key_lengths(chip: str) -> tuple[int, ...]:
    """Flash-encryption key lengths in bytes that :func:`encrypt` accepts for ``chip``."""
    facts = chip_facts(chip)
    extra = _SCHEMES[facts.encryption_scheme].extra_key_lengths
    return tuple(sorted(set(facts.fe_key_lengths) | set(extra)))


def encrypt(
    data: bytes, key: bytes, address: int, chip: str, flash_crypt_conf: int = 0xF
) -> bytes:
    """Encrypt ``data`` as the chip's flash encryption stores it at ``address``.

    Equal to ``espsecure encrypt-flash-data`` (``--aes-xts`` for XTS chips).
    ``flash_crypt_conf`` is ESP32's FLASH_CRYPT_CONFIG eFuse (0x0-0xF); XTS chips
    ignore it.
    """
    return _apply(data, key, address, chip, flash_crypt_conf, decrypting=False)


def decrypt(
    data: bytes, key: bytes, address: int, chip: str, flash_crypt_conf: int = 0xF
) -> bytes:
    """Decrypt flash contents read from ``address``: the inverse of :func:`encrypt`."""
    return _apply(data, key, address, chip, flash_crypt_conf, decrypting=True)


def _apply(
    data: bytes, key: bytes, address: int, chip: str, conf: int, decrypting: bool
) -> bytes:
    facts = chip_facts(chip)
    scheme = facts.encryption_scheme
    if len(key) not in key_lengths(chip):
        allowed = " or ".join(str(n) for n in key_lengths(chip))
        raise InputError(
            f"{chip} flash-encryption key is {len(key)} bytes, expected {allowed}: "
            "use the key file that was burned to eFuse (or generate one with "
            "os.urandom of that length)"
        )
    if _SCHEMES[scheme].uses_crypt_config and not 0 <= conf <= 0xF:
        raise InputError(
            f"FLASH_CRYPT_CONFIG {conf:#x} is out of range: it is a 4-bit eFuse (0x0-0xF); "
            "the standard workflow burns 0xF"
        )
    if not 0 <= address < _ADDRESS_LIMIT - len(data):
        raise FormatError(
            f"flash address {address:#x} with {len(data)} bytes is outside the 32-bit "
            "flash address space: use the offset of the data in flash",
            offset=address,
        )
    if address % _BLOCK:
        raise FormatError(
            f"flash address {address:#x} is not a multiple of 16: flash encryption works "
            "on 16-byte blocks; place the data at a 16-byte aligned offset",
            offset=address,
        )
    if len(data) % _BLOCK:
        raise FormatError(
            f"data length {len(data)} is not a multiple of 16: pad the image (with 0xFF, "
            "as erased flash) to a 16-byte boundary before encrypting",
            offset=address + len(data) - len(data) % _BLOCK,
        )
    if not data:
        return b""
    return _SCHEMES[scheme].run(data, key, address, conf, decrypting)


# --- ESP32: AES-256 with per-32-byte key tweak ---------------------------------------


def _esp32_key(key: bytes) -> bytes:
    """A 3/4-coded 192-bit key is extended the way the hardware (and espsecure) does."""
    return key + key[8:16] if len(key) == 24 else key


def _as_words(values: list[int]) -> npt.NDArray[np.int64]:
    """256-bit integers -> (len, 8) AES key words: big-endian 32-bit values."""
    return np.array(
        [[(v >> (32 * (7 - i))) & 0xFFFFFFFF for i in range(8)] for v in values],
        dtype=np.int64,
    ).reshape(len(values), 8)


def _tweak(block_address: int) -> int:
    return (_MUL1 * block_address) | ((_MUL2 * block_address) & _MUL2_MASK)


@functools.cache
def _tweak_tables() -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Tweaks of the low 10 and the high 9 bits of a block address.

    Below 2**19 the two products in the tweak are sums of non-overlapping shifted
    copies of the address, and never share a bit (checked for every such address),
    so the tweak is linear: tweak(a) = low[a & 0x3FF] ^ high[a >> 10].
    """
    low = range(1 << _LOW_BITS)
    high = [h << _LOW_BITS for h in range(1 << (_LINEAR_ADDRESS_BITS - _LOW_BITS))]
    return _as_words([_tweak(a) for a in low]), _as_words([_tweak(a) for a in high])


@functools.cache
def _masked_tweak_tables(conf: int) -> tuple[npt.NDArray[np.int64], ...]:
    """The tweak tables masked by FLASH_CRYPT_CONFIG's key bits, in the premixed
    form the AES takes (plain words low, InvMixColumns of them high: the tweak is
    XORed into the key, and InvMixColumns is linear, so it is mixed once, here)."""
    tweak_range = 0
    for bit, mask in enumerate(_CONFIG_BITS):
        if conf >> bit & 1:
            tweak_range |= mask
    mask_words = _as_words([tweak_range])
    low, high = _tweak_tables()
    return with_inv_mixed(low & mask_words), with_inv_mixed(high & mask_words), mask_words


def _esp32_keys(key: bytes, first: int, count: int, conf: int) -> npt.NDArray[np.int64]:
    """The AES key words of each of ``count`` 32-byte flash blocks from block
    ``first``, premixed (see :func:`espfleet.formats._aes_vec.with_inv_mixed`)."""
    low_table, high_table, mask_words = _masked_tweak_tables(conf)
    blocks = np.arange(first, first + count, dtype=np.int64)
    linear = blocks < (1 << _LINEAR_ADDRESS_BITS)
    words = np.take(low_table, blocks & ((1 << _LOW_BITS) - 1), axis=0)
    words ^= np.take(high_table, np.where(linear, blocks >> _LOW_BITS, 0), axis=0)
    for i in np.flatnonzero(~linear):  # beyond 16 MB: exact, one by one
        words[i] = with_inv_mixed(_as_words([_tweak(int(blocks[i]))]) & mask_words)[0]
    words ^= with_inv_mixed(_as_words([int.from_bytes(key, "big")]))
    return words


def _esp32(data: bytes, key: bytes, address: int, conf: int, decrypting: bool) -> bytes:
    key = _esp32_key(key)
    # Align to whole 32-byte key blocks: 16 bytes of filler before and/or after.
    head = address % _ESP32_KEY_BLOCK
    tail = -(head + len(data)) % _ESP32_KEY_BLOCK
    padded = bytes(head) + data + bytes(tail) if head or tail else data
    count = len(padded) // _ESP32_KEY_BLOCK
    keys = _esp32_keys(key, address // _ESP32_KEY_BLOCK, count, conf)
    blocks = np.frombuffer(padded, dtype=np.uint8).reshape(count, 2, _BLOCK)
    # The hardware runs AES inverted (encrypting flash is AES decryption), on
    # byte-reversed 16-byte blocks.
    aes = aes256_encrypt_blocks if decrypting else aes256_decrypt_blocks
    out = aes(blocks, keys, reversed_blocks=True, premixed=True).reshape(-1)
    return out[head : head + len(data)].tobytes()


# --- ESP32-S3/C3: XTS-AES with 128-byte data units ----------------------------------


def _xts(data: bytes, key: bytes, address: int, _conf: int, decrypting: bool) -> bytes:
    half = len(key) // 2
    data_key, tweak_key = key[:half], key[half:]
    if data_key == tweak_key:
        raise InputError(
            "XTS flash-encryption key has two equal halves, which XTS forbids: "
            "generate a fresh random key"
        )
    head = address % _XTS_UNIT
    tail = -(head + len(data)) % _XTS_UNIT
    padded = bytes(head) + data + bytes(tail)
    units = len(padded) // _XTS_UNIT
    # The tweak of a unit is its flash address, little-endian, in a 16-byte block.
    unit_addresses = address - head + _XTS_UNIT * np.arange(units, dtype=np.uint64)
    tweak_blocks = np.zeros((units, 2), dtype="<u8")
    tweak_blocks[:, 0] = unit_addresses
    ecb = Cipher(algorithms.AES(tweak_key), modes.ECB()).encryptor()
    first = np.frombuffer(ecb.update(tweak_blocks.tobytes()), dtype="<u8").reshape(units, 2)
    # Multiply by alpha in GF(2^128) for each of the 8 blocks of a unit (IEEE 1619).
    masks = np.empty((units, _XTS_UNIT // _BLOCK, 2), dtype="<u8")
    masks[:, 0] = first
    for j in range(1, _XTS_UNIT // _BLOCK):
        low, high = masks[:, j - 1, 0], masks[:, j - 1, 1]
        carry = high >> np.uint64(63)
        masks[:, j, 1] = (high << np.uint64(1)) | (low >> np.uint64(63))
        masks[:, j, 0] = (low << np.uint64(1)) ^ (carry * np.uint64(0x87))
    mask_bytes = masks.view(np.uint8).reshape(units, _XTS_UNIT)
    # Each unit is byte-reversed before and after XTS.
    reversed_units = np.frombuffer(padded, dtype=np.uint8).reshape(units, _XTS_UNIT)[:, ::-1]
    cipher = Cipher(algorithms.AES(data_key), modes.ECB())
    engine = cipher.decryptor() if decrypting else cipher.encryptor()
    middle = engine.update((reversed_units ^ mask_bytes).tobytes())
    result = np.frombuffer(middle, dtype=np.uint8).reshape(units, _XTS_UNIT) ^ mask_bytes
    return result[:, ::-1].tobytes()[head : head + len(data)]


_SCHEMES: Final[dict[EncryptionScheme, _Scheme]] = {
    # 24 bytes: an ESP32 with the 3/4 eFuse coding scheme (espsecure extends it).
    "esp32-aes256": _Scheme(extra_key_lengths=(24,), uses_crypt_config=True, run=_esp32),
    "xts-aes": _Scheme(extra_key_lengths=(), uses_crypt_config=False, run=_xts),
}
