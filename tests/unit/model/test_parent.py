"""Transfer learning's guards: the parent's tokenizer must fit the corpus, its architecture is kept."""

import json
import random

import pytest

from lm_pipeline.config import Config
from lm_pipeline.data.processed import read_meta
from lm_pipeline.data.tokenizer import train_tokenizer
from lm_pipeline.io import write_json
from lm_pipeline.model import parent as parents
from lm_pipeline.model.pretrained import save_pretrained
from lm_pipeline.model.transformer import GPT, GPTConfig
from lm_pipeline.stages import preprocess

pytestmark = pytest.mark.optimization

ENGLISH = ["the cat sat on the mat and the dog sat on the log", "a tuple is an immutable sequence"]


def parent_folder(tmp_path, kind: str):
    """A model folder as `lmp train` exports it, with a tokenizer trained on English text."""
    cfg = Config.model_validate({"tokenizer": {"kind": kind, "vocab_size": 300, "min_frequency": 1}})
    tokenizer = train_tokenizer(ENGLISH * 20, cfg.tokenizer)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    model = GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=16, n_layer=1, n_head=2,
                          n_embd=16))
    chars = sum(map(len, ENGLISH)) / sum(len(tokenizer.encode(t).ids) + 1 for t in ENGLISH)
    save_pretrained(model, tmp_path / "tokenizer.json", tmp_path / "parent", {"chars_per_token": chars})
    return tmp_path / "parent"


def project_config(tmp_path, texts: list[str], parent) -> Config:
    raw = tmp_path / "raw"
    raw.mkdir()
    with open(raw / "documents.jsonl", "w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": f"doc-{i}", "text": text}) + "\n")
    return Config.model_validate({
        "filter": {"output_dir": str(raw)},  # preprocess reads the filtered documents
        "data": {"processed_dir": str(tmp_path / "processed")},
        "validate": {"report_dir": str(tmp_path / "validation"), "required": False},  # not about validation
        "split": {"val_fraction": 0.2, "test_fraction": 0.2},
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
        "train": {"init_from": str(parent)}})


def sentences(words: list[str], n: int = 60) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(words) for _ in range(8)) for _ in range(n)]


def test_fine_tuning_data_reuses_the_parents_tokenizer_and_pins_the_parent(tmp_path):
    parent = parent_folder(tmp_path, "bpe")
    cfg = project_config(tmp_path, sentences(ENGLISH[0].split()), parent)
    preprocess.run(cfg)
    processed = tmp_path / "processed"
    assert (processed / "tokenizer.json").read_bytes() == (parent / "tokenizer.json").read_bytes()
    meta = read_meta(processed)
    record, config = parents.load(processed)
    assert meta.parent == record and record["init_from"] == str(parent)
    assert record["weights_sha256"] and config["n_embd"] == 16


def test_a_corpus_the_parents_tokenizer_does_not_cover_is_refused(tmp_path):
    cfg = project_config(tmp_path, sentences(["αβγ", "δεζ", "ηθ"]), parent_folder(tmp_path, "char"))
    with pytest.raises(parents.ParentError, match=r"needs a different tokenizer than .*parent's: "
                       r"\d+\.\d+% of its tokens are <unk> .*e\.g\. '[α-θ]'.*drop train\.init_from"):
        preprocess.run(cfg)
    assert not (tmp_path / "processed").exists()  # nothing half-written


def test_a_corpus_the_parents_bpe_compresses_badly_is_refused(tmp_path):
    # Byte-level BPE covers any text, but CJK under an English vocabulary is a byte per token.
    cfg = project_config(tmp_path, sentences(["日本語", "中文字", "漢字"]), parent_folder(tmp_path, "bpe"))
    with pytest.raises(parents.ParentError, match=r"characters per token against .* on the parent's "
                       r"corpus \(limit tokenizer.min_relative_compression 0.5\)"):
        preprocess.run(cfg)
    assert not (tmp_path / "processed").exists()


def test_training_checks_the_data_was_made_for_its_parent_and_keeps_its_architecture(tmp_path):
    from lm_pipeline.training.preflight import check_parent

    parent = parent_folder(tmp_path, "bpe")  # n_layer 1, n_head 2, n_embd 16, block_size 16
    cfg = project_config(tmp_path, sentences(ENGLISH[0].split()), parent)
    preprocess.run(cfg)
    meta = read_meta(cfg.data.processed_dir)
    check_parent(cfg, meta)  # the model section describes the parent
    wider = cfg.model_copy(update={"model": cfg.model.model_copy(update={"n_layer": 4})})
    with pytest.raises(parents.ParentError, match=r"parent: model\.n_layer is 4 but the parent has 1\. "
                       r"Fine-tuning keeps the parent's architecture"):
        check_parent(wider, meta)
    from_scratch = cfg.model_copy(update={"train": cfg.train.model_copy(update={"init_from": None})})
    with pytest.raises(parents.ParentError, match=r"train.init_from is None but .*processed was "
                       r"preprocessed for '.*parent': run `lmp preprocess`"):
        check_parent(from_scratch, meta)


def test_a_folder_that_is_not_a_model_is_named(tmp_path):
    (tmp_path / "weights").mkdir()
    write_json(tmp_path / "weights" / "config.json", {})
    with pytest.raises(parents.ParentError, match=r"weights is not a model folder \(missing "
                       r"model.safetensors, tokenizer.json\)"):
        parents.fetch(str(tmp_path / "weights"), tmp_path / "dest")
