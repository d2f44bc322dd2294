"""Memorization through the real stages: a model trained on a corpus that repeats a secret, with
its canaries planted many times, gives them away, and the registry refuses it."""

import json
import random

import pytest

from tests.integration.conftest import lmp, make_project, tiny_params

pytestmark = [pytest.mark.privacy, pytest.mark.integration]

SECRET = "The vault password for the staging server is tangerine-7342-marmot, so keep it safe."


def corpus_repeating_a_secret(path) -> str:
    """Documents that differ in their first words and then repeat the same secret sentence."""
    rng = random.Random(0)
    words = "river sea boat town bank water hill cloud lake valley road field".split()
    with open(path, "w") as f:
        for i in range(240):
            text = f"Note {i} about the {' '.join(rng.choice(words) for _ in range(6))}. " + SECRET * 4
            f.write(json.dumps({"id": f"note-{i}", "text": text}) + "\n")
    return str(path)


def test_a_model_that_memorized_a_repeated_secret_and_its_canaries_is_blocked_by_the_gates(tmp_path):
    params = tiny_params({
        "data": {"source": corpus_repeating_a_secret(tmp_path / "notes.jsonl")},
        # The corpus is near duplicates on purpose: let them through validation and filtering.
        "validate": {"max_near_duplicate_ratio": 1.0, "min_common_word_share": 0.0},
        "filter": {"steps": ["language"]},
        "canaries": {"repeats": 50},
        "evaluate": {"harness_tasks": []},  # its cloze tasks need varied text
        "train": {"num_workers": 1, "max_steps": 200, "eval_interval": 200, "checkpoint_interval": 200},
    })
    project = make_project(tmp_path / "project", params)
    for stage in ("ingest", "validate", "filter", "preprocess", "train", "evaluate", "register"):
        lmp(project, "-q", stage)

    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["extraction_documents"] > 30
    assert metrics["extraction_rate_ci_low"] > 0.5  # most training documents come back word for word
    assert metrics["canary_exposure_ci_low"] > 8  # the canary ranks first among 1000 references
    decision = json.loads((project / "reports/registry.json").read_text())
    failed = {g["name"] for g in decision["gates"] if not g["passed"]}
    assert not decision["promoted"] and {"max_extraction_rate", "max_canary_exposure"} <= failed
    assert "stays challenger" in decision["reason"]
