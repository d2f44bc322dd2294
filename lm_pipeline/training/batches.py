"""Token batches for training and validation, read from memory-mapped token files."""

from __future__ import annotations

import numpy as np
import torch


def random_batch(tokens: np.ndarray, batch_size: int, block_size: int, seed: list[int]):
    """batch_size random windows: inputs x (B, T) and next-token targets y (B, T).

    The windows are a pure function of `seed` (e.g. [run seed, rank, step, micro-step]), so a
    resumed run draws exactly the batches the uninterrupted run would have drawn.
    """
    starts = np.random.default_rng(seed).integers(0, len(tokens) - block_size, size=batch_size)
    return windows(tokens, starts.tolist(), block_size)


def fixed_batches(tokens: np.ndarray, n_batches: int, batch_size: int, block_size: int):
    """Evenly spaced windows over the whole file: the same validation set at every evaluation."""
    n = n_batches * batch_size
    starts = np.linspace(0, len(tokens) - block_size - 1, n).astype(np.int64).tolist()
    return [windows(tokens, starts[i:i + batch_size], block_size) for i in range(0, n, batch_size)]


def windows(tokens: np.ndarray, starts: list[int], block_size: int):
    chunks = np.stack([np.asarray(tokens[s:s + block_size + 1], dtype=np.int64) for s in starts])
    chunk = torch.from_numpy(chunks)
    return chunk[:, :-1], chunk[:, 1:]
