"""The `hf` backend's from-scratch configs, built offline from inline mappings."""

import pytest

from lm_pipeline.model.hf import config_from, from_config

pytestmark = pytest.mark.models

GPT2 = {"model_type": "gpt2", "n_positions": 64, "n_embd": 16, "n_layer": 1, "n_head": 2}
LLAMA = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
         "num_attention_heads": 2}


@pytest.mark.metrics
def test_an_inline_gpt2_config_keeps_its_n_positions():
    """GPT-2 names its context n_positions (max_position_embeddings is an alias of it): the
    default context must not overwrite what the user gave."""
    config = config_from(GPT2, vocab_size=64, eot_id=0, block_size=32)
    assert config.n_positions == 64 and config.max_position_embeddings == 64
    model = from_config(config, block_size=32)
    assert model.hf.transformer.wpe.num_embeddings == 64  # the position table the user asked for


@pytest.mark.metrics
def test_an_inline_config_without_a_context_length_gets_block_size():
    config = config_from(LLAMA, vocab_size=64, eot_id=0, block_size=32)
    assert config.max_position_embeddings == 32
    gpt2 = {k: v for k, v in GPT2.items() if k != "n_positions"}
    assert config_from(gpt2, vocab_size=64, eot_id=0, block_size=32).n_positions == 32
    llama_128 = config_from(LLAMA | {"max_position_embeddings": 128}, vocab_size=64, eot_id=0, block_size=32)
    assert llama_128.max_position_embeddings == 128
