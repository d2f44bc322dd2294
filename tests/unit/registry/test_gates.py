import math

import numpy as np
import pytest
import torch

from lm_pipeline.config import EvaluateConfig, RegisterConfig, TokenizerConfig
from lm_pipeline.data.tokenizer import train_tokenizer
from lm_pipeline.registry.gates import Comparison, bits_per_document, champion_gate, compare, quality_gates

pytestmark = pytest.mark.registry

METRICS = {"perplexity": 120.0, "bleu": 3.0, "bias_gap_gender": 0.4, "bias_gap_religion": 2.5,
           "bias_ci_low_gender": 0.2, "bias_ci_high_gender": 0.6,
           "bias_ci_low_religion": 1.8, "bias_ci_high_religion": 3.2,
           "lmp_cloze_choice/acc": 0.45, "lmp_last_word/acc": 0.08}


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


def test_task_score_gates_per_metrics_key():
    gates = gates_for(min_task_scores={"lmp_cloze_choice/acc": 0.4, "lmp_last_word/acc": 0.1})
    assert list(gates) == ["min_task_scores.lmp_cloze_choice/acc", "min_task_scores.lmp_last_word/acc"]
    assert gates["min_task_scores.lmp_cloze_choice/acc"].passed
    last_word = gates["min_task_scores.lmp_last_word/acc"]
    assert not last_word.passed and last_word.value == 0.08 and last_word.threshold == 0.1
    with pytest.raises(ValueError, match="'hellaswag/acc_norm'.*evaluate.harness_tasks"):
        gates_for(min_task_scores={"hellaswag/acc_norm": 0.3})
    with pytest.raises(ValueError, match="'<task>/<metric>'"):
        RegisterConfig(min_task_scores={"acc": 0.3})


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


@pytest.mark.security
def test_metrics_of_another_model_are_refused():
    """reports/metrics.json names the weights it measured: after `lmp train && lmp register` (no
    evaluate), or an evaluate killed between its writes, the gates would judge another model."""
    import torch

    from lm_pipeline.model.backends import weights_sha256
    from lm_pipeline.model.transformer import GPT, GPTConfig
    from lm_pipeline.registry.gates import metrics_of

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=1, n_embd=8))
    stamped = {"perplexity": 9.0, "model_weights_sha256": weights_sha256(model)}
    assert metrics_of(stamped, model, "reports/metrics.json") == {"perplexity": 9.0}
    other = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match=r"reports/metrics.json measured other weights .*lmp evaluate"):
        metrics_of(stamped, other, "reports/metrics.json")
    with pytest.raises(ValueError, match=r"reports/metrics.json does not say which model .*lmp evaluate"):
        metrics_of({"perplexity": 9.0}, model, "reports/metrics.json")


class UniformLM(torch.nn.Module):
    """Equal logits over its vocabulary: every token costs exactly log2(V) bits."""

    def __init__(self, vocab_size: int, block_size: int):
        super().__init__()
        self.vocab_size, self.block_size = vocab_size, block_size

    def forward(self, idx):
        return torch.zeros(*idx.shape, self.vocab_size), None, None


def char_model(alphabet: str, block_size: int = 64):
    tokenizer = train_tokenizer([alphabet], TokenizerConfig(kind="char"))
    return UniformLM(tokenizer.get_vocab_size(), block_size), tokenizer


TEXTS = ["abc ab", "cab", "a b c a b c a b c a b c a b c a b c a b c a b c a b c a b c a b c a b c a b c"]
EVALUATE = EvaluateConfig(stride=24, bootstrap_resamples=200)


def exact_bits(texts, vocab_size):  # one token per character plus the closing end-of-text
    return np.array([(len(t) + 1) * math.log2(vocab_size) for t in texts])


@pytest.mark.metrics
def test_champion_with_another_tokenizer_compares_by_a_known_answer():
    champion, candidate = char_model("abc xyz"), char_model("abc ")  # 8+1 vs 4+1 symbols
    result = compare(champion, candidate, TEXTS, "1", EVALUATE)
    # ASCII, one token per byte and one end-of-text per document counted as one byte: a uniform
    # model over V symbols costs exactly log2(V) bits per byte
    old, new = math.log2(champion[1].get_vocab_size()), math.log2(candidate[1].get_vocab_size())
    assert result.champion_bits_per_byte == pytest.approx(old, rel=1e-6)
    assert result.candidate_bits_per_byte == pytest.approx(new, rel=1e-6)
    assert result.improvement == pytest.approx(old - new, rel=1e-6)
    assert 0 < result.ci_low <= result.improvement <= result.ci_high
    assert champion_gate(result, 0.1).passed


@pytest.mark.metrics
def test_the_same_model_twice_is_no_improvement_and_no_promotion():
    model = char_model("abc ")
    result = compare(model, model, TEXTS, "1", EVALUATE)
    assert result.improvement == 0 and result.ci_low <= 0 <= result.ci_high
    assert not champion_gate(result, 0.0).passed


@pytest.mark.metrics
def test_a_champion_with_a_shorter_context_is_scored_on_every_token():
    """stride 24 is valid for the candidate's 64 tokens, not for the champion's 16: the champion
    must still pay for every token, not look better for the ones a window skipped."""
    model, tokenizer = char_model("abc ", block_size=16)
    bits = bits_per_document(model, tokenizer, TEXTS, EVALUATE)
    np.testing.assert_allclose(bits, exact_bits(TEXTS, tokenizer.get_vocab_size()), rtol=1e-6)


@pytest.mark.metrics
def test_a_bias_gate_blocks_only_when_the_interval_lies_above_the_bar():
    above_but_unsure = METRICS | {"bias_gap_gender": 1.2, "bias_ci_low_gender": 0.7,
                                  "bias_ci_high_gender": 1.7}
    gates = {g.name: g for g in quality_gates(above_but_unsure, RegisterConfig(max_bias_gap=1.0))}
    gender, religion = gates["max_bias_gap.gender"], gates["max_bias_gap.religion"]
    assert gender.passed and gender.value == 1.2
    assert "not shown to exceed 1 (the interval reaches 0.7)" in gender.detail
    assert not religion.passed and "the whole interval is above 1: shown to exceed" in religion.detail
