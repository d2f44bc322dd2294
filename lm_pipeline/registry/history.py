"""The champion's history: an append-only promotion log, and a lock around alias moves.

The log is one MLflow run per registered model (tag `lmp.promotion_log`; the registered model
names it in its tag `lmp.promotion_log_run`), so it lives wherever the registry lives. Every
decision is one JSON artifact of its own in `promotion_log/` (numbered under the lock, one past
the last, so they list in the order written): which version was champion before and after, why,
and each gate's value, threshold and result. Nothing is ever rewritten, so concurrent writers lose
nothing and a writer killed mid-upload spoils its own entry only (readers name it and skip it).
Logs written before this layout (`promotion_log.jsonl`) are still read, first.

Deciding and moving `champion` happens under one exclusive lock per model name, so two
registrations cannot interleave their read-compare-move. With a Prefect server configured
(PREFECT_API_URL, from the environment or the Prefect profile) the lock is a global concurrency
limit of 1 on that server, so it serialises every process that talks to it: other machines, other
pods, `lmp promote`/`rollback`/`register --tuned` outside any flow. Its slot is a lease the holder
renews, so a killed holder frees it within a minute. Without a server it is a file lock beside a
local store (everyone who writes the store shares it), or, for a remote registry, in this user's
private folder, which serialises this user on this machine only (a warning says so).
"""

from __future__ import annotations

import errno
import fcntl
import getpass
import json
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from lm_pipeline import tracking
from lm_pipeline.io import private_dir

LOG_DIR = "promotion_log"  # one JSON artifact per entry
LOG_FILE = "promotion_log.jsonl"  # the older layout: one file, rewritten on every append
LOG_TAG = "lmp.promotion_log"  # on the log's run: the model it is the log of
LOG_RUN_TAG = "lmp.promotion_log_run"  # on the registered model: its log's run
log = logging.getLogger(__name__)


LEASE_SECONDS = 60  # the shortest lease Prefect grants; a dead holder frees the lock after it


def lock_name(model_name: str) -> str:
    """Keyed by the model name alone, so two spellings of one server URI share it; two registries
    with one model name merely wait for each other."""
    return "lmp-champion-" + re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)


@contextmanager
def registry_lock(tracking_uri: str, model_name: str) -> Iterator[None]:
    if prefect_api_url():
        with prefect_lock(lock_name(model_name)):
            yield
        return
    if not tracking_uri.startswith(("file:", "sqlite:")) and "://" in tracking_uri:
        log.warning("champion moves are serialised for this user on this machine only: set "
                    "PREFECT_API_URL to a Prefect server to serialise them across users and machines")
    with file_lock(lock_file(tracking_uri, model_name)):
        yield


def lock_file(tracking_uri: str, model_name: str) -> Path:
    """Beside a local store, so that whoever may write the store shares it and nobody else can make
    it first; for a server without Prefect, in this user's private folder (one machine, one user).
    Never in the shared temporary folder, where another user could block or redirect it."""
    name = f".{lock_name(model_name)}.lock"
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / name
    if tracking_uri.startswith("file:") or "://" not in tracking_uri:  # a folder store
        return Path(urlsplit(tracking_uri).path).resolve() / name
    return private_dir(Path(tempfile.gettempdir()) / f"lmp-{os.getuid()}") / name


def prefect_api_url() -> str | None:
    """The Prefect server configured for every process (the environment, the Prefect profile), not
    a temporary server this process set for itself (`lmp ct`'s): the lock must be the one that the
    stages, `lmp promote` and other machines take."""
    from prefect.settings import Settings  # only here: importing Prefect takes ~2 s

    return Settings().api.url


@contextmanager
def prefect_lock(name: str) -> Iterator[None]:
    """A global concurrency limit of one slot on the Prefect server, created on first use."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:  # another process created it first
                pass
    # strict: a limit that vanished must fail the move, not let it through unserialised
    with concurrency(name, occupy=1, strict=True, lease_duration=LEASE_SECONDS):
        yield


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    try:  # O_NOFOLLOW: a link planted at the path is refused, not followed
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        raise OSError(f"{path}: a symbolic link; refusing to lock through it (remove it)") from None
    with open(fd, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, even if the process dies
        yield


def log_run_id(client, experiment_id: str, model_name: str) -> str:
    """The run that holds this model's log: the one the registered model names (tag
    lmp.promotion_log_run, set when the log is started: a model's name is the registry's, not an
    experiment's), else the one in `experiment_id` (a log started before the tag), else a new one
    there. Call under registry_lock, so that two first writers do not start two."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(model_name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        model = None  # nothing registered under the name yet: its log is found by experiment
    if model is not None and model.tags.get(LOG_RUN_TAG):
        return model.tags[LOG_RUN_TAG]
    runs = client.search_runs([experiment_id], order_by=["attributes.start_time ASC"],
                              filter_string=f"tags.`{LOG_TAG}` = {tracking.filter_literal(model_name)}")
    if runs:
        run_id = runs[0].info.run_id
    else:
        run = client.create_run(experiment_id, run_name=f"promotion-log-{model_name}",
                                tags={LOG_TAG: model_name})
        client.set_terminated(run.info.run_id)
        run_id = run.info.run_id
    if model is not None:
        client.set_registered_model_tag(model_name, LOG_RUN_TAG, run_id)
    return run_id


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


def champions(entries: list[dict]) -> tuple[list[str], set[str]]:
    """The versions that took over as champion, in order, and those rolled back from since they
    last took over. A rollback's own move is no taking over: counting it would make the version
    just rolled back from the one "before" the current champion."""
    order, rolled_back = [], set()
    for e in entries:
        before, after = e["champion_before"], e["champion_after"]
        if before == after:  # a registration that left the champion where it was
            continue
        if e["action"] == "rollback":
            rolled_back.add(before)
            rolled_back.discard(after)  # put back by hand (`rollback --to`): trusted again
            continue
        if before is not None and (not order or order[-1] != before):  # by a rollback, or before the log
            order.append(before)
        order.append(after)
        rolled_back.discard(after)  # promoted again: trusted again
    return order, rolled_back


def append(client, run_id: str, entry: dict) -> list[dict]:
    """Add one entry as its own artifact (call under registry_lock); returns the whole log."""
    entry = entry | {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "user": getpass.getuser()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{next_number(client, run_id):020d}-{uuid.uuid4().hex[:8]}.json"
        path.write_text(json.dumps(entry, sort_keys=True) + "\n")
        client.log_artifact(run_id, str(path), LOG_DIR)
    return read_log(client, run_id)


def next_number(client, run_id: str) -> int:
    """One past the last entry's number: under the lock, entries sort in the order they were
    written, whatever the writers' clocks say (they were named by the clock, and a machine whose
    clock is behind wrote entries that sorted before earlier ones). Past the clock's nanoseconds,
    so it sorts after entries named that way."""
    numbers = [int(m.group(1)) for info in client.list_artifacts(run_id, LOG_DIR)
               if (m := re.fullmatch(r"(\d{20})-[0-9a-f]{8}\.json", Path(info.path).name))]
    return max([*numbers, time.time_ns()]) + 1
