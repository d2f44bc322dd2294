"""Drops of new documents under ct.watch, and the ledger of those already taken.

A drop is a folder (or object-storage prefix) directly under the watched location. It is taken
only once complete: when it holds a `_SUCCESS` marker (written last, as Spark and Hadoop jobs
do), or a `manifest.json` listing each file with its sha256, all present and matching (a drop
still uploading does not match). A drop is known by the digest of its files' contents, not by
any name, so the same documents renamed or moved are not taken twice.

The ledger (ct.state_dir/drops.json) records a drop when a cycle claims it, the steps the cycle
reaches (flows/continuous.py: retraining, verdict) and its outcome when it ends: a watcher killed
mid-cycle finds the claimed drop unfinished and takes it up again, before newer drops, from the
last step recorded. The watcher's announcements (ct.state_dir/announced.json) and its memory of
file digests (digests.json) are files of their own: the watcher and a cycle run at once, and each
file has one writer.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from lm_pipeline.data.sources.files import SUPPORTED_SUFFIXES
from lm_pipeline.io import filesystem, is_url, read_json, write_json
from lm_pipeline.text import terminal_safe

MARKER = "_SUCCESS"
MANIFEST = "manifest.json"
LEDGER_FILE = "drops.json"
ANNOUNCED_FILE = "announced.json"
DIGESTS_FILE = "digests.json"


@dataclass(frozen=True)
class Drop:
    name: str  # the folder's name, for people (see drop_name): the digest is what identifies it
    url: str  # what ingest reads (a local path or s3://...)
    digest: str  # sha256 over the sorted sha256 digests of its corpus files
    files: int


def find_drops(watch: str, digests: FileDigests | None = None) -> tuple[list[Drop], list[str]]:
    """The complete drops under `watch` in name order, and the names of those not complete yet
    (a missing watch folder is no drops, not an error: nothing has arrived). `digests`: the
    watcher's memory of the files it has read; without it, every file is read."""
    fs, root = filesystem(watch)
    digests = digests or FileDigests(None)
    if not fs.exists(root):
        return [], []
    complete, waiting = [], []
    for path in sorted(p for p in fs.ls(root, detail=False) if fs.isdir(p)):
        if not is_url(watch) and Path(path).is_symlink():
            waiting.append(f"{drop_name(path)} (a symlink: not followed)")
            continue  # a link would bring in a folder from anywhere on this machine
        drop = read_drop(fs, path, fs.unstrip_protocol(path) if is_url(watch) else path, digests)
        if drop is None:
            waiting.append(drop_name(path))
        else:
            complete.append(drop)
    return complete, waiting


def read_drop(fs, path: str, url: str, digests: FileDigests) -> Drop | None:
    """The drop at `path` (read by ingest as `url`), or None while it is incomplete."""
    infos = fs.find(path, detail=True)
    names = {PurePosixPath(p).relative_to(path).as_posix(): p for p in infos}
    corpus = {name: p for name, p in names.items() if PurePosixPath(name).suffix in SUPPORTED_SUFFIXES}
    if not corpus or (MARKER not in names and MANIFEST not in names):
        return None
    files = {name: digests.sha256(fs, p, infos[p]) for name, p in corpus.items()}
    if MANIFEST in names and not manifest_matches(fs, names[MANIFEST], files):
        return None
    digest = hashlib.sha256("\n".join(sorted(files.values())).encode()).hexdigest()
    return Drop(drop_name(path), url, digest, len(corpus))


def links_leaving(url: str) -> list[str]:
    """The links in a local drop that lead outside it, relative to it (a bucket prefix has none).
    Whatever a copy of the drop follows them to would be archived and pushed with it."""
    if is_url(url):
        return []
    root, leaving = Path(url).resolve(), []
    for folder, dirs, files in os.walk(url):  # links to folders are listed, not walked into
        for name in dirs + files:
            path = Path(folder, name)
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                leaving.append(path.relative_to(url).as_posix())
    return sorted(leaving)


def drop_name(path: str) -> str:
    """The folder's name as logs, summaries, tags and the Prefect UI show it: whoever writes drops
    names them, so its control characters are escaped (no escape sequence reaches a terminal)."""
    return terminal_safe(PurePosixPath(path).name, one_line=True)


def manifest_matches(fs, manifest_path: str, digests: dict[str, str]) -> bool:
    """Every file the manifest lists is there with its digest (files it does not list are not
    part of the drop yet: a drop must list all of its corpus files)."""
    try:
        with fs.open(manifest_path, "rb") as f:
            listed = json.load(f).get("files", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, OSError):
        return False  # a manifest still being written, or gone
    return bool(listed) and listed == digests


def file_sha256(fs, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class FileDigests:
    """The watcher's memory of corpus files' sha256, by path, size and modification time (an
    object's ETag in a bucket): each run reads only the files new or changed since the last, not
    every drop ever made. With no state folder it remembers nothing (a cycle reads every file of
    what it takes: the memory only decides what the watcher announces)."""

    def __init__(self, state_dir: Path | None):
        self.path = Path(state_dir) / DIGESTS_FILE if state_dir else None
        self.known: dict[str, list[str]] = read_json(self.path) if self.path and self.path.is_file() else {}
        self.seen: dict[str, list[str]] = {}

    def sha256(self, fs, path: str, info: dict) -> str:
        stamp = file_stamp(info)
        remembered = self.known.get(path)
        digest = remembered[1] if stamp and remembered and remembered[0] == stamp else file_sha256(fs, path)
        if stamp:
            self.seen[path] = [stamp, digest]
        return digest

    def save(self) -> None:
        """What this run saw: files gone since the last are forgotten."""
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, self.seen)


def file_stamp(info: dict) -> str | None:
    """What changes when a file's content does, from fsspec's listing: its size with a local
    file's modification time, or an object's ETag; None when the listing has neither."""
    changed = info.get("mtime") or info.get("ETag")
    return None if changed is None else f"{info.get('size')}:{changed}"


class Ledger:
    """Which drops were claimed and how each cycle ended, by digest."""

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / LEDGER_FILE
        self.entries: dict[str, dict] = read_json(self.path) if self.path.is_file() else {}

    def pending(self, drops: list[Drop]) -> list[Drop]:
        """Drops never claimed, or claimed by a cycle that did not finish; each digest once, those
        claimed first (in `drops`' order otherwise): the drops after an interrupted cycle were to
        start from its champion and join the corpus after it."""
        seen, out = set(), []
        for drop in drops:
            if drop.digest not in seen and "outcome" not in self.entries.get(drop.digest, {}):
                out.append(drop)
            seen.add(drop.digest)
        return sorted(out, key=lambda drop: drop.digest not in self.entries)

    def claims(self, drop: Drop) -> int:
        """How many cycles have claimed the drop and died without an error (see release)."""
        return self.entries.get(drop.digest, {}).get("claims", 0)

    def promoted(self) -> list[dict]:
        """The entries of the drops promoted so far, in the order they were promoted (the order
        their documents joined the corpus; a drop claimed early may be promoted late)."""
        return sorted((e for e in self.entries.values() if e.get("outcome") == "promoted"),
                      key=lambda e: e["finished_at"])

    def claim(self, drop: Drop) -> None:
        entry = self.entries.setdefault(drop.digest, {"name": drop.name, "url": drop.url})
        entry["claimed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        entry["claims"] = entry.get("claims", 0) + 1
        self.save()

    def release(self, drop: Drop) -> None:
        """The claim ended in an error or an interrupt this process saw (its run says which): it
        does not count as a death. The drop stays pending, from the steps recorded."""
        self.entries[drop.digest]["claims"] -= 1
        self.save()

    def record(self, drop: Drop, **details) -> None:
        """What a claimed cycle has done so far, kept if it is taken up again."""
        self.entries[drop.digest] |= details
        self.save()

    def step(self, drop: Drop, name: str) -> Any:
        """What a claimed cycle recorded when it reached step `name` (see flows/continuous.py)."""
        return self.entries.get(drop.digest, {}).get(name)

    def finish(self, drop: Drop, outcome: str, **details) -> None:
        entry = self.entries.setdefault(drop.digest, {"name": drop.name, "url": drop.url})
        entry |= {"outcome": outcome, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  **details}
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self.entries)


class Announcements:
    """When the watcher last announced each drop, by digest (seconds since the epoch)."""

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / ANNOUNCED_FILE
        self.times: dict[str, float] = read_json(self.path) if self.path.is_file() else {}

    def due(self, drops: list[Drop], again_after_s: float, now: float) -> list[Drop]:
        """Pending drops never announced, or announced `again_after_s` ago and still pending (the
        event was lost, or the run it started failed before claiming the drop)."""
        return [d for d in drops if now - self.times.get(d.digest, -float("inf")) >= again_after_s]

    def record(self, drops: list[Drop], now: float) -> None:
        self.times |= {d.digest: now for d in drops}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self.times)
