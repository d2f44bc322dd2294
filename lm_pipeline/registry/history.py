"""The champion's history: an append-only promotion log, and a lock around alias moves.

The log is one MLflow run per registered model (tag `lmp.promotion_log`), so it lives wherever
the registry lives. Every decision is one JSON artifact of its own in `promotion_log/` (named by
time, so they list in order): which version was champion before and after, why, and each gate's
value, threshold and result. Nothing is ever rewritten, so concurrent writers lose nothing and a
writer killed mid-upload spoils its own entry only (readers name it and skip it). Logs written
before this layout (`promotion_log.jsonl`) are still read, first.

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
import logging
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOG_DIR = "promotion_log"  # one JSON artifact per entry
LOG_FILE = "promotion_log.jsonl"  # the older layout: one file, rewritten on every append
LOG_TAG = "lmp.promotion_log"
log = logging.getLogger(__name__)


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
    """Every entry, oldest first; an unreadable one is named in a warning and skipped."""
    stored = {a.path for a in client.list_artifacts(run_id)}
    entries = []
    with tempfile.TemporaryDirectory() as tmp:
        if LOG_FILE in stored:  # the older single-file log
            text = Path(client.download_artifacts(run_id, LOG_FILE, tmp)).read_text(errors="replace")
            entries += parse_entries([(f"{LOG_FILE} line {n}", line)
                                      for n, line in enumerate(text.splitlines(), start=1)])
        if LOG_DIR in stored:
            folder = Path(client.download_artifacts(run_id, LOG_DIR, tmp))
            entries += parse_entries([(f.name, f.read_text(errors="replace"))
                                      for f in sorted(folder.glob("*.json"))])
    return entries


def parse_entries(named_texts: list[tuple[str, str]]) -> list[dict]:
    entries = []
    for name, text in named_texts:
        if not text.strip():
            continue
        try:
            entries.append(json.loads(text))
        except json.JSONDecodeError as err:
            log.warning("promotion log: entry %s skipped: not valid JSON (%s)", name, err)
    return entries


def append(client, run_id: str, entry: dict) -> list[dict]:
    """Add one entry as its own artifact (call under registry_lock); returns the whole log."""
    entry = entry | {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "user": getpass.getuser()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"  # sorts by time
        path.write_text(json.dumps(entry, sort_keys=True) + "\n")
        client.log_artifact(run_id, str(path), LOG_DIR)
    return read_log(client, run_id)
