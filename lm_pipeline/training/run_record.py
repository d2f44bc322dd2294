"""What identifies a training run and what it records in MLflow: the digest that names its
checkpoint folder (so the same run resumes), the MLflow run an earlier attempt left, and the
params and tags (the system information among them) every run logs the same way (pipeline
runs, DVC experiments and Tune trials compare side by side)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path

from lm_pipeline import storage, tracking
from lm_pipeline.config import Config
from lm_pipeline.data.processed import ProcessedMeta
from lm_pipeline.io import read_json
from lm_pipeline.lineage import git_state
from lm_pipeline.model import parent as parents

log = logging.getLogger(__name__)
MLFLOW_RUN_FILE = "mlflow_run.json"  # in the Ray run folder: which MLflow run a resume continues
# What may differ between attempts of one run (none changes what it trains: run_digest), and
# the machine each ran on: logged as tags, which show the latest attempt's, since MLflow refuses
# to change a param (a resume after a torch upgrade, or on another host, failed before training).
ATTEMPT_SETTINGS = ("run_on", "max_failures", "checkpoints_to_keep", "model_dir", "curves_dir",
                    "max_minutes", "checkpoint_dir")


def attempt_tags(cfg: Config) -> dict[str, str]:
    return {f"train.{key}": str(getattr(cfg.train, key)) for key in ATTEMPT_SETTINGS} | system_info()


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
                 "val_tokens": meta.tokens["val"]}})


def run_tags(cfg: Config, meta: ProcessedMeta) -> dict[str, str]:
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


def run_digest(cfg: Config, meta: ProcessedMeta) -> str:
    """What makes two training runs the same run: model, training recipe and data.

    Where checkpoints go, how many failures to tolerate and where the loop runs (in this process
    or on Ray: the checkpoints are the same files) do not change the run.
    """
    operational = set(ATTEMPT_SETTINGS)
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
    run_id = read_json(record)["mlflow_run_id"]
    try:
        tracking.setup(cfg)
        mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":  # down, refused, unauthorized: not an answer
            raise RuntimeError(f"train: cannot tell whether MLflow run {run_id} exists at "
                               f"{tracking.shown_uri(cfg)} ({err.message}); the checkpoints in "
                               f"{run_dir} are kept: fix the tracking server and rerun") from None
        aside = f"{str(run_dir).rstrip('/')}.orphaned-{time.strftime('%Y%m%d-%H%M%S')}"
        log.warning("train: %s names MLflow run %s, which this store lacks; starting over (the old "
                    "checkpoints are kept in %s)", record, run_id, aside)
        storage.move(run_dir, aside)
        return None
    return run_id
