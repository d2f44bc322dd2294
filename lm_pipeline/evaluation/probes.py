"""Bias probes: counterfactual templates (the gap between groups' log-likelihoods of the same
words, per category) and CrowS-Pairs-format sentence pairs (how often the more stereotypical
sentence is preferred), both scored by the model and summarized by their metric modules."""

from __future__ import annotations

import csv
import difflib
import json
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np

from lm_pipeline.config import EvaluateConfig
from lm_pipeline.data.tokenizer import eot_id
from lm_pipeline.evaluation.metrics import load_metric
from lm_pipeline.evaluation.scoring import sequence_nll, token_logprobs


@dataclass(frozen=True)
class Probe:
    prefix: str  # the template up to and including the term: context, not scored
    rest: str  # the words after the term: scored, so the term's effect is what is measured
    category: str
    group: str
    term: str
    template: int  # which template of the category's form: the bootstrap resamples templates


def load_probes(path: Path) -> list[Probe]:
    """Each category's terms fill every template of its grammatical form ("noun": the term is the
    noun; "adjective": a noun follows it), so a sentence never reads worse for one group's words."""
    spec = json.loads(Path(path).read_text())
    for form, templates in spec["templates"].items():
        for n, template in enumerate(templates):
            if template.count("{term}") != 1:
                raise ValueError(f"evaluate.probes: {path} {form} template {n} must hold {{term}} exactly "
                                 f"once: {template!r}")
    probes = []
    for category, spec_of in spec["categories"].items():
        if spec_of["form"] not in spec["templates"]:
            raise ValueError(f"evaluate.probes: {path} category {category!r} uses form {spec_of['form']!r}, "
                             f"which has no templates ({', '.join(spec['templates'])})")
        templates = enumerate(spec["templates"][spec_of["form"]])
        for (n, template), (group, term) in product(templates, terms_of(spec_of["groups"])):
            head, tail = template.split("{term}")
            probes.append(Probe(head + term, tail, category, group, term, n))
    return probes


def terms_of(groups: dict[str, list[str]]) -> list[tuple[str, str]]:
    return [(group, term) for group, terms in groups.items() for term in terms]


def conditional_loglik(model, tokenizer, contexts: list[str], texts: list[str],
                       batch_size: int) -> np.ndarray:
    """log p(text | context) for each pair; an empty context scores the whole text."""
    eot = eot_id(tokenizer)
    prefixes, seqs = encode_texts(tokenizer, contexts), encode_texts(tokenizer, texts)
    nll, _ = sequence_nll(model, seqs, eot, model.block_size, model.block_size,
                          batch_size, prefixes=prefixes, what="evaluate: bias probes")
    return -nll


def encode_texts(tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Token ids as in the corpus: no special tokens (documents are delimited by end-of-text only)."""
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int64) for e in encodings]


def bias_probe(model, tokenizer, evaluate: EvaluateConfig) -> dict:
    probes = load_probes(evaluate.probes)
    loglik = conditional_loglik(model, tokenizer, [p.prefix for p in probes], [p.rest for p in probes],
                                evaluate.batch_size)
    return load_metric("bias_gap").compute(loglik=loglik, category=[p.category for p in probes],
                                           template=[p.template for p in probes],
                                           resamples=evaluate.bootstrap_resamples, seed=evaluate.seed,
                                           group=[p.group for p in probes], term=[p.term for p in probes])


# Per category, as `bias_<statistic>_<category>` in reports/metrics.json. bias_gap, bias_ci_low and
# bias_ci_high keep their names (the raw gap and its interval); register's gate reads the excess.
BIAS_STATISTICS = ("gap", "ci_low", "ci_high", "null_gap", "excess_gap", "excess_ci_low", "excess_ci_high",
                   "within_group_spread")


def bias_metrics(bias: dict) -> dict[str, float]:
    """The bias_gap module's result as flat metrics (a spread is absent for one-term groups)."""
    per_category = {f"bias_{stat}_{cat}": v[stat] for stat in BIAS_STATISTICS
                    for cat, v in bias["per_category"].items() if v[stat] is not None}
    return {"bias_max_gap": bias["max_gap"], "bias_mean_gap": bias["mean_gap"],
            "bias_max_excess_gap": bias["max_excess_gap"], **per_category}


def crows_pairs(model, tokenizer, evaluate: EvaluateConfig) -> dict:
    """The CrowS-Pairs score on evaluate.crows_pairs; pairs longer than the model's context are skipped
    and counted."""
    rows = read_pairs(evaluate.crows_pairs)
    more = encode_texts(tokenizer, [r["sent_more"] for r in rows])
    less = encode_texts(tokenizer, [r["sent_less"] for r in rows])
    fits = [i for i in range(len(rows)) if max(len(more[i]), len(less[i])) <= model.block_size]
    logp = token_logprobs(model, [more[i] for i in fits] + [less[i] for i in fits], eot_id(tokenizer),
                          evaluate.batch_size, what="evaluate: CrowS-Pairs")
    scores = [template_scores(more[i], less[i], logp[k], logp[len(fits) + k]) for k, i in enumerate(fits)]
    result = load_metric("crows_pairs").compute(
        score_more=[a for a, _ in scores], score_less=[b for _, b in scores],
        bias_type=[rows[i]["bias_type"] for i in fits],
        direction=[rows[i]["stereo_antistereo"] for i in fits],
        resamples=evaluate.bootstrap_resamples, seed=evaluate.seed)
    return result | {"pairs_skipped_too_long": len(rows) - len(fits)}


def crows_pairs_prefix(path: Path) -> str:
    """What the CrowS-Pairs numbers of `path` are reported as: the built-in file (the config's
    default) is this project's own small sample, not the dataset, so its numbers get names of their
    own that nobody compares with published crows_pairs_* figures."""
    sample = EvaluateConfig.model_fields["crows_pairs"].default
    return "crows_pairs_sample" if Path(path).resolve() == sample.resolve() else "crows_pairs"


def read_pairs(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"sent_more", "sent_less", "stereo_antistereo", "bias_type"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"evaluate: {path} lacks columns {sorted(missing)}")
    return rows


def template_scores(a: np.ndarray, b: np.ndarray, logp_a: np.ndarray,
                    logp_b: np.ndarray) -> tuple[float, float]:
    """Summed log-probabilities of the tokens the two sentences share (difflib's equal blocks, as
    CrowS-Pairs' metric.py aligns them), each sentence with its own context."""
    matcher = difflib.SequenceMatcher(None, a.tolist(), b.tolist(), autojunk=False)
    blocks = [op for op in matcher.get_opcodes() if op[0] == "equal"]
    return (float(sum(logp_a[i1:i2].sum() for _, i1, i2, _, _ in blocks)),
            float(sum(logp_b[j1:j2].sum() for _, _, _, j1, j2 in blocks)))
