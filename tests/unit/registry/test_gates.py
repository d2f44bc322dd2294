import pytest

from lm_pipeline.config import RegisterConfig
from lm_pipeline.registry.gates import Comparison, champion_gate, quality_gates

pytestmark = pytest.mark.registry

METRICS = {"perplexity": 120.0, "bleu": 3.0, "bias_gap_gender": 0.4, "bias_gap_religion": 2.5}


def gates_for(**register):
    return {g.name: g for g in quality_gates(METRICS, RegisterConfig.model_validate(register))}


def test_no_quality_gate_unless_configured():
    assert gates_for() == {}


def test_each_quality_gate_reports_value_threshold_and_result():
    gates = gates_for(max_perplexity=100, min_bleu=2.0, max_bias_gap=1.0)
    assert not gates["max_perplexity"].passed and gates["max_perplexity"].value == 120.0
    assert gates["min_bleu"].passed and gates["min_bleu"].threshold == 2.0
    assert gates["max_bias_gap.gender"].passed and not gates["max_bias_gap.religion"].passed


def test_bias_gap_limits_per_category():
    gates = gates_for(max_bias_gap={"religion": 3.0})
    assert list(gates) == ["max_bias_gap.religion"] and gates["max_bias_gap.religion"].passed
    with pytest.raises(ValueError, match="names category 'caste'"):
        gates_for(max_bias_gap={"caste": 1.0})


@pytest.mark.parametrize("improvement, low, margin, passed", [
    (0.05, 0.01, 0.0, True),    # better, and the interval is above zero
    (0.05, -0.01, 0.0, False),  # better on average, but it could be noise
    (0.05, 0.01, 0.1, False),   # significant, but below the required margin
    (-0.02, -0.05, 0.0, False),  # worse
])
def test_champion_gate_needs_margin_and_an_interval_above_zero(improvement, low, margin, passed):
    comparison = Comparison("1", 2.0, 2.0 - improvement, improvement, low, improvement + 0.02)
    gate = champion_gate(comparison, margin)
    assert gate.passed is passed and gate.value == improvement and "95% CI" in gate.detail
