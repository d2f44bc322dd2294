"""Bias probes: which CrowS-Pairs file was scored decides the names its numbers are reported under."""

import pytest

from lm_pipeline.config import EvaluateConfig
from lm_pipeline.evaluation.probes import crows_pairs_prefix


@pytest.mark.metrics
def test_the_built_in_crows_pairs_sample_is_reported_apart_from_the_dataset(tmp_path):
    """The 24 built-in pairs are this project's own, not the dataset: their numbers must not be
    read as (or next to) the published crows_pairs_* ones."""
    sample = EvaluateConfig().crows_pairs
    assert sample.is_file()
    assert crows_pairs_prefix(sample) == "crows_pairs_sample"
    assert crows_pairs_prefix(sample.resolve()) == "crows_pairs_sample"  # the same file, named otherwise
    assert crows_pairs_prefix(sample.parent / ".." / sample.parent.name / sample.name) == "crows_pairs_sample"
    real = tmp_path / "crows_pairs_anonymized.csv"
    real.write_text("sent_more,sent_less,stereo_antistereo,bias_type\n")
    assert crows_pairs_prefix(real) == "crows_pairs"
    assert crows_pairs_prefix(EvaluateConfig(crows_pairs=real).crows_pairs) == "crows_pairs"
