"""Environment defaults of the pipeline's processes, in one place, applied at the entry points.

Ray, MLflow, Prefect and HF `evaluate` read these when they are imported or started, so `apply()`
runs first: in `lmp` (cli.main), in the flows (flows/__init__.py), and in the test session; Ray
workers get them through their runtime environment (`for_workers`). Nothing sets them as a side
effect of importing a module, and a user's own value always wins.
"""

from __future__ import annotations

import os

DEFAULTS = {
    # Offline and quiet: no telemetry, no downloads, no progress bars in logs.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "HF_HUB_OFFLINE": "1",  # metric modules load from the repository, never the Hub
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # the local server's telemetry tries the network
    # A temporary server's cold start migrates a new database: Prefect's 20 s ran out on a busy
    # 2-core CI machine (flows/temporary_server.py waits as long for its own).
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DVC_NO_ANALYTICS": "1",  # else every dvc command leaves a daemon process calling home
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "token",  # Ray's default, said explicitly (it warns otherwise)
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # The Train controller takes one report per poll (a worker's result queue holds one), so at
    # Ray's 2 s a loop that validates more often waits on every report; 0.5 s costs little.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",  # else every worker print reaches the driver twice
    "RAY_DEDUP_LOGS_SKIP_REGEX": r"Failed to query Ray Train Controller|Reporting training result",
    "RAY_DEDUP_LOGS_ALLOW_REGEX": r"\[rank \d+(/\d+)?\]",  # per-rank lines are not repeats
}


def apply() -> None:
    """Set every default the environment does not already set."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)


def for_workers() -> dict[str, str]:
    """The defaults as this process has them (a user's overrides included), for Ray workers."""
    return {key: os.environ.get(key, value) for key, value in DEFAULTS.items()}
