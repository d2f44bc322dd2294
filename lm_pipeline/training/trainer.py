"""Stage 4, train: Ray Train's TorchTrainer runs the loop on num_workers DDP ranks.

The driver opens the pipeline's MLflow run (params, system info, live system metrics), starts or
joins Ray, runs the trainer, and exports the final checkpoint as a safetensors model folder with
the run id beside it. The loss curves are written as CSV for `dvc plots`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Ray reads these at import: quiet, fast start on a small machine. Users may override them.
for _key, _value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "token",  # Ray's default, said explicitly (it warns otherwise)
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # The Train controller takes one report per poll (a worker's result queue holds one), so at
    # Ray's 2 s a loop that validates more often waits on every report; 0.5 s costs little.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",  # else every worker print reaches the driver twice
    "RAY_DEDUP_LOGS_SKIP_REGEX": r"Failed to query Ray Train Controller|Reporting training result",
    "RAY_DEDUP_LOGS_ALLOW_REGEX": r"\[rank \d+\]",  # per-rank lines are not repeats
}.items():
    os.environ.setdefault(_key, _value)

import torch  # noqa: E402

from lm_pipeline import tracking  # noqa: E402
from lm_pipeline.config import Config  # noqa: E402
from lm_pipeline.data.preprocess import TOKENIZER_FILE  # noqa: E402
from lm_pipeline.io import atomic_path, read_json, write_json  # noqa: E402
from lm_pipeline.model import parent as parents  # noqa: E402
from lm_pipeline.model.pretrained import save_pretrained  # noqa: E402
from lm_pipeline.model.transformer import GPT  # noqa: E402
from lm_pipeline.training.loop import model_config, train_loop_per_worker  # noqa: E402
from lm_pipeline.training.state import load_weights  # noqa: E402

log = logging.getLogger(__name__)
MLFLOW_RUN_FILE = "mlflow_run.json"  # in the Ray run folder: which MLflow run a resume continues
FIT_FILE = "fit.json"  # in train.curves_dir: exported step, early stopping, overfitting


class TrainingError(RuntimeError):
    """Training failed on the workers; the message carries each failing rank's error."""


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    run_id: str
    steps: int
    final_train_loss: float
    final_val_loss: float


def run(cfg: Config) -> TrainResult:
    import mlflow

    meta = read_json(cfg.data.processed_dir / "meta.json")
    check_parent(cfg, meta)
    run_dir = (cfg.train.checkpoint_dir / f"train-{config_digest(cfg, meta)}").resolve()
    run_id = resumable_run_id(cfg, run_dir)
    if run_id:
        log.info("train: resuming %s from its latest checkpoint (same config and data; delete "
                 "the folder to start over); MLflow run %s", run_dir, run_id)
    else:
        run_id = tracking.start_run(cfg, run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}",
                                    tags=run_tags(cfg, meta))
        write_json(run_dir / MLFLOW_RUN_FILE, {"mlflow_run_id": run_id})
        log.info("train: fresh run in %s; MLflow run %s (%s)", run_dir, run_id,
                 tracking.tracking_uri(cfg))
    with mlflow.start_run(run_id=run_id, log_system_metrics=True) as active:
        mlflow.log_params(run_params(cfg, meta))
        log_data_quality(cfg)
        try:
            result = fit(cfg, run_id, run_dir)
        except Exception:
            mlflow.set_tag("failed_stage", "train")
            raise
        best, best_metrics = min(result.best_checkpoints, key=lambda c: c[1]["val_loss"])
        model = export_model(cfg, best, meta, run_id)
        mlflow.log_param("model.num_params", model.num_params())
        client = mlflow.MlflowClient()
        write_curves(client, run_id, cfg.train.curves_dir)
        fit_summary = record_fit(client, run_id, best_metrics, result.metrics, cfg)
        write_json(cfg.train.curves_dir / FIT_FILE, fit_summary)
        mlflow.log_artifacts(str(cfg.train.curves_dir), "training")
        final = result.metrics
    log.info("train: %d steps, train_loss %.3f, val_loss %.3f -> %s (run %s)", final["step"],
             final["train_loss"], final["val_loss"], cfg.train.model_dir, active.info.run_id)
    return TrainResult(cfg.train.model_dir, run_id, final["step"], final["train_loss"], final["val_loss"])


def run_params(cfg: Config, meta: dict) -> dict:
    """What a training run logs as params: the same keys for pipeline runs, DVC experiments and
    Tune trials, so the MLflow UI compares them side by side."""
    return tracking.flatten("", {
        "model": cfg.model.model_dump(), "train": cfg.train.model_dump(mode="json"),
        "tokenizer": cfg.tokenizer.model_dump(), "data": {
            "source": cfg.data.source, "vocab_size": meta["vocab_size"],
            "train_tokens": meta["tokens"]["train"], "val_tokens": meta["tokens"]["val"]}}) | system_info()


def check_parent(cfg: Config, meta: dict) -> None:
    """train.init_from and the data must agree: preprocess pinned the parent the run starts from."""
    record, parent_config = parents.load(cfg.data.processed_dir)
    if bool(cfg.train.init_from) != bool(record) or (record and record["init_from"] != cfg.train.init_from):
        raise parents.ParentError(
            f"train.init_from is {cfg.train.init_from!r} but {cfg.data.processed_dir} was preprocessed "
            f"for {record['init_from'] if record else None!r}: run `lmp preprocess` (or `dvc repro`) first")
    if record:
        parents.check_architecture(cfg, parent_config, record)
        log.info("train: fine-tuning %s (weights %s...) with a fresh optimizer and LR schedule",
                 parents.describe(record), record["weights_sha256"][:12])


def log_data_quality(cfg: Config) -> None:
    """The validate stage's corpus figures (duplicates, contamination, ...) as data/* metrics."""
    import mlflow

    from lm_pipeline.data.validate import METRICS_FILE

    path = cfg.validate_.report_dir / METRICS_FILE
    if path.is_file():
        mlflow.log_metrics({f"data/{k}": float(v) for k, v in read_json(path).items()})


def config_digest(cfg: Config, meta: dict) -> str:
    """What makes two training runs the same run: model, training recipe and data.

    Where checkpoints go and how many failures to tolerate do not change the run.
    """
    operational = {"max_failures", "checkpoints_to_keep", "model_dir", "checkpoint_dir", "curves_dir"}
    recipe = {"model": cfg.model.model_dump(),
              "train": cfg.train.model_dump(mode="json", exclude=operational),
              "tokenizer": meta["tokenizer_sha256"], "tokens": meta["tokens"],
              "parent": (meta.get("parent") or {}).get("weights_sha256")}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def resumable_run_id(cfg: Config, run_dir: Path) -> str | None:
    """The MLflow run of an earlier attempt at this run, if it left one we can continue."""
    import mlflow

    record = run_dir / MLFLOW_RUN_FILE
    if not record.exists():
        return None
    run_id = read_json(record)["mlflow_run_id"]
    tracking.setup(cfg)
    try:
        mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        log.warning("train: %s names MLflow run %s, which this store lacks; starting over",
                    record, run_id)
        shutil.rmtree(run_dir)
        return None
    return run_id


def fit(cfg: Config, run_id: str, run_dir: Path, callbacks: tuple = ()):
    """Train on Ray; `callbacks` are Ray Train callbacks (a Tune trial passes its reporter)."""
    import ray
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    init_ray(cfg)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.model_dump(mode="json", by_alias=True) | {"data": absolute_data(cfg)},
            "mlflow_run_id": run_id,
            "tracking_uri": tracking.tracking_uri(cfg),
            "progress_bar": sys.stderr.isatty(),
            "init_weights": str(parents.weights_file(cfg.data.processed_dir).resolve())
            if cfg.train.init_from else None,
        },
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=RunConfig(
            name=run_dir.name,  # the same name resumes from the latest checkpoint in it
            storage_path=str(run_dir.parent),
            # The best checkpoints by validation loss are kept (and the latest, for resuming).
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.checkpoints_to_keep,
                                               checkpoint_score_attribute="val_loss",
                                               checkpoint_score_order="min"),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=list(callbacks),
            worker_runtime_env={"env_vars": {"PYTHONPATH": project_pythonpath()} | tracking.client_env()},
        ),
    )
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as err:
        raise TrainingError(f"train: training failed: {worker_errors(err)}") from None


def init_ray(cfg: Config, cpus: int = 0) -> None:
    """Join cfg's cluster, or start a local one with at least `cpus` (default: one training's)."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray_address
    cpus = cpus or cfg.train.num_workers * cfg.train.cpus_per_worker
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
             num_cpus=None if address else max(os.cpu_count() or 1, cpus))
    log.info("train: Ray %s with %s CPUs", address or "local instance", ray.cluster_resources().get("CPU"))


def worker_errors(err) -> str:
    failures = getattr(err, "worker_failures", None)
    if not failures:
        return str(err)
    return "; ".join(f"rank {rank}: {type(getattr(e, 'cause', None) or e).__name__}: "
                     f"{getattr(e, 'cause', None) or e}" for rank, e in sorted(failures.items()))


def absolute_data(cfg: Config) -> dict:
    """Workers may run in another directory (or node): hand them absolute paths."""
    return cfg.data.model_dump(mode="json") | {"processed_dir": str(cfg.data.processed_dir.resolve()),
                                               "raw_dir": str(cfg.data.raw_dir.resolve())}


def project_pythonpath() -> str:
    root = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)


def export_model(cfg: Config, checkpoint, meta: dict, run_id: str) -> GPT:
    model = GPT(model_config(cfg, meta["vocab_size"]))
    with checkpoint.as_directory() as d:
        state = load_weights(d, model)
    run_info = {"mlflow_run_id": run_id, "tracking_uri": tracking.tracking_uri(cfg),
                "step": state.step, "tokens_seen": state.tokens_seen,
                "tokenizer_sha256": meta["tokenizer_sha256"], "chars_per_token": meta.get("chars_per_token"),
                "parent": meta.get("parent")}
    save_pretrained(model, cfg.data.processed_dir / TOKENIZER_FILE, cfg.train.model_dir,
                    extra={tracking.RUN_FILE: run_info})
    return model


def record_fit(client, run_id: str, best: dict, last: dict, cfg: Config) -> dict:
    """Which step was exported and why, the generalization gap, and whether it overfitted
    (validation loss up from its best while training loss went down), as tags and metrics."""
    train_loss = {m.step: m.value for m in client.get_metric_history(run_id, "train_loss")}
    train_at_best, train_at_end = recent_mean(train_loss, best["step"]), recent_mean(train_loss, last["step"])
    overfitting = (last["val_loss"] > best["val_loss"] + cfg.train.min_delta
                   and train_at_end < train_at_best)
    summary = {"exported_step": best["step"], "best_val_loss": best["val_loss"],
               "last_step": last["step"], "last_val_loss": last["val_loss"],
               "early_stopped": bool(last.get("early_stopped")),
               "generalization_gap": best["val_loss"] - train_at_best,
               "generalization_gap_at_end": last["val_loss"] - train_at_end,
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


def write_curves(client, run_id: str, out_dir: Path) -> None:
    """{train,val}_loss.csv from the run's metric history."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for key in ("train_loss", "val_loss"):
            history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
            with open(tmp / f"{key}.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["step", key])
                writer.writerows((m.step, m.value) for m in history)


def run_tags(cfg: Config, meta: dict) -> dict[str, str]:
    from lm_pipeline.lineage import git_commit

    parent = meta.get("parent") or {}
    return {"pipeline.stage": "train", "git_commit": git_commit(),
            "data.tokenizer_sha256": meta["tokenizer_sha256"],
            "prefect.flow_run_id": os.environ.get("LMP_FLOW_RUN_ID", ""),
            "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),  # set by `dvc exp run`
            **({"parent.model": parents.describe(parent), "parent.run_id": parent.get("run_id") or "",
                "parent.weights_sha256": parent["weights_sha256"]} if parent else {})}


def system_info() -> dict[str, str]:
    import ray

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"system.python": platform.python_version(), "system.torch": torch.__version__,
            "system.ray": ray.__version__, "system.platform": platform.platform(),
            "system.cpu_count": str(os.cpu_count()), "system.gpu": gpu}
