"""lm-evaluation-harness on an exported model folder: our tasks are built from held-out text, and
the harness's scores are what the model itself computes (checked independently, with
`transformers`); a task nobody knows fails with a message naming the setting."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lm_pipeline.config import EvaluateConfig, TokenizerConfig
from lm_pipeline.data.tokenizer import train_tokenizer
from lm_pipeline.evaluation import harness
from lm_pipeline.model.pretrained import save_pretrained
from lm_pipeline.model.transformer import GPT, GPTConfig

pytestmark = pytest.mark.metrics

DOCUMENTS = [
    "A tuple is an immutable sequence. Once created, its items cannot be replaced, so a tuple may be "
    "used as a dictionary key when every item is hashable, and it is often returned by functions.",
    "A list is a mutable sequence. Items can be appended, inserted, removed or sorted in place, and "
    "slicing a list returns a new list that holds the same objects in the same order.",
    "The with statement wraps a block in the methods of a context manager. The file is closed when "
    "the block ends, even when an exception leaves it early, which makes cleanup reliable.",
    "A generator function returns an iterator. Each call of next resumes the function after the last "
    "yield expression, and the local variables keep their values between the calls.",
    "Dictionaries map hashable keys to arbitrary values. Since the language keeps insertion order, "
    "iterating over a dictionary yields its keys in the order in which they were first added.",
    "An exception is raised when an error occurs. The try statement catches it in an except clause, "
    "and the finally clause runs in every case, whether or not the exception was handled.",
]
# Passages of 48 tokens: shorter ones of these short documents rarely use a content word twice.
SETTINGS = EvaluateConfig(harness_passage_tokens=48, harness_limit=12, batch_size=8)
BLOCK_SIZE = 64


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(DOCUMENTS, TokenizerConfig(kind="bpe", vocab_size=300, min_frequency=1))


@pytest.fixture(scope="module")
def docs(tokenizer) -> list[np.ndarray]:
    """The test split as evaluation loads it: one token array per document."""
    return [np.asarray(tokenizer.encode(d, add_special_tokens=False).ids) for d in DOCUMENTS]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tokenizer) -> Path:
    """A model folder as `lmp train` exports it, of an untrained model (its greedy next token is
    readable text, which the last-word records below use)."""
    tmp = tmp_path_factory.mktemp("harness")
    tokenizer.save(str(tmp / "tokenizer.json"))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=BLOCK_SIZE, n_layer=2,
                          n_head=2, n_embd=32))
    save_pretrained(model, tmp / "tokenizer.json", tmp / "model", {"mlflow_run_id": ""})
    return tmp / "model"


@pytest.fixture(scope="module")
def hf(folder):
    """The folder through `transformers`: what the harness's `hf` model class loads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()


def score(hf, context: str, continuation: str) -> tuple[float, bool]:
    """log p(continuation | context), and whether it is the greedy continuation, computed by hand
    with lm-eval's conventions: <|endoftext|> opens the context (as it opens every training
    document), and the continuation's tokens are what encoding context + continuation adds."""
    tok, model = hf
    whole, n_context = tok(context + continuation)["input_ids"], len(tok(context)["input_ids"])
    with torch.no_grad():
        logprobs = model(torch.tensor([[tok.eos_token_id] + whole])).logits.log_softmax(-1)[0, n_context:-1]
    target = torch.tensor(whole[n_context:])
    return logprobs.gather(1, target[:, None]).sum().item(), bool((logprobs.argmax(-1) == target).all())


def greedy_next(hf, context: str) -> str:
    tok, model = hf
    with torch.no_grad():
        logits = model(torch.tensor([[tok.eos_token_id] + tok(context)["input_ids"]])).logits
    return tok.decode([logits[0, -1].argmax().item()])


@pytest.fixture(scope="module")
def data(docs, tokenizer, hf) -> dict[str, list]:
    """Our two tasks' records from the test split; every other last-word target replaced by the
    model's own greedy next token, so that a random model's accuracy is neither 0 nor 1."""
    data = harness.task_data(docs, tokenizer, list(harness.OWN_TASKS), SETTINGS, BLOCK_SIZE)
    for record in data["lmp_last_word"][::2]:
        record["target"] = greedy_next(hf, record["context"])
    return data


@pytest.fixture(scope="module")
def scored(folder, data) -> harness.HarnessResult:
    return harness.run(folder, data, list(harness.OWN_TASKS), SETTINGS)


def test_records_are_passages_of_the_test_split(docs, tokenizer):
    texts = [tokenizer.decode(d.tolist()) for d in docs]
    data = harness.task_data(docs, tokenizer, list(harness.OWN_TASKS), SETTINGS, BLOCK_SIZE)
    assert data == harness.task_data(docs, tokenizer, list(harness.OWN_TASKS), SETTINGS, BLOCK_SIZE)  # seeded
    last_word, cloze = data["lmp_last_word"], data["lmp_cloze_choice"]
    assert 0 < len(last_word) <= SETTINGS.harness_limit and len(cloze) == SETTINGS.harness_limit
    for r in last_word:  # a passage up to a whole word, then that word
        assert r["target"][0] == " " and r["target"][1:].isalpha()
        assert any(re.search(re.escape(r["context"] + r["target"]) + r"\W", t) for t in texts)
    for r in cloze:  # the real next piece, and 3 distinct pieces of other documents
        source = next(i for i, t in enumerate(texts) if r["context"] + r["choices"][r["label"]] in t)
        others = [c for i, c in enumerate(r["choices"]) if i != r["label"]]
        assert len(set(r["choices"])) == 4
        assert all(any(c in t for j, t in enumerate(texts) if j != source) for c in others)
    short = harness.task_data(docs, tokenizer, ["lmp_cloze_choice"], SETTINGS, block_size=9)
    assert max(len(tokenizer.encode(r["context"] + r["choices"][r["label"]]).ids)
               for r in short["lmp_cloze_choice"]) <= 8  # with bos, the model's 9 positions


def test_harness_scores_what_the_model_computes(data, scored, hf):
    assert scored.documents == {task: len(records) for task, records in data.items()}
    assert set(scored.scores) == {"lmp_last_word/acc", "lmp_last_word/perplexity",
                                  "lmp_cloze_choice/acc", "lmp_cloze_choice/acc_norm"}
    assert all(0 <= v <= 1 for k, v in scored.scores.items() if not k.endswith("perplexity"))

    last_word = [score(hf, r["context"], r["target"]) for r in data["lmp_last_word"]]
    greedy = np.mean([is_greedy for _, is_greedy in last_word])
    assert 0 < greedy < 1  # the check below can tell a scoring harness from a constant
    assert scored.scores["lmp_last_word/acc"] == pytest.approx(greedy)
    word_perplexity = math.exp(-np.mean([ll for ll, _ in last_word]))
    assert scored.scores["lmp_last_word/perplexity"] == pytest.approx(word_perplexity, rel=1e-4)

    acc, acc_norm = [], []
    for r in data["lmp_cloze_choice"]:
        lls = np.array([score(hf, r["context"], c)[0] for c in r["choices"]])
        acc.append(np.argmax(lls) == r["label"])
        acc_norm.append(np.argmax(lls / [len(c) for c in r["choices"]]) == r["label"])
    assert scored.scores["lmp_cloze_choice/acc"] == pytest.approx(np.mean(acc))
    assert scored.scores["lmp_cloze_choice/acc_norm"] == pytest.approx(np.mean(acc_norm))


def test_task_folder_runs_from_where_it_says_its_data_are(tmp_path, data):
    harness.write_task_folder(tmp_path / "harness", data, data_dir=Path("reports/evaluation/harness"))
    for task, records in data.items():
        lines = (tmp_path / "harness" / f"{task}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == records
        spec = (tmp_path / "harness" / f"{task}.yaml").read_text()
        assert f"task: {task}" in spec and "data_dir: reports/evaluation/harness" in spec


def test_an_unknown_task_names_the_setting(folder, data):
    with pytest.raises(ValueError, match=r"evaluate.harness_tasks.*'lmp_no_such_task'"):
        harness.run(folder, data, ["lmp_last_word", "lmp_no_such_task"], SETTINGS)


@pytest.mark.metrics
@pytest.mark.parametrize("block_size", [9, BLOCK_SIZE])
def test_cloze_cuts_between_words(docs, tokenizer, block_size):
    """A cut inside a word would let the rest of that word give the real piece away: every context
    ends a word and every choice, the real one and the distractors, starts a new one."""
    everything = EvaluateConfig(harness_passage_tokens=16, harness_limit=0)
    records = harness.task_data(docs, tokenizer, ["lmp_cloze_choice"], everything, block_size)
    assert records["lmp_cloze_choice"]
    for r in records["lmp_cloze_choice"]:
        assert re.search(r"\S$", r["context"]), r
        assert all(re.match(r"\s+\S", c) for c in r["choices"]), r


FUNCTION_WORDS = {"a", "an", "the", "and", "or", "of", "in", "it", "its", "is", "to", "by", "so", "as",
                  "be", "may", "can", "when", "which", "whether", "not", "every", "each", "after", "between",
                  "since", "they", "their", "were", "was", "that", "same", "once", "even", "over", "often"}


@pytest.mark.metrics
def test_last_word_targets_are_content_words_the_context_has_seen(docs, tokenizer):
    """LAMBADA's property: the word is predictable from the passage, not a function word any
    context ends with; a passage without such a word gives no record."""
    everything = SETTINGS.model_copy(update={"harness_limit": 0})
    records = harness.task_data(docs, tokenizer, ["lmp_last_word"], everything, BLOCK_SIZE)["lmp_last_word"]
    assert records
    for r in records:
        word = r["target"][1:]
        assert word.lower() not in FUNCTION_WORDS and len(word) >= 3, r
        assert re.search(rf"\b{word}\b", r["context"], re.IGNORECASE), r

    def records_of(text: str) -> list[dict]:
        doc = np.asarray(tokenizer.encode(text, add_special_tokens=False).ids)
        return harness.last_word_records(harness.passages([doc], 64), tokenizer)

    assert records_of("The cat sat on the mat and then it ran off to the door.") == []
    assert records_of("The cat sat on the mat, and the cat purred at the door.") == [
        {"context": "The cat sat on the mat, and the", "target": " cat"}]


@pytest.mark.metrics
def test_a_score_of_the_first_documents_only_says_so(folder, data):
    """lm-eval's limit scores a task's first N documents, not a sample: a key that hid it would
    compare a subset with the whole task (a gate, a published number)."""
    assert len(data["lmp_last_word"]) <= 5 < len(data["lmp_cloze_choice"])  # a limit that cuts one task
    first5 = EvaluateConfig(harness_limit=5, batch_size=8)
    limited = harness.run(folder, data, list(harness.OWN_TASKS), first5)
    assert limited.documents == {"lmp_last_word": len(data["lmp_last_word"]), "lmp_cloze_choice": 5}
    assert set(limited.scores) == {"lmp_last_word/acc", "lmp_last_word/perplexity",
                                   "lmp_cloze_choice/acc_first5", "lmp_cloze_choice/acc_norm_first5"}
    assert harness.score_key("arc_easy", "acc") == "arc_easy/acc"
    assert harness.score_key("arc_easy", "acc_norm", first=100) == "arc_easy/acc_norm_first100"
    results = {"results": {"arc_easy": {"acc,none": 0.5, "acc_stderr,none": 0.1},
                           "mmlu": {"acc,none": 0.3}, "mmlu_law": {"acc,none": 0.3},
                           "lmp_last_word": {"acc,none": 0.2, "perplexity,none": 9.0},
                           "gsm8k": {"exact_match,strict-match": 0.1}},
               "n-samples": {"arc_easy": {"original": 2376, "effective": 100},
                             "mmlu_law": {"original": 1534, "effective": 100},
                             "lmp_last_word": {"original": 80, "effective": 80},
                             "gsm8k": {"original": 1319, "effective": 100}},
               "group_subtasks": {"mmlu": ["mmlu_law"]}}
    assert harness.flat_scores(results, limit=100) == {
        "arc_easy/acc_first100": 0.5, "mmlu/acc_first100": 0.3, "mmlu_law/acc_first100": 0.3,
        "lmp_last_word/acc": 0.2, "lmp_last_word/perplexity": 9.0,
        "gsm8k/exact_match_strict-match_first100": 0.1}
    assert set(harness.flat_scores(results, limit=0)) == {
        "arc_easy/acc", "mmlu/acc", "mmlu_law/acc", "lmp_last_word/acc", "lmp_last_word/perplexity",
        "gsm8k/exact_match_strict-match"}
