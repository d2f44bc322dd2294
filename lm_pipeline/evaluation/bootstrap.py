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
    """Corpus BLEU of a resample of segments. Corpus BLEU is a function of the n-gram counts and
    lengths summed over segments, so each segment is tokenized and counted once, and a resample
    only sums its rows (sacrebleu's own scoring from the sums: the same number as corpus_score)."""
    import sacrebleu

    bleu = sacrebleu.metrics.BLEU()
    segments = [bleu.corpus_score([p], [[r]]) for p, r in zip(predictions, references, strict=True)]
    correct, total = (np.array([s.counts for s in segments]), np.array([s.totals for s in segments]))
    sys_len, ref_len = np.array([s.sys_len for s in segments]), np.array([s.ref_len for s in segments])

    def score(idx: np.ndarray) -> float:
        return bleu.compute_bleu(correct[idx].sum(0).tolist(), total[idx].sum(0).tolist(),
                                 int(sys_len[idx].sum()), int(ref_len[idx].sum()),
                                 smooth_method=bleu.smooth_method, smooth_value=bleu.smooth_value,
                                 effective_order=bleu.effective_order,
                                 max_ngram_order=bleu.max_ngram_order).score
    return score
