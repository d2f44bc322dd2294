"""Benchmark tasks through lm-evaluation-harness, on the exported model folder.

Why the harness: its task definitions and its `hf` model class (the folder loaded through
`transformers`, batched) are how published benchmark numbers are computed, so any of its tasks
(hellaswag, arc_easy, ...) runs on our model from one line of params.yaml, scored the standard
way. Offline, this project ships two small tasks whose data come from the held-out test split, so
they fit any corpus (YAML templates in tasks/):

- lmp_last_word (LAMBADA-style): a passage up to a content word it has already used, that word
  the target (the passage's last such word). A content word is alphabetic, at least 3 letters
  and not in STOP_WORDS; "used" means the same word, any case, earlier in the passage. So the
  target is predictable from the passage, as in LAMBADA, rather than a function word ("the",
  "of") any context may end with; a passage without such a word gives no record. acc: the word
  is the greedy continuation, every token of it; perplexity: of the word.
- lmp_cloze_choice: which of 4 pieces of equal token length continues a passage; the 3 others are
  pieces of other test documents (seeded). Passages are cut between words (the passage ends a
  word, every piece starts a new one), so the rest of a cut word cannot give the real piece away.
  acc: the real piece has the highest log-likelihood; acc_norm: the same per character.

The data are JSONL next to copies of the templates that say where they are (a folder for
`lm_eval --include_path`). Scoring reads them from a temporary folder; the report keeps a copy
whose paths are as configured (relative to the repository root, like every path in params.yaml).
Scores come back flat, as `<task>/<metric>` (`<task>/<metric>_<filter>` for a filter other than
lm-eval's "none"), e.g. lmp_last_word/acc. Where evaluate.harness_limit (N) is below a task's
number of documents, lm-eval scores only its first N (not a sample), and the key says so:
`<task>/<metric>_first<N>` (after the filter, if any), e.g. arc_easy/acc_norm_first200; a group
gets it when any of its tasks was cut. Without a limit, or with one that covers the task, the key
is `<task>/<metric>`. Ours are never cut: task_data already takes at most N records, a seeded
sample. (A suffix, not `<task>@<N>`: MLflow rejects "@" in a metric name.) A gate of
register.min_task_scores names the key as written here.
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
from lm_pipeline.progress import ticking

TEMPLATES = Path(__file__).parent / "tasks"
OWN_TASKS = ("lmp_last_word", "lmp_cloze_choice")
CHOICES = 4
# What gives a task more records: more windows, or longer ones (more words a passage can reuse).
NO_RECORDS = {"lmp_cloze_choice": "lower", "lmp_last_word": "raise (up to the model's block_size - 1)"}
# A candidate last word of a passage: letters after one space, with something after it in the
# passage (so the window did not cut it), and text before it.
LAST_WORD = re.compile(r"(?<=\S) ([^\W\d_]+)(?=\W)")
# Function words of 3 letters or more (shorter words are never targets): a passage's next word is
# so often one of them that the model needs no passage to guess it.
STOP_WORDS = frozenset("""
about above after again against also always among and any are because been before being below between
both but can could did does doing down during each even ever every few for from further had has have
having her here hers herself him himself his how however into its itself just let may might more most
much must never nor not now off often once only other ought our ours out over own same shall she should
since some such than that the their theirs them then there these they this those though through thus too
under until upon very was were what when where whether which while who whom whose why will with within
without would yet you your yours
""".split())


@dataclass(frozen=True)
class HarnessResult:
    scores: dict[str, float]  # "<task>/<metric>": value
    documents: dict[str, int]  # documents scored per task
    versions: dict[str, object]  # each task's version, as lm-eval reports it


def task_data(docs: list[np.ndarray], tokenizer, tasks: list[str], evaluate: EvaluateConfig,
              block_size: int) -> dict[str, list]:
    """The records of each of our tasks in `tasks`, from test documents (token arrays), at most
    evaluate.harness_limit each (a seeded sample, in document order); a passage and the bos token before
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
            raise ValueError(f"evaluate: the test split gives no records for {task}; {NO_RECORDS[task]} "
                             "evaluate.harness_passage_tokens or drop the task from evaluate.harness_tasks")
        data[task] = sample(records, evaluate.harness_limit, evaluate.seed)
    return data


def passages(docs: list[np.ndarray], length: int) -> list[tuple[int, np.ndarray]]:
    """(document index, window) for consecutive windows of `length` tokens of each document;
    a last, shorter window is kept if it has at least half that length."""
    return [(i, doc[start:start + length]) for i, doc in enumerate(docs)
            for start in range(0, len(doc), length) if len(doc[start:start + length]) >= length // 2]


def last_word_records(windows: list[tuple[int, np.ndarray]], tokenizer) -> list[dict]:
    """Each window's text up to its last whole content word that the text before it has used, and
    that word (with its leading space); a window without one gives no record."""
    records = []
    for text in (tokenizer.decode(w.tolist()) for _, w in windows):
        target = next((m for m in reversed(list(LAST_WORD.finditer(text)))
                       if content_word(m.group(1)) and used_before(m.group(1), text[:m.start()])), None)
        if target:
            records.append({"context": text[:target.start()], "target": " " + target.group(1)})
    return records


def content_word(word: str) -> bool:
    """Alphabetic, at least 3 letters, and not a function word."""
    return word.isalpha() and len(word) >= 3 and word.lower() not in STOP_WORDS


def used_before(word: str, context: str) -> bool:
    """Whether `context` has `word` as a whole word, in any case."""
    return re.search(rf"\b{re.escape(word)}\b", context, re.IGNORECASE) is not None


def cloze_records(windows: list[tuple[int, np.ndarray]], tokenizer, piece_tokens: int,
                  seed: int) -> list[dict]:
    """Each window cut between words (word_cut), its piece against the pieces of 3 random windows
    of other documents (of any other window if the split has one document), as 4 distinct
    choices in seeded order; a window without such a cut gives neither a record nor a piece."""
    rng = random.Random(seed)
    cuts = [(doc, *cut) for doc, window in windows if (cut := word_cut(window, tokenizer, piece_tokens))]
    one_document = len({doc for doc, _, _ in cuts}) == 1
    records = []
    for j, (doc, context, piece) in enumerate(cuts):
        choices = [piece]
        for k in (rng.randrange(len(cuts)) for _ in range(50 * CHOICES)):
            if len(choices) == CHOICES:
                break
            other_doc, _, other_piece = cuts[k]
            if k != j and (one_document or other_doc != doc) and other_piece not in choices:
                choices.append(other_piece)
        if len(choices) == CHOICES:
            rng.shuffle(choices)
            records.append({"context": context, "choices": choices, "label": choices.index(piece)})
    return records


def word_cut(window: np.ndarray, tokenizer, piece_tokens: int) -> tuple[str, str] | None:
    """(passage, piece): the window's text up to its last word boundary that `piece_tokens` tokens
    still follow, and those tokens' text. At a boundary the passage ends a word and the piece
    starts a new one (whitespace, then not), so no choice can finish a word the passage began."""
    for cut in range(len(window) - piece_tokens, 0, -1):
        context = tokenizer.decode(window[:cut].tolist())
        piece = tokenizer.decode(window[cut:cut + piece_tokens].tolist())
        if context[-1:].strip() and re.match(r"\s+\S", piece):
            return context, piece
    return None


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
    model class: batched, on evaluate.device, at most evaluate.harness_limit documents per task."""
    with tempfile.TemporaryDirectory(prefix="lmp-harness-") as tmp:
        folder = Path(tmp) / "tasks"
        write_task_folder(folder, data, cache_dir=Path(tmp) / "cache")
        manager = task_manager(tasks, folder)
        import lm_eval

        with ticking(f"evaluate: benchmark tasks {', '.join(tasks)} (lm-evaluation-harness)"):
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
    return HarnessResult(flat_scores(results, evaluate.harness_limit),
                         {t: n["effective"] for t, n in results["n-samples"].items()},
                         dict(results["versions"]))


def flat_scores(results: dict, limit: int) -> dict[str, float]:
    """lm-eval's results, {task: {"metric,filter": value}}, as {score_key: value}, stderrs left out;
    `limit`: the one lm-eval ran with (0: none)."""
    cut = cut_tasks(results)
    scores = {}
    for task, values in sorted(results["results"].items()):
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr") or not isinstance(value, int | float):
                continue
            name = metric if filter_name == "none" else f"{metric}_{filter_name}"
            scores[score_key(task, name, first=limit if task in cut else 0)] = float(value)
    return scores


def cut_tasks(results: dict) -> set[str]:
    """The tasks of lm-eval's results whose documents its limit cut, and the groups holding one."""
    cut = {task for task, n in results.get("n-samples", {}).items() if n["effective"] < n["original"]}
    subtasks = results.get("group_subtasks", {})

    def holds_cut(name: str) -> bool:
        return name in cut or any(holds_cut(s) for s in subtasks.get(name, ()))

    return {task for task in results["results"] if holds_cut(task)}


def score_key(task: str, metric: str, first: int = 0) -> str:
    """A harness score's name: `<task>/<metric>`, or `<task>/<metric>_first<N>` when only the
    task's first `first` (N) documents were scored, so that no one reads it as the whole task."""
    return f"{task}/{metric}" + (f"_first{first}" if first else "")
