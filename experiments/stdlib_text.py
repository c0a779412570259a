"""Byte-level text for the trainer examples: the Python standard library's own source files.

Nothing is downloaded: the files ship with every Python. The bytes of :data:`FILES` are
joined, split into a training part and a held-out tail, and served as blocks of
``block_size`` bytes at seeded random offsets (a byte is a token; vocabulary 256).
Shared by ``hf_trainer.py`` and ``lightning_example.py`` so both train on the same data.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch
from torch.utils.data import Dataset

#: Modules of the standard library whose source is the corpus (about 180 kB).
FILES = ("textwrap.py", "string.py", "shlex.py", "fractions.py", "heapq.py", "difflib.py")
VOCAB_SIZE = 256


def stdlib_bytes(files: tuple[str, ...] = FILES) -> torch.Tensor:
    """The concatenated bytes of ``files`` from this Python's standard library, as int64."""
    root = Path(sysconfig.get_path("stdlib"))
    data = b"\n".join((root / name).read_bytes() for name in files)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


class ByteBlocks(Dataset):
    """``n`` blocks of ``block_size`` bytes cut at seeded random offsets of ``data``.

    Items are ``{"input_ids": block, "labels": block}``: a causal language model predicts
    each byte from the ones before it (transformers' models shift the labels themselves).
    """

    def __init__(self, data: torch.Tensor, block_size: int, n: int, seed: int) -> None:
        if data.numel() <= block_size:
            raise ValueError(f"block_size={block_size} is invalid: expected < {data.numel()}")
        gen = torch.Generator().manual_seed(seed)
        starts = torch.randint(data.numel() - block_size, (n,), generator=gen)
        self.blocks = torch.stack([data[s : s + block_size] for s in starts.tolist()])

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def train_eval_blocks(
    block_size: int, n_train: int, n_eval: int, seed: int = 0, eval_fraction: float = 0.1
) -> tuple[ByteBlocks, ByteBlocks]:
    """Training blocks from the head of the corpus, evaluation blocks from its held-out tail."""
    data = stdlib_bytes()
    cut = int(data.numel() * (1 - eval_fraction))
    return (
        ByteBlocks(data[:cut], block_size, n_train, seed),
        ByteBlocks(data[cut:], block_size, n_eval, seed + 1),
    )
