"""Seeded bootstrap confidence intervals over documents (or segments).

Resampling whole documents keeps each document's tokens together, so the interval reflects how
much the score depends on which documents happened to land in the test split.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def bootstrap_ci(statistic: Callable[[np.ndarray], float], n_items: int, resamples: int, seed: int,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of statistic(indices) over `resamples` draws of n_items with replacement."""
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n_items, size=n_items)) for _ in range(resamples)]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def perplexity_of(nll: np.ndarray, counts: np.ndarray) -> Callable[[np.ndarray], float]:
    """Token-weighted perplexity of a resample of documents."""
    return lambda idx: float(np.exp(nll[idx].sum() / counts[idx].sum()))


def corpus_bleu_of(predictions: list[str], references: list[str]) -> Callable[[np.ndarray], float]:
    import sacrebleu

    bleu = sacrebleu.metrics.BLEU()
    return lambda idx: bleu.corpus_score([predictions[i] for i in idx],
                                         [[references[i] for i in idx]]).score
