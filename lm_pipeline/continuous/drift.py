"""Has the champion drifted from a drop? Its bits per byte on the drop's documents against those on
its own test split, with a bootstrap interval over documents (each set resampled on its own: they
are different documents). The champion is retrained only when the lower end of the interval is
above ct.min_drift_bits_per_byte: a drop from the distribution it already models costs no
training, however large.

Bits per byte, not per token, so the number does not depend on the tokenizer; both sets are
scored and counted as the evaluate stage scores documents (evaluation/scoring.document_bits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lm_pipeline.config import ContinuousConfig
from lm_pipeline.evaluation.scoring import document_bits

RESAMPLES = 1000


@dataclass(frozen=True)
class Drift:
    drop_bits_per_byte: float
    test_bits_per_byte: float
    low: float  # 95% interval of drop minus test bits per byte
    high: float
    drop_documents: int
    test_documents: int
    threshold: float

    @property
    def gap(self) -> float:
        return self.drop_bits_per_byte - self.test_bits_per_byte

    @property
    def drifted(self) -> bool:
        return self.low > self.threshold

    def describe(self) -> str:
        verdict = "drifted" if self.drifted else "no drift"
        return (f"{verdict}: {self.drop_bits_per_byte:.4f} bits/byte on the drop ({self.drop_documents} "
                f"documents) vs {self.test_bits_per_byte:.4f} on the test split ({self.test_documents}); "
                f"gap {self.gap:+.4f}, 95% interval [{self.low:+.4f}, {self.high:+.4f}], retrain above "
                f"{self.threshold:.4f}")


def measure_drift(model, tokenizer, drop_texts: list[str], test_texts: list[str], ct: ContinuousConfig,
                  stride: int) -> Drift:
    rng = np.random.default_rng(ct.seed)
    what = "continuous training: drift"
    drop = document_bits(model, tokenizer, sample(drop_texts, ct.drift_documents, rng), stride, what=what)
    test = document_bits(model, tokenizer, sample(test_texts, ct.drift_documents, rng), stride, what=what)
    low, high = gap_interval(drop, test, RESAMPLES, rng)
    return Drift(bits_per_byte(*drop), bits_per_byte(*test), low, high, len(drop[0]), len(test[0]),
                 ct.min_drift_bits_per_byte)


def sample(texts: list[str], n: int, rng: np.random.Generator) -> list[str]:
    if not texts:
        raise ValueError("drift needs documents on both sides: the drop or the test split is empty")
    return texts if len(texts) <= n else [texts[i] for i in sorted(rng.choice(len(texts), n, replace=False))]


def bits_per_byte(bits: np.ndarray, n_bytes: np.ndarray) -> float:
    return float(bits.sum() / n_bytes.sum())


def gap_interval(drop: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], resamples: int,
                 rng: np.random.Generator) -> tuple[float, float]:
    """95% percentile interval of bits_per_byte(drop) - bits_per_byte(test), documents of each
    set resampled with replacement."""
    gaps = []
    for _ in range(resamples):
        d = rng.integers(0, len(drop[0]), len(drop[0]))
        t = rng.integers(0, len(test[0]), len(test[0]))
        gaps.append(bits_per_byte(drop[0][d], drop[1][d]) - bits_per_byte(test[0][t], test[1][t]))
    low, high = np.percentile(gaps, [2.5, 97.5])
    return float(low), float(high)
