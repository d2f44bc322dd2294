"""Drift on a small GPT trained on one domain (conftest's champion): a drop from that domain is no
drift, a drop from another domain is; the interval is the bootstrap's, seeded."""

import numpy as np

from lm_pipeline.config import ContinuousConfig
from lm_pipeline.continuous.drift import bits_per_byte, gap_interval, measure_drift
from tests.unit.continuous.corpora import BIRDS, PLACES, PYTHON, documents

CT = ContinuousConfig(min_drift_bits_per_byte=0.05, drift_documents=40)


def test_a_drop_like_the_corpus_is_no_drift_and_one_from_another_domain_is(champion):
    model, tokenizer = champion
    test_split = documents(PYTHON, 40, seed=20)
    same = measure_drift(model, tokenizer, documents(PYTHON, 40, seed=21), test_split, CT, stride=32)
    other = measure_drift(model, tokenizer, documents(BIRDS + PLACES, 40, seed=22), test_split, CT, stride=32)
    assert not same.drifted and same.low < 0.05 < other.low and other.drifted
    assert abs(same.gap) < 0.05 < other.gap  # the point estimates agree with the verdicts
    assert "no drift" in same.describe() and other.describe().startswith("drifted")
    assert same.drop_documents == same.test_documents == 40


def test_the_interval_is_the_gap_of_resampled_documents_and_covers_zero_between_equals():
    rng = np.random.default_rng(0)
    bits, sizes = rng.gamma(5.0, 20.0, size=200), rng.integers(50, 400, size=200).astype(float)
    halves = (bits[:100], sizes[:100]), (bits[100:], sizes[100:])
    low, high = gap_interval(*halves, 1000, np.random.default_rng(1))
    gap = bits_per_byte(bits[:100], sizes[:100]) - bits_per_byte(bits[100:], sizes[100:])
    assert low < gap < high and low < 0 < high  # two halves of one distribution
    shifted = gap_interval((bits[:100] * 1.5, sizes[:100]), (bits[100:], sizes[100:]), 1000,
                           np.random.default_rng(1))
    assert shifted[0] > 0
