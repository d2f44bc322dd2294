"""Stage 5, evaluate: perplexity and bits per byte, BLEU, bias probes, and a report.

- perplexity: token-weighted over the whole test split with a sliding window, against a unigram
  baseline; bits per byte for comparisons across tokenizers; a bootstrap interval.
- BLEU and chrF (sacrebleu): greedy continuations of held-out documents, and parallel pairs
  (source -> target through a prompt template); a bootstrap interval for continuation BLEU.
- bias: counterfactual templates (mean pairwise gap between groups, per category, with an
  interval over templates) and
  CrowS-Pairs-format pairs (share preferring the more stereotypical sentence).
- benchmark tasks (harness.py): lm-evaluation-harness on the model folder, as `<task>/<metric>`;
  this project's tasks are built from the test split, the harness's own read a local dataset cache.

Writes reports/metrics.json (for `dvc metrics show`), reports/evaluation/ (report.md, report.html,
plots, CSVs for `dvc plots`, details.json, harness/: our tasks' data and YAML), and logs all of it
to the pipeline's MLflow run.
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
import torch

from lm_pipeline.config import Config, EvaluateConfig
from lm_pipeline.data.processed import load_documents, load_tokens, read_meta
from lm_pipeline.data.tokenizer import eot_id
from lm_pipeline.evaluation import harness, report
from lm_pipeline.evaluation.bootstrap import bootstrap_ci, corpus_bleu_of, perplexity_of
from lm_pipeline.evaluation.metrics import MODEL_KEY, load_metric
from lm_pipeline.evaluation.scoring import sequence_nll, stride_for, token_logprobs, unigram_nll
from lm_pipeline.io import atomic_path, write_json
from lm_pipeline.model.backends import load_model, resolve_device, weights_sha256
from lm_pipeline.model.folder import read_run_info
from lm_pipeline.model.generate import complete_batch, decode_until_eot, generate
from lm_pipeline.model.transformer import device_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Probe:
    prefix: str  # the template up to and including the term: context, not scored
    rest: str  # the words after the term: scored, so the term's effect is what is measured
    category: str
    group: str
    template: int  # which template: the bootstrap resamples templates


def run(cfg: Config) -> dict:
    torch.manual_seed(cfg.train.seed)
    model, tokenizer = load_model(cfg.train.model_dir, resolve_device(cfg.evaluate.device))
    meta = read_meta(cfg.data.processed_dir)
    test_docs = load_documents(cfg.data.processed_dir, "test")
    e = cfg.evaluate
    # First: a misnamed task fails in seconds, before the rest of the evaluation.
    harness_data = harness.task_data(test_docs, tokenizer, e.harness_tasks, e, model.block_size)
    tasks = harness.run(cfg.train.model_dir, harness_data, e.harness_tasks, e) if e.harness_tasks else None

    nll, counts = sequence_nll(model, test_docs, meta.eot_id, model.block_size,
                               stride_for(model.block_size, cfg.evaluate.stride), cfg.evaluate.batch_size)
    n_bytes = meta.text_bytes["test"] + len(test_docs)  # one byte per document's end: see perplexity
    perplexity = load_metric("perplexity").compute(nll=nll, n_tokens=counts, n_bytes=n_bytes)
    base_nll, base_counts = unigram_nll(load_tokens(cfg.data.processed_dir, "train"), test_docs,
                                        meta.vocab_size, meta.eot_id)
    unigram = load_metric("perplexity").compute(nll=base_nll, n_tokens=base_counts)
    predictions, references = continuations(model, tokenizer, test_docs, cfg.evaluate)
    bleu = load_metric("bleu").compute(predictions=predictions, references=references)
    parallel = parallel_bleu(model, tokenizer, cfg.evaluate)
    bias = bias_probe(model, tokenizer, cfg.evaluate)
    crows = crows_pairs(model, tokenizer, cfg.evaluate)

    ppl_low, ppl_high = bootstrap_ci(perplexity_of(nll, counts), len(test_docs), e.bootstrap_resamples,
                                     e.seed)
    bleu_low, bleu_high = bootstrap_ci(corpus_bleu_of(predictions, references), len(predictions),
                                       e.bootstrap_resamples, e.seed)
    metrics = {
        "perplexity": perplexity["perplexity"], "perplexity_ci_low": ppl_low, "perplexity_ci_high": ppl_high,
        "bits_per_byte": perplexity["bits_per_byte"], "unigram_perplexity": unigram["perplexity"],
        "test_tokens": perplexity["tokens"], "test_documents": len(test_docs),
        "bleu": bleu["bleu"], "bleu_ci_low": bleu_low, "bleu_ci_high": bleu_high, "chrf": bleu["chrf"],
        "parallel_bleu": parallel["bleu"], "parallel_chrf": parallel["chrf"],
        "bias_max_gap": bias["max_gap"], "bias_mean_gap": bias["mean_gap"],
        **{f"bias_gap_{cat}": v["gap"] for cat, v in bias["per_category"].items()},
        **{f"bias_ci_low_{cat}": v["ci_low"] for cat, v in bias["per_category"].items()},
        **{f"bias_ci_high_{cat}": v["ci_high"] for cat, v in bias["per_category"].items()},
        "crows_pairs_stereotype_preference": crows["stereotype_preference"],
        "crows_pairs_ci_low": crows["ci_low"], "crows_pairs_ci_high": crows["ci_high"],
        "crows_pairs_neutral": crows["neutral"], "crows_pairs_pairs": crows["pairs"],
        **(tasks.scores if tasks else {}),
    }
    samples = [{"prediction": p, "reference": r}
               for p, r in zip(predictions[:5], references[:5], strict=True)]
    details = {"bleu": bleu, "parallel": parallel, "bias": bias, "crows_pairs": crows, "samples": samples,
               "harness": {"documents": tasks.documents, "versions": tasks.versions} if tasks else {}}
    write_outputs(cfg, metrics, details, report.perplexity_by_length(nll, counts), harness_data,
                  weights_sha256(model))
    log_to_mlflow(cfg, metrics, bleu)
    log.info("evaluate: perplexity %.2f [%.2f, %.2f] (unigram %.2f), %.3f bits/byte, BLEU %.2f, "
             "largest bias gap %.3f, CrowS-Pairs %.2f", metrics["perplexity"], ppl_low, ppl_high,
             metrics["unigram_perplexity"], metrics["bits_per_byte"], metrics["bleu"],
             metrics["bias_max_gap"], metrics["crows_pairs_stereotype_preference"])
    if tasks:
        log.info("evaluate: benchmark tasks %s", ", ".join(f"{k} {v:.3f}" for k, v in tasks.scores.items()))
    return metrics


def continuations(model, tokenizer, docs: list[np.ndarray], e: EvaluateConfig) -> tuple[list[str], list[str]]:
    """Greedy continuations of held-out documents and their true continuations, as text."""
    p, c = e.prompt_tokens, e.continuation_tokens
    long_docs = [d for d in docs if len(d) >= p + c][: e.bleu_documents]
    if not long_docs:
        raise ValueError(f"evaluate: no test document has {p + c} tokens for BLEU; "
                         "lower evaluate.prompt_tokens or evaluate.continuation_tokens")
    eot = eot_id(tokenizer)
    prompts = torch.tensor(np.stack([np.concatenate([[eot], d[:p]]) for d in long_docs]).astype(np.int64))
    predictions = []
    for batch in prompts.split(e.batch_size):  # equal-length prompts batch without padding
        out = generate(model, batch.to(device_of(model)), max_new_tokens=c)[:, p + 1:]
        predictions += [decode_until_eot(tokenizer, row.tolist()) for row in out]
    references = [tokenizer.decode(d[p:p + c].tolist()) for d in long_docs]
    return predictions, references


def parallel_bleu(model, tokenizer, e: EvaluateConfig) -> dict:
    """Source -> target pairs through the prompt template; the first generated line is the output."""
    pairs = [json.loads(line) for line in Path(e.parallel_data).read_text().splitlines() if line]
    prompts = [e.parallel_template.format(source=pair["source"]) for pair in pairs]
    outputs = [text.strip().split("\n")[0] for text in complete_batch(
        model, tokenizer, prompts, e.continuation_tokens, batch_size=e.batch_size)]
    return load_metric("bleu").compute(predictions=outputs, references=[pair["target"] for pair in pairs])


def load_probes(path: Path) -> list[Probe]:
    spec = json.loads(Path(path).read_text())
    for n, template in enumerate(spec["templates"]):
        if template.count("{term}") != 1:
            raise ValueError(f"evaluate.probes: {path} template {n} must hold {{term}} exactly once: "
                             f"{template!r}")
    probes = []
    for category, groups in spec["categories"].items():
        for group, terms in groups.items():
            for (n, template), term in product(enumerate(spec["templates"]), terms):
                head, tail = template.split("{term}")
                probes.append(Probe(head + term, tail, category, group, n))
    return probes


def conditional_loglik(model, tokenizer, contexts: list[str], texts: list[str],
                       batch_size: int) -> np.ndarray:
    """log p(text | context) for each pair; an empty context scores the whole text."""
    eot = eot_id(tokenizer)
    prefixes, seqs = encode_texts(tokenizer, contexts), encode_texts(tokenizer, texts)
    nll, _ = sequence_nll(model, seqs, eot, model.block_size, model.block_size,
                          batch_size, prefixes=prefixes)
    return -nll


def encode_texts(tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Token ids as in the corpus: no special tokens (documents are delimited by end-of-text only)."""
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int64) for e in encodings]


def bias_probe(model, tokenizer, e: EvaluateConfig) -> dict:
    probes = load_probes(e.probes)
    loglik = conditional_loglik(model, tokenizer, [p.prefix for p in probes], [p.rest for p in probes],
                                e.batch_size)
    return load_metric("bias_gap").compute(loglik=loglik, category=[p.category for p in probes],
                                           template=[p.template for p in probes],
                                           resamples=e.bootstrap_resamples, seed=e.seed,
                                           group=[p.group for p in probes])


def crows_pairs(model, tokenizer, e: EvaluateConfig) -> dict:
    """The CrowS-Pairs score on e.crows_pairs; pairs longer than the model's context are skipped
    and counted."""
    rows = read_pairs(e.crows_pairs)
    more = encode_texts(tokenizer, [r["sent_more"] for r in rows])
    less = encode_texts(tokenizer, [r["sent_less"] for r in rows])
    fits = [i for i in range(len(rows)) if max(len(more[i]), len(less[i])) <= model.block_size]
    logp = token_logprobs(model, [more[i] for i in fits] + [less[i] for i in fits], eot_id(tokenizer),
                          e.batch_size)
    scores = [template_scores(more[i], less[i], logp[k], logp[len(fits) + k]) for k, i in enumerate(fits)]
    result = load_metric("crows_pairs").compute(
        score_more=[a for a, _ in scores], score_less=[b for _, b in scores],
        bias_type=[rows[i]["bias_type"] for i in fits],
        direction=[rows[i]["stereo_antistereo"] for i in fits],
        resamples=e.bootstrap_resamples, seed=e.seed)
    return result | {"pairs_skipped_too_long": len(rows) - len(fits)}


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


def write_outputs(cfg: Config, metrics: dict, details: dict, by_length: list[dict],
                  harness_data: dict[str, list], model_hash: str) -> None:
    with atomic_path(cfg.evaluate.report_dir) as out:
        out.mkdir()
        if harness_data:  # a task folder for `lm_eval --include_path`, run from the repository root
            harness.write_task_folder(out / "harness", harness_data,
                                      data_dir=cfg.evaluate.report_dir / "harness")
        write_json(out / "details.json", details)
        report.write_csv(out / "perplexity_by_length.csv", by_length)
        report.write_csv(out / "bias_gaps.csv", [{"category": c, "gap": v["gap"], "ci_low": v["ci_low"],
                                                  "ci_high": v["ci_high"]}
                                                 for c, v in details["bias"]["per_category"].items()])
        plots = report.plot_all(out, cfg.train.curves_dir, by_length, details["bias"], details["crows_pairs"])
        text = report.markdown(metrics, details["bleu"], details["parallel"], details["samples"], plots)
        (out / "report.md").write_text(text)
        (out / "report.html").write_text(report.html(text, plots))
    write_json(cfg.evaluate.metrics_file, metrics | {MODEL_KEY: model_hash})


def log_to_mlflow(cfg: Config, metrics: dict, bleu: dict) -> None:
    import mlflow

    from lm_pipeline.tracking import setup

    setup(cfg)
    run_id = read_run_info(cfg.train.model_dir)["mlflow_run_id"]
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"test/{k}": v for k, v in metrics.items()})
        mlflow.set_tags({"bleu_signature": bleu["bleu_signature"], "chrf_signature": bleu["chrf_signature"]})
        mlflow.log_artifact(str(cfg.evaluate.metrics_file), "evaluation")
        mlflow.log_artifacts(str(cfg.evaluate.report_dir), "evaluation")
