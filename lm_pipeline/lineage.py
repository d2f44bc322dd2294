"""Where a model came from: git commit (and whether the tree matched it), data hash, params hash."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import yaml

LOCK_FILE = "dvc.lock"


def git_state(root: Path = Path(".")) -> tuple[str, bool]:
    """HEAD's commit in `root`, and whether the tree holds changes a person made beyond it.

    The pipeline's own outputs do not count: every run rewrites dvc.lock and the outs, metrics and
    plots that dvc.yaml declares (reports/ is tracked), and lineage records their hashes anyway.
    Anything else that differs from HEAD (code, params.yaml, dvc.yaml) makes the tree dirty; paths
    are the project's own (`--relative`), whether it is the repository or a folder in one.
    ("unknown", False) outside a git repository.
    """
    try:
        commit = _git(root, "rev-parse", "HEAD")
        changed = _git(root, "diff", "--name-only", "--relative", "HEAD", "--").splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    outputs = pipeline_outputs(root)
    return commit, any(not is_under(path, outputs) for path in changed)


def pipeline_outputs(root: Path) -> list[str]:
    """dvc.lock and every path dvc.yaml's stages write (outs, metrics, plots)."""
    dvc_yaml = Path(root) / "dvc.yaml"
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}) if dvc_yaml.is_file() else {}
    outputs = [LOCK_FILE]
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            outputs += [next(iter(e)) if isinstance(e, dict) else e for e in stage.get(kind, [])]
    return [str(Path(p)) for p in outputs]


def is_under(path: str, folders: list[str]) -> bool:
    return any(path == f or path.startswith(f + "/") for f in folders)


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def tree_sha256(folder: Path) -> str:
    """Hash of every file's relative path and bytes under `folder`, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # streamed: checkpoints can be large
