import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from lm_pipeline.config import Config, EvaluateConfig, RegisterConfig, TokenizerConfig
from lm_pipeline.data.tokenizer import train_tokenizer
from lm_pipeline.evaluation.metrics import load_metric
from lm_pipeline.evaluation.probes import bias_metrics
from lm_pipeline.evaluation.scoring import document_bits
from lm_pipeline.registry.gates import Comparison, champion_gate, compare, quality_gates

pytestmark = pytest.mark.registry

METRICS = {"perplexity": 120.0, "bleu": 3.0, "bias_gap_gender": 0.4, "bias_gap_religion": 2.5,
           "bias_null_gap_gender": 0.2, "bias_excess_gap_gender": 0.2,
           "bias_excess_ci_low_gender": -0.1, "bias_excess_ci_high_gender": 0.5,
           "bias_null_gap_religion": 0.3, "bias_excess_gap_religion": 2.2,
           "bias_excess_ci_low_religion": 1.5, "bias_excess_ci_high_religion": 2.9,
           "lmp_cloze_choice/acc": 0.45, "lmp_last_word/acc": 0.08, "lmp_last_word/perplexity": 900.0,
           "extraction_rate": 0.0, "extraction_rate_ci_low": 0.0, "extraction_rate_ci_high": 0.05,
           "canary_exposure": 3.0, "canary_exposure_ci_low": 1.5, "canary_exposure_ci_high": 4.5}


NO_PRIVACY = {"max_extraction_rate": None, "max_canary_exposure": None}  # on by default


def gates_for(metrics=None, **register):
    return {g.name: g for g in quality_gates(metrics or METRICS, RegisterConfig.model_validate(register))}


def test_only_the_privacy_gates_are_on_unless_configured():
    assert set(gates_for()) == {"max_extraction_rate", "max_canary_exposure"}
    assert gates_for(**NO_PRIVACY) == {}


@pytest.mark.privacy
def test_an_extraction_rate_no_document_could_measure_blocks_naming_the_settings():
    """No training document as long as the prompt and the suffix: nothing was measured, and a gate
    that is on never passes what it did not measure."""
    unmeasured = METRICS | dict.fromkeys(("extraction_rate", "extraction_rate_ci_low",
                                          "extraction_rate_ci_high"), math.nan)
    gate = gates_for(unmeasured)["max_extraction_rate"]
    assert not gate.passed
    assert "privacy.prefix_tokens" in gate.detail and "register.max_extraction_rate: null" in gate.detail


@pytest.mark.privacy
@pytest.mark.parametrize("key, says", [("canary_exposure", "canaries.count"),
                                       ("extraction_rate", "lmp evaluate")])
def test_a_privacy_gate_whose_metric_evaluate_did_not_write_is_an_error(key, says):
    """The gate is on by default: a metrics file without its number (no canary planted) was
    registered without the check, as if it had passed."""
    lacking = {k: v for k, v in METRICS.items() if not k.startswith(key)}
    with pytest.raises(ValueError, match=rf"register.max_{key.split('_')[0]}\w*: .*lacks {key}.*{says}"):
        gates_for(lacking)
    assert gates_for(lacking, **{f"max_{key}": None})  # turned off: registered without it


@pytest.mark.privacy
@pytest.mark.parametrize("bar", [8.0, 6.0, 10.0])
def test_an_exposure_bar_the_references_cannot_show_is_refused_naming_how_many_would(bar):
    """With n references, a canary more likely than every one of them is shown at most about
    log2(n) - 1.9 bits exposed (the exact interval's lower end): a bar above that never blocks."""
    from lm_pipeline.evaluation.privacy import exposure

    enough = next(n for n in range(10, 10_000) if exposure(0.0, np.ones(n), 30.0)[1] > bar)
    assert Config.model_validate({"register": {"max_canary_exposure": bar},
                                  "privacy": {"canary_references": enough}})
    with pytest.raises(ValidationError, match=rf"register.max_canary_exposure {bar:g} cannot block with "
                       rf"privacy.canary_references {enough - 1}: .* at least {enough}"):
        Config.model_validate({"register": {"max_canary_exposure": bar},
                               "privacy": {"canary_references": enough - 1}})
    assert Config.model_validate({"privacy": {"canary_references": 10},
                                  "register": {"max_canary_exposure": None}})  # no gate: any number
    with pytest.raises(ValidationError, match="canaries.count is 0: plant some, or set "
                       "register.max_canary_exposure: null"):
        Config.model_validate({"canaries": {"count": 0}})
    with pytest.raises(ValidationError, match="canaries.digits 4 digits is shown at most 13.3 bits"):
        Config.model_validate({"canaries": {"digits": 4}, "register": {"max_canary_exposure": 14.0}})
    with pytest.raises(ValidationError, match=r"at least \d{9}"):  # computed, not searched one by one
        Config.model_validate({"canaries": {"digits": 18}, "register": {"max_canary_exposure": 29.0}})


@pytest.mark.bad_input
def test_a_task_score_where_lower_is_better_cannot_have_a_minimum():
    """A minimum on a perplexity passes every worse model: refused when the settings are read."""
    with pytest.raises(ValidationError, match="lmp_last_word/perplexity: lower is better"):
        RegisterConfig(min_task_scores={"lmp_last_word/perplexity": 50.0})
    with pytest.raises(ValidationError, match="wikitext/word_perplexity_first20: lower is better"):
        RegisterConfig(min_task_scores={"wikitext/word_perplexity_first20": 50.0})


def test_each_quality_gate_reports_value_threshold_and_result():
    gates = gates_for(max_perplexity=100, min_bleu=2.0, max_bias_gap=1.0)
    assert not gates["max_perplexity"].passed and gates["max_perplexity"].value == 120.0
    assert gates["min_bleu"].passed and gates["min_bleu"].threshold == 2.0
    assert gates["max_bias_gap.gender"].passed and not gates["max_bias_gap.religion"].passed


def test_bias_gap_limits_per_category():
    gates = gates_for(max_bias_gap={"religion": 3.0}, **NO_PRIVACY)
    assert list(gates) == ["max_bias_gap.religion"] and gates["max_bias_gap.religion"].passed
    with pytest.raises(ValueError, match="names category 'caste'"):
        gates_for(max_bias_gap={"caste": 1.0})


def test_task_score_gates_per_metrics_key():
    gates = gates_for(min_task_scores={"lmp_cloze_choice/acc": 0.4, "lmp_last_word/acc": 0.1}, **NO_PRIVACY)
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
    bits, _ = document_bits(model, tokenizer, TEXTS, EVALUATE.stride)
    np.testing.assert_allclose(bits, exact_bits(TEXTS, tokenizer.get_vocab_size()), rtol=1e-6)


@pytest.mark.metrics
def test_a_bias_gate_blocks_only_when_the_interval_lies_above_the_bar():
    above_but_unsure = METRICS | {"bias_excess_gap_gender": 1.2, "bias_excess_ci_low_gender": 0.7,
                                  "bias_excess_ci_high_gender": 1.7, "bias_within_group_spread_religion": 0.9}
    gates = {g.name: g for g in quality_gates(above_but_unsure, RegisterConfig(max_bias_gap=1.0))}
    gender, religion = gates["max_bias_gap.gender"], gates["max_bias_gap.religion"]
    assert gender.passed and gender.value == 1.2  # the excess over the null is what is gated
    assert "not shown to exceed 1 (the interval reaches 0.7)" in gender.detail
    assert "of which 0.2 is expected with no group effect" in gender.detail
    assert not religion.passed and "the whole interval is above 1: shown to exceed" in religion.detail
    assert religion.detail.endswith("terms of one group differ by 0.9 on average")
    # at a bar of 0 the interval must still lie above zero; a spread above the gap is pointed out
    loose = {g.name: g for g in quality_gates(METRICS | {"bias_within_group_spread_gender": 0.5},
                                              RegisterConfig(max_bias_gap=0.0))}
    assert loose["max_bias_gap.gender"].passed and not loose["max_bias_gap.religion"].passed
    assert "more than the groups do: word choice may explain the gap" in loose["max_bias_gap.gender"].detail


@pytest.mark.metrics
def test_a_bias_gate_fails_on_numbers_that_are_not_finite():
    """A diverged model's log-likelihoods give NaN bias statistics, and `NaN > bar` is False: the
    gate passed, where the perplexity and BLEU bars fail on NaN."""
    nan = float("nan")
    diverged = METRICS | {f"bias_{key}_gender": nan for key in
                          ("gap", "null_gap", "excess_gap", "excess_ci_low", "excess_ci_high")}
    gates = {g.name: g for g in quality_gates(diverged, RegisterConfig(max_bias_gap=1.0))}
    gate = gates["max_bias_gap.gender"]
    assert not gate.passed and "not a finite number" in gate.detail


def test_a_bias_gate_refuses_metrics_without_the_null():
    """An older evaluate wrote only the raw gap, which is positive without any group effect."""
    old = {k: v for k, v in METRICS.items() if "null" not in k and "excess" not in k}
    old |= {"bias_ci_low_gender": 0.2, "bias_ci_high_gender": 0.6}
    with pytest.raises(ValueError, match=r"lacks bias_null_gap_gender, bias_excess_gap_gender.*lmp evaluate"):
        quality_gates(old, RegisterConfig(max_bias_gap=1.0))


def simulated_probes(rng, effect: float = 0.0, templates: int = 16, groups: int = 6) -> dict:
    """Bias-gap module inputs for one category: per-template offsets (some contexts are likelier
    than others) plus unit Gaussian noise per sentence, 2 or 3 terms per group, and `effect` nats
    subtracted from the last group only."""
    rows = {"loglik": [], "category": [], "group": [], "term": [], "template": []}
    offsets = rng.normal(0, 2.0, size=templates)
    for g in range(groups):
        shift = -effect if g == groups - 1 else 0.0
        for term in range(2 + g % 2):
            for t in range(templates):
                row = (offsets[t] + shift + rng.normal(), "c", f"g{g}", f"g{g}t{term}", t)
                for key, value in zip(rows, row, strict=True):
                    rows[key].append(value)
    return rows


def bias_gate_passes(rows: dict, bar: float, seed: int) -> bool:
    """The module as the evaluate stage runs it (fewer resamples and relabelings, for time), its
    metrics as the stage writes them, and register's gate on them."""
    result = load_metric("bias_gap").compute(**rows, resamples=200, permutations=100, seed=seed)
    return quality_gates(bias_metrics(result), RegisterConfig(max_bias_gap=bar, **NO_PRIVACY))[0].passed


@pytest.mark.metrics
def test_the_bias_gate_promotes_models_without_a_group_effect():
    """With no group effect at all, a mean of absolute differences between noisy group means is
    still positive: a gate on it would block bias-free models. With a bar of 0.15 noise sd, at
    least 95 of 100 simulated bias-free models must pass."""
    rng = np.random.default_rng(0)
    passed = [bias_gate_passes(simulated_probes(rng), bar=0.15, seed=s) for s in range(100)]
    assert sum(passed) >= 95, f"the bias gate blocked {100 - sum(passed)} of 100 bias-free models"


@pytest.mark.metrics
def test_the_bias_gate_blocks_a_large_group_effect():
    """One group of six 3 nats (3 noise sd) below the rest: a true gap of 1 nat, far above the bar."""
    rng = np.random.default_rng(1)
    passed = [bias_gate_passes(simulated_probes(rng, effect=3.0), bar=0.15, seed=s) for s in range(10)]
    assert not any(passed), f"the bias gate promoted {sum(passed)} of 10 models with a 3-nat group effect"
