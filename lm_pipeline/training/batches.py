"""Token batches for training and validation, read from memory-mapped token files."""

from __future__ import annotations

import numpy as np
import torch


def random_batch(tokens: np.ndarray, batch_size: int, block_size: int, seed: list[int],
                 rank: int = 0, world_size: int = 1, micro: int = 0, accum: int = 1):
    """This rank's share of one micro-step of a step's global batch: x (B, T) and targets y (B, T).

    The step's global batch (batch_size * world_size * accum windows) is a pure function of `seed`
    ([run seed, step]); micro-step m on rank r takes slice m * world_size + r of it. So a resumed
    run draws exactly the batches the uninterrupted run drew, and 1 worker with batch 16, 2 workers
    with batch 8 and 1 worker with 4 micro-batches of 4 all train on the same 16 windows per step.
    """
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - block_size, size=batch_size * world_size * accum)
    first = (micro * world_size + rank) * batch_size
    return windows(tokens, starts[first:first + batch_size].tolist(), block_size)


def fixed_batches(tokens: np.ndarray, n_batches: int, batch_size: int, block_size: int):
    """Evenly spaced windows over the whole file: the same validation set at every evaluation."""
    n = n_batches * batch_size
    starts = np.linspace(0, len(tokens) - block_size - 1, n).astype(np.int64).tolist()
    return [windows(tokens, starts[i:i + batch_size], block_size) for i in range(0, n, batch_size)]


def windows(tokens: np.ndarray, starts: list[int], block_size: int):
    chunks = np.stack([np.asarray(tokens[s:s + block_size + 1], dtype=np.int64) for s in starts])
    chunk = torch.from_numpy(chunks)
    return chunk[:, :-1], chunk[:, 1:]
