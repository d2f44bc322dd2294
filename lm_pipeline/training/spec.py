"""What every training worker is told, built in one place: the run's config made portable (absolute
paths, the resolved MLflow store), its MLflow run, and how it reads its data."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from lm_pipeline import tracking
from lm_pipeline.config import Config


@dataclass(frozen=True)
class WorkerSpec:
    config: dict  # portable_config(cfg): what Config.model_validate rebuilds on the worker
    mlflow_run_id: str | None  # rank 0 logs to it; None logs nothing
    progress_bar: bool  # a terminal watches: rank 0 draws a bar
    fine_tune: bool  # start from the parent pinned with the data
    shards_url: str | None = None  # read the data from object storage (runners.shared_data)

    def to_dict(self) -> dict:
        """As Ray Train passes it to train_loop_per_worker (train_loop_config)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WorkerSpec:
        return cls(**data)


def worker_spec(cfg: Config, run_id: str | None, shards_url: str | None = None) -> WorkerSpec:
    return WorkerSpec(portable_config(cfg), run_id, progress_bar=sys.stderr.isatty(),
                      fine_tune=bool(cfg.train.init_from), shards_url=shards_url)


def portable_config(cfg: Config) -> dict:
    """cfg for processes that run in other folders (or nodes): Ray workers and Tune trials get
    absolute processed-data and hf_config paths and the resolved MLflow store."""
    data = cfg.model_dump(mode="json", by_alias=True)
    data["data"]["processed_dir"] = str(cfg.data.processed_dir.resolve())
    if isinstance(cfg.model.hf_config, str):  # a folder holding config.json
        data["model"]["hf_config"] = str(Path(cfg.model.hf_config).expanduser().resolve())
    data["mlflow"]["tracking_uri"] = tracking.shown_uri(cfg)  # workers take credentials from their env
    return data
