"""MLflow helpers: one MLflow run per pipeline run, artifacts in the project.

The train stage opens the run and records its id next to the model (models/model/run.json);
evaluate and register attach to that same run, so params, curves, metrics and the registered
model all sit on one run. Only rank 0 of the training workers logs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from lm_pipeline.config import Config, ConfigError
from lm_pipeline.io import without_credentials

# The Prefect flow run a stage ran in: the flow passes it to its stages' processes, and the tag
# names it the same way on training runs and on registered versions.
FLOW_RUN_ENV = "LMP_FLOW_RUN_ID"
FLOW_RUN_TAG = "prefect.flow_run_id"


def flow_run_id() -> str:
    return os.environ.get(FLOW_RUN_ENV, "")


def tracking_uri(cfg: Config) -> str:
    """The configured URI with a relative sqlite path made absolute (workers run elsewhere)."""
    uri = cfg.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def existing_store_uri(cfg: Config) -> str:
    """tracking_uri, for reading what was tracked and registered: a local SQLite store must be
    there (MLflow would create an empty one, folders included, and say only that a version was
    not found)."""
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"mlflow.tracking_uri {uri}: no MLflow store there (nothing was tracked in it "
                          "yet, or the path is mistyped; MLFLOW_TRACKING_URI overrides the setting)")
    return uri


def with_own_credentials(uri: str) -> str:
    """`uri`, handed over without credentials, with those of this process's MLFLOW_TRACKING_URI
    when that names the same server (else MLFLOW_TRACKING_USERNAME and _PASSWORD apply, if set)."""
    own = os.environ.get("MLFLOW_TRACKING_URI", "")
    return own if own and without_credentials(own) == uri else uri


def shown_uri(cfg: Config) -> str:
    """The store's URI as logs, records and other processes' configs may hold it: no credentials."""
    return without_credentials(tracking_uri(cfg))


def filter_literal(value: str) -> str:
    """`value` as a string literal of an MLflow search filter (`tags.k = {literal}`). MLflow's
    grammar has no escapes: it strips a literal's outer quotes and keeps the rest, so a value is
    wrapped in the quote it lacks, and one holding both kinds, or ending in a backslash (which
    would escape the closing quote), cannot be written and is refused."""
    for quote in ("'", '"'):
        if quote not in value and not value.endswith("\\"):
            return f"{quote}{value}{quote}"
    raise ValueError(f"{value!r} cannot be searched for in MLflow: a filter value may hold single or "
                     "double quotes but not both, and may not end in a backslash")


SECRET_SETTINGS = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def client_env() -> dict[str, str]:
    """The MLflow client settings of this process, for training workers that may run on other
    nodes, without its secrets: a Ray runtime env is logged and served by Ray's dashboard. Local
    workers inherit them from this process; a cluster's nodes (only rank 0 logs) get them from
    their own environment or a mounted secret, never from params."""
    env = {k: v for k, v in os.environ.items()
           if k.startswith("MLFLOW_TRACKING_") and k not in SECRET_SETTINGS}
    uri = env.get("MLFLOW_TRACKING_URI", "")
    if without_credentials(uri) != uri:  # workers on this node inherit it; other nodes set their own
        del env["MLFLOW_TRACKING_URI"]
    return env


def setup(cfg: Config, existing: bool = False) -> str:
    """Point MLflow at the store and experiment; return the experiment id. `existing`: the store
    must be there already (existing_store_uri)."""
    import mlflow

    uri = existing_store_uri(cfg) if existing else tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    if without_credentials(uri) != uri:  # MLflow prints "View run ... at <uri>", password included
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    experiment = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is not None:
        return experiment.experiment_id
    # A local store keeps artifacts beside the database, not in ./mlruns of whoever ran first.
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    try:
        return mlflow.create_experiment(cfg.mlflow.experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return mlflow.get_experiment_by_name(cfg.mlflow.experiment).experiment_id


def start_run(cfg: Config, run_name: str, tags: dict[str, str]) -> str:
    import mlflow

    experiment_id = setup(cfg)
    run = mlflow.MlflowClient().create_run(experiment_id, run_name=run_name, tags=tags)
    return run.info.run_id


class MetricLogger:
    """Streams step metrics to an existing run (used on training rank 0).

    Metrics are sent in batches at most once per `interval` seconds: the run stays live in the
    UI while a local SQLite store sees few writes.
    """

    def __init__(self, uri: str, run_id: str, interval: float = 2.0):
        from mlflow import MlflowClient

        self.client, self.run_id, self.interval = MlflowClient(uri), run_id, interval
        self.pending, self.last_flush, self.logged_through = [], time.monotonic(), -1

    def last_step(self, key: str) -> int:
        """The highest step already logged for `key` (-1 if none)."""
        return max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=-1)

    def skip_through(self, step: int) -> None:
        """Drop metrics of steps up to `step`: a resumed run redoes steps a killed one logged."""
        self.logged_through = step

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if step <= self.logged_through:
            return
        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if time.monotonic() - self.last_flush >= self.interval:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.pending), 1000):  # MLflow's per-request limit
            self.client.log_batch(self.run_id, metrics=self.pending[i:i + 1000])
        self.pending, self.last_flush = [], time.monotonic()


def flatten(prefix: str, data: dict) -> dict:
    """{'a': {'b': 1}} -> {'prefix.a.b': 1}, for logging nested config as params."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(name, value))
        else:
            out[name] = value
    return out
