"""model/sharded.py's pieces, without a process group: the reader of safetensors rows and
columns, FSDP2's split of rows, the meta build, and files that must be refused. (Two ranks loading
and fine-tuning: tests/integration/test_sharded_load.py.)"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lm_pipeline.config import LoraConfig, ModelConfig
from lm_pipeline.model.sharded import (
    INDEX_FILE,
    ShardedLoadError,
    meta_model,
    read_header,
    shard_rows,
    stored_tensors,
)

pytestmark = pytest.mark.models


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "model.safetensors"
    generator = torch.Generator().manual_seed(0)
    save_file({"m": torch.randn(7, 5, generator=generator), "v": torch.randn(5, generator=generator),
               "h": torch.randn(3, 4, generator=generator).to(torch.bfloat16)}, str(path))
    return path


@pytest.mark.parametrize("n", [1, 2, 5, 8, 9])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_each_rank_gets_the_rows_torch_chunk_gives_it(n, world):
    chunks = torch.arange(n).chunk(world)
    for rank in range(world):
        start, stop = shard_rows(n, rank, world)
        expected = chunks[rank].tolist() if rank < len(chunks) else []
        assert list(range(start, stop)) == expected


def test_rows_and_columns_are_the_file_s_own_values(weights):
    whole, stored = load_file(str(weights)), read_header(weights)
    assert torch.equal(stored["m"].rows(2, 6), whole["m"][2:6])
    assert torch.equal(stored["m"].rows(7, 7), whole["m"][7:7])  # a rank with no rows
    assert torch.equal(stored["v"].rows(3, 5), whole["v"][3:5])
    assert torch.equal(stored["m"].columns(1, 4), whole["m"][:, 1:4])
    assert stored["h"].dtype == torch.bfloat16 and torch.equal(stored["h"].rows(1, 3), whole["h"][1:3])


def test_columns_read_a_block_of_rows_at_a_time(weights, monkeypatch):
    from lm_pipeline.model import sharded

    monkeypatch.setattr(sharded, "BLOCK_BYTES", 2 * 5 * 4)  # two rows of m per read
    assert torch.equal(read_header(weights)["m"].columns(0, 2), load_file(str(weights))["m"][:, 0:2])


def test_a_sharded_folder_is_read_through_its_index(tmp_path):
    save_file({"a": torch.ones(2)}, str(tmp_path / "model-1.safetensors"))
    save_file({"b": torch.zeros(3)}, str(tmp_path / "model-2.safetensors"))
    (tmp_path / INDEX_FILE).write_text(json.dumps({"weight_map": {"a": "model-1.safetensors",
                                                                  "b": "model-2.safetensors"}}))
    stored = stored_tensors(tmp_path)
    assert stored["a"].file.name == "model-1.safetensors" and stored["b"].shape == (3,)


@pytest.mark.security
@pytest.mark.parametrize("file", ["../outside.safetensors", "/etc/passwd", "model.bin"])
def test_an_index_naming_a_file_outside_the_folder_or_not_safetensors_is_refused(tmp_path, file):
    (tmp_path / INDEX_FILE).write_text(json.dumps({"weight_map": {"a": file}}))
    with pytest.raises(ShardedLoadError, match="is not a .safetensors file in the folder"):
        stored_tensors(tmp_path)


@pytest.mark.bad_input
def test_a_broken_or_truncated_file_is_refused_naming_it(weights, tmp_path):
    data = weights.read_bytes()
    header = int.from_bytes(data[:8], "little")
    (tmp_path / "short.safetensors").write_bytes(data[:8 + header + 20])
    with pytest.raises(ShardedLoadError, match=r"short.safetensors: tensor \w's offsets"):
        read_header(tmp_path / "short.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ShardedLoadError, match="junk.safetensors: not a safetensors file"):
        read_header(tmp_path / "junk.safetensors")
    header = b'{"w": {"dtype": "F32"}}'
    (tmp_path / "fields.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(ShardedLoadError, match=r"fields.safetensors: not a safetensors file \('shape'\)"):
        read_header(tmp_path / "fields.safetensors")
    save_file({"ids": torch.arange(4)}, str(tmp_path / "ints.safetensors"))
    with pytest.raises(ShardedLoadError, match="tensor ids is I64, not a float type"):
        read_header(tmp_path / "ints.safetensors")


def test_the_meta_build_keeps_ties_and_buffers_and_costs_no_memory(tmp_path):
    gpt = meta_model(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16), LoraConfig(r=2), 64, 0)
    assert all(p.is_meta for p in gpt.parameters())
    assert gpt.lm_head.weight is gpt.wte.weight  # the head stays tied
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 16}))
    llama = meta_model(ModelConfig(backend="hf", block_size=16), LoraConfig(), 64, 0, tmp_path)
    assert all(p.is_meta for p in llama.parameters())
    buffers = dict(llama.named_buffers())
    assert buffers and not any(b.is_meta for b in buffers.values())  # RoPE's frequencies, computed
    assert torch.nn.Module.register_parameter.__name__ == "register_parameter"  # put back
