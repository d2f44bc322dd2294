"""Moving the champion by hand, and tracing a version back to what made it (the lineage tags
register puts on every version).

    lmp promote 3 --reason "hand-checked samples"     champion -> version 3
    lmp rollback --reason "bad outputs in prod"      champion -> the one before it (again: further back)
    lmp rollback --to 2 --reason "last known good"   champion -> version 2, a former champion
    lmp lineage models:/lm-pipeline/3                 tags and the commands that rebuild it

Every move is appended to the promotion log with who, when and why. A rollback moves only to a
version whose weights still hash to what was recorded at its registration.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path

from lm_pipeline import tracking
from lm_pipeline.config import Config
from lm_pipeline.hashing import file_sha256, tree_sha256
from lm_pipeline.lineage import LOCK_FILE, git_state
from lm_pipeline.model.folder import read_run_info
from lm_pipeline.model.parent import describe
from lm_pipeline.registry import history
from lm_pipeline.registry.aliases import RegistryError, current_champion, model_version, set_champion
from lm_pipeline.text import terminal_safe

LINEAGE_TAGS = ("git_commit", "git_dirty", "dvc_lock_sha256", "data_sha256", "params_sha256",
                "weights_sha256", "mlflow_run_id", tracking.FLOW_RUN_TAG, "parent_model",
                "parent_safetensors_sha256", "promotion.decision")
OLD_TAGS = {tracking.FLOW_RUN_TAG: "prefect_flow_run_id"}  # its spelling on versions registered before
GIT_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a SHA-1 or a SHA-256 repository's
SHA256 = re.compile(r"[0-9a-f]{64}")

def parent_of(model_dir: Path) -> dict[str, str]:
    """The model version (or folder) this one was fine-tuned from, and its weights' hash; empty
    if trained from scratch."""
    parent = read_run_info(model_dir).get("parent")
    return {"parent_model": describe(parent) if parent else "",
            "parent_safetensors_sha256": parent["weights_sha256"] if parent else ""}


def lineage_tags(cfg: Config, run_id: str, metrics: dict, weights: str) -> dict[str, str]:
    """Everything needed to trace and rebuild the version (see `lmp lineage`)."""
    params = json.dumps(cfg.model_dump(mode="json", by_alias=True), sort_keys=True)
    commit, dirty = git_state(written=(str(cfg.ct.archive_dir),))  # `dvc add` rewrites its .gitignore
    return {
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "dvc_lock_sha256": file_sha256(Path(LOCK_FILE)) if Path(LOCK_FILE).exists() else "",
        "data_sha256": tree_sha256(cfg.data.processed_dir),
        "params_sha256": hashlib.sha256(params.encode()).hexdigest(),
        "weights_sha256": weights,
        "mlflow_run_id": run_id,
        tracking.FLOW_RUN_TAG: tracking.flow_run_id(),
        **parent_of(cfg.train.model_dir),
        **{f"test.{k}": str(v) for k, v in metrics.items()},
    }


def _client_and_experiment(cfg: Config):
    import mlflow

    experiment_id = tracking.setup(cfg, existing=True)
    return mlflow.MlflowClient(), experiment_id


def move_champion(client, log_run: str, name: str, version: str, reason: str, action: str) -> dict:
    """Move champion and log it (call under history.registry_lock)."""
    client.get_model_version(name, version)  # raises if there is no such version
    before = current_champion(client, name)
    entry = {"action": action, "model_name": name, "version": version, "reason": reason,
             "champion_before": before, "champion_after": version, "promoted": True}
    history.append(client, log_run, entry)  # the record first: a kill after it leaves it true or retryable
    set_champion(client, name, version, f"{action}: {reason}")
    return entry


def promote(cfg: Config, version: str, reason: str) -> dict:
    """Make `version` champion by hand, once its weights are checked against the hash recorded at
    its registration (a version serving and the champion gate would refuse is refused here)."""
    from lm_pipeline.registry.decision import load_registered

    client, experiment_id = _client_and_experiment(cfg)
    name = cfg.register_.model_name
    with history.registry_lock(tracking.tracking_uri(cfg), name):
        load_registered(name, version, refusal="refusing to promote it")
        log_run = history.log_run_id(client, experiment_id, name)
        return move_champion(client, log_run, name, version, reason, "promote")


def rollback(cfg: Config, reason: str, expected: str | None = None, to: str | None = None) -> dict:
    """Back to the champion before the current one (repeated, further back: see rollback_target),
    or to the former champion `to`, once its weights are checked against the hash recorded at its
    registration; the champion and the log are read under the same lock as the move. With
    `expected`, only if that version is still champion (an automatic rollback must not undo
    someone's promotion since)."""
    from lm_pipeline.registry.decision import load_registered  # torch: lineage needs none

    client, experiment_id = _client_and_experiment(cfg)
    name = cfg.register_.model_name
    with history.registry_lock(tracking.tracking_uri(cfg), name):
        log_run = history.log_run_id(client, experiment_id, name)
        current = current_champion(client, name)
        if expected is not None and current != expected:
            raise RegistryError(f"{name}: champion is version {current}, not {expected}: not rolling back")
        target = rollback_target(history.read_log(client, log_run), name, current, to)
        load_registered(name, target, refusal="refusing to roll back to it")
        return move_champion(client, log_run, name, target, reason, "rollback")


def rollback_target(entries: list[dict], name: str, current: str | None, to: str | None) -> str:
    """`to` if it was champion once; else the latest champion before the current one took over
    that has not been rolled back from since, so repeated rollbacks go 3 -> 2 -> 1, never back to 3."""
    order, rolled_back = history.champions(entries)
    if to is not None:
        if to == current:
            raise RegistryError(f"{name}: version {to} is the champion already")
        if to not in order:
            raise RegistryError(f"{name}: version {to} was never champion: not a rollback "
                                "(`lmp promote` makes any version champion)")
        return to
    took_over = max((i for i, version in enumerate(order) if version == current), default=0)
    for version in reversed(order[:took_over]):
        if version != current and version not in rolled_back:
            return version
    raise RegistryError(f"{name}: no earlier champion to roll back to (champion: {current}); "
                        "`lmp rollback --to VERSION` names a former champion")


def tree_state(tags: dict) -> str:
    """What the version's git tags say about the tree it was built from."""
    if tags.get("git_commit", "unknown") == "unknown":
        return "no git commit recorded: it was not built in a git repository"
    if tags.get("git_dirty") == "true":
        return "the tree was dirty: uncommitted changes are not in this commit"
    return "the tree was clean: this commit holds everything it was built from"


def lineage(cfg: Config, model_uri: str) -> str:
    """A version's lineage tags and the commands that rebuild it. Anyone who can write to the
    registry can set its tags, and the commands are for pasting into a shell: a tag goes into one
    only when it is what it claims to be (a commit id), and each is shown on one line."""
    import mlflow

    tracking.setup(cfg, existing=True)
    mv = model_version(mlflow.MlflowClient(), model_uri)
    tags = mv.tags
    lines = [f"{mv.name} version {mv.version}"]
    lines += [f"  {k}: {shown(tags.get(k, tags.get(OLD_TAGS.get(k), '')))}" for k in LINEAGE_TAGS]
    tree, checkout = tree_state(tags), checkout_line(tags.get("git_commit", ""))
    if "ct.archive" in tags:  # a continuous-training cycle's: `lmp lineage --rebuild` (continuous/rebuild.py)
        return "\n".join([*lines, "", f"Its code ({tree}):", checkout])
    return "\n".join([*lines, "", f"Rebuild it ({tree}):", checkout,
                      "  dvc pull            # cached data and models, if this remote has them",
                      "  dvc repro train     # or rebuild: ingest, validate, filter, preprocess, train",
                      f"  {weights_command(cfg.train.model_dir)}",
                      expected_weights(tags.get("weights_sha256", ""))])


def shown(tag: str) -> str:
    """A tag's value on one line, its control characters escaped: a line break in it could start a
    line that looks like one of the commands."""
    return terminal_safe(tag, one_line=True)


def checkout_line(commit: str) -> str:
    if GIT_COMMIT.fullmatch(commit):
        return f"  git checkout {commit}"
    return f"  (nothing to check out: its git_commit tag is not a git commit id: {shown(commit)})"


def weights_command(model_dir: Path) -> str:
    """The command that prints the hash of the weights a rebuild wrote to `model_dir`."""
    # A JSON string is a Python string literal in double quotes: the shell quoting stays readable.
    code = ("from lm_pipeline.model.backends import load_model, weights_sha256; "
            f"print(weights_sha256(load_model({json.dumps(str(model_dir))})[0]))")
    return f"python -c {shlex.quote(code)}"


def expected_weights(recorded: str) -> str:
    if SHA256.fullmatch(recorded):
        return f"  # expect {recorded}"
    return f"  # nothing to expect: its weights_sha256 tag is not a sha256 hash: {shown(recorded)}"
