"""The forgetting guard, on real fine-tunes of conftest's champion: a challenger trained on a new
domain alone beats the champion there but loses what it knew, and the guard blocks it; trained
with a replay of the old domain, it beats the champion on the new data and passes the guard."""

import pytest

from lm_pipeline.config import EvaluateConfig
from lm_pipeline.registry.gates import champion_gate, compare, forgetting_gate
from tests.unit.continuous.corpora import BIRDS, PLACES, PYTHON, documents

EVALUATE = EvaluateConfig(stride=32, bootstrap_resamples=500)
MAX_FORGETTING = 0.02


@pytest.mark.metrics
def test_a_challenger_without_replay_is_blocked_by_the_forgetting_guard_and_one_with_replay_passes(
        champion, fine_tune):
    new, old = documents(BIRDS + PLACES, 80, seed=30), documents(PYTHON, 80, seed=31)
    new_test, old_test = documents(BIRDS + PLACES, 30, seed=32), documents(PYTHON, 30, seed=33)
    gates = {}
    for name, texts in (("no replay", new), ("replay", new + old)):
        challenger = (fine_tune(texts, steps=150), champion[1])
        on_new = compare(champion, challenger, new_test, "1", EVALUATE)
        on_old = compare(champion, challenger, old_test, "1", EVALUATE)
        gates[name] = champion_gate(on_new, 0.0), forgetting_gate(on_old, MAX_FORGETTING)
    beats, keeps = gates["no replay"]
    assert beats.passed and not keeps.passed and keeps.value < -MAX_FORGETTING  # learned, and forgot
    assert "must stay above -0.0200" in keeps.detail
    beats, keeps = gates["replay"]
    assert beats.passed and keeps.passed, (beats.detail, keeps.detail)
