"""Saving and loading the exported model folder (its files: model/folder.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from safetensors.torch import load_file, load_model, save_file
from tokenizers import Tokenizer

from lm_pipeline.data.tokenizer import TOKENIZER_FILE, UNK, eot_id, read_tokenizer
from lm_pipeline.io import atomic_path, read_json, write_json
from lm_pipeline.model.folder import (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    RUN_FILE,
    TOKENIZER_CONFIG_FILE,
    WEIGHTS_FILE,
)
from lm_pipeline.model.hf_format import (
    from_gpt2_state_dict,
    gpt2_config,
    gpt_config,
    is_gpt2_layout,
    to_gpt2_state_dict,
)
from lm_pipeline.model.transformer import GPT


def save_pretrained(model: GPT, tokenizer_file: Path, out_dir: Path, run_info: dict | None = None) -> None:
    """Write the model folder atomically, in the layout `transformers` loads, with `run_info` as its
    run.json."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        write_folder(model, tokenizer_file, tmp, run_info)


def write_folder(model: GPT, tokenizer_file: Path, folder: Path, run_info: dict | None) -> None:
    """The model folder's files, into an existing folder."""
    tokenizer = read_tokenizer(tokenizer_file)
    eot = eot_id(tokenizer)
    save_file(to_gpt2_state_dict(model.state_dict()), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    write_json(folder / CONFIG_FILE, gpt2_config(model.config, eot))
    shutil.copyfile(tokenizer_file, folder / TOKENIZER_FILE)
    write_json(folder / TOKENIZER_CONFIG_FILE, tokenizer_config(tokenizer, model.config.block_size))
    special_ids = dict.fromkeys(("bos_token_id", "eos_token_id", "pad_token_id"), eot)
    write_json(folder / GENERATION_CONFIG_FILE, special_ids)
    if run_info is not None:
        write_json(folder / RUN_FILE, run_info)


def tokenizer_config(tokenizer: Tokenizer, block_size: int) -> dict:
    """What AutoTokenizer reads beside tokenizer.json: every document starts and ends with the
    end-of-text token (ours, or a pretrained tokenizer's own)."""
    eot = tokenizer.id_to_token(eot_id(tokenizer))
    special = {"bos_token": eot, "eos_token": eot, "pad_token": eot}
    if tokenizer.token_to_id(UNK) is not None:  # the character-level tokenizer has one
        special["unk_token"] = UNK
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size,
            "clean_up_tokenization_spaces": False, **special}


def load_pretrained(model_dir: Path, device: str = "cpu") -> tuple[GPT, Tokenizer]:
    model_dir = Path(model_dir)
    model = GPT(gpt_config(read_json(model_dir / CONFIG_FILE)))
    load_weights(model, model_dir / WEIGHTS_FILE)
    model.to(device).eval()
    return model, read_tokenizer(model_dir / TOKENIZER_FILE)


def load_weights(model: GPT, path: Path) -> None:
    """A weights file in either layout: GPT-2's, or this project's own names (older folders)."""
    state = load_file(str(path))
    if is_gpt2_layout(state):
        model.load_state_dict(from_gpt2_state_dict(state))
    else:
        load_model(model, str(path))  # safetensors restores the tied head it stored once

