"""Overfitting detection on real Ray Train: early stopping and the best-validation checkpoint."""

import json
import random
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.integration.conftest import UNVALIDATED, make_project

pytestmark = [pytest.mark.optimization, pytest.mark.integration]

LMP = str(Path(sys.executable).parent / "lmp")
WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo") for b in ("n", "s", "t", "r")]
WORDS += ["the", "of", "and", "to", "a", "in"]


def word_soup(path: Path, documents: int = 12, words: int = 60) -> Path:
    """A corpus small enough (about 1,800 training characters) for a small model to memorize in a
    few hundred steps: then validation gets worse. With 160 documents it did not (600 steps, on
    the AMD machine): its validation loss sat at the soup's entropy, early stopping fired on
    noise, and whether the run counted as overfitting was a matter of luck."""
    rng = random.Random(0)
    with open(path, "w") as f:
        for _ in range(documents):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(words))}) + "\n")
    return path


def test_overfitting_stops_early_and_the_best_validation_checkpoint_is_exported(tmp_path):
    params = {
        "data": {"source": str(word_soup(tmp_path / "soup.jsonl"))},
        "filter": {"steps": []},  # word soup is no language: the language step would take it all
        **UNVALIDATED,
        "split": {"val_fraction": 0.2, "test_fraction": 0.1},
        "tokenizer": {"kind": "char"},
        "model": {"n_layer": 4, "n_head": 2, "n_embd": 128, "block_size": 32},
        "train": {"num_workers": 1, "cpus_per_worker": 2, "batch_size": 32, "max_steps": 600,
                  "warmup_steps": 10, "lr": 0.003, "min_lr": 0.003, "weight_decay": 0.0,
                  "eval_interval": 20, "eval_batches": 4, "checkpoint_interval": 600,
                  "early_stopping_patience": 5},
    }
    project = make_project(tmp_path / "project", params)
    for stage in ("ingest", "filter", "preprocess"):
        subprocess.run([LMP, "-q", stage], cwd=project, check=True)
    out = subprocess.run([LMP, "train"], cwd=project, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "early stopping at step" in out.stdout + out.stderr

    summary = json.loads((project / "reports/training/summary.json").read_text())
    assert summary["early_stopped"] and summary["overfitting"], summary
    assert summary["exported_step"] < summary["last_step"] < 600
    assert summary["best_val_loss"] < summary["last_val_loss"]
    # memorized, not noise: the training loss fell away from the validation loss after the best step
    assert summary["generalization_gap_at_end"] > summary["generalization_gap"] + 0.05, summary

    run = json.loads((project / "models/model/run.json").read_text())
    assert run["step"] == summary["exported_step"]  # the best checkpoint, not the last
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    tags = client.get_run(run["mlflow_run_id"]).data.tags
    assert tags["train.early_stopped"] == "true" and tags["train.overfitting"] == "true"
    assert tags["train.exported_step"] == str(summary["exported_step"])
    val = {m.step: m.value for m in client.get_metric_history(run["mlflow_run_id"], "val_loss")}
    assert min(val, key=val.get) == summary["exported_step"]
    assert max(val) == summary["last_step"]
    # the gap subtracts the training split measured like validation (logged beside it), like with like
    train_eval = {m.step: m.value for m in client.get_metric_history(run["mlflow_run_id"], "train_eval_loss")}
    for key, step in (("generalization_gap", summary["exported_step"]),
                      ("generalization_gap_at_end", summary["last_step"])):
        assert summary[key] == pytest.approx(val[step] - train_eval[step], rel=1e-6), key
    assert exported_val_loss(project) == pytest.approx(summary["best_val_loss"], rel=1e-5)


def exported_val_loss(project: Path) -> float:
    """The exported model's validation loss, computed afresh: it is the best checkpoint's."""
    import torch

    from lm_pipeline.config import load_config
    from lm_pipeline.data.processed import load_tokens
    from lm_pipeline.model.pretrained import load_pretrained
    from lm_pipeline.training.batches import fixed_batches
    from lm_pipeline.training.loop import validation_loss

    cfg = load_config(project / "params.yaml")
    model, _ = load_pretrained(project / "models/model")
    batches = fixed_batches(load_tokens(project / "data/processed", "val"), cfg.train.eval_batches,
                            cfg.train.batch_size, cfg.model.block_size)
    return validation_loss(model, batches, torch.device("cpu"))
