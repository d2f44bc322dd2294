"""The canary's verdict: each bar (failed requests, p95 latency, served against offline
log-probabilities) fails it on its own, naming the number and the setting; all met, it passes."""

import math

import numpy as np
import pytest

from lm_pipeline.config import ContinuousConfig
from lm_pipeline.continuous.canary import Canary, judge, logprob_gap, probe_texts

CT = ContinuousConfig(canary_max_error_rate=0.1, canary_max_p95_ms=500, canary_tolerance=1e-3)


@pytest.mark.parametrize(("measured", "problem"), [
    ({}, None),
    ({"errors": 2}, "2 of 10 probes failed (ct.canary_max_error_rate 10%)"),
    ({"p95_ms": 900.0}, "p95 latency 900 ms over ct.canary_max_p95_ms 500"),
    ({"max_logprob_gap": 0.02}, "differ from the evaluated model's by up to 0.02 nats a token"),
])
def test_each_bar_fails_the_canary_on_its_own_and_says_which(measured, problem):
    canary = Canary(served="m/2", requests=10, **({"errors": 1, "p95_ms": 120.0, "max_logprob_gap": 1e-5}
                                                  | measured))
    judge(canary, CT)
    assert canary.passed == (problem is None)
    assert problem is None or problem in canary.problems[0]


def test_probe_texts_are_a_seeded_sample():
    texts = [str(i) for i in range(100)]
    assert probe_texts(texts, 8, 0) == probe_texts(texts, 8, 0) != probe_texts(texts, 8, 1)
    assert len(set(probe_texts(texts, 8, 0))) == 8 and probe_texts(texts[:3], 8, 0) == texts[:3]


def test_a_response_without_usable_log_probabilities_counts_as_the_largest_gap():
    expected = np.array([-1.0, -2.0])

    def body(values):
        return {"choices": [{"logprobs": {"token_logprobs": [None, *values]}}]}

    assert logprob_gap(body([-1.0, -2.0005]), expected) == pytest.approx(5e-4)
    for broken in (body([None, -2.0]), body([float("nan"), -2.0]), body([-1.0]), {"choices": []}, {}):
        assert math.isinf(logprob_gap(broken, expected))
