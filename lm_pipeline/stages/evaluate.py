"""Stage 5, evaluate: perplexity and bits per byte, BLEU, bias probes, and a report.

- perplexity: token-weighted over the whole test split with a sliding window, against a unigram
  baseline; bits per byte for comparisons across tokenizers; a bootstrap interval.
- BLEU and chrF (sacrebleu): greedy continuations of held-out documents, and parallel pairs
  (source -> target through a prompt template); a bootstrap interval for continuation BLEU.
- bias: counterfactual templates (per category, the mean pairwise gap between groups and its
  excess over terms shuffled between groups, with an interval over templates and terms) and
  CrowS-Pairs-format pairs (share preferring the more stereotypical sentence; as
  crows_pairs_sample_* for the built-in sample, crows_pairs_* for any other file).
- privacy (privacy.py): how often greedy decoding reproduces training documents (against held-out
  ones), and the exposure of the canaries preprocess planted.
- benchmark tasks (harness.py): lm-evaluation-harness on the model folder, as `<task>/<metric>`;
  this project's tasks are built from the test split, the harness's own read a local dataset cache.

The scoring lives in evaluation/ (scoring.py, continuations.py, probes.py, harness.py and the
metric modules); this stage runs it on the exported model and writes what it found.

Writes reports/metrics.json (for `dvc metrics show`), reports/evaluation/ (report.md, report.html,
plots, CSVs for `dvc plots`, details.json, harness/: our tasks' data and YAML), and logs all of it
to the pipeline's MLflow run.
"""

from __future__ import annotations

import logging

import torch

from lm_pipeline.config import Config
from lm_pipeline.data.processed import load_documents, load_tokens, read_meta
from lm_pipeline.evaluation import harness, privacy, report
from lm_pipeline.evaluation.bootstrap import bootstrap_ci, corpus_bleu_of, perplexity_of
from lm_pipeline.evaluation.continuations import continuations, parallel_bleu, read_parallel_pairs
from lm_pipeline.evaluation.metrics import MODEL_KEY, load_metric
from lm_pipeline.evaluation.probes import bias_metrics, bias_probe, crows_pairs, crows_pairs_prefix
from lm_pipeline.evaluation.scoring import sequence_nll, stride_for, unigram_nll
from lm_pipeline.io import atomic_path, write_json
from lm_pipeline.model.backends import load_model, resolve_device, weights_sha256
from lm_pipeline.model.folder import read_run_info
from lm_pipeline.tracking import setup

log = logging.getLogger(__name__)
CROWS_PAIRS_KEYS = ("stereotype_preference", "ci_low", "ci_high", "neutral", "pairs")


def run(cfg: Config) -> dict:
    torch.manual_seed(cfg.train.seed)
    model, tokenizer = load_model(cfg.train.model_dir, resolve_device(cfg.evaluate.device))
    meta = read_meta(cfg.data.processed_dir)
    test_docs = load_documents(cfg.data.processed_dir, "test")
    e = cfg.evaluate
    # First: a misnamed task or a bad input file fails in seconds, before the rest of the evaluation.
    pairs = read_parallel_pairs(e.parallel_data)
    harness_data = harness.task_data(test_docs, tokenizer, e.harness_tasks, e, model.block_size)
    tasks = harness.run(cfg.train.model_dir, harness_data, e.harness_tasks, e) if e.harness_tasks else None

    nll, counts = sequence_nll(model, test_docs, meta.eot_id, model.block_size,
                               stride_for(model.block_size, cfg.evaluate.stride), cfg.evaluate.batch_size,
                               what="evaluate: perplexity")
    n_bytes = meta.text_bytes["test"] + len(test_docs)  # one byte per document's end: see perplexity
    perplexity = load_metric("perplexity").compute(nll=nll, n_tokens=counts, n_bytes=n_bytes)
    base_nll, base_counts = unigram_nll(load_tokens(cfg.data.processed_dir, "train"), test_docs,
                                        meta.vocab_size, meta.eot_id)
    unigram = load_metric("perplexity").compute(nll=base_nll, n_tokens=base_counts)
    predictions, references = continuations(model, tokenizer, test_docs, cfg.evaluate)
    bleu = load_metric("bleu").compute(predictions=predictions, references=references)
    parallel = parallel_bleu(model, tokenizer, pairs, cfg.evaluate)
    bias = bias_probe(model, tokenizer, cfg.evaluate)
    crows = crows_pairs(model, tokenizer, cfg.evaluate)
    crows_prefix = crows_pairs_prefix(e.crows_pairs)  # crows_pairs_sample for the built-in pairs
    leaks = privacy_metrics(cfg, model, tokenizer, meta, test_docs)

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
        **bias_metrics(bias),
        **{f"{crows_prefix}_{key}": crows[key] for key in CROWS_PAIRS_KEYS},
        **(tasks.scores if tasks else {}),
        **leaks,
    }
    samples = [{"prediction": p, "reference": r}
               for p, r in zip(predictions[:5], references[:5], strict=True)]
    details = {"bleu": bleu, "parallel": parallel, "bias": bias, "crows_pairs": crows, "samples": samples,
               "harness": {"documents": tasks.documents, "versions": tasks.versions} if tasks else {}}
    write_outputs(cfg, metrics, details, report.perplexity_by_length(nll, counts), harness_data,
                  weights_sha256(model))
    log_to_mlflow(cfg, metrics, bleu)
    log.info("evaluate: perplexity %.2f [%.2f, %.2f] (unigram %.2f), %.3f bits/byte, BLEU %.2f, "
             "largest bias gap %.3f, %s_stereotype_preference %.2f", metrics["perplexity"], ppl_low,
             ppl_high, metrics["unigram_perplexity"], metrics["bits_per_byte"], metrics["bleu"],
             metrics["bias_max_gap"], crows_prefix, metrics[f"{crows_prefix}_stereotype_preference"])
    log.info("evaluate: extraction %.3f of %d training documents (held-out %.3f), canary exposure %s bits",
             leaks["extraction_rate"], leaks["extraction_documents"], leaks["heldout_extraction_rate"],
             f"{leaks['canary_exposure']:.1f}" if "canary_exposure" in leaks else "- (no canaries)")
    if tasks:
        log.info("evaluate: benchmark tasks %s", ", ".join(f"{k} {v:.3f}" for k, v in tasks.scores.items()))
    return metrics


def privacy_metrics(cfg: Config, model, tokenizer, meta, test_docs: list) -> dict[str, float]:
    """Extraction from training documents (the planted canaries, the last training documents, aside)
    and from test ones, and the canaries' exposure (evaluation/privacy.py)."""
    train_docs = load_documents(cfg.data.processed_dir, "train")
    train_docs = train_docs[:len(train_docs) - len(meta.canaries) * meta.canary_repeats]
    eot = meta.eot_id
    return (privacy.extraction(model, train_docs, test_docs, eot, cfg.privacy, cfg.evaluate.batch_size)
            | privacy.canary_exposure(model, tokenizer, eot, meta.canaries, cfg.privacy, cfg.evaluate))


def write_outputs(cfg: Config, metrics: dict, details: dict, by_length: list[dict],
                  harness_data: dict[str, list], model_hash: str) -> None:
    with atomic_path(cfg.evaluate.report_dir) as out:
        out.mkdir()
        if harness_data:  # a task folder for `lm_eval --include_path`, run from the repository root
            harness.write_task_folder(out / "harness", harness_data,
                                      data_dir=cfg.evaluate.report_dir / "harness")
        write_json(out / "details.json", details)
        report.write_csv(out / "perplexity_by_length.csv", by_length)
        report.write_csv(out / "bias_gaps.csv", report.bias_rows(details["bias"]))
        plots = report.plot_all(out, cfg.train.curves_dir, by_length, details["bias"], details["crows_pairs"])
        text = report.markdown(metrics, details["bleu"], details["parallel"], details["samples"], plots)
        (out / "report.md").write_text(text)
        (out / "report.html").write_text(report.html(text, plots))
    write_json(cfg.evaluate.metrics_file, metrics | {MODEL_KEY: model_hash})


def log_to_mlflow(cfg: Config, metrics: dict, bleu: dict) -> None:
    import mlflow

    setup(cfg)
    run_id = read_run_info(cfg.train.model_dir)["mlflow_run_id"]
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"test/{k}": v for k, v in metrics.items()})
        mlflow.set_tags({"bleu_signature": bleu["bleu_signature"], "chrf_signature": bleu["chrf_signature"]})
        mlflow.log_artifact(str(cfg.evaluate.metrics_file), "evaluation")
        mlflow.log_artifacts(str(cfg.evaluate.report_dir), "evaluation")
