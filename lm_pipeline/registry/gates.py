"""Promotion gates: absolute quality bars (perplexity, BLEU, bias gaps, memorization, benchmark
task scores), beating the champion on the same test data, and (with register.guard_documents) not
forgetting what the champion knew.

The champion comparison re-scores the current champion on this run's test documents (as text,
so a champion with another tokenizer compares fairly, in bits per byte) and bootstraps the
paired difference over documents: `champion` moves only if the improvement is at least
register.min_improvement and its 95% interval excludes zero.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from lm_pipeline.config import EvaluateConfig, RegisterConfig
from lm_pipeline.evaluation.bootstrap import bootstrap_ci
from lm_pipeline.evaluation.metrics import MODEL_KEY
from lm_pipeline.evaluation.scoring import document_bits
from lm_pipeline.model.backends import weights_sha256
from lm_pipeline.registry import history


@dataclass(frozen=True)
class Gate:
    name: str
    value: float
    threshold: float
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    champion_version: str
    champion_bits_per_byte: float
    candidate_bits_per_byte: float
    improvement: float  # champion minus candidate bits per byte: > 0 means the candidate is better
    ci_low: float
    ci_high: float


def metrics_of(stamped: dict, model, path) -> dict:
    """The evaluation's numbers, once they are known to describe `model` (not a model trained
    since, or evaluated before an evaluate was killed between its writes)."""
    metrics = dict(stamped)
    measured = metrics.pop(MODEL_KEY, None)
    if measured is None:
        raise ValueError(f"register: {path} does not say which model it measured (written by an older "
                         "evaluate): run `lmp evaluate` (or `dvc repro`) first")
    actual = weights_sha256(model)
    if measured != actual:
        raise ValueError(f"register: {path} measured other weights ({measured[:12]}...) than the model "
                         f"to register has ({actual[:12]}...): run `lmp evaluate` (or `dvc repro`) first")
    return metrics


def trust_gate(version: str, log: list[dict]) -> Gate:
    """Not rolled back from since it last took over (the promotion log): a rerun of register must
    not hand champion back to a version someone took it away from; `lmp promote` trusts it again."""
    rolled_back = version in history.champions(log)[1]
    return Gate("not_rolled_back", float(rolled_back), 0.0, not rolled_back,
                "rolled back from since it was champion (`lmp promote` makes it champion again)"
                if rolled_back else "never rolled back from")


def champion_alias_gate(champion: str | None, log: list[dict], version: str | None = None) -> Gate:
    """A champion the promotion log knows still holds the alias: with it gone (its version deleted
    in MLflow, which takes its aliases along), a candidate would pass as a first version,
    compared with nothing. Unless the log's last champion is `version` itself: an earlier attempt
    of its registration logged the move and died before making it."""
    order, _ = history.champions(log)
    lost = champion is None and bool(order) and order[-1] != version
    return Gate("champion_alias_held", float(lost), 0.0, not lost,
                f"no version holds the champion alias, and the promotion log's last champion was version "
                f"{order[-1]}: make one champion by hand (`lmp promote VERSION`)" if lost else
                "the champion alias is where the promotion log leaves it, or the model has none yet")


def quality_gates(metrics: dict, register: RegisterConfig) -> list[Gate]:
    gates = []
    if register.max_perplexity is not None:
        gates.append(_at_most("max_perplexity", metrics["perplexity"], register.max_perplexity))
    if register.min_bleu is not None:
        passed = metrics["bleu"] >= register.min_bleu
        gates.append(Gate("min_bleu", metrics["bleu"], register.min_bleu, passed,
                          f"BLEU {metrics['bleu']:.3f} >= {register.min_bleu}"))
    if register.max_bias_gap is not None:
        categories = sorted(k.removeprefix("bias_gap_") for k in metrics if k.startswith("bias_gap_"))
        limits = register.max_bias_gap if isinstance(register.max_bias_gap, dict) else \
            dict.fromkeys(categories, register.max_bias_gap)
        for category, limit in sorted(limits.items()):
            if f"bias_gap_{category}" not in metrics:
                raise ValueError(f"register.max_bias_gap names category {category!r}, which the bias "
                                 f"probes do not measure ({', '.join(categories)})")
            gates.append(bias_gate(category, metrics, limit))
    for name, key in (("max_extraction_rate", "extraction_rate"), ("max_canary_exposure", "canary_exposure")):
        if getattr(register, name) is not None:
            gates.append(privacy_gate(name, key, metrics, getattr(register, name)))
    for key, threshold in sorted(register.min_task_scores.items()):
        if key not in metrics:
            raise ValueError(f"register.min_task_scores names {key!r}, which reports/metrics.json lacks: "
                             "add the task to evaluate.harness_tasks (keys are '<task>/<metric>', and "
                             "'<task>/<metric>_first<N>' for a task evaluate.harness_limit cut)")
        gates.append(Gate(f"min_task_scores.{key}", metrics[key], threshold, metrics[key] >= threshold,
                          f"{key} {metrics[key]:.4g} >= {threshold:.4g}"))
    return gates


BIAS_GATE_KEYS = ("gap", "null_gap", "excess_gap", "excess_ci_low", "excess_ci_high")


def bias_gate(category: str, metrics: dict, limit: float) -> Gate:
    """Gates the excess gap, the gap beyond what relabeling terms within templates gives (the raw
    gap is positive even with no group effect, and more so with more groups), and blocks only when
    the evidence says it exceeds the bar: the whole 95% interval (over templates and terms) lies
    above the bar and above zero. An excess above the bar whose interval reaches below it passes,
    and the reason says it was not shown to exceed it."""
    missing = [f"bias_{key}_{category}" for key in BIAS_GATE_KEYS if f"bias_{key}_{category}" not in metrics]
    if missing:  # a raw gap alone would block bias-free models: never gate on it
        raise ValueError(f"register.max_bias_gap: reports/metrics.json lacks {', '.join(missing)} (written "
                         "by an older evaluate): run `lmp evaluate` (or `dvc repro`) first")
    gap, null, excess, low, high = (metrics[f"bias_{key}_{category}"] for key in BIAS_GATE_KEYS)
    bar = max(limit, 0.0)  # an interval reaching below 0 has not shown the groups to differ at all
    finite = all(math.isfinite(v) for v in (gap, null, excess, low, high))
    exceeded = not finite or low > bar  # NaN compares false: it would pass
    verdict = (f"not a finite number (bias_*_{category}): the probes' scores diverged" if not finite else
               f"the whole interval is above {bar:.4g}: shown to exceed the bar" if exceeded else
               f"not shown to exceed {bar:.4g} (the interval reaches {low:.4g})")
    spread = metrics.get(f"bias_within_group_spread_{category}")
    words = ("" if spread is None else f"; terms of one group differ by {spread:.4g} on average"
             + (", more than the groups do: word choice may explain the gap" if spread >= gap else ""))
    return Gate(f"max_bias_gap.{category}", excess, bar, not exceeded,
                f"gap {gap:.4g} nats, of which {null:.4g} is expected with no group effect (terms' "
                f"groups shuffled within templates): excess {excess:.4g} (95% CI over templates and terms "
                f"[{low:.4g}, {high:.4g}]): {verdict}{words}")


def privacy_gate(name: str, key: str, metrics: dict, bar: float) -> Gate:
    """Blocks when the evidence says the model leaks more than the bar: the whole 95% interval of
    the extraction rate, or of the most exposed canary's exposure, lies above it."""
    missing = [k for k in (key, f"{key}_ci_low", f"{key}_ci_high") if k not in metrics]
    if missing:  # an enabled gate left out would register the model as if it had passed
        raise ValueError(f"register.{name}: reports/metrics.json lacks {', '.join(missing)} ("
                         + ("no canary was planted: the processed data was made with canaries.count 0"
                            if key == "canary_exposure" else
                            "written by an older evaluate: run `lmp evaluate`")
                         + f"); set register.{name}: null to register without this gate")
    value, low, high = metrics[key], metrics[f"{key}_ci_low"], metrics[f"{key}_ci_high"]
    if math.isnan(value):  # a gate that is on never passes what it did not measure
        return Gate(name, value, bar, False, f"{key} not measured: no training document is as long as "
                    "privacy.prefix_tokens + suffix_tokens: shorten them, or set "
                    f"register.{name}: null to register without this gate")
    exceeded = low > bar
    verdict = "the whole interval is above the bar" if exceeded else f"not shown to exceed {bar:.4g}"
    return Gate(name, value, bar, not exceeded,
                f"{key} {value:.4g} (95% CI [{low:.4g}, {high:.4g}]): {verdict}")


def _at_most(name: str, value: float, threshold: float) -> Gate:
    return Gate(name, value, threshold, value <= threshold, f"{value:.4g} <= {threshold:.4g}")


def champion_gate(comparison: Comparison, min_improvement: float) -> Gate:
    c = comparison
    passed = c.improvement >= min_improvement and c.ci_low > 0
    return Gate("beats_champion", c.improvement, min_improvement, passed,
                f"bits/byte {c.candidate_bits_per_byte:.4f} vs champion v{c.champion_version} "
                f"{c.champion_bits_per_byte:.4f}: improvement {c.improvement:.4f} "
                f"(95% CI [{c.ci_low:.4f}, {c.ci_high:.4f}]) must be >= {min_improvement} "
                "with the interval above zero")


def forgetting_gate(comparison: Comparison, max_forgetting: float) -> Gate:
    """Non-inferiority on data the champion already knew: the candidate may be worse there only
    by less than max_forgetting bits per byte, with 95% confidence."""
    c = comparison
    passed = c.ci_low >= -max_forgetting
    return Gate("does_not_forget", c.improvement, -max_forgetting, passed,
                f"on the guarded documents bits/byte {c.candidate_bits_per_byte:.4f} vs champion "
                f"v{c.champion_version} {c.champion_bits_per_byte:.4f}: change {c.improvement:+.4f} "
                f"(95% CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}]) must stay above {-max_forgetting:+.4f}")


def compare(champion, candidate, texts: list[str], champion_version: str,
            evaluate: EvaluateConfig) -> Comparison:
    """champion / candidate: (model, tokenizer) pairs, scored on the same texts."""
    what = "register: scoring a model on the comparison's documents"
    old, n_bytes = document_bits(*champion, texts, evaluate.stride, evaluate.batch_size, what)
    new, _ = document_bits(*candidate, texts, evaluate.stride, evaluate.batch_size, what)

    def improvement(idx: np.ndarray) -> float:
        return float((old[idx].sum() - new[idx].sum()) / n_bytes[idx].sum())

    low, high = bootstrap_ci(improvement, len(texts), evaluate.bootstrap_resamples, evaluate.seed)
    everything = np.arange(len(texts))
    return Comparison(champion_version, float(old.sum() / n_bytes.sum()), float(new.sum() / n_bytes.sum()),
                      improvement(everything), low, high)


