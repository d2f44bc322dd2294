"""The exported folder is a standard one: `transformers` loads it as GPT2LMHeadModel and computes
what our own GPT computes; older folders of this project still load."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model

from lm_pipeline.config import TokenizerConfig
from lm_pipeline.data.tokenizer import train_tokenizer
from lm_pipeline.model.backends import weights_sha256
from lm_pipeline.model.pretrained import load_pretrained, save_pretrained
from lm_pipeline.model.transformer import GPT, GPTConfig

TEXT = ["a tuple is an immutable sequence, and a list is a mutable one"] * 20


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A model folder as `lmp train` exports it, every weight random (biases and norms too)."""
    tmp = tmp_path_factory.mktemp("hf")
    tokenizer = train_tokenizer(TEXT, TokenizerConfig(kind="bpe", vocab_size=300, min_frequency=1))
    tokenizer.save(str(tmp / "tokenizer.json"))
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=32, n_layer=2, n_head=2, n_embd=32)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    save_pretrained(model, tmp / "tokenizer.json", tmp / "model", {"mlflow_run_id": ""})
    return tmp / "model"


def test_transformers_loads_the_folder_and_gets_our_logits(folder):
    from transformers import AutoModelForCausalLM

    ours, tokenizer = load_pretrained(folder)
    theirs = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(theirs).__name__ == "GPT2LMHeadModel"
    ids = torch.tensor([[0] + tokenizer.encode("a tuple is a sequence").ids])
    with torch.no_grad():
        difference = (ours(ids)[0] - theirs(ids).logits).abs().max().item()
    assert difference <= 1e-4, difference  # fp32: 0.0 when written (same ops, same order)


def test_transformers_tokenizer_matches_ours_and_knows_the_end_of_text(folder):
    from transformers import AutoTokenizer

    _, tokenizer = load_pretrained(folder)
    theirs = AutoTokenizer.from_pretrained(folder)
    text = "a list is mutable"
    assert theirs(text)["input_ids"] == tokenizer.encode(text).ids
    assert theirs.eos_token == "<|endoftext|>" and theirs.eos_token_id == 0


def test_transformers_greedy_continuation_is_what_lmp_generate_prints(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt = "a tuple is"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([[tokenizer.eos_token_id] + tokenizer(prompt)["input_ids"]])  # a document opens
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    theirs = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    lmp = Path(sys.executable).parent / "lmp"
    ours = subprocess.run([str(lmp), "generate", "--model", str(folder), "--temperature", "0",
                           "--max-new-tokens", "12", prompt], capture_output=True, text=True, check=True)
    assert ours.stdout.rstrip("\n") == theirs and theirs


def test_a_folder_in_this_projects_older_layout_still_loads(tmp_path, folder):
    model, _ = load_pretrained(folder)
    old = tmp_path / "old"
    old.mkdir()
    save_model(model, str(old / "model.safetensors"))  # our own tensor names, as before
    (old / "config.json").write_text(json.dumps(model.config.to_dict()))
    (old / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    assert weights_sha256(load_pretrained(old)[0]) == weights_sha256(model)
    # the one loader every stage uses tells it from a Hugging Face folder without run.json
    from lm_pipeline.model.backends import load_model

    assert weights_sha256(load_model(old)[0]) == weights_sha256(model)
