"""Every recipe in configs/ is a params file that loads (its keys known, its values valid, its
cross-field checks passed); the fine-tuning and LoRA ones run end to end in tests/integration/
test_models.py."""

from pathlib import Path

import pytest

from lm_pipeline.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_the_recipes_are_there():
    assert {p.name for p in CONFIGS} >= {"char-level.yaml", "finetune-hf.yaml", "lora-hf.yaml",
                                         "llama-scratch.yaml", "cluster-s3.yaml", "web-text.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_each_recipe_loads(path):
    cfg = load_config(path)
    assert cfg.model_dump() != type(cfg)().model_dump()  # it sets something
