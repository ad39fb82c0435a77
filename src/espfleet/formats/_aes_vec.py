"""AES-256 over many blocks, each with its own key, vectorised with numpy.

ESP32 flash encryption changes the AES key every 32 bytes of flash, so the usual
"one cipher object, many blocks" shape of a crypto library does not fit: creating a
cipher per 32 bytes is what makes espsecure slow. Here the key schedule of every
key and the rounds of every block run at once, as table lookups over numpy arrays
(the classic 32-bit T-table formulation of AES, FIPS-197 section 5 and the
reference ``rijndael-alg-fst.c``). Pure numpy: no compiler is needed anywhere.

Words are AES big-endian column words held in int64 arrays, so that shifting and
masking give indices numpy can gather with at full speed.

This is a hazardous-materials layer: plain AES-ECB with caller-supplied keys, no
mode, no padding. :mod:`espfleet.formats.flash_encryption` is the user of it.
"""

from __future__ import annotations

import math
import sys
import threading
from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "aes256_decrypt_blocks",
    "aes256_encrypt_blocks",
    "inv_mix_columns",
    "key_words",
    "with_inv_mixed",
]

Words = npt.NDArray[np.int64]
_T = TypeVar("_T", bound=np.generic)

_ROUNDS: Final = 14
_KEY_WORDS: Final = 8


def _xtime(x: int) -> int:
    x <<= 1
    return (x ^ 0x11B) if x & 0x100 else x


def _gmul(a: int, b: int) -> int:
    result = 0
    while b:
        if b & 1:
            result ^= a
        a = _xtime(a)
        b >>= 1
    return result


def _sbox() -> list[int]:
    """The AES S-box from its definition: inverse in GF(2^8), then the affine map.

    Inverses through the powers of the generator 3 (x = 3**i has inverse 3**(255 - i)):
    255 multiplications at import instead of a search over all pairs."""
    power, exponent = [0] * 255, [0] * 256
    x = 1
    for i in range(255):
        power[i], exponent[x] = x, i
        x = _gmul(x, 3)
    inverse = [0] + [power[-exponent[x] % 255] for x in range(1, 256)]
    box = []
    for x in range(256):
        b = inverse[x]
        s = b
        for shift in range(1, 5):
            s ^= ((b << shift) | (b >> (8 - shift))) & 0xFF
        box.append(s ^ 0x63)
    return box


def _word(b0: int, b1: int, b2: int, b3: int) -> int:
    return (b0 << 24) | (b1 << 16) | (b2 << 8) | b3


def _rotations(table0: list[int]) -> tuple[Words, Words, Words, Words]:
    """T0..T3, each the previous one rotated right by a byte."""
    tables = [table0]
    for _ in range(3):
        tables.append([((w >> 8) | (w << 24)) & 0xFFFFFFFF for w in tables[-1]])
    arrays = [np.array(t, dtype=np.int64) for t in tables]
    return arrays[0], arrays[1], arrays[2], arrays[3]


def _shifted(box: list[int]) -> tuple[Words, Words, Words, Words]:
    """The S-box placed in byte 0..3 of a word (for the last round and SubWord)."""
    base = np.array(box, dtype=np.int64)
    return base << 24, base << 16, base << 8, base


_Tables = tuple[Words, Words, Words, Words]

_SBOX: Final = _sbox()
_INV_SBOX: Final = [_SBOX.index(x) for x in range(256)]
_TE: Final = _rotations([_word(_gmul(s, 2), s, s, _gmul(s, 3)) for s in _SBOX])
_TD: Final = _rotations(
    [_word(_gmul(s, 14), _gmul(s, 9), _gmul(s, 13), _gmul(s, 11)) for s in _INV_SBOX]
)
#: InvMixColumns of a word holding byte x in row 0..3 (and zeros elsewhere).
_IMC: Final = _rotations(
    [_word(_gmul(x, 14), _gmul(x, 9), _gmul(x, 13), _gmul(x, 11)) for x in range(256)]
)
_S: Final = _shifted(_SBOX)
_SI: Final = _shifted(_INV_SBOX)
#: SubWord in the low half, InvMixColumns(SubWord) in the high half (decryption keys).
_S_AND_IMC_S: Final[_Tables] = (
    _S[0] | (np.take(_IMC[0], _SBOX) << 32),
    _S[1] | (np.take(_IMC[1], _SBOX) << 32),
    _S[2] | (np.take(_IMC[2], _SBOX) << 32),
    _S[3] | (np.take(_IMC[3], _SBOX) << 32),
)
#: The rounds run on uint32 words (half the memory traffic of int64) and gather
#: with each byte plane of the state as the index, straight from a uint8 view.
Words32 = npt.NDArray[np.uint32]
_Tables32 = tuple[Words32, Words32, Words32, Words32]


def _as32(tables: _Tables) -> _Tables32:
    return (tables[0].astype(np.uint32), tables[1].astype(np.uint32),
            tables[2].astype(np.uint32), tables[3].astype(np.uint32))


_TE32: Final = _as32(_TE)
_TD32: Final = _as32(_TD)
_S32: Final = _as32(_S)
_SI32: Final = _as32(_SI)
#: Index of row r's byte (row 0 = most significant) in a uint32's memory.
_ROW_BYTE: Final = (3, 2, 1, 0) if sys.byteorder == "little" else (0, 1, 2, 3)
#: The same for the low 32 bits of an int64 (the plain word of a key schedule word).
_LOW_ROW_BYTE: Final = (3, 2, 1, 0) if sys.byteorder == "little" else (4, 5, 6, 7)
_RCON: Final = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40)
#: Rcon and InvMixColumns(Rcon) packed like the decryption key words, as signed int64.
_RCON_PACKED: Final = {
    r: ((r << 24) | (int(_IMC[0][r]) << 32)) - ((1 << 64) if int(_IMC[0][r]) >> 31 else 0)
    for r in _RCON
}
_BYTE: Final = 0xFF
_WORD: Final = 0xFFFFFFFF
#: Keys per pass: small enough that the working set stays in the CPU caches, large
#: enough that numpy's per-call cost vanishes.
_CHUNK: Final = 8192
_KEY_CHUNK: Final = 8192
#: Output column c takes row r from input column (c + shift[r]) % 4 (ShiftRows).
_ENC_SHIFT: Final = (0, 1, 2, 3)
_DEC_SHIFT: Final = (0, 3, 2, 1)


def _bytes_of(w: Words) -> tuple[Words, Words, Words, Words]:
    return w >> 24, (w >> 16) & _BYTE, (w >> 8) & _BYTE, w & _BYTE


def _lookup(tables: _Tables, b: tuple[Words, Words, Words, Words]) -> Words:
    result: Words = np.take(tables[0], b[0])
    for row in range(1, 4):
        result ^= np.take(tables[row], b[row])
    return result


class _Arena(threading.local):
    """This thread's scratch arrays, kept between calls (and grown as needed).

    A 1.5 MB encryption touches about 7 MB of fresh working arrays; on first touch
    each 4 KB page costs a page fault and the kernel's zeroing, about 12% of the
    time. Kept per thread, because numpy releases the GIL inside the loops that
    fill them. Arrays over :data:`_ARENA_MAX_BYTES` (a caller with unusually many
    blocks per key) are allocated per call instead of being kept.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, npt.NDArray[np.generic]] = {}

    def array(self, name: str, dtype: type[_T], shape: tuple[int, ...]) -> npt.NDArray[_T]:
        size = math.prod(shape)
        if size * np.dtype(dtype).itemsize > _ARENA_MAX_BYTES:
            return np.empty(shape, dtype=dtype)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.size < size:
            buffer = self.buffers[name] = np.empty(size, dtype=dtype)
        kept: npt.NDArray[_T] = buffer[:size].reshape(shape)  # type: ignore[assignment]
        return kept


_ARENA_MAX_BYTES: Final = 4 << 20
_ARENA: Final = _Arena()


class _Work:
    """Every array a call needs, from this thread's :class:`_Arena`.

    Fresh multi-hundred-kilobyte temporaries per numpy call cost a page fault per
    4 KB, which was the largest cost of a first version; writing into these with
    ``out=`` keeps the hot loops allocation-free. Rounds run on ``round_chunk``
    keys at a time (their working set stays in the CPU cache); the key schedule on
    up to ``key_chunk`` keys at a time (its steps are on small arrays, where numpy's
    per-call cost matters more).
    """

    def __init__(self, round_chunk: int, blocks_per_key: int, key_chunk: int) -> None:
        shape = (4, blocks_per_key, round_chunk)
        schedule = (4 * (_ROUNDS + 1), key_chunk)
        self.state = _ARENA.array("state", np.uint32, shape)
        self.spare = _ARENA.array("spare", np.uint32, shape)
        self.tmp = _ARENA.array("tmp", np.uint32, shape)
        # A call runs one direction: the plain and the packed schedule share memory.
        self.words = self.packed = _ARENA.array("schedule", np.int64, schedule)
        self.gathered = _ARENA.array("gathered", np.int64, (key_chunk,))
        self.round_keys = _ARENA.array("round_keys", np.uint32, schedule)

    def lookup(self, tables: _Tables32, shift: tuple[int, int, int, int]) -> None:
        """One table round: state[c] = XOR over rows r of
        tables[r][byte r of state[(c + shift[r]) % 4]]."""
        source, result, tmp = self.state, self.spare, self.tmp
        planes = source.view(np.uint8).reshape(*source.shape, 4)
        # A uint8 index into a 256-entry table is always in range, so "wrap" never
        # wraps; it is numpy's cheapest bounds mode (~15% faster takes than "clip").
        np.take(tables[0], planes[..., _ROW_BYTE[0]], out=result, mode="wrap")
        for row in (1, 2, 3):
            np.take(tables[row], planes[..., _ROW_BYTE[row]], out=tmp, mode="wrap")
            k = shift[row]
            result[: 4 - k] ^= tmp[k:]
            result[4 - k :] ^= tmp[:k]
        self.state, self.spare = result, source

    def sub_word_into(self, tables: _Tables, i: int, previous: Words, out: Words) -> None:
        """``out ^= SubWord(previous)`` (after RotWord every 8th word) through ``tables``,
        indexing with the bytes of ``previous``'s low 32 bits in place: no shifts, masks
        or temporaries."""
        planes = previous.view(np.uint8).reshape(previous.shape[0], 8)
        gathered = self.gathered[: previous.shape[0]]
        # Every 8th word, RotWord moves byte 1 to the top and byte 0 to the bottom.
        rows = (1, 2, 3, 0) if i % _KEY_WORDS == 0 else (0, 1, 2, 3)
        for table, row in zip(tables, rows, strict=True):
            np.take(table, planes[:, _LOW_ROW_BYTE[row]], out=gathered, mode="wrap")
            out ^= gathered

    def expand_keys(self, key_words: Words) -> Words32:
        """FIPS-197 key expansion for AES-256: (8, N) key words -> (15, 4, N) round keys."""
        count = key_words.shape[1]
        w = self.words[:, :count]
        w[:_KEY_WORDS] = key_words
        for i in range(_KEY_WORDS, 4 * (_ROUNDS + 1)):
            if i % 4:
                np.bitwise_xor(w[i - _KEY_WORDS], w[i - 1], out=w[i])
                continue
            np.copyto(w[i], w[i - _KEY_WORDS])
            self.sub_word_into(_S, i, w[i - 1], w[i])
            if _rcon(i):
                w[i] ^= _rcon(i) << 24
        out = self.round_keys[:, :count]
        np.copyto(out, w, casting="unsafe")
        return out.reshape(_ROUNDS + 1, 4, count)

    def expand_decryption_keys(self, key_words: Words, premixed: bool) -> Words32:
        """The equivalent inverse cipher's key schedule (FIPS-197 5.3.5): round keys
        1..13 through InvMixColumns, 0 and 14 as they are, as (15, 4, N).

        InvMixColumns is linear, so the mixed words follow the same recurrence as the
        plain ones, with InvMixColumns-of-S-box tables. Both run at once: each int64
        holds the plain word in its low half and the mixed word in its high half
        (XOR keeps the halves apart), one table lookup serving both. ``premixed``
        key words already come that way (see :func:`with_inv_mixed`).
        """
        count = key_words.shape[1]
        packed = self.packed[:, :count]
        if premixed:
            packed[:_KEY_WORDS] = key_words
        else:
            packed[:_KEY_WORDS] = with_inv_mixed(key_words)
        for i in range(_KEY_WORDS, 4 * (_ROUNDS + 1)):
            if i % 4:
                np.bitwise_xor(packed[i - _KEY_WORDS], packed[i - 1], out=packed[i])
                continue
            np.copyto(packed[i], packed[i - _KEY_WORDS])
            self.sub_word_into(_S_AND_IMC_S, i, packed[i - 1], packed[i])
            rcon = _rcon(i)
            if rcon:
                packed[i] ^= np.int64(_RCON_PACKED[rcon])
        # Into uint32, which keeps the low 32 bits: the plain words of rounds 0 and
        # 14 from the low halves, the mixed ones of rounds 1..13 from the high halves.
        out = self.round_keys[:, :count]
        np.right_shift(packed, 32, out=out, casting="unsafe")
        np.copyto(out[:4], packed[:4], casting="unsafe")
        np.copyto(out[-4:], packed[-4:], casting="unsafe")
        return out.reshape(_ROUNDS + 1, 4, count)


def _rcon(i: int) -> int:
    return _RCON[i // _KEY_WORDS - 1] if i % _KEY_WORDS == 0 else 0


def inv_mix_columns(words: Words) -> Words:
    """InvMixColumns of every 32-bit AES column word in ``words`` (int64, any shape)."""
    return _lookup(_IMC, _bytes_of(words))


def with_inv_mixed(words: Words) -> Words:
    """Key words with InvMixColumns of each word in its high 32 bits.

    The form the decryption key schedule starts from. InvMixColumns is linear, so
    ``with_inv_mixed(a ^ b) == with_inv_mixed(a) ^ with_inv_mixed(b)``: a caller whose
    keys are a fixed key XOR known patterns can mix the parts once, in tables.
    """
    low = words & _WORD
    return low | (inv_mix_columns(low) << 32)


def key_words(keys: npt.NDArray[np.uint8]) -> Words:
    """(N, 32) key bytes -> (N, 8) AES key words (big-endian 32-bit values in int64),
    the form the functions below also accept directly."""
    return keys.view(">u4").astype(np.int64)


def _rounds(
    work: _Work,
    round_keys: Words32,
    tables: _Tables32,
    last: _Tables32,
    shift: tuple[int, int, int, int],
    reverse: bool,
) -> None:
    """AddRoundKey, 13 table rounds and the last round, in place on ``work.state``.

    The state is (4, B, N) and ``round_keys`` (15, 4, N), used last to first when
    ``reverse``: all four columns of every block go through each table in one call.
    """

    def key(r: int) -> Words32:
        selected: Words32 = round_keys[_ROUNDS - r if reverse else r]
        return selected[:, None, :]

    work.state ^= key(0)
    for r in range(1, _ROUNDS + 1):
        work.lookup(last if r == _ROUNDS else tables, shift)
        work.state ^= key(r)


Keys = npt.NDArray[np.uint8] | Words


def _run(
    blocks: npt.NDArray[np.uint8],
    keys: Keys,
    decrypt: bool,
    reversed_blocks: bool,
    premixed: bool,
) -> npt.NDArray[np.uint8]:
    words: Words
    if keys.dtype == np.uint8 and keys.ndim == 2 and keys.shape[1] == 32:
        words = key_words(keys.astype(np.uint8, copy=False))
    elif keys.dtype == np.int64 and keys.ndim == 2 and keys.shape[1] == _KEY_WORDS:
        words = keys.astype(np.int64, copy=False)
    else:
        raise ValueError(f"keys must be (N, 32) uint8 or (N, 8) int64 words, not {keys.shape}")
    if blocks.ndim != 3 or blocks.shape[0] != words.shape[0] or blocks.shape[2] != 16:
        raise ValueError(f"blocks must have shape ({words.shape[0]}, B, 16), not {blocks.shape}")
    count, per_key = words.shape[0], blocks.shape[1]
    if count == 0 or per_key == 0:
        return np.empty_like(blocks)
    # Equal chunks, the last one padded: every array keeps one shape for the whole call.
    chunks = -(-count // _CHUNK)
    size = -(-count // chunks)
    padded = chunks * size
    blocks = np.ascontiguousarray(blocks)
    if padded > count:
        words = np.concatenate([words, np.zeros((padded - count, _KEY_WORDS), np.int64)])
        blocks = np.concatenate([blocks, np.zeros((padded - count, per_key, 16), np.uint8)])
    out = np.empty_like(blocks)
    # A byte-reversed block read as big-endian words is the block read as
    # little-endian words in reverse order: no copy to reverse the bytes.
    words_in, words_out = blocks.view(">u4"), out.view(">u4")
    if reversed_blocks:
        words_in, words_out = blocks.view("<u4")[:, :, ::-1], out.view("<u4")[:, :, ::-1]
    group = max(1, _KEY_CHUNK // size) * size
    work = _Work(size, per_key, min(group, padded))
    for first in range(0, padded, group):
        group_words: Words = np.array(words[first : first + group].T, order="C")  # a copy
        if decrypt:
            round_keys = work.expand_decryption_keys(group_words, premixed)
        else:
            if premixed:
                group_words &= _WORD
            round_keys = work.expand_keys(group_words)
        for start in range(0, group_words.shape[1], size):
            part = slice(first + start, first + start + size)
            # (N, B, 4) words -> (4, B, N): all blocks' column c in one row.
            work.state[...] = words_in[part].transpose(2, 1, 0)
            chunk_keys = round_keys[:, :, start : start + size]
            if decrypt:
                # Equivalent inverse cipher (FIPS-197 5.3.5): round keys in reverse order,
                # InvMixColumns on every one but the first and the last.
                _rounds(work, chunk_keys, _TD32, _SI32, _DEC_SHIFT, reverse=True)
            else:
                _rounds(work, chunk_keys, _TE32, _S32, _ENC_SHIFT, reverse=False)
            words_out[part] = work.state.transpose(2, 1, 0)
    return out[:count]


def aes256_encrypt_blocks(
    blocks: npt.NDArray[np.uint8],
    keys: Keys,
    *,
    reversed_blocks: bool = False,
    premixed: bool = False,
) -> npt.NDArray[np.uint8]:
    """AES-256-ECB encrypt ``blocks[n, b]`` with ``keys[n]``; shapes (N, B, 16) and
    (N, 32) bytes, or (N, 8) words as :func:`key_words` makes them (``premixed``:
    as :func:`with_inv_mixed` makes them).

    With ``reversed_blocks`` every 16-byte block is byte-reversed before and after
    AES (ESP32 flash encryption's convention), without copying.
    """
    return _run(blocks, keys, False, reversed_blocks, premixed)


def aes256_decrypt_blocks(
    blocks: npt.NDArray[np.uint8],
    keys: Keys,
    *,
    reversed_blocks: bool = False,
    premixed: bool = False,
) -> npt.NDArray[np.uint8]:
    """AES-256-ECB decrypt: the inverse of :func:`aes256_encrypt_blocks`."""
    return _run(blocks, keys, True, reversed_blocks, premixed)
