"""The project's HF `evaluate` modules, loaded by local path (the Hub is unreachable offline;
lm_pipeline.env sets HF_*_OFFLINE before `evaluate` is imported)."""

from __future__ import annotations

from pathlib import Path

MODULES_DIR = Path(__file__).parent / "modules"
# In reports/metrics.json beside the numbers: the hash of the weights they measured, so the
# registry never judges one model by another's numbers.
MODEL_KEY = "model_weights_sha256"
MODULE_NAMES = ("perplexity", "bleu", "bias_gap", "crows_pairs")


def module_path(name: str) -> Path:
    if name not in MODULE_NAMES:
        raise KeyError(f"unknown metric module {name!r}; available: {', '.join(MODULE_NAMES)}")
    return MODULES_DIR / name


def load_metric(name: str):
    """`evaluate.load` on the module folder, kept in memory (no cache files per compute)."""
    import evaluate

    return evaluate.load(str(module_path(name)), keep_in_memory=True)
