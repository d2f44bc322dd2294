"""Where the training loop runs, for the train stage and the search: on a Ray Train TorchTrainer,
or in this process for one worker without a cluster (runs_in_process). Both keep checkpoints in
Ray Train's layout in the same run folder, so either resumes the other."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lm_pipeline import storage, tracking
from lm_pipeline.cluster import init_ray, worker_env
from lm_pipeline.config import Config
from lm_pipeline.data import published
from lm_pipeline.training.checkpoints import RunCheckpoints, read_snapshot
from lm_pipeline.training.loop import train_loop, train_loop_per_worker
from lm_pipeline.training.session import LocalSession
from lm_pipeline.training.spec import worker_spec

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training failed on the workers; the message carries each failing rank's error."""


def shared_data(cfg: Config) -> str | None:
    """With data.shards_url, the processed data's URL in object storage (published now, once per
    content), from which workers on any node read it; else None: they read data.processed_dir."""
    return published.publish(cfg.data.processed_dir, cfg.data.shards_url) if cfg.data.shards_url else None


def train_on_ray(cfg: Config, run_id: str, checkpoints: str, name: str, shards_url: str | None,
                 callbacks: tuple = ()):
    """Run the loop on cfg.train.num_workers Ray Train workers; returns Ray's Result.

    The run's folder is `name` in `checkpoints` (an absolute path or an s3:// URL every worker
    reaches): the same folder resumes from its latest checkpoint. `shards_url` is shared_data's.
    `callbacks` are Ray Train callbacks (a Tune trial passes its reporter)."""
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    join_ray(cfg)
    read_snapshot(storage.join(checkpoints, name))  # refused before Ray reads it and deletes what it names
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=worker_spec(cfg, run_id, shards_url).to_dict(),
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cluster_has_gpus(cfg),
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=RunConfig(
            name=name,  # the same name resumes from the latest checkpoint in it
            storage_path=checkpoints,
            # The best checkpoints by validation loss are kept (and the latest, for resuming).
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.checkpoints_to_keep,
                                               checkpoint_score_attribute="val_loss",
                                               checkpoint_score_order="min"),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=list(callbacks),
            worker_runtime_env={"env_vars": worker_env() | tracking.client_env()},
        ),
    )
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as err:
        raise TrainingError(f"train: training failed: {worker_errors(err)}") from None


def runs_in_process(cfg: Config) -> bool:
    """train.run_on: auto keeps one DDP worker in this process unless a cluster is configured."""
    if cfg.train.run_on != "auto":
        return cfg.train.run_on == "local"
    return cfg.train.num_workers == 1 and cfg.train.strategy == "ddp" and not cfg.ray_address


@dataclass(frozen=True)
class LocalResult:
    """What the train stage reads of Ray's Result: the last report and the kept checkpoints."""

    metrics: dict
    best_checkpoints: list


def train_in_process(cfg: Config, run_id: str, checkpoints: str, name: str) -> LocalResult:
    """Run the loop here, as one worker: what train_on_ray does, without Ray. A failed attempt is
    retried up to train.max_failures times from the run's latest checkpoint, as Ray restarts a
    worker group; a killed process resumes the same way when `lmp train` runs again."""
    import torch

    if cfg.train.device == "cuda" and not torch.cuda.is_available():  # Ray would wait for a GPU for ever
        raise ValueError("train.device is cuda but this machine has no CUDA GPU: set device: auto or cpu, "
                         "or point ray.address (RAY_ADDRESS) at a cluster with GPUs")
    use_gpu = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    torch.set_num_threads(cfg.train.cpus_per_worker)  # what Ray gives a worker (OMP_NUM_THREADS)
    spec = worker_spec(cfg, run_id)
    run_dir, failures = storage.join(checkpoints, name), 0
    while True:
        session = LocalSession(RunCheckpoints(run_dir, cfg.train.checkpoints_to_keep), use_gpu)
        try:
            train_loop(spec, session)
            return LocalResult(session.last_metrics, session.checkpoints.best())
        except Exception as err:  # noqa: BLE001 (Ray retries any error of the loop the same way)
            failures += 1
            if failures > cfg.train.max_failures:
                raise TrainingError(f"train: training failed: rank 0: {type(err).__name__}: {err}") from err
            log.warning("train: the run failed (%s: %s); restart %d of %d from the latest checkpoint",
                        type(err).__name__, err, failures, cfg.train.max_failures)
        finally:
            session.close()
        release_memory()  # what a restarted Ray worker gets by being a new process


def release_memory() -> None:
    """The failed attempt's model and optimizer, held by its traceback's frames until collected."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def cluster_has_gpus(cfg: Config) -> bool:
    """Whether Ray Train's workers each take a GPU (train.device; auto: if the cluster has one for
    every worker, else they would wait for ever)."""
    import ray

    if cfg.train.device != "auto":
        return cfg.train.device == "cuda"
    return ray.cluster_resources().get("GPU", 0) >= cfg.train.num_workers


def join_ray(cfg: Config) -> None:
    """Join cfg's cluster, or start a local one that fits one training run."""
    init_ray(cfg.ray_address, cfg.train.num_workers * cfg.train.cpus_per_worker)


def worker_errors(err) -> str:
    failures = getattr(err, "worker_failures", None)
    if not failures:
        return str(err)
    return "; ".join(f"rank {rank}: {type(getattr(e, 'cause', None) or e).__name__}: "
                     f"{getattr(e, 'cause', None) or e}" for rank, e in sorted(failures.items()))
