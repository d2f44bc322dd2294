"""The project's HF `evaluate` modules, loaded by local path (the Hub is unreachable offline)."""

from __future__ import annotations

import os
from pathlib import Path

# Offline before `evaluate` / `datasets` are imported: they read these at import time.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ.setdefault(_var, "1")

MODULES_DIR = Path(__file__).parent / "modules"
MODULE_NAMES = ("perplexity", "bleu", "bias_gap", "crows_pairs")


def module_path(name: str) -> Path:
    if name not in MODULE_NAMES:
        raise KeyError(f"unknown metric module {name!r}; available: {', '.join(MODULE_NAMES)}")
    return MODULES_DIR / name


def load_metric(name: str):
    """`evaluate.load` on the module folder, kept in memory (no cache files per compute)."""
    import evaluate

    return evaluate.load(str(module_path(name)), keep_in_memory=True)
