"""The champion's history: an append-only promotion log, and a lock around alias moves.

The log is a JSONL artifact of one MLflow run per registered model (tag `lmp.promotion_log`), so
it lives wherever the registry lives. Every decision appends a line: which version was champion
before and after, why, and each gate's value, threshold and result. Nothing is ever rewritten.

Deciding and moving `champion` happens under an exclusive file lock, so two pipeline runs
registering at once on this machine cannot interleave their read-compare-move. (Runs on
different machines sharing one registry are serialized by the flow's deployment concurrency
limit instead.)
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOG_FILE = "promotion_log.jsonl"
LOG_TAG = "lmp.promotion_log"


@contextmanager
def registry_lock(tracking_uri: str, model_name: str) -> Iterator[None]:
    key = hashlib.sha256(f"{tracking_uri}\0{model_name}".encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"lm-pipeline-registry-{key}.lock"
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, even if the process dies
        yield


def log_run_id(client, experiment_id: str, model_name: str) -> str:
    """The run that holds this model's log, created on first use."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{LOG_TAG}` = '{model_name}'")
    if runs:
        return runs[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"promotion-log-{model_name}",
                            tags={LOG_TAG: model_name})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def read_log(client, run_id: str) -> list[dict]:
    if not any(a.path == LOG_FILE for a in client.list_artifacts(run_id)):
        return []
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(client.download_artifacts(run_id, LOG_FILE, tmp)).read_text()
    return [json.loads(line) for line in text.splitlines() if line]


def append(client, run_id: str, entry: dict) -> list[dict]:
    """Append one entry (call under registry_lock); returns the whole log."""
    entries = read_log(client, run_id) + [entry | {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                   "user": getpass.getuser()}]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / LOG_FILE
        path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
        client.log_artifact(run_id, str(path))
    return entries
