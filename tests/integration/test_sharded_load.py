"""Parents that load sharded under FSDP (model/sharded.py): each rank builds on the meta device
and reads only its own rows of the parent's safetensors.

- What 2 sharded ranks fine-tune equals what one process fine-tunes from the whole parent: the
  built-in GPT's parent (GPT-2's layout: its Conv1D weights are read transposed, a block at a
  time; its layers wrapped for activation checkpointing, which renames their parameters) and a
  Llama parent in a sharded folder (several files and their index), each full and with LoRA. The
  same weights as loaded, bit for bit; after three AdamW steps of the loop's own train_step over
  gloo, 2 ranks x batch 4 against 1 process x batch 8 (the same windows), the same within float
  tolerance; and a checkpoint of the sharded run resumes to the same bits (with LoRA the
  checkpoint holds the adapters only: the resumed run reads its parent again, sharded).
- Each rank's peak memory while it loads a 214M-parameter Llama parent (4 files) is at most 0.65x
  that of one rank loading it whole: benchmarks/sharded_load.py's measurement, each load in a
  fresh process.
"""

import json
import os
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from lm_pipeline.config import Config
from lm_pipeline.model.backends import build_model
from lm_pipeline.model.pretrained import save_pretrained
from lm_pipeline.model.sharded import INDEX_FILE, ShardedLoadError, load_parent_shards, meta_model
from lm_pipeline.model.transformer import GPT, GPTConfig
from lm_pipeline.training import state as checkpoint_state
from lm_pipeline.training.parallel import checkpoint_activations, parallelize
from lm_pipeline.training.state import TrainState
from lm_pipeline.training.step import train_step
from tests.services import free_port, spawn

pytestmark = [pytest.mark.scale, pytest.mark.distributed]

VOCAB, BLOCK, STEPS = 64, 16, 3
TOKENS = np.random.default_rng(0).integers(0, VOCAB, size=4000)
MODELS = {"gpt": {"block_size": BLOCK, "n_layer": 2, "n_head": 2, "n_embd": 32},
          "llama": {"backend": "hf", "block_size": BLOCK}}
CASES = [(parent, lora) for parent in MODELS for lora in ({}, {"r": 4})]


def case_config(parent: str, lora: dict, world: int) -> Config:
    return Config.model_validate({
        "model": MODELS[parent], "lora": lora,
        "train": {"init_from": "hf:parent" if parent == "llama" else "parent", "lr": 1e-2,
                  "strategy": "fsdp" if world > 1 else "ddp", "batch_size": 8 // world, "seed": 3}})


def whole_weights(model) -> dict[str, torch.Tensor]:
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in model.state_dict().items()}


def fine_tune(model, cfg: Config) -> tuple[dict[str, dict[str, torch.Tensor]], torch.optim.Optimizer]:
    """The whole weights as loaded, and after STEPS AdamW steps of the loop's train_step."""
    loaded = whole_weights(model)
    optimizer = getattr(model, "module", model).configure_optimizer(cfg.train.lr, 0.0, (0.9, 0.95))
    for step in range(STEPS):
        train_step(model, optimizer, TOKENS, [cfg.train.seed, step], cfg.train.lr, cfg, torch.device("cpu"))
    return {"loaded": loaded, "trained": whole_weights(model)}, optimizer


def sharded_model(cfg: Config, parent: str, folder: Path):
    """As the loop builds it under FSDP: on the meta device, sharded, then filled; the names of its
    frozen weights (with LoRA: the parent's), which its checkpoints leave out."""
    model = meta_model(cfg.model, cfg.lora, VOCAB, 0, folder)
    frozen = checkpoint_state.frozen_names(model)
    if parent == "gpt":  # as the loop wraps it under train.activation_checkpointing: true
        checkpoint_activations(model)
    model = parallelize(model, "fsdp", torch.device("cpu"))
    return model, frozen, load_parent_shards(model, folder, cfg.train.seed)


def resumed(model, optimizer, cfg: Config, parent: str, folder: Path, tmp: Path, rank: int) -> dict:
    """Checkpoint the fine-tuned model as the loop does (each rank its own folder, merged as Ray
    merges them), then the whole weights of a new sharded model restored from it."""
    frozen = checkpoint_state.frozen_names(model)
    checkpoint_state.save(tmp / f"rank{rank}", model, optimizer, TrainState(step=STEPS), rank, frozen)
    dist.barrier()
    merged = tmp / f"merged{rank}"
    for part in tmp.glob("rank*"):
        shutil.copytree(part, merged, dirs_exist_ok=True)
    model, frozen, _ = sharded_model(cfg, parent, folder)
    optimizer = model.configure_optimizer(cfg.train.lr, 0.0, (0.9, 0.95))
    checkpoint_state.load(merged, model, optimizer, rank, frozen)
    return whole_weights(model)


def sharded_ranks(rank: int, world: int, port: int, parents: dict, out: str) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo"}
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    results = {}
    for parent, lora in CASES:
        cfg, folder = case_config(parent, lora, world), Path(parents[parent])
        model, _, read = sharded_model(cfg, parent, folder)
        weights, optimizer = fine_tune(model, cfg)
        tmp = Path(out).parent / f"{parent}-{bool(lora)}"
        weights["resumed"] = resumed(model, optimizer, cfg, parent, folder, tmp, rank)
        results[parent, bool(lora)] = weights | {"read": read}
    cfg = case_config("gpt", {}, world)
    model = parallelize(meta_model(cfg.model, cfg.lora, VOCAB, 0), "fsdp", torch.device("cpu"))
    try:
        load_parent_shards(model, Path(parents["gpt-incomplete"]), cfg.train.seed)
    except ShardedLoadError as err:
        results["incomplete"] = str(err)
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def parents(tmp_path_factory) -> dict[str, str]:
    """A GPT parent as `lmp train` exports it, and a Llama parent in 3 files."""
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM

    tmp = tmp_path_factory.mktemp("parents")
    tokenizer = Tokenizer(models.WordLevel({"<|endoftext|>": 0}, unk_token="<|endoftext|>"))
    tokenizer.save(str(tmp / "tokenizer.json"))
    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig(vocab_size=VOCAB, **MODELS["gpt"])), tmp / "tokenizer.json", tmp / "gpt")
    llama = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=BLOCK)
    LlamaForCausalLM(llama).save_pretrained(str(tmp / "llama"), max_shard_size="40KB")
    weights = load_file(str(tmp / "gpt/model.safetensors"))
    del weights["transformer.h.1.mlp.c_fc.weight"]
    (tmp / "gpt-incomplete").mkdir()
    save_file(weights, str(tmp / "gpt-incomplete/model.safetensors"))
    return {name: str(tmp / name) for name in ("gpt", "llama", "gpt-incomplete")}


@pytest.fixture(scope="module")
def sharded(parents, tmp_path_factory) -> dict:
    out = str(tmp_path_factory.mktemp("sharded") / "results.pt")
    spawn(sharded_ranks, (2, free_port(), parents, out), 2)
    return torch.load(out, weights_only=True)


def test_the_llama_parent_is_a_sharded_folder(parents):
    files = json.loads((Path(parents["llama"]) / INDEX_FILE).read_text())["weight_map"].values()
    assert len(set(files)) >= 3


@pytest.mark.parametrize("parent,lora", CASES, ids=[f"{p}-{'lora' if lora else 'full'}" for p, lora in CASES])
def test_two_sharded_ranks_fine_tune_what_one_whole_load_does(parents, sharded, parent, lora):
    cfg = case_config(parent, lora, 1)
    folder = Path(parents[parent])
    torch.manual_seed(cfg.train.seed)
    whole = build_model(cfg.model, cfg.lora, VOCAB, 0, folder, cfg.train.seed)
    expected, _ = fine_tune(parallelize(whole, "ddp", torch.device("cpu")), cfg)
    got = sharded[parent, bool(lora)]
    assert got["loaded"].keys() == expected["loaded"].keys()
    for name, tensor in expected["loaded"].items():  # the same bits: the parent's, the adapters' draw
        assert torch.equal(got["loaded"][name], tensor), name
    for name, tensor in expected["trained"].items():  # AdamW magnifies reduction-order noise in
        torch.testing.assert_close(got["trained"][name], tensor, rtol=1e-4, atol=2e-5,  # tiny gradients
                                   msg=lambda m, name=name: f"{name}: {m}")
    for name, tensor in got["trained"].items():  # resumed: the frozen parent read again, the rest saved
        assert torch.equal(got["resumed"][name], tensor), name
    trained = [k for k, v in expected["trained"].items() if not torch.equal(v, expected["loaded"][k])]
    assert trained and all(".lora_" in k for k in trained) == bool(lora)  # LoRA moves adapters only
    total = sum(t.numel() * 4 for k, t in expected["loaded"].items() if ".lora_" not in k)
    assert got["read"] < 0.6 * total  # rank 0 read its own half (and the 1-D biases' odd rows)


@pytest.mark.bad_input
def test_a_parent_missing_a_weight_is_refused_naming_it(sharded):
    assert "no tensor for the model's blocks.1.mlp.fc.weight" in sharded["incomplete"]
    assert "gpt-incomplete" in sharded["incomplete"] and "train.strategy: ddp" in sharded["incomplete"]


def test_each_rank_loading_its_shard_peaks_under_two_thirds_of_a_whole_load():
    from benchmarks.sharded_load import measure

    row = measure("llama")
    assert row["file_bytes"] > 800 * 2**20  # a few hundred million fp32 parameters
    assert row["read"] == [pytest.approx(row["file_bytes"] / 2, rel=0.01)] * 2  # each its own half
    assert row["ratio"] <= 0.65, row
