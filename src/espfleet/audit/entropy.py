"""Entropy map of a flash dump: which 4 KB blocks look erased, plain or encrypted.

Flash encryption turns every written block into bytes indistinguishable from random
(Shannon entropy close to 8 bits per byte over a 4 KB block: 7.95 on average for
random data). Code, strings and tables sit well below; an erased block is all 0xFF.
The map lets a person see at a glance which regions an attacker could read.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

__all__ = [
    "BLOCK_SIZE",
    "BlockClass",
    "EntropyBlock",
    "EntropyMap",
    "entropy_map",
]

BLOCK_SIZE = 4096
#: Below this many bits per byte a block is mostly padding or tables.
LOW_ENTROPY = 3.0
#: Ciphertext scores within this many bits of what random bytes of the same length
#: give (4 KB of random data: 7.955, so a full block needs 7.6).
CIPHERTEXT_MARGIN = 0.35
#: Fewer written bytes than this are too few to tell ciphertext from anything else.
MIN_JUDGED = 64


class BlockClass(Enum):
    ERASED = "erased"
    LOW = "low"
    PLAINTEXT = "plaintext"
    CIPHERTEXT = "ciphertext"

    @property
    def symbol(self) -> str:
        return _SYMBOLS[self]


_SYMBOLS = {
    BlockClass.ERASED: ".",
    BlockClass.LOW: "-",
    BlockClass.PLAINTEXT: "P",
    BlockClass.CIPHERTEXT: "#",
}


@dataclass(frozen=True)
class EntropyBlock:
    offset: int
    #: Bits per byte over the written part (trailing erased bytes left out).
    entropy: float
    cls: BlockClass
    #: Bytes before the block's trailing run of 0xFF.
    written: int

    def to_json(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "entropy": round(self.entropy, 3),
            "class": self.cls.value,
            "written": self.written,
        }


@dataclass(frozen=True)
class EntropyMap:
    blocks: tuple[EntropyBlock, ...]
    block_size: int = BLOCK_SIZE

    def runs(self) -> list[tuple[int, int, BlockClass]]:
        """Consecutive blocks of one class as ``(offset, length, class)``."""
        out: list[tuple[int, int, BlockClass]] = []
        for block in self.blocks:
            if out and out[-1][2] is block.cls and out[-1][0] + out[-1][1] == block.offset:
                start, length, cls = out[-1]
                out[-1] = (start, length + self.block_size, cls)
            else:
                out.append((block.offset, self.block_size, block.cls))
        return out

    def counts(self) -> dict[str, int]:
        result = {cls.value: 0 for cls in BlockClass}
        for block in self.blocks:
            result[block.cls.value] += 1
        return result

    def render(self, width: int = 64) -> list[str]:
        """One line per ``width`` blocks: the offset, then one symbol per block."""
        symbols = "".join(b.cls.symbol for b in self.blocks)
        return [
            f"0x{i * self.block_size:08x} {symbols[i : i + width]}"
            for i in range(0, len(symbols), width)
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "block_size": self.block_size,
            "counts": self.counts(),
            "blocks": [b.to_json() for b in self.blocks],
        }


def _random_entropy(n: np.ndarray) -> np.ndarray:
    """Expected Shannon entropy of ``n`` uniformly random bytes (Miller-Madow bias)."""
    expected: np.ndarray = 8.0 - 255.0 / (2.0 * np.maximum(n, 1) * np.log(2.0))
    return expected


def entropy_map(data: bytes, block_size: int = BLOCK_SIZE) -> EntropyMap:
    """Per-block Shannon entropy of the *written* part of each block.

    Flash is written from the start of a sector and the rest stays erased, so a
    block's trailing 0xFF bytes are left out: 256 bytes of ciphertext followed by
    erased flash is ciphertext, judged against what that many random bytes give.
    """
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    if not data:
        return EntropyMap((), block_size)
    arr = np.frombuffer(data, dtype=np.uint8)
    nblocks = -(-len(arr) // block_size)
    pad = nblocks * block_size - len(arr)
    if pad:  # a short last block reads as if erased flash followed it
        arr = np.concatenate([arr, np.full(pad, 0xFF, dtype=np.uint8)])
    blocks2d = arr.reshape(nblocks, block_size)
    written_mask = blocks2d != 0xFF
    written = np.where(
        written_mask.any(axis=1), block_size - np.argmax(written_mask[:, ::-1], axis=1), 0
    )
    # One bincount over (block, byte value) pairs: no Python loop over bytes.
    index = blocks2d.astype(np.int32)
    index += (np.arange(nblocks, dtype=np.int32) * 256)[:, None]
    hist = np.bincount(index.ravel(), minlength=nblocks * 256).reshape(nblocks, 256)
    hist[:, 0xFF] -= block_size - written
    p = hist / np.maximum(written, 1)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(hist > 0, -p * np.log2(p), 0.0)
    entropies = terms.sum(axis=1)
    cipher_floor = _random_entropy(written) - CIPHERTEXT_MARGIN
    blocks = []
    for i in range(nblocks):
        e, n = float(entropies[i]), int(written[i])
        if n == 0:
            cls = BlockClass.ERASED
        elif e < LOW_ENTROPY or n < MIN_JUDGED:
            cls = BlockClass.LOW
        elif e < cipher_floor[i]:
            cls = BlockClass.PLAINTEXT
        else:
            cls = BlockClass.CIPHERTEXT
        blocks.append(EntropyBlock(i * block_size, e, cls, n))
    return EntropyMap(tuple(blocks), block_size)
