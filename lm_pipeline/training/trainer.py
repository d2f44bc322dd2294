"""Stage 4, train: Ray Train's TorchTrainer runs the loop on num_workers DDP ranks, or this
process runs it as the one worker (launch.runs_in_process).

The driver opens the pipeline's MLflow run (params, system info, live system metrics), starts or
joins Ray when the loop runs there, runs the loop, and exports the best-validation checkpoint as a
safetensors model folder with the run id beside it. The loss curves are written as CSV for `dvc plots`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from lm_pipeline import storage, tracking
from lm_pipeline.config import Config
from lm_pipeline.data.processed import ProcessedMeta, read_meta
from lm_pipeline.data.quality import read_corpus_metrics
from lm_pipeline.io import read_json, write_json
from lm_pipeline.training.export import SUMMARY_FILE, export_model, summarize_training, write_curves
from lm_pipeline.training.launch import (
    ATTEMPT_SETTINGS,
    attempt_tags,
    check_data_fits,
    check_parent,
    join_ray,
    run_params,
    run_tags,
    runs_in_process,
    shared_data,
    train_in_process,
    train_on_ray,
)

log = logging.getLogger(__name__)
MLFLOW_RUN_FILE = "mlflow_run.json"  # in the Ray run folder: which MLflow run a resume continues


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    run_id: str
    steps: int
    final_train_loss: float
    final_val_loss: float


def run(cfg: Config) -> TrainResult:
    import mlflow

    started = time.perf_counter()
    meta = read_meta(cfg.data.processed_dir)
    check_parent(cfg, meta)
    check_data_fits(cfg, meta)
    checkpoints, name = storage.root(cfg.train.checkpoint_dir), f"train-{run_digest(cfg, meta)}"
    run_dir = storage.join(checkpoints, name)
    run_id = resumable_run_id(cfg, run_dir)
    if run_id:
        log.info("train: resuming %s from its latest checkpoint (same config and data; delete "
                 "the folder to start over); MLflow run %s", run_dir, run_id)
    else:
        run_id = tracking.start_run(cfg, run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}",
                                    tags=run_tags(cfg, meta))
        storage.write_json(storage.join(run_dir, MLFLOW_RUN_FILE), {"mlflow_run_id": run_id})
        log.info("train: fresh run in %s; MLflow run %s (%s)", run_dir, run_id,
                 tracking.tracking_uri(cfg))
    with mlflow.start_run(run_id=run_id, log_system_metrics=True):
        mlflow.log_params(run_params(cfg, meta))
        mlflow.set_tags(attempt_tags(cfg))
        # The validate stage's corpus figures (duplicates, contamination, ...) beside the curves.
        mlflow.log_metrics({f"data/{k}": v for k, v in read_corpus_metrics(cfg.validate_.report_dir).items()})
        marks = {"prepare": time.perf_counter()}
        try:
            if runs_in_process(cfg):
                log.info("train: one worker, in this process (train.run_on: %s)", cfg.train.run_on)
                result = train_in_process(cfg, run_id, checkpoints, name)
            else:
                join_ray(cfg)
                marks["ray_start"] = time.perf_counter()
                result = train_on_ray(cfg, run_id, checkpoints, name, shared_data(cfg))
            marks["fit"] = time.perf_counter()
        except Exception:
            mlflow.set_tag("failed_stage", "train")
            raise
        best, best_metrics = min(result.best_checkpoints, key=lambda c: c[1]["val_loss"])
        mlflow.log_params(export_model(cfg, best, meta, run_id))
        marks["export"] = time.perf_counter()
        client = mlflow.MlflowClient()
        write_curves(client, run_id, cfg.train.curves_dir)
        summary = summarize_training(client, run_id, best_metrics, result.metrics, cfg.train.min_delta)
        write_json(cfg.train.curves_dir / SUMMARY_FILE, summary)
        mlflow.log_artifacts(str(cfg.train.curves_dir), "training")
        marks["report"] = time.perf_counter()
        mlflow.log_metrics(driver_times(started, marks))
    final = result.metrics
    log.info("train: %d steps, train_loss %.3f, val_loss %.3f -> %s (run %s)", final["step"],
             final["train_loss"], final["val_loss"], cfg.train.model_dir, run_id)
    return TrainResult(cfg.train.model_dir, run_id, final["step"], final["train_loss"], final["val_loss"])


def driver_times(started: float, marks: dict[str, float]) -> dict[str, float]:
    """Seconds of each driver phase, as time_driver_<phase>_s, and of the whole stage (the
    workers log their own phases: loop.PhaseClock). `fit` holds the workers' start and run."""
    times, last = {}, started
    for phase, at in marks.items():
        times[f"time_driver_{phase}_s"], last = at - last, at
    return times | {"time_stage_s": last - started}


def run_digest(cfg: Config, meta: ProcessedMeta) -> str:
    """What makes two training runs the same run: model, training recipe and data.

    Where checkpoints go, how many failures to tolerate and where the loop runs (in this process
    or on Ray: the checkpoints are the same files) do not change the run.
    """
    operational = {*ATTEMPT_SETTINGS, "checkpoint_dir"}
    recipe = {"model": cfg.model.model_dump(), "lora": cfg.lora.model_dump(),
              "hf_config": hf_config_json(cfg.model.hf_config),
              "train": cfg.train.model_dump(mode="json", exclude=operational),
              "tokenizer": meta.tokenizer_sha256, "tokens": meta.tokens,
              "parent": (meta.parent or {}).get("weights_sha256")}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def hf_config_json(hf_config) -> dict | None:
    """A from-scratch config given as a folder is its config.json's contents, not its path."""
    if not isinstance(hf_config, str):
        return None
    return read_json(Path(hf_config).expanduser() / "config.json")


def resumable_run_id(cfg: Config, run_dir: str | Path) -> str | None:
    """The MLflow run of an earlier attempt at this run (in a folder or a bucket), if it left one
    we can continue."""
    import mlflow

    record = storage.join(run_dir, MLFLOW_RUN_FILE)
    if not storage.exists(record):
        return None
    run_id = storage.read_json(record)["mlflow_run_id"]
    try:
        tracking.setup(cfg)
        mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":  # down, refused, unauthorized: not an answer
            raise RuntimeError(f"train: cannot tell whether MLflow run {run_id} exists at "
                               f"{tracking.tracking_uri(cfg)} ({err.message}); the checkpoints in "
                               f"{run_dir} are kept: fix the tracking server and rerun") from None
        aside = f"{str(run_dir).rstrip('/')}.orphaned-{time.strftime('%Y%m%d-%H%M%S')}"
        log.warning("train: %s names MLflow run %s, which this store lacks; starting over (the old "
                    "checkpoints are kept in %s)", record, run_id, aside)
        storage.move(run_dir, aside)
        return None
    return run_id
