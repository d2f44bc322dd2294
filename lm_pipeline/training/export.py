"""After training: the chosen checkpoint as a model folder, the loss curves as CSV, and a summary
of the run (which step was exported and why, the generalization gap, overfitting)."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

from lm_pipeline import tracking
from lm_pipeline.config import Config
from lm_pipeline.data.processed import ProcessedMeta
from lm_pipeline.io import atomic_path
from lm_pipeline.model import parent as parents
from lm_pipeline.model.backends import save_model
from lm_pipeline.training.loop import initial_model
from lm_pipeline.training.plan import shape_of
from lm_pipeline.training.state import load_weights

log = logging.getLogger(__name__)
SUMMARY_FILE = "summary.json"  # in train.curves_dir, a DVC metric


def best_checkpoint(checkpoints: list[tuple]) -> tuple:
    """The (checkpoint, metrics) pair with the lowest finite val_loss. NaN compares false with
    everything, so min() over all of them returned a NaN checkpoint that came first."""
    finite = [c for c in checkpoints if math.isfinite(c[1]["val_loss"])]
    if not finite:
        losses = ", ".join(f"step {m['step']}: {m['val_loss']}" for _, m in checkpoints) or "none kept"
        raise ValueError(f"train: no checkpoint has a finite val_loss, nothing to export ({losses})")
    return min(finite, key=lambda c: c[1]["val_loss"])


def export_model(cfg: Config, checkpoint, meta: ProcessedMeta, run_id: str) -> dict:
    """Write the checkpoint's weights as train.model_dir, with run.json naming where it came from;
    returns the trainable and total parameter counts (before a LoRA adapter is merged)."""
    parent = parents.pinned_folder(cfg.data.processed_dir) if meta.parent else None
    model = initial_model(cfg, meta, parent)  # with LoRA, its frozen base is the trained one's
    with checkpoint.as_directory() as d:
        state = load_weights(d, model)
    shape = shape_of(model)
    counts = {"model.trainable_params": shape.trainable, "model.total_params": shape.params}
    run_info = {"mlflow_run_id": run_id, "tracking_uri": tracking.shown_uri(cfg),
                "step": state.step, "tokens_seen": state.tokens_seen,
                "tokenizer_sha256": meta.tokenizer_sha256, "chars_per_token": meta.chars_per_token,
                "parent": meta.parent}
    save_model(model, cfg.data.processed_dir, cfg.train.model_dir, run_info, cfg.lora, parent)
    return counts | {"model.num_params": model.num_params()}


def write_curves(client, run_id: str, out_dir: Path) -> None:
    """{train,val}_loss.csv from the run's metric history, for `dvc plots`."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for key in ("train_loss", "val_loss"):
            history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
            with open(tmp / f"{key}.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["step", key])
                writer.writerows((m.step, m.value) for m in history)


def summarize_training(client, run_id: str, best: dict, last: dict, min_delta: float) -> dict:
    """Which step was exported and why, the generalization gap, and whether it overfitted
    (validation loss up from its best while the training loss went down), as tags and metrics.

    `best` and `last` are the metrics reported with the best and the last validation. The gap
    subtracts `train_eval_loss`, the training split measured like `val_loss` (loop.Validator);
    the trend compares the logged training loss with itself (a 10-step mean at each end), which
    is steadier than a few fixed windows."""
    nan = float("nan")  # a run reported before train_eval_loss existed
    train_loss = {m.step: m.value for m in client.get_metric_history(run_id, "train_loss")}
    trend_at_best, trend_at_end = recent_mean(train_loss, best["step"]), recent_mean(train_loss, last["step"])
    overfitting = last["val_loss"] > best["val_loss"] + min_delta and trend_at_end < trend_at_best
    summary = {"exported_step": best["step"], "best_val_loss": best["val_loss"],
               "last_step": last["step"], "last_val_loss": last["val_loss"],
               "early_stopped": bool(last.get("early_stopped")),
               "generalization_gap": best["val_loss"] - best.get("train_eval_loss", nan),
               "generalization_gap_at_end": last["val_loss"] - last.get("train_eval_loss", nan),
               "overfitting": overfitting}
    for key in ("exported_step", "early_stopped", "overfitting"):
        client.set_tag(run_id, f"train.{key}", str(summary[key]).lower())
    client.log_metric(run_id, "best_val_loss", best["val_loss"])  # what Tune trials are ranked by
    client.log_metric(run_id, "generalization_gap", summary["generalization_gap"])
    client.log_metric(run_id, "generalization_gap_at_end", summary["generalization_gap_at_end"])
    if overfitting:
        log.warning("train: overfitting: val_loss rose from %.4f (step %d) to %.4f (step %d) while "
                    "train_loss fell; exporting step %d", best["val_loss"], best["step"],
                    last["val_loss"], last["step"], best["step"])
    return summary


def recent_mean(history: dict[int, float], step: int, window: int = 10) -> float:
    """A metric averaged over the `window` steps up to `step` (single steps are noisy)."""
    values = [v for s, v in history.items() if step - window < s <= step]
    return sum(values) / len(values) if values else float("nan")
