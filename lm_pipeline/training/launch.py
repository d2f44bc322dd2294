"""Where the training loop runs, for the train stage and the search: on a Ray Train TorchTrainer,
or in this process for one worker without a cluster (runs_in_process); the fine-tuning parent's
checks, and what every training run logs to MLflow.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from lm_pipeline import storage, tracking
from lm_pipeline.cluster import init_ray, worker_env
from lm_pipeline.config import Config
from lm_pipeline.data import published
from lm_pipeline.data.processed import ProcessedMeta
from lm_pipeline.model import parent as parents
from lm_pipeline.model.hf_format import gpt_config

log = logging.getLogger(__name__)
ARCHITECTURE = ("n_layer", "n_head", "n_embd", "block_size")  # what fine-tuning cannot change


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

    from lm_pipeline.training.loop import train_loop_per_worker

    join_ray(cfg)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": portable_config(cfg),
            "mlflow_run_id": run_id,
            "progress_bar": sys.stderr.isatty(),
            "fine_tune": bool(cfg.train.init_from),
            "shards_url": shards_url,
        },
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
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

    from lm_pipeline.training.checkpoints import RunCheckpoints
    from lm_pipeline.training.loop import train_loop
    from lm_pipeline.training.session import LocalSession

    if cfg.train.use_gpu and not torch.cuda.is_available():  # Ray would wait for a GPU for ever
        raise ValueError("train.use_gpu is true but this machine has no CUDA GPU: set use_gpu: false, "
                         "or point ray.address (RAY_ADDRESS) at a cluster with GPUs")
    torch.set_num_threads(cfg.train.cpus_per_worker)  # what Ray gives a worker (OMP_NUM_THREADS)
    loop_config = {"config": portable_config(cfg), "mlflow_run_id": run_id,
                   "progress_bar": sys.stderr.isatty(), "fine_tune": bool(cfg.train.init_from)}
    run_dir, failures = storage.join(checkpoints, name), 0
    while True:
        session = LocalSession(RunCheckpoints(run_dir, cfg.train.checkpoints_to_keep), cfg.train.use_gpu)
        try:
            train_loop(loop_config, session)
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


def join_ray(cfg: Config) -> None:
    """Join cfg's cluster, or start a local one that fits one training run."""
    init_ray(cfg.ray_address, cfg.train.num_workers * cfg.train.cpus_per_worker)


def worker_errors(err) -> str:
    failures = getattr(err, "worker_failures", None)
    if not failures:
        return str(err)
    return "; ".join(f"rank {rank}: {type(getattr(e, 'cause', None) or e).__name__}: "
                     f"{getattr(e, 'cause', None) or e}" for rank, e in sorted(failures.items()))


def portable_config(cfg: Config) -> dict:
    """cfg for processes that run in other folders (or nodes): Ray workers and Tune trials get
    absolute processed-data and hf_config paths and the resolved MLflow store."""
    data = cfg.model_dump(mode="json", by_alias=True)
    data["data"]["processed_dir"] = str(cfg.data.processed_dir.resolve())
    if isinstance(cfg.model.hf_config, str):  # a folder holding config.json
        data["model"]["hf_config"] = str(Path(cfg.model.hf_config).expanduser().resolve())
    data["mlflow"]["tracking_uri"] = tracking.tracking_uri(cfg)
    return data


def check_parent(cfg: Config, meta: ProcessedMeta) -> None:
    """train.init_from and the data must agree: preprocess pinned the parent the run starts from,
    and the model section must describe it (fine-tuning keeps the parent's shape)."""
    record, parent_config = parents.load(cfg.data.processed_dir)
    if bool(cfg.train.init_from) != bool(record) or (record and record["init_from"] != cfg.train.init_from):
        raise parents.ParentError(
            f"train.init_from is {cfg.train.init_from!r} but {cfg.data.processed_dir} was preprocessed "
            f"for {record['init_from'] if record else None!r}: run `lmp preprocess` (or `dvc repro`) first")
    if not record:
        return
    if record.get("backend", "gpt") != cfg.model.backend:  # parents pinned before backends: gpt
        backend = record.get("backend", "gpt")
        raise parents.ParentError(f"train.init_from {parents.describe(record)} is a {backend} model but "
                                  f"model.backend is {cfg.model.backend}: set model.backend: {backend}")
    if cfg.model.backend == "hf":  # the parent's config.json is the architecture
        log.info("train: fine-tuning %s (weights %s...)", parents.describe(record),
                 record["weights_sha256"][:12])
        return
    shape = gpt_config(parent_config).to_dict()  # either config.json layout
    wrong = [f"model.{key} is {getattr(cfg.model, key)} but the parent has {shape[key]}"
             for key in ARCHITECTURE if getattr(cfg.model, key) != shape[key]]
    if wrong:
        raise parents.ParentError(
            f"train.init_from {parents.describe(record)}: {'; '.join(wrong)}. Fine-tuning keeps the "
            "parent's architecture: set these in params.yaml, or drop init_from")
    log.info("train: fine-tuning %s (weights %s...) with a fresh optimizer and LR schedule",
             parents.describe(record), record["weights_sha256"][:12])


def check_data_fits(cfg: Config, meta: ProcessedMeta) -> None:
    """Every training and validation batch is windows of block_size + 1 tokens: a shorter split
    would fail inside a Ray worker, so it is refused here, naming the split and the key."""
    for split in ("train", "val"):
        if meta.tokens[split] <= cfg.model.block_size:
            raise ValueError(f"train: the {split} split has {meta.tokens[split]} tokens: fewer than "
                             f"model.block_size + 1 ({cfg.model.block_size + 1}); lower model.block_size, "
                             "or add documents (or raise split fractions)")


# What may differ between attempts of one run (none changes what it trains: trainer.run_digest):
# logged as tags, which show the latest attempt's, since MLflow refuses to change a param.
ATTEMPT_SETTINGS = ("run_on", "max_failures", "checkpoints_to_keep", "model_dir", "curves_dir")


def attempt_tags(cfg: Config) -> dict[str, str]:
    return {f"train.{key}": str(getattr(cfg.train, key)) for key in ATTEMPT_SETTINGS}


def run_params(cfg: Config, meta: ProcessedMeta) -> dict:
    """What a training run logs as params: the same keys for pipeline runs, DVC experiments and
    Tune trials, so the MLflow UI compares them side by side. The data and its tokenizer are
    described by what preprocess made (meta; a fine-tune reuses its parent's tokenizer), not by
    params.yaml, which this stage does not read."""
    return tracking.flatten("", {
        "model": cfg.model.model_dump(), "lora": cfg.lora.model_dump(),
        "train": cfg.train.model_dump(mode="json", exclude=set(ATTEMPT_SETTINGS)),
        "tokenizer": {"kind": meta.tokenizer_kind},
        "data": {"source": meta.source, "vocab_size": meta.vocab_size, "train_tokens": meta.tokens["train"],
                 "val_tokens": meta.tokens["val"]}}) | system_info()


def run_tags(cfg: Config, meta: ProcessedMeta) -> dict[str, str]:
    from lm_pipeline.lineage import git_state

    parent = meta.parent or {}
    commit, dirty = git_state()
    return {"pipeline.stage": "train", "git_commit": commit, "git_dirty": str(dirty).lower(),
            "data.tokenizer_sha256": meta.tokenizer_sha256,
            tracking.FLOW_RUN_TAG: tracking.flow_run_id(),
            "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),  # set by `dvc exp run`
            **({"parent.model": parents.describe(parent), "parent.run_id": parent.get("run_id") or "",
                "parent.weights_sha256": parent["weights_sha256"]} if parent else {})}


def system_info() -> dict[str, str]:
    from importlib.metadata import version  # not `import ray`: an in-process run never needs it

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"system.python": platform.python_version(), "system.torch": torch.__version__,
            "system.ray": version("ray"), "system.platform": platform.platform(),
            "system.cpu_count": str(os.cpu_count()), "system.gpu": gpu}
