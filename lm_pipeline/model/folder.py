"""The exported model folder's files: what `lmp train` writes and everything after it reads.

  model.safetensors       weights in GPT-2's layout (no pickle: safe to load from anywhere)
  config.json             GPT2LMHeadModel's config (older folders: this project's GPTConfig fields)
  tokenizer.json          the HF `tokenizers` tokenizer the model was trained with
  tokenizer_config.json   what `AutoTokenizer` needs beside it: the end-of-text token, max length
  generation_config.json  the end-of-text token as `transformers`' eos/bos/pad
  run.json                its MLflow run, step, tokenizer hash, and parent (if fine-tuned)

So `transformers.AutoModelForCausalLM` and `AutoTokenizer` load the folder as it is (model/hf_format.py).

Names only, no torch: what only reads or copies a folder needs none of the model's imports.
"""

from pathlib import Path

from lm_pipeline.data.tokenizer import TOKENIZER_FILE
from lm_pipeline.io import read_json

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)  # what makes a folder a model


def read_run_info(model_dir: Path) -> dict:
    """run.json: the model's MLflow run id, step, tokenizer hash and parent."""
    return read_json(Path(model_dir) / RUN_FILE)


def folder_backend(model_dir: Path) -> str:
    """Which backend wrote a folder: run.json says; without a backend there, a folder of this
    project (run.json, or an older config.json without model_type) is the built-in GPT, and
    anything else a Hugging Face model from elsewhere."""
    model_dir = Path(model_dir)
    if (model_dir / RUN_FILE).is_file():
        return read_run_info(model_dir).get("backend", "gpt")
    return "hf" if "model_type" in read_json(model_dir / CONFIG_FILE) else "gpt"
