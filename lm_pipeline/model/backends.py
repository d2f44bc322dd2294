"""One way to build, save and load a model, whichever backend (`model.backend`): the built-in GPT
or a `transformers` causal LM (model/hf.py). Training, export, evaluation, the registry and
serving all go through here.

Both export the same standard folder (model/folder.py); run.json says which backend wrote it. A
folder without run.json is a Hugging Face model from elsewhere (what `hf:<folder>` points at).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch.nn as nn
from tokenizers import Tokenizer

from lm_pipeline.config import LoraConfig, ModelConfig
from lm_pipeline.data.tokenizer import TOKENIZER_FILE, eot_id, read_tokenizer
from lm_pipeline.io import atomic_path, write_json
from lm_pipeline.model import hf
from lm_pipeline.model import lora as lora_adapters
from lm_pipeline.model.folder import (
    GENERATION_CONFIG_FILE,
    RUN_FILE,
    TOKENIZER_CONFIG_FILE,
    WEIGHTS_FILE,
    folder_backend,
    read_run_info,
)
from lm_pipeline.model.pretrained import load_pretrained, load_weights, tokenizer_config, write_folder
from lm_pipeline.model.transformer import GPT, GPTConfig

HF_TOKENIZER_FILES = (TOKENIZER_CONFIG_FILE, "special_tokens_map.json")  # kept from an hf parent


def gpt_config(model: ModelConfig, vocab_size: int) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, block_size=model.block_size, n_layer=model.n_layer,
                     n_head=model.n_head, n_embd=model.n_embd, dropout=model.dropout)


def build_model(model: ModelConfig, lora: LoraConfig, vocab_size: int, eot: int,
                parent: Path | None = None, seed: int = 0) -> nn.Module:
    """The network a run trains: from scratch (seed the global stream first: every rank builds
    the same one) or from the parent folder's weights, with LoRA adapters (drawn from `seed`)
    when lora.r > 0."""
    if model.backend == "gpt":
        network = GPT(gpt_config(model, vocab_size))
        if parent:
            load_weights(network, parent / WEIGHTS_FILE)
    else:
        if parent:
            network = hf.from_pretrained(parent, model.block_size)
        else:
            config = hf.config_from(model.hf_config, vocab_size, eot, model.block_size)
            network = hf.from_config(config, model.block_size)
    return lora_adapters.add_lora(network, lora, seed) if lora.r else network


def backend_of(model: nn.Module) -> str:
    return "gpt" if isinstance(model, GPT) else "hf"


def save_model(model: nn.Module, tokenizer_dir: Path, out_dir: Path, run_info: dict,
               lora: LoraConfig | None = None, parent: Path | None = None) -> None:
    """The exported folder, atomically: the merged model in its family's layout, the tokenizer
    (an hf parent's own tokenizer_config.json kept), run.json, and a LoRA adapter beside it."""
    run_info = run_info | {"backend": backend_of(model), "block_size": model.block_size}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        if lora and lora_adapters.has_lora(model):
            base = (run_info.get("parent") or {})
            lora_adapters.save_adapter(model, lora, tmp / lora_adapters.ADAPTER_DIR,
                                       base.get("model_version") or base.get("path") or "")
            lora_adapters.merge_lora(model)
        if isinstance(model, GPT):
            write_folder(model, tokenizer_dir / TOKENIZER_FILE, tmp, run_info)
            return
        model.hf.save_pretrained(str(tmp), safe_serialization=True)
        shutil.copyfile(tokenizer_dir / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        tokenizer = read_tokenizer(tokenizer_dir / TOKENIZER_FILE)
        kept = [name for name in HF_TOKENIZER_FILES if parent and (parent / name).is_file()]
        for name in kept:
            shutil.copyfile(parent / name, tmp / name)
        if not kept:
            write_json(tmp / TOKENIZER_CONFIG_FILE, tokenizer_config(tokenizer, model.block_size))
        if not (tmp / GENERATION_CONFIG_FILE).is_file():
            eot = eot_id(tokenizer)
            write_json(tmp / GENERATION_CONFIG_FILE, dict.fromkeys(("bos_token_id", "eos_token_id"), eot))
        write_json(tmp / RUN_FILE, run_info)


def resolve_device(device: str) -> str:
    """'auto': the GPU when there is one (evaluation, gates, generation, serving), else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(folder: Path, device: str = "cpu") -> tuple[nn.Module, Tokenizer]:
    """Any model folder (ours of either backend, older ones, or a Hugging Face folder), in eval mode."""
    folder = Path(folder)
    if folder_backend(folder) == "gpt":
        return load_pretrained(folder, device)
    run_info = read_run_info(folder) if (folder / RUN_FILE).is_file() else {}
    model = hf.from_pretrained(folder, run_info.get("block_size"))
    return model.to(device).eval(), read_tokenizer(folder / TOKENIZER_FILE)


def weights_sha256(model: nn.Module) -> str:
    """A hash of the weights' values, independent of file layout."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
