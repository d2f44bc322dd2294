"""What one retraining runs with: the project's settings, with every output of the stages moved
under the cycle's own folder (the project's data, model and reports are not touched), the drop
mixed with a replay sample of the corpus so far (data.sources: the existing mixing path), started
from the champion, pinned to its version (train.init_from: the existing fine-tuning path, either
backend, full or LoRA)
for ct.max_steps steps at ct.lr_factor of the learning rates, with canaries of its own, and
registered only if it does not forget that corpus (register.guard_documents)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from lm_pipeline.config import Config
from lm_pipeline.continuous.drops import Drop
from lm_pipeline.data.documents import documents_path
from lm_pipeline.io import atomic_path, is_url

CORPUS_FILE = "corpus.jsonl"

# The paths the stages write, by section: each moves under the cycle's folder.
OUTPUTS = {"data": ("raw_dir", "processed_dir", "report_file"), "validate": ("report_dir",),
           "filter": ("output_dir", "report_dir"),
           "train": ("model_dir", "curves_dir", "checkpoint_dir"), "evaluate": ("metrics_file", "report_dir"),
           "register": ("record_file",)}


def cycle_config(cfg: Config, drop: Drop, corpus: Path, work: Path, parent: str) -> Config:
    """`parent`: what training starts from (models:/<name>/<version>, or a folder when rebuilt)."""
    params = cfg.model_dump(by_alias=True, mode="json")
    for section, fields in OUTPUTS.items():
        for name in fields:
            value = params[section][name]
            if not is_url(value):  # an absolute path moves too, by its parts below its root
                params[section][name] = str(work / Path(value).relative_to(Path(value).anchor))
    params["validate"]["min_rows"] = 1  # a small drop brings a small replay: any size is a corpus
    # Canaries of its own, fixed by the drop: the champion has seen the project's canaries in
    # every training before, so their exposure would add up over cycles and no longer say what
    # this retraining memorizes of what it saw once.
    params["canaries"]["seed"] = int(drop.digest[:12], 16)
    ct = cfg.ct
    sources = [{"source": drop.url, "weight": 1 - ct.replay_fraction, "name": f"drop {drop.name}"}]
    if ct.replay_fraction:
        sources.append({"source": str(corpus), "weight": ct.replay_fraction, "name": "replay"})
    params["data"]["sources"] = sources
    params["train"] |= {"init_from": parent,
                        "max_steps": ct.max_steps, "max_minutes": ct.max_minutes,
                        "lr": cfg.train.lr * ct.lr_factor, "min_lr": cfg.train.min_lr * ct.lr_factor,
                        "warmup_steps": min(cfg.train.warmup_steps, ct.max_steps // 10),
                        "checkpoint_interval": min(cfg.train.checkpoint_interval, ct.max_steps),
                        "eval_interval": min(cfg.train.eval_interval, ct.max_steps)}
    params["register"] |= {"guard_documents": str(corpus), "max_forgetting": ct.max_forgetting}
    return Config.model_validate(params)


def write_params(cfg: Config, path: Path) -> Path:
    """The settings as a params file `lmp --params` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump(by_alias=True, mode="json"), sort_keys=False))
    return path


def corpus_so_far(cfg: Config) -> Path:
    """ct.state_dir/corpus.jsonl: the documents the champion has been trained on so far, what
    drops are checked against, replayed from and guarded on. It starts as the project's filtered
    corpus (what preprocessing read); each promoted drop is appended (extend_corpus)."""
    path = Path(cfg.ct.state_dir) / CORPUS_FILE
    if not path.is_file():
        source = documents_path(cfg.filter.output_dir)
        if not source.is_file():
            raise FileNotFoundError(f"continuous training starts from the filtered corpus, and {source} is "
                                    "missing: run the pipeline once (`make run` or `lmp run`)")
        with atomic_path(path) as tmp:
            shutil.copyfile(source, tmp)
    return path


def extend_corpus(corpus: Path, documents: list[dict], at_bytes: int) -> None:
    """Append a promoted drop's documents to the corpus so far, which held `at_bytes` bytes when
    the drop was judged: whole or not at all, and once (longer already, it has them: only the
    drop's own cycle, taken up again, writes the corpus in between; the corpus is only appended
    to, unless someone deletes it and corpus_so_far starts it again)."""
    if corpus.stat().st_size > at_bytes:
        return
    with atomic_path(corpus) as tmp:
        shutil.copyfile(corpus, tmp)
        with open(tmp, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(d, ensure_ascii=True) + "\n" for d in documents)
