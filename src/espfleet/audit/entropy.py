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
#: At or above this a 4 KB block is as random as ciphertext (random data: ~7.95).
CIPHERTEXT_ENTROPY = 7.6


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
    entropy: float
    cls: BlockClass

    def to_json(self) -> dict[str, Any]:
        return {"offset": self.offset, "entropy": round(self.entropy, 3), "class": self.cls.value}


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
        step = width * self.block_size
        return [
            f"0x{i * self.block_size:08x} {symbols[i : i + width]}"
            for i in range(0, len(symbols), width)
            if step
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "block_size": self.block_size,
            "counts": self.counts(),
            "blocks": [b.to_json() for b in self.blocks],
        }


def entropy_map(data: bytes, block_size: int = BLOCK_SIZE) -> EntropyMap:
    """Per-block Shannon entropy; a short last block is measured as it is."""
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    if not data:
        return EntropyMap((), block_size)
    arr = np.frombuffer(data, dtype=np.uint8)
    nblocks = -(-len(arr) // block_size)
    pad = nblocks * block_size - len(arr)
    if pad:
        arr = np.concatenate([arr, np.zeros(pad, dtype=np.uint8)])
    # One bincount over (block, byte value) pairs: no Python loop over bytes.
    index = arr.reshape(nblocks, block_size).astype(np.int32)
    index += (np.arange(nblocks, dtype=np.int32) * 256)[:, None]
    hist = np.bincount(index.ravel(), minlength=nblocks * 256).reshape(nblocks, 256)
    hist[-1, 0] -= pad
    sizes = hist.sum(axis=1, keepdims=True)
    p = hist / sizes
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(hist > 0, -p * np.log2(p), 0.0)
    entropies = terms.sum(axis=1)
    erased = hist[:, 0xFF] == sizes[:, 0]
    blocks = []
    for i in range(nblocks):
        e = float(entropies[i])
        if erased[i]:
            cls = BlockClass.ERASED
        elif e < LOW_ENTROPY:
            cls = BlockClass.LOW
        elif e < CIPHERTEXT_ENTROPY:
            cls = BlockClass.PLAINTEXT
        else:
            cls = BlockClass.CIPHERTEXT
        blocks.append(EntropyBlock(i * block_size, e, cls))
    return EntropyMap(tuple(blocks), block_size)
