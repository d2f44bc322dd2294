"""Stage 4, train: Ray Train's TorchTrainer runs the loop on num_workers DDP ranks, or this
process runs it as the one worker (training/runners.py).

The driver opens the pipeline's MLflow run (params, system info, live system metrics), starts or
joins Ray when the loop runs there, runs the loop, and exports the best-validation checkpoint as a
safetensors model folder with the run id beside it. The loss curves are written as CSV for `dvc plots`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from lm_pipeline import storage, tracking
from lm_pipeline.config import Config
from lm_pipeline.data.funnel import METRICS_FILE as FUNNEL_METRICS
from lm_pipeline.data.processed import read_meta
from lm_pipeline.data.quality import read_corpus_metrics
from lm_pipeline.io import read_json, write_json
from lm_pipeline.training.export import (
    SUMMARY_FILE,
    best_checkpoint,
    export_model,
    summarize_training,
    write_curves,
)
from lm_pipeline.training.plan import check_fits, planned
from lm_pipeline.training.preflight import check_data_fits, check_parent
from lm_pipeline.training.run_record import (
    MLFLOW_RUN_FILE,
    attempt_tags,
    resumable_run_id,
    run_digest,
    run_params,
    run_tags,
)
from lm_pipeline.training.runners import (
    join_ray,
    runs_in_process,
    shared_data,
    train_in_process,
    train_on_ray,
)

log = logging.getLogger(__name__)


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
    plan = planned(cfg, meta, on_this_machine=runs_in_process(cfg) or not cfg.ray_address)
    for line in plan.lines():
        log.info("%s", line)
    check_fits(plan)
    checkpoints, name = storage.root(cfg.train.checkpoint_dir), f"train-{run_digest(cfg, meta)}"
    run_dir = storage.join(checkpoints, name)
    run_id = resumable_run_id(cfg, run_dir)
    if run_id:
        log.info("train: resuming %s from its latest checkpoint (same config and data; delete "
                 "the folder to start over); MLflow run %s", run_dir, run_id)
    else:
        run_id = tracking.start_run(cfg, run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}",
                                    tags=run_tags(cfg, meta))
        write_json(storage.join(run_dir, MLFLOW_RUN_FILE), {"mlflow_run_id": run_id})
        log.info("train: fresh run in %s; MLflow run %s (%s)", run_dir, run_id,
                 tracking.shown_uri(cfg))
    with mlflow.start_run(run_id=run_id, log_system_metrics=True):
        mlflow.log_params(run_params(cfg, meta))
        mlflow.log_metrics(plan.metrics())  # metrics: a resumed run's plan may differ (its process)
        mlflow.log_text("\n".join(plan.lines()) + "\n", "plan.txt")
        mlflow.set_tags(attempt_tags(cfg))
        # The validate stage's corpus figures (duplicates, contamination, ...) beside the curves.
        mlflow.log_metrics({f"data/{k}": v for k, v in read_corpus_metrics(cfg.validate_.report_dir).items()})
        log_filter_funnel(cfg.filter.report_dir)
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
        best, best_metrics = best_checkpoint(result.best_checkpoints)
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


def log_filter_funnel(report_dir: Path) -> None:
    """The filter stage's funnel (counts, report.md, funnel.png) with the run that trained on its output."""
    import mlflow

    if (Path(report_dir) / FUNNEL_METRICS).is_file():
        funnel = read_json(Path(report_dir) / FUNNEL_METRICS)
        mlflow.log_metrics({f"filter/{k}": float(v) for k, v in funnel.items()})
        mlflow.log_artifacts(str(report_dir), "filter")


def driver_times(started: float, marks: dict[str, float]) -> dict[str, float]:
    """Seconds of each driver phase, as time_driver_<phase>_s, and of the whole stage (the
    workers log their own phases: progress.PhaseClock). `fit` holds the workers' start and run."""
    times, last = {}, started
    for phase, at in marks.items():
        times[f"time_driver_{phase}_s"], last = at - last, at
    return times | {"time_stage_s": last - started}


