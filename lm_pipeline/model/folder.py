"""The exported model folder's files: what `lmp train` writes and everything after it reads.

  model.safetensors   weights (no pickle: safe to load from anywhere)
  config.json         GPTConfig fields
  tokenizer.json      the HF `tokenizers` tokenizer the model was trained with
  run.json            its MLflow run, step, tokenizer hash, and parent (if fine-tuned)

Names only, no torch: preprocess pins a parent folder without paying for the model's imports.
"""

from lm_pipeline.data.tokenizer import TOKENIZER_FILE

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)  # what makes a folder a model
