"""Benchmark tasks through lm-evaluation-harness, on the exported model folder.

Why the harness: its task definitions and its `hf` model class (the folder loaded through
`transformers`, batched) are how published benchmark numbers are computed, so any of its tasks
(hellaswag, arc_easy, ...) runs on our model from one line of params.yaml, scored the standard
way. Offline, this project ships two small tasks whose data come from the held-out test split, so
they fit any corpus (YAML templates in tasks/):

- lmp_last_word (LAMBADA-style): a passage without its last word; acc: the word is the greedy
  continuation, every token of it; perplexity: of the word.
- lmp_cloze_choice: which of 4 pieces of equal token length continues a passage; the 3 others end
  passages of other test documents (seeded). acc: the real piece has the highest log-likelihood;
  acc_norm: the same per character.

The data are JSONL next to copies of the templates that say where they are (a folder for
`lm_eval --include_path`). Scoring reads them from a temporary folder; the report keeps a copy
whose paths are as configured (relative to the repository root, like every path in params.yaml).
Scores come back flat, as `<task>/<metric>` (`<task>/<metric>_<filter>` for a filter other than
lm-eval's "none"), e.g. lmp_last_word/acc.
"""

from __future__ import annotations

import json
import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from lm_pipeline.config import EvaluateConfig
from lm_pipeline.model.backends import resolve_device

TEMPLATES = Path(__file__).parent / "tasks"
OWN_TASKS = ("lmp_last_word", "lmp_cloze_choice")
CHOICES = 4
# The last word of a passage: letters after one space, with something after it in the passage
# (so the window did not cut it), and text before it.
LAST_WORD = re.compile(r"(?<=\S) ([^\W\d_]{2,})(?=\W)")


@dataclass(frozen=True)
class HarnessResult:
    scores: dict[str, float]  # "<task>/<metric>": value
    documents: dict[str, int]  # documents scored per task
    versions: dict[str, object]  # each task's version, as lm-eval reports it


def task_data(docs: list[np.ndarray], tokenizer, tasks: list[str], evaluate: EvaluateConfig,
              block_size: int) -> dict[str, list]:
    """The records of each of our tasks in `tasks`, from test documents (token arrays), at most
    e.harness_limit each (a seeded sample, in document order); a passage and the bos token before
    it fit the model's context (`block_size`)."""
    length = min(evaluate.harness_passage_tokens, block_size - 1)
    windows = passages(docs, length)
    piece_tokens = max(1, length // 4)
    builders = {"lmp_last_word": lambda: last_word_records(windows, tokenizer),
                "lmp_cloze_choice": lambda: cloze_records(windows, tokenizer, piece_tokens, evaluate.seed)}
    data = {}
    for task in (t for t in tasks if t in OWN_TASKS):
        records = builders[task]()
        if not records:
            raise ValueError(f"evaluate: the test split gives no records for {task}; lower "
                             "evaluate.harness_passage_tokens or drop the task from evaluate.harness_tasks")
        data[task] = sample(records, evaluate.harness_limit, evaluate.seed)
    return data


def passages(docs: list[np.ndarray], length: int) -> list[tuple[int, np.ndarray]]:
    """(document index, window) for consecutive windows of `length` tokens of each document;
    a last, shorter window is kept if it has at least half that length."""
    return [(i, doc[start:start + length]) for i, doc in enumerate(docs)
            for start in range(0, len(doc), length) if len(doc[start:start + length]) >= length // 2]


def last_word_records(windows: list[tuple[int, np.ndarray]], tokenizer) -> list[dict]:
    """Each window's text up to its last whole word, and that word (with its leading space)."""
    records = []
    for text in (tokenizer.decode(w.tolist()) for _, w in windows):
        words = list(LAST_WORD.finditer(text))
        last = words[-1] if words else None
        if last and text[:last.start()].strip():
            records.append({"context": text[:last.start()], "target": " " + last.group(1)})
    return records


def cloze_records(windows: list[tuple[int, np.ndarray]], tokenizer, piece_tokens: int,
                  seed: int) -> list[dict]:
    """Each window's last `piece_tokens` tokens against the last ones of 3 random windows of other
    documents (of any other window if the split has one document), as 4 distinct choices in
    seeded order."""
    rng = random.Random(seed)
    pieces = [tokenizer.decode(w[-piece_tokens:].tolist()) for _, w in windows]
    one_document = len({doc for doc, _ in windows}) == 1
    records = []
    for j, (doc, window) in enumerate(windows):
        context, choices = tokenizer.decode(window[:-piece_tokens].tolist()), [pieces[j]]
        for k in (rng.randrange(len(windows)) for _ in range(50 * CHOICES)):
            if len(choices) == CHOICES:
                break
            if k != j and (one_document or windows[k][0] != doc) and pieces[k] not in choices:
                choices.append(pieces[k])
        if len(choices) == CHOICES and context.strip():
            rng.shuffle(choices)
            records.append({"context": context, "choices": choices, "label": choices.index(pieces[j])})
    return records


def sample(records: list, limit: int, seed: int) -> list:
    """At most `limit` records (0: all), a seeded sample kept in order."""
    if not limit or len(records) <= limit:
        return records
    return [records[i] for i in sorted(random.Random(seed).sample(range(len(records)), limit))]


def write_task_folder(folder: Path, data: dict[str, list], data_dir: Path | None = None,
                      cache_dir: Path | None = None) -> None:
    """`<task>.jsonl` and `<task>.yaml` for each task in `data`: the template, told that its data
    are in `data_dir` (default: the folder itself, absolute) and where `datasets` may cache them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for task, records in data.items():
        with open(folder / f"{task}.jsonl", "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        spec = yaml.safe_load((TEMPLATES / f"{task}.yaml").read_text())
        where = str(data_dir if data_dir is not None else folder.resolve())
        spec["dataset_kwargs"]["data_dir"] = where
        if cache_dir is not None:
            spec["dataset_kwargs"]["cache_dir"] = str(cache_dir)
        header = (f"# lm_pipeline/evaluation/tasks/{task}.yaml, its data in {where}\n"
                  "# lm_eval run --model hf --model_args pretrained=<model folder>,add_bos_token=True "
                  f"--include_path <this folder> --tasks {task}\n")
        text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
        (folder / f"{task}.yaml").write_text(header + text)


def task_manager(tasks: list[str], include_path: Path):
    """lm-eval's TaskManager over our task folder, and over its own registry only if a task needs it
    (indexing the registry takes seconds); an unknown name fails here, before any model loads."""
    from lm_eval.tasks import TaskManager

    others = [t for t in tasks if t not in OWN_TASKS]
    manager = TaskManager(include_path=str(include_path), include_defaults=bool(others))
    unknown = [t for t in others if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"evaluate.harness_tasks: unknown task(s) {', '.join(map(repr, unknown))}: neither "
                         f"this project's ({', '.join(OWN_TASKS)}) nor in lm-evaluation-harness's registry "
                         "(`lm_eval ls tasks` lists it)")
    return manager


def run(model_dir: Path, data: dict[str, list], tasks: list[str], evaluate: EvaluateConfig) -> HarnessResult:
    """Score the model folder on `tasks` (ours get their records from `data`) with lm-eval's `hf`
    model class: batched, on e.device, at most e.harness_limit documents per task."""
    with tempfile.TemporaryDirectory(prefix="lmp-harness-") as tmp:
        folder = Path(tmp) / "tasks"
        write_task_folder(folder, data, cache_dir=Path(tmp) / "cache")
        manager = task_manager(tasks, folder)
        import lm_eval

        try:
            results = lm_eval.simple_evaluate(
                # add_bos_token: every training document starts with <|endoftext|> (bos), so a
                # context does too, as for any model trained with a bos token.
                model="hf", model_args={"pretrained": str(model_dir), "add_bos_token": True},
                tasks=list(tasks), task_manager=manager, batch_size=evaluate.batch_size,
                device=resolve_device(evaluate.device), limit=evaluate.harness_limit or None,
                bootstrap_iters=0, log_samples=False)
        except ConnectionError as error:  # `datasets`, offline, without the task's data in its cache
            raise ConnectionError(f"evaluate.harness_tasks: {error}. The pipeline runs offline: put "
                                  "the dataset in the local Hugging Face datasets cache first") from error
    return HarnessResult(flat_scores(results["results"]),
                         {t: n["effective"] for t, n in results["n-samples"].items()},
                         dict(results["versions"]))


def flat_scores(results: dict[str, dict]) -> dict[str, float]:
    """lm-eval's {task: {"metric,filter": value}} as {"task/metric": value}, stderrs left out."""
    scores = {}
    for task, values in sorted(results.items()):
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr") or not isinstance(value, int | float):
                continue
            suffix = "" if filter_name == "none" else f"_{filter_name}"
            scores[f"{task}/{metric}{suffix}"] = float(value)
    return scores
