"""A run's checkpoints, kept by this process in the layout Ray Train V2 keeps them in.

    <run folder>/checkpoint_<YYYY-mm-dd_HH-MM-SS.ffffff>/   one checkpoint (see state.py)
    <run folder>/checkpoint_manager_snapshot.json          which of them count, with their metrics

The in-process runner (session.LocalSession) writes through this; Ray Train writes the same files
itself. So a run started in one process continues on a Ray cluster and the other way round, and
the export reads either alike. The snapshot is the commit point: a checkpoint folder it does not
list (a copy cut short by a kill) is never read.

Which are kept is Ray's rule: the `keep` lowest val_loss, and always the latest (to resume).
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

from lm_pipeline import storage
from lm_pipeline.io import filesystem, is_url, read_json, write_json

log = logging.getLogger(__name__)
SNAPSHOT = "checkpoint_manager_snapshot.json"
SCORE = "val_loss"
CHECKPOINT_NAME = re.compile(r"checkpoint_[\w.-]+")


@dataclass(frozen=True)
class StoredCheckpoint:
    """One checkpoint folder, local or in a bucket; `as_directory` gives it as a local folder."""

    path: str

    @contextmanager
    def as_directory(self) -> Iterator[Path]:
        if not is_url(self.path):
            yield Path(self.path)
            return
        fs, remote = filesystem(self.path)
        with tempfile.TemporaryDirectory(prefix="lmp-ckpt-") as tmp:
            for key, info in fs.find(remote, detail=True).items():  # checkpoint folders are flat
                if info["type"] == "file" and not key.endswith("/"):  # not a folder marker Ray left
                    fs.get_file(key, str(Path(tmp) / Path(key).name))
            yield Path(tmp)


class RunCheckpoints:
    def __init__(self, run_dir: str, keep: int):
        self.run_dir, self.keep = run_dir, keep
        state = read_snapshot(run_dir)
        self.results: list[dict] = state.get("checkpoint_results", [])  # {checkpoint_dir_name, metrics}
        self.indices: list[int] = state.get("checkpoint_report_indices", [])
        self.latest_result: dict | None = state.get("latest_checkpoint_result")
        self.reports: int = state.get("current_report_index", 0)

    def latest(self) -> StoredCheckpoint | None:
        return self.checkpoint(self.latest_result) if self.latest_result else None

    def best(self) -> list[tuple[StoredCheckpoint, dict]]:
        return [(self.checkpoint(r), r["metrics"]) for r in self.results]

    def checkpoint(self, result: dict) -> StoredCheckpoint:
        return StoredCheckpoint(storage.join(self.run_dir, result["checkpoint_dir_name"]))

    def count_report(self) -> None:
        """A report without a checkpoint (Ray numbers every report; the snapshot keeps the count)."""
        self.reports += 1

    def add(self, folder: Path, metrics: dict) -> None:
        """Copy a finished checkpoint folder in, commit it in the snapshot, then drop the ones
        the rule no longer keeps."""
        name = f"checkpoint_{datetime.now():%Y-%m-%d_%H-%M-%S.%f}"
        copy_folder(Path(folder), storage.join(self.run_dir, name))
        result = {"version": 0, "checkpoint_dir_name": name, "metrics": metrics}
        self.results.append(result)
        self.indices.append(self.reports)
        self.latest_result = result
        self.reports += 1
        dropped = self.prune()
        self.write_snapshot()
        for old in dropped:
            remove_folder(storage.join(self.run_dir, old["checkpoint_dir_name"]))

    def prune(self) -> list[dict]:
        """Keep Ray's order too: worst first by val_loss (NaN worst; a later report wins a tie)."""
        paired = sorted(zip(self.results, self.indices, strict=True), key=lambda ri: (goodness(ri[0]), ri[1]))
        latest = self.latest_result["checkpoint_dir_name"]
        kept = [ri for n, ri in enumerate(paired)
                if n >= len(paired) - self.keep or ri[0]["checkpoint_dir_name"] == latest]
        self.results, self.indices = [r for r, _ in kept], [i for _, i in kept]
        return [r for r, i in paired if (r, i) not in kept]

    def write_snapshot(self) -> None:
        write_json(storage.join(self.run_dir, SNAPSHOT), {
            "ray_version": version("ray"), "checkpoint_results": self.results,
            "checkpoint_report_indices": self.indices, "latest_checkpoint_result": self.latest_result,
            "pending_training_results": [], "pending_validation_specs": [],
            "current_report_index": self.reports, "validated_checkpoint_dir_names": [],
            "timed_out_validation_checkpoint_dir_names": [], "failed_validation_checkpoint_dir_names": []})


def read_snapshot(run_dir: str) -> dict:
    """The run's snapshot ({} before its first checkpoint). Its folder names are joined to the run
    folder and dropped ones deleted (by us or by Ray): one that is not a plain `checkpoint_<time>`
    name (`../victim`) would reach outside it, so it is refused."""
    snapshot = storage.join(run_dir, SNAPSHOT)
    state = read_json(snapshot) if storage.exists(snapshot) else {}
    latest = state.get("latest_checkpoint_result")
    for result in [*state.get("checkpoint_results", []), *([latest] if latest else [])]:
        name = result.get("checkpoint_dir_name")
        if not isinstance(name, str) or not CHECKPOINT_NAME.fullmatch(name):
            raise ValueError(f"{snapshot}: checkpoint_dir_name {name!r} is not a checkpoint folder's name "
                             "(checkpoint_<time>); refusing to read or delete it")
    return state


def goodness(result: dict) -> tuple[bool, float]:
    """Ray's ranking for a minimized score: a NaN (or missing) val_loss below every number."""
    score = result["metrics"].get(SCORE, math.nan)
    return (not math.isnan(score), -score if not math.isnan(score) else 0.0)


def copy_folder(source: Path, target: str) -> None:
    """A local target is copied under a temporary name and renamed (whole or absent); in a
    bucket the files are uploaded one by one, and only the snapshot written after makes it count.
    A copy that fails is removed (best effort), so a retried attempt leaves no half checkpoints."""
    if is_url(target):
        fs, remote = filesystem(target)
        try:
            for file in sorted(source.iterdir()):
                fs.put_file(str(file), f"{remote}/{file.name}")
        except BaseException:
            remove_folder(target)
            raise
        return
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        shutil.copytree(source, partial, dirs_exist_ok=True)
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def remove_folder(location: str) -> None:
    """A checkpoint the rule dropped; failing to delete it (a bucket that refuses) costs space, not
    the run, so it is logged, as Ray does."""
    try:
        if is_url(location):
            fs, remote = filesystem(location)
            fs.rm(remote, recursive=True)
        else:
            shutil.rmtree(location)
    except OSError as err:
        log.warning("could not delete the dropped checkpoint %s: %s", location, err)
