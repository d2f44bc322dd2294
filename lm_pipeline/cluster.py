"""Joining the Ray cluster: one place for the train stage, the search and preprocessing on Ray Data."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lm_pipeline import env

log = logging.getLogger(__name__)


def init_ray(address: str | None, cpus: int) -> None:
    """Join the cluster at `address`, or start a local one with at least `cpus` CPUs."""
    import ray

    if ray.is_initialized():
        return
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
             num_cpus=None if address else max(os.cpu_count() or 1, cpus))
    log.info("Ray %s with %s CPUs", address or "local instance", ray.cluster_resources().get("CPU"))


def worker_env(**extra: str) -> dict[str, str]:
    """Environment of the pipeline's Ray workers: our defaults and this checkout on the path."""
    return env.for_workers() | {"PYTHONPATH": project_pythonpath()} | extra


def project_pythonpath() -> str:
    root = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
