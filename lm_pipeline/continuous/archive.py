"""What each retraining read, versioned with DVC, so any version a cycle made can be trained again.

Before a cycle trains, ct.archive_dir (inside the project) receives `<drop>-<digest12>/`: the
drop as it landed (drop/) and cycle.json, which names everything else the cycle read: the
project's settings at the time, the parent (the champion, pinned to its version), and the corpus
it replayed and was guarded on, as its parts: the corpus continuous training was keeping when
archiving began (corpus-<sha12>.jsonl, archived once) and the drops promoted since, in order.
`dvc add` writes a .dvc file beside each (commit them as with any `dvc add`) and, where the
project has a default DVC remote, each is pushed. The archive's DVC entry is also a tag of the
registered version (ct.archive), so `lmp lineage --rebuild` restores the inputs from the remote
even in a checkout that never saw the cycle.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from fsspec.implementations.local import LocalFileSystem

from lm_pipeline.config import Config, inside_project
from lm_pipeline.continuous.drops import Drop, FileDigests, links_leaving, read_drop
from lm_pipeline.hashing import file_sha256
from lm_pipeline.io import atomic_path, filesystem, read_json, write_json
from lm_pipeline.text import terminal_safe

CYCLE_FILE = "cycle.json"
DROP_DIR = "drop"
BASE_FILE = "corpus_base.json"  # in ct.state_dir: the archived corpus the parts start from
DVC = [str(Path(sys.executable).parent / "dvc")]


class ArchiveError(RuntimeError):
    """A cycle's inputs could not be archived or restored; the message says which and why."""


def archive_cycle(cfg: Config, drop: Drop, corpus: Path, parent: str, promoted: list[dict]) -> dict:
    """Archive the drop and what the cycle reads besides it; the archive's DVC entry. `promoted`:
    the ledger entries of the drops promoted so far, in order (those archived are corpus parts)."""
    parts = [base_corpus(cfg, corpus)] + [e["archive"] for e in promoted if "archive" in e]
    folder = Path(cfg.ct.archive_dir) / f"{drop.name}-{drop.digest[:12]}"
    if leaving := links_leaving(drop.url):  # hygiene refuses these first; the remote must never get one
        raise ArchiveError(f"drop {drop.name}: {terminal_safe(', '.join(leaving[:5]))}: a link leading "
                           "outside the drop: not archived")
    with atomic_path(folder) as tmp:
        fs, root = filesystem(drop.url)
        fs.get(root.rstrip("/") + "/", str(tmp / DROP_DIR), recursive=True)
        copied = read_drop(LocalFileSystem(), str((tmp / DROP_DIR).resolve()), drop.url, FileDigests(None))
        if copied is None or copied.digest != drop.digest:  # the cycle trains on the copy
            raise ArchiveError(f"drop {drop.name} changed since it was found (its files' digest is "
                               f"not the {drop.digest[:12]} checked): not archived; what it holds now "
                               "is a new drop")
        write_json(tmp / CYCLE_FILE, {"drop": {"name": drop.name, "digest": drop.digest},
                                      "parent": parent, "corpus": parts,
                                      "params": cfg.model_dump(by_alias=True, mode="json")})
    return dvc_add(folder)


def base_corpus(cfg: Config, corpus: Path) -> dict:
    """The first corpus part: the corpus as it stood when the first cycle was archived (drops
    promoted after it are parts of their own), archived once."""
    record = Path(cfg.ct.state_dir) / BASE_FILE
    if record.is_file():
        return read_json(record)
    path = Path(cfg.ct.archive_dir) / f"corpus-{file_sha256(corpus)[:12]}.jsonl"
    with atomic_path(path) as tmp:
        shutil.copyfile(corpus, tmp)
    entry = dvc_add(path)
    write_json(record, entry)
    return entry


def dvc_add(path: Path) -> dict:
    """`dvc add` the path (pushed where a default remote is set); its entry in the .dvc file, with
    the path from the project's root."""
    try:
        dvc("add", str(path))
        if default_remote():
            dvc("push", f"{path}.dvc")
    except ArchiveError as err:
        raise ArchiveError(f"archiving {path} (ct.archive_dir): {err}") from None
    (out,) = yaml.safe_load(Path(f"{path}.dvc").read_text())["outs"]
    return out | {"path": str(path)}


def restore(entry: dict) -> Path:
    """The archived path of `entry`, as it was archived: from the workspace when it matches, else
    from the DVC cache or the default remote. Its .dvc file is written from the entry when the
    checkout lacks it, and must agree with the entry when there. The entry is a version's tag, which
    anyone who can write to the registry can set: nothing outside the project is written."""
    path = Path(entry["path"])
    if not inside_project(path):
        raise ArchiveError(f"{entry['path']!r} is not a path inside the project (relative, no '..'): "
                           "refusing to restore an archive there")
    dvc_file = Path(f"{path}.dvc")
    out = {k: v for k, v in entry.items() if k != "path"} | {"path": path.name}
    if dvc_file.is_file():
        (there,) = yaml.safe_load(dvc_file.read_text())["outs"]
        if there.get("md5") != out["md5"]:
            raise ArchiveError(f"{dvc_file} tracks {there.get('md5')}, not the archived {out['md5']}: "
                               "something else was archived under this name")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        dvc_file.write_text(yaml.safe_dump({"outs": [out]}, sort_keys=False))
    dvc("pull" if default_remote() else "checkout", str(dvc_file))
    return path


def default_remote() -> str:
    found = subprocess.run([*DVC, "remote", "default"], capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else ""


def dvc(*args: str) -> None:
    """A DVC command in the project (the working directory), waiting for DVC's lock where another
    command (a `dvc repro` of the nightly run) holds it."""
    done = subprocess.run([*DVC, "--wait-for-lock", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise ArchiveError(f"`dvc {' '.join(args)}` failed (exit {done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()}")


def read_cycle(folder: Path) -> dict:
    return read_json(Path(folder) / CYCLE_FILE)


def archived_drop(folder: Path) -> Drop:
    """The drop archived in `folder`, read from its copy there (as its cycle trained on it)."""
    drop = read_cycle(folder)["drop"]
    return Drop(drop["name"], str(Path(folder) / DROP_DIR), drop["digest"], 0)

