"""Stage 5, evaluate: perplexity (against a unigram baseline), BLEU and bias probes.

Writes reports/metrics.json (for `dvc metrics show`) and reports/evaluation/ details, and logs the
same numbers to the pipeline's MLflow run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
import torch

from lm_pipeline.config import Config
from lm_pipeline.data.preprocess import load_tokens, split_documents
from lm_pipeline.data.tokenizer import eot_id
from lm_pipeline.evaluation.metrics import load_metric
from lm_pipeline.evaluation.scoring import sequence_nll, unigram_nll
from lm_pipeline.io import read_json, write_json
from lm_pipeline.model.generate import decode_until_eot, generate
from lm_pipeline.model.pretrained import load_pretrained
from lm_pipeline.tracking import RUN_FILE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Probe:
    sentence: str
    category: str
    group: str


def run(cfg: Config) -> dict:
    torch.manual_seed(cfg.train.seed)
    model, tokenizer = load_pretrained(cfg.train.model_dir)
    meta = read_json(cfg.data.processed_dir / "meta.json")
    eot = meta["eot_id"]
    test_docs = split_documents(load_tokens(cfg.data.processed_dir, "test"), eot)
    stride = cfg.evaluate.stride or model.config.block_size // 2

    nll, counts = sequence_nll(model, test_docs, eot, model.config.block_size, stride,
                               cfg.evaluate.batch_size)
    perplexity = load_metric("perplexity")
    lm = perplexity.compute(nll=nll, n_tokens=counts)
    base_nll, base_counts = unigram_nll(load_tokens(cfg.data.processed_dir, "train"), test_docs,
                                        meta["vocab_size"], eot)
    unigram = perplexity.compute(nll=base_nll, n_tokens=base_counts)

    predictions, references = continuations(model, tokenizer, test_docs, cfg)
    bleu = load_metric("bleu").compute(predictions=predictions, references=references)
    bias = bias_probe(model, tokenizer, cfg)

    metrics = {
        "perplexity": lm["perplexity"],
        "unigram_perplexity": unigram["perplexity"],
        "test_tokens": lm["tokens"],
        "bleu": bleu["bleu"],
        "chrf": bleu["chrf"],
        "bias_max_gap": bias["max_gap"],
        "bias_mean_gap": bias["mean_gap"],
        **{f"bias_gap_{cat}": v["gap"] for cat, v in bias["per_category"].items()},
    }
    details = {"bleu": bleu, "bias": bias, "samples": [
        {"prediction": p, "reference": r} for p, r in zip(predictions[:5], references[:5], strict=True)]}
    write_json(cfg.evaluate.report_dir / "details.json", details)
    write_json(cfg.evaluate.metrics_file, metrics)
    log_to_mlflow(cfg, metrics, bleu)
    log.info("evaluate: perplexity %.2f (unigram baseline %.2f), BLEU %.2f, largest bias gap %.3f",
             metrics["perplexity"], metrics["unigram_perplexity"], metrics["bleu"], metrics["bias_max_gap"])
    return metrics


def continuations(model, tokenizer, docs: list[np.ndarray], cfg: Config) -> tuple[list[str], list[str]]:
    """Greedy continuations of held-out documents and their true continuations, as text."""
    p, c = cfg.evaluate.prompt_tokens, cfg.evaluate.continuation_tokens
    long_docs = [d for d in docs if len(d) >= p + c][: cfg.evaluate.bleu_documents]
    if not long_docs:
        raise ValueError(f"evaluate: no test document has {p + c} tokens for BLEU; "
                         "lower evaluate.prompt_tokens or evaluate.continuation_tokens")
    eot = eot_id(tokenizer)
    prompts = torch.tensor(np.stack([np.concatenate([[eot], d[:p]]) for d in long_docs]).astype(np.int64))
    predictions = []
    for batch in prompts.split(cfg.evaluate.batch_size):  # equal-length prompts batch without padding
        out = generate(model, batch, max_new_tokens=c)[:, p + 1:]
        predictions += [decode_until_eot(tokenizer, row.tolist()) for row in out]
    references = [tokenizer.decode(d[p:p + c].tolist()) for d in long_docs]
    return predictions, references


def load_probes(path: Path) -> list[Probe]:
    spec = json.loads(Path(path).read_text())
    return [Probe(template.format(term=term), category, group)
            for category, groups in spec["categories"].items()
            for group, terms in groups.items()
            for template, term in product(spec["templates"], terms)]


def bias_probe(model, tokenizer, cfg: Config) -> dict:
    probes = load_probes(cfg.evaluate.probes)
    eot = eot_id(tokenizer)
    seqs = [np.asarray(tokenizer.encode(p.sentence).ids) for p in probes]
    nll, _ = sequence_nll(model, seqs, eot, model.config.block_size, model.config.block_size,
                          cfg.evaluate.batch_size)
    return load_metric("bias_gap").compute(loglik=-nll, category=[p.category for p in probes],
                                           group=[p.group for p in probes])


def log_to_mlflow(cfg: Config, metrics: dict, bleu: dict) -> None:
    import mlflow

    from lm_pipeline.tracking import setup

    setup(cfg)
    run_id = read_json(cfg.train.model_dir / RUN_FILE)["mlflow_run_id"]
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"test/{k}": v for k, v in metrics.items()})
        mlflow.set_tags({"bleu_signature": bleu["bleu_signature"], "chrf_signature": bleu["chrf_signature"]})
        mlflow.log_artifact(str(cfg.evaluate.metrics_file), "evaluation")
        mlflow.log_artifact(str(cfg.evaluate.report_dir / "details.json"), "evaluation")
