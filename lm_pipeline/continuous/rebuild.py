"""The lineage of a version continuous training made, and training it again (`lmp lineage`).

A cycle's version is its parent plus one drop: its tags name the drop (ct.drop), every drop
promoted up to it in order (ct.drops), the pinned parent (parent_model) and the DVC entry of its
archive (ct.archive). Following parents back to the first version no cycle made gives the chain.
A rebuild restores each cycle's archive (continuous/archive.py), puts its corpus back together
from the archived parts, runs the stages up to train with the cycle's own settings, starting the
first cycle from that first version and each later one from the model the rebuild just trained,
and checks every model's weights against its version's weights_sha256.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from lm_pipeline.config import Config
from lm_pipeline.continuous.archive import ArchiveError, archived_drop, read_cycle, restore
from lm_pipeline.continuous.hygiene import read_drop_documents
from lm_pipeline.continuous.plan import CORPUS_FILE, cycle_config, extend_corpus, write_params
from lm_pipeline.registry.manage import shown
from lm_pipeline.stages import STAGES

REBUILT_STAGES = list(STAGES)[:list(STAGES).index("train") + 1]  # evaluation and registration aside


def cycle_chain(client, name: str, version: str) -> list:
    """The versions of the cycles that made `version`, oldest first (empty if no cycle made it)."""
    chain, mv = [], client.get_model_version(name, version)
    while "ct.archive" in mv.tags:
        chain.insert(0, mv)
        parent = re.fullmatch(rf"models:/{re.escape(name)}/(\d+)", mv.tags.get("parent_model", ""))
        if parent is None:
            break
        mv = client.get_model_version(name, parent[1])
    return chain


def describe(chain: list) -> list[str]:
    """Lines for `lmp lineage`: the first parent, then each cycle's drop and archive, and the
    command that trains them again. Tags are shown on one line each: a line break in one could
    forge a command."""
    if not chain:
        return []
    last = chain[-1]
    lines = [f"Continuous training: {chain[0].tags['parent_model']}, then {len(chain)} cycle(s):"]
    for mv in chain:
        archive = json.loads(mv.tags["ct.archive"])
        lines.append(f"  version {mv.version}: drop {mv.tags['ct.drop']} ({mv.tags.get('ct.outcome', '')}), "
                     f"archived at {archive['path']} (DVC {archive['md5']})")
    lines.append(f"  its drops, in order: {', '.join(json.loads(last.tags['ct.drops']))}")
    uri = shlex.quote(f"models:/{last.name}/{last.version}")
    return ["", *map(shown, lines), "", "Train it again from the archived drops (DVC) and check its weights:",
            f"  lmp lineage {uri} --rebuild <folder>"]


def rebuild(chain: list, dest: Path) -> Iterator[str]:
    """Train each cycle of the chain again under `dest`; a line for each whose weights match its
    version's; ArchiveError, naming the version, at the first that does not."""
    from lm_pipeline.model.backends import load_model, weights_sha256

    parent = chain[0].tags["parent_model"]
    for mv in chain:
        work = Path(dest) / f"version-{mv.version}"
        try:
            model_dir = rebuild_cycle(json.loads(mv.tags["ct.archive"]), parent, work)
        except ArchiveError as err:
            raise ArchiveError(f"version {mv.version}: {err}") from None
        weights = weights_sha256(load_model(model_dir)[0])
        if weights != mv.tags["weights_sha256"]:
            raise ArchiveError(f"version {mv.version} rebuilt in {model_dir} with weights {weights}, not the "
                               f"registered {mv.tags['weights_sha256']}: was it trained at another commit "
                               f"than {mv.tags.get('git_commit')}, on another device (train.device and "
                               "precision auto follow the machine), or stopped by ct.max_minutes?")
        yield f"version {mv.version}: rebuilt in {model_dir}, weights {weights[:16]}... as registered"
        parent = str(model_dir)


def rebuild_cycle(archive: dict, parent: str, work: Path) -> Path:
    """One cycle's stages up to train, from its restored archive, starting from `parent`; the model."""
    folder = restore(archive)
    cycle = read_cycle(folder)
    cfg = Config.model_validate(cycle["params"])
    work.mkdir(parents=True, exist_ok=True)
    corpus = assemble_corpus(cycle["corpus"], work / CORPUS_FILE)
    drop = archived_drop(folder)
    cycle_cfg = cycle_config(cfg, drop, corpus.resolve(), work.resolve(), parent)
    # Its own checkpoints: in the cycle's storage (an s3:// one stays shared) it would resume the
    # original run instead of training again.
    train = cycle_cfg.train.model_copy(update={"checkpoint_dir": str(work.resolve() / "checkpoints")})
    params = write_params(cycle_cfg.model_copy(update={"train": train}), work / "params.yaml")
    lmp = str(Path(sys.executable).parent / "lmp")
    for stage in REBUILT_STAGES:
        print(f"rebuilding {drop.name}: {stage}", flush=True)
        if subprocess.run([lmp, "--params", str(params), stage]).returncode != 0:
            raise ArchiveError(f"rebuilding {drop.name}: stage {stage} failed "
                               f"(`lmp --params {params} {stage}`)")
    return cycle_cfg.train.model_dir


def assemble_corpus(parts: list[dict], path: Path) -> Path:
    """The corpus a cycle replayed: the archived base, then each promoted drop's documents, read
    as the cycle that promoted it read them (with its settings)."""
    base, *drops = parts
    shutil.copyfile(restore(base), path)
    for entry in drops:
        folder = restore(entry)
        settings = Config.model_validate(read_cycle(folder)["params"])
        extend_corpus(path, read_drop_documents(settings, archived_drop(folder)), path.stat().st_size)
    return path
