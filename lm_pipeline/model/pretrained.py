"""The exported model folder: safetensors weights, model config and tokenizer.

  model.safetensors   weights (no pickle: safe to load from anywhere)
  config.json         GPTConfig fields
  tokenizer.json      the HF `tokenizers` tokenizer the model was trained with
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_model, save_model
from tokenizers import Tokenizer

from lm_pipeline.io import atomic_path
from lm_pipeline.model.transformer import GPT, GPTConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"


def save_pretrained(model: GPT, tokenizer_file: Path, out_dir: Path, extra: dict | None = None) -> None:
    """Write the model folder atomically; `extra` files are small JSON documents (name -> data)."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        save_model(model, str(tmp / WEIGHTS_FILE))  # handles the tied embedding/head weights
        (tmp / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
        shutil.copyfile(tokenizer_file, tmp / TOKENIZER_FILE)
        for name, data in (extra or {}).items():
            (tmp / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_pretrained(model_dir: Path, device: str = "cpu") -> tuple[GPT, Tokenizer]:
    model_dir = Path(model_dir)
    config = GPTConfig(**json.loads((model_dir / CONFIG_FILE).read_text()))
    model = GPT(config)
    load_model(model, str(model_dir / WEIGHTS_FILE), device=device)
    model.to(device).eval()
    return model, Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))


def weights_sha256(model: GPT) -> str:
    """A hash of the weights' values, independent of file layout."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
