"""Saving and loading the exported model folder (its files: model/folder.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_model, save_model
from tokenizers import Tokenizer

from lm_pipeline.data.tokenizer import TOKENIZER_FILE
from lm_pipeline.io import atomic_path, read_json, write_json
from lm_pipeline.model.folder import CONFIG_FILE, RUN_FILE, WEIGHTS_FILE
from lm_pipeline.model.transformer import GPT, GPTConfig


def save_pretrained(model: GPT, tokenizer_file: Path, out_dir: Path, run_info: dict | None = None) -> None:
    """Write the model folder atomically, with `run_info` as its run.json."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        save_model(model, str(tmp / WEIGHTS_FILE))  # handles the tied embedding/head weights
        (tmp / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
        shutil.copyfile(tokenizer_file, tmp / TOKENIZER_FILE)
        if run_info is not None:
            write_json(tmp / RUN_FILE, run_info)


def load_pretrained(model_dir: Path, device: str = "cpu") -> tuple[GPT, Tokenizer]:
    model_dir = Path(model_dir)
    config = GPTConfig(**json.loads((model_dir / CONFIG_FILE).read_text()))
    model = GPT(config)
    load_model(model, str(model_dir / WEIGHTS_FILE), device=device)
    model.to(device).eval()
    return model, Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))


def read_run_info(model_dir: Path) -> dict:
    """run.json: the model's MLflow run id, step, tokenizer hash and parent."""
    return read_json(Path(model_dir) / RUN_FILE)


def weights_sha256(model: GPT) -> str:
    """A hash of the weights' values, independent of file layout."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
