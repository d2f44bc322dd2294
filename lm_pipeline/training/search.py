"""Hyperparameter and architecture search: Ray Tune over the train stage's own training.

Each trial is a real Ray Train run: the same TorchTrainer, loop and checkpoints as `lmp train`,
on tune.workers_per_trial workers, with the trial's values for the model.* and train.* keys of
tune.space. Every validation is reported to Tune; ASHA stops weak trials at its rungs (in steps),
and the search stops at tune.num_samples trials or tune.time_budget_s.

MLflow: a parent run `tune-<time>` holds the space and budget; each trial is a child run with the
same params and metrics as a pipeline run (so trials, `dvc exp run` experiments and pipeline runs
compare side by side). Afterwards the parent gets the best config (best.* params), best_val_loss,
trials.csv and trials.png. The best trial's best-validation checkpoint is exported to
tune.model_dir, where `lmp evaluate --tuned` and `lmp register --tuned` take it through the same
evaluation and registry gates as any model (tuned_config points those stages at it).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from lm_pipeline import tracking
from lm_pipeline.cluster import init_ray
from lm_pipeline.config import Config
from lm_pipeline.data.processed import ProcessedMeta, read_meta
from lm_pipeline.io import atomic_path, write_json
from lm_pipeline.storage import join, root
from lm_pipeline.training.export import export_model, write_curves
from lm_pipeline.training.preflight import check_data_fits, check_parent
from lm_pipeline.training.run_record import attempt_tags, run_params, run_tags
from lm_pipeline.training.runners import shared_data, train_on_ray
from lm_pipeline.training.spec import portable_config
from lm_pipeline.training.tuned import BEST_FILE, trial_config, tuned_config

log = logging.getLogger(__name__)
TRIALS_FILE = "trials.csv"
PLOT_FILE = "trials.png"
# A trial's driver only waits on its Ray Train workers. Tune needs a non-empty request; a started
# local Ray gets one logical CPU more than the workers need, for the drivers.
TRIAL_DRIVER_CPU = 0.01


@dataclass(frozen=True)
class Trial:
    trial_id: str
    run_id: str
    values: dict  # the sampled 'section.key' values
    status: str  # completed, early_stopped (patience), stopped_by_asha, failed
    steps: int
    best_val_loss: float
    best_checkpoint: str | None


def run(cfg: Config) -> dict:
    """Search, then export the best trial's model; returns best.json's content."""
    import mlflow
    from mlflow.entities import Param

    if not cfg.tune.space:
        raise ValueError("tune.space is empty: declare the values to search in params.yaml")
    meta = read_meta(cfg.data.processed_dir)
    check_parent(cfg, meta)
    check_data_fits(cfg, meta)
    init_ray(cfg.ray_address, math.ceil(cpus_needed(cfg)))
    check_capacity(cfg, ray_cpus())
    shards_url = shared_data(cfg)  # before the MLflow run: a failed upload leaves no run behind
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tags = run_tags(cfg, meta)
    parent_id = tracking.start_run(cfg, run_name=f"tune-{stamp}", tags={
        "pipeline.stage": "tune", "git_commit": tags["git_commit"], "git_dirty": tags["git_dirty"]})
    client = mlflow.MlflowClient()
    client.log_batch(parent_id, params=[Param(k, str(v)) for k, v in search_params(cfg).items()])
    log.info("tune: %d trials (at most %d at once, %d workers each, %.0f s budget) over %s; MLflow "
             "parent run %s", cfg.tune.num_samples, cfg.tune.max_concurrent_trials,
             cfg.tune.workers_per_trial, cfg.tune.time_budget_s, ", ".join(cfg.tune.space), parent_id)
    storage = join(root(cfg.train.checkpoint_dir), f"tune-{stamp}")
    results = make_tuner(cfg, tags | {"mlflow.parentRunId": parent_id}, storage, shards_url, meta).fit()
    children = {run.data.tags["tune.trial_id"]: run for run in client.search_runs(
        [client.get_run(parent_id).info.experiment_id],
        f"tags.mlflow.parentRunId = {tracking.filter_literal(parent_id)}")}
    trials = [close_trial(client, children.get(trial_id_of(result)), result, cfg) for result in results]
    return record_search(cfg, client, parent_id, trials, meta)


def make_tuner(cfg: Config, trial_tags: dict, storage: str, shards_url: str | None, meta: ProcessedMeta):
    from ray import tune

    return tune.Tuner(
        tune.with_resources(  # the trial only drives; its Ray Train workers hold the CPUs
            tune.with_parameters(run_trial, base=portable_config(cfg), storage=storage, tags=trial_tags,
                                 shards_url=shards_url, meta=meta),
            {"CPU": TRIAL_DRIVER_CPU}),
        param_space=search_space(cfg),
        tune_config=tune.TuneConfig(
            metric="val_loss", mode="min", scheduler=asha(cfg), num_samples=cfg.tune.num_samples,
            # Tune ignores TuneConfig.max_concurrent_trials when given a search algorithm.
            search_alg=tune.search.BasicVariantGenerator(max_concurrent=cfg.tune.max_concurrent_trials,
                                                         random_state=cfg.tune.seed),
            time_budget_s=cfg.tune.time_budget_s,
            trial_dirname_creator=lambda trial: f"trial-{trial.trial_id}"),
        run_config=tune.RunConfig(name="search", storage_path=storage, verbose=0,
                                  callbacks=[free_workers_callback()]),
    )


def free_workers_callback():
    from ray.tune import Callback
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    class FreeWorkers(Callback):
        """Remove an ended trial's Ray Train placement group (its id comes with every report).

        Tune stops a trial by killing its actor, and the Train controller with it; the workers'
        placement group would hold their CPUs until the search ends, and the next trial would
        wait for them for ever."""

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.free(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.free(trial)

        @staticmethod
        def free(trial) -> None:
            from ray._raylet import PlacementGroupID

            pg = (trial.last_result or {}).get("placement_group")
            if pg:
                try:
                    remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(pg)))
                except Exception:  # already removed: the trial ended on its own
                    pass

    return FreeWorkers()


def asha(cfg: Config):
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="step", max_t=cfg.train.max_steps, grace_period=cfg.tune.grace_period,
                         reduction_factor=cfg.tune.reduction_factor)


def search_space(cfg: Config) -> dict:
    from ray import tune

    make = {"choice": tune.choice, "grid": tune.grid_search, "uniform": lambda v: tune.uniform(*v),
            "loguniform": lambda v: tune.loguniform(*v), "randint": lambda v: tune.randint(v[0], v[1] + 1)}
    return {key: make[kind](values) for key, spec in cfg.tune.space.items() for kind, values in spec.items()}


def search_params(cfg: Config) -> dict:
    import json

    return {f"tune.{k}": v for k, v in cfg.tune.model_dump(mode="json").items() if k != "space"} | {
        "tune.space": json.dumps(cfg.tune.space, sort_keys=True), "train.max_steps": cfg.train.max_steps}


def ray_cpus() -> float:
    import ray

    return ray.cluster_resources().get("CPU", 0)


def cpus_needed(cfg: Config) -> float:
    t = cfg.tune
    return t.max_concurrent_trials * (t.workers_per_trial * cfg.train.cpus_per_worker + TRIAL_DRIVER_CPU)


def check_capacity(cfg: Config, cpus: float) -> None:
    """Concurrent trials x workers per trial must fit in the cluster, or trials would wait for ever."""
    if cpus_needed(cfg) > cpus:
        t = cfg.tune
        raise ValueError(
            f"tune: tune.max_concurrent_trials {t.max_concurrent_trials} x (tune.workers_per_trial "
            f"{t.workers_per_trial} x train.cpus_per_worker {cfg.train.cpus_per_worker} + "
            f"{TRIAL_DRIVER_CPU} for the trial's driver) = {cpus_needed(cfg):g} CPUs, but the cluster "
            f"has {cpus:g}: lower one of them or add nodes")


def run_trial(values: dict, base: dict, storage: str, tags: dict, shards_url: str | None,
              meta: ProcessedMeta) -> None:
    """One Tune trial: a Ray Train run of the train stage's loop, logged as an MLflow child run.
    It may run on any node: the data's index comes from the driver, the data itself through
    shards_url (or data.processed_dir) to the trial's workers."""
    import mlflow
    from mlflow.entities import Param
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = trial_config(Config.model_validate(base), values)
    trial_id = tune.get_context().get_trial_id()
    tags = tags | {"pipeline.stage": "tune", "tune.trial_id": trial_id} | attempt_tags(cfg)
    run_id = tracking.start_run(cfg, run_name=f"trial-{trial_id}", tags=tags)
    client = mlflow.MlflowClient()
    params = run_params(cfg, meta)
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    train_on_ray(cfg, run_id, storage, f"trial-{trial_id}", shards_url, callbacks=(TuneReportCallback(),))
    client.set_terminated(run_id, "FINISHED")


def close_trial(client, run, result, cfg: Config) -> Trial:
    """What became of a trial, from Tune's reports; its child run (if it got one) is ended to match."""
    from mlflow.entities import RunStatus

    run_id = run.info.run_id if run else ""
    reports = result.metrics_dataframe
    if result.error or reports is None or reports.empty:
        status, steps, best, checkpoint = "failed", 0, math.nan, None
    else:
        saved = reports[reports["checkpoint_path"].notna()] if "checkpoint_path" in reports else reports[:0]
        # Only a finite val_loss is exported (export.best_checkpoint's rule); idxmin raises on all-NaN.
        saved = saved[saved["val_loss"].map(math.isfinite)]
        best_row = saved.loc[saved["val_loss"].idxmin()] if len(saved) else None
        steps = int(reports["step"].max())
        best = float(reports["val_loss"].min())
        checkpoint = best_row["checkpoint_path"] if best_row is not None else None
        status = ("completed" if steps >= cfg.train.max_steps else
                  "early_stopped" if bool(reports["early_stopped"].iloc[-1]) else "stopped_by_asha")
    if run_id:
        client.set_tag(run_id, "tune.status", status)
        if status == "failed":
            client.set_tag(run_id, "tune.error", str(result.error)[:5000])
        if client.get_run(run_id).info.status == "RUNNING":  # stopped from outside: end it here
            ended = {"failed": RunStatus.FAILED, "stopped_by_asha": RunStatus.KILLED}
            client.set_terminated(run_id, RunStatus.to_string(ended.get(status, RunStatus.FINISHED)))
    return Trial(trial_id_of(result), run_id, dict(result.config), status, steps, best, checkpoint)


def trial_id_of(result) -> str:
    return Path(result.path).name.removeprefix("trial-")  # trial_dirname_creator named it


def record_search(cfg: Config, client, parent_id: str, trials: list[Trial], meta: ProcessedMeta) -> dict:
    """Best config on the parent run, the trials table and plot; the best model exported."""
    from ray.train import Checkpoint

    candidates = [t for t in trials if t.best_checkpoint]
    if not candidates:
        client.set_terminated(parent_id, "FAILED")
        raise RuntimeError(f"tune: no trial produced a checkpoint ({len(trials)} trials: "
                           + ", ".join(f"{t.trial_id} {t.status}" for t in trials) + ")")
    best = min(candidates, key=lambda t: t.best_val_loss)
    tuned = tuned_config(cfg, best.values)
    counts = export_model(tuned, Checkpoint(best.best_checkpoint), meta, best.run_id)
    write_curves(client, best.run_id, tuned.train.curves_dir)
    overrides = sorted(best.values.items())
    summary = {"trial_id": best.trial_id, "mlflow_run_id": best.run_id, "parent_run_id": parent_id,
               "values": best.values, "best_val_loss": best.best_val_loss, "steps": best.steps,
               "num_params": counts["model.num_params"], "trials": len(trials),
               "statuses": {s: sum(t.status == s for t in trials) for s in {t.status for t in trials}},
               "dvc_exp_run": "dvc exp run " + " ".join(f"-S {k}={v}" for k, v in overrides)}
    out = cfg.tune.report_dir
    write_trials(trials, out / TRIALS_FILE)
    plot_trials(client, trials, best, out / PLOT_FILE)
    write_json(out / BEST_FILE, summary)
    for key, value in best.values.items():
        client.log_param(parent_id, f"best.{key}", value)
    client.log_metric(parent_id, "best_val_loss", best.best_val_loss)
    client.set_tag(parent_id, "tune.best_trial", best.trial_id)
    client.set_tag(parent_id, "tune.best_run_id", best.run_id)
    for path in (out / BEST_FILE, out / TRIALS_FILE, out / PLOT_FILE):
        client.log_artifact(parent_id, str(path))
    client.set_terminated(parent_id, "FINISHED")
    log.info("tune: best trial %s (val_loss %.4f, %s) of %d %s -> %s; reproduce it in the pipeline: %s",
             best.trial_id, best.best_val_loss, best.values, len(trials), summary["statuses"],
             tuned.train.model_dir, summary["dvc_exp_run"])
    return summary


def write_trials(trials: list[Trial], path: Path) -> None:
    keys = sorted({k for t in trials for k in t.values})
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)  # best first
        writer.writerow(["trial_id", "status", "steps", "best_val_loss", *keys, "mlflow_run_id"])
        for t in sorted(trials, key=lambda t: t.best_val_loss if t.best_val_loss == t.best_val_loss else 1e9):
            writer.writerow([t.trial_id, t.status, t.steps, t.best_val_loss,
                             *(t.values.get(k) for k in keys), t.run_id])


def plot_trials(client, trials: list[Trial], best: Trial, path: Path) -> None:
    """Validation loss of every trial against steps: where ASHA cut, and the winner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for t in trials:
        if not t.run_id:
            continue
        history = sorted((m.step, m.value) for m in client.get_metric_history(t.run_id, "val_loss"))
        if not history:
            continue
        steps, values = zip(*history, strict=True)
        label = f"{t.trial_id} {t.status}" + (" (best)" if t is best else "")
        ax.plot(steps, values, lw=2.5 if t is best else 1, ls=":" if t.status == "stopped_by_asha" else "-",
                marker="o", ms=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.set_title(f"{len(trials)} trials (dotted: stopped by ASHA)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
