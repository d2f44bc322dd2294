"""Where a model came from: git commit (and whether the tree matched it), data hash, params hash."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

LOCK_FILE = "dvc.lock"


def git_state(root: Path = Path("."), written: tuple[str, ...] = ()) -> tuple[str, bool]:
    """HEAD's commit in `root`, and whether the tree holds changes a person made beyond it.

    The pipeline's own outputs do not count: every run rewrites dvc.lock and the outs, metrics and
    plots that dvc.yaml declares (reports/ is tracked), and lineage records their hashes anyway.
    Anything else that differs from HEAD (code, params.yaml, dvc.yaml) makes the tree dirty; paths
    are the project's own (`--relative`), whether it is the repository or a folder in one.
    `written`: more folders the pipeline writes (continuous training's DVC archive).
    ("unknown", False) outside a git repository.
    """
    try:
        commit = _git(root, "rev-parse", "HEAD")
        changed = _git(root, "diff", "--name-only", "--relative", "HEAD", "--").splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    outputs = pipeline_outputs(root) + [str(Path(p)) for p in written]
    return commit, any(not is_under(path, outputs) for path in changed)


def pipeline_outputs(root: Path) -> list[str]:
    """dvc.lock and every path dvc.yaml's stages write (outs, metrics, plots), `${section.key}`
    read from params.yaml as DVC reads it."""
    dvc_yaml, params_yaml = Path(root) / "dvc.yaml", Path(root) / "params.yaml"
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}) if dvc_yaml.is_file() else {}
    params = (yaml.safe_load(params_yaml.read_text()) or {}) if params_yaml.is_file() else {}
    outputs = [LOCK_FILE]
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            outputs += [next(iter(e)) if isinstance(e, dict) else e for e in stage.get(kind, [])]
    return [str(Path(interpolate(p, params))) for p in outputs]


def interpolate(text: str, params: dict) -> str:
    """`${section.key}` replaced by its value in params (left as it is where params lack it)."""
    def value(match: re.Match) -> str:
        node = params
        for part in match.group(1).split("."):
            if not isinstance(node, dict) or part not in node:
                return match.group(0)
            node = node[part]
        return str(node)

    return re.sub(r"\$\{([\w.]+)\}", value, text)


def is_under(path: str, folders: list[str]) -> bool:
    return any(path == f or path.startswith(f + "/") for f in folders)


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
