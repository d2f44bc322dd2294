"""The built-in GPT in Hugging Face's GPT-2 layout, so `transformers` and serving stacks load our
model folders (`AutoModelForCausalLM.from_pretrained`), and back.

Same network, other names: `blocks.{i}` is `transformer.h.{i}`, `qkv`/`proj`/`fc` are GPT-2's
Conv1D `c_attn`/`c_proj`/`c_fc`, whose weights are stored transposed (in x out), and the tied
output head is not stored. The MLP's exact GELU is GPT-2's `activation_function: gelu`. Pure torch:
writing the layout needs no `transformers`.
"""

from __future__ import annotations

import torch

from lm_pipeline.model.transformer import GPTConfig

# Our Linear layers -> GPT-2's Conv1D layers (every one of them stores its weight transposed).
GPT2_MODULES = {"qkv": "c_attn", "proj": "c_proj", "fc": "c_fc"}
RENAMES = {f".{ours}.": f".{theirs}." for ours, theirs in GPT2_MODULES.items()}


def gpt2_name(name: str) -> str:
    """Our parameter name -> GPT2LMHeadModel's."""
    for ours, theirs in RENAMES.items():
        name = name.replace(ours, theirs)
    if name.startswith("blocks."):
        name = "h." + name.removeprefix("blocks.")
    return "transformer." + name


def stored_transposed(name: str) -> bool:
    """Whether GPT-2's layout stores our parameter `name` transposed (a Conv1D weight)."""
    return name.endswith(".weight") and any(part in name for part in RENAMES)


def to_gpt2_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our parameter names and shapes -> GPT2LMHeadModel's (lm_head is tied to wte: left out)."""
    out = {}
    for name, tensor in state_dict.items():
        if name == "lm_head.weight":
            continue
        if stored_transposed(name):
            tensor = tensor.t()
        out[gpt2_name(name)] = tensor.contiguous()
    return out


def from_gpt2_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel's names and shapes -> ours (the tied head restored from wte)."""
    out = {}
    for name, tensor in state_dict.items():
        if name == "lm_head.weight" or name.endswith(".attn.bias") or name.endswith(".masked_bias"):
            continue  # tied, or a causal-mask buffer of older GPT-2 files
        name = name.removeprefix("transformer.")
        if name.startswith("h."):
            name = "blocks." + name.removeprefix("h.")
        for ours, theirs in RENAMES.items():
            name = name.replace(theirs, ours)
        if stored_transposed(name):
            tensor = tensor.t()
        out[name] = tensor.contiguous()
    out["lm_head.weight"] = out["wte.weight"]
    return out


def is_gpt2_layout(names) -> bool:
    return any(name.startswith("transformer.") for name in names)


def gpt2_config(config: GPTConfig, eot_id: int) -> dict:
    """config.json for GPT2LMHeadModel, describing exactly our network."""
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
            "vocab_size": config.vocab_size, "n_positions": config.block_size, "n_embd": config.n_embd,
            "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": 4 * config.n_embd,
            "activation_function": "gelu", "layer_norm_epsilon": 1e-5,
            "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
            "bos_token_id": eot_id, "eos_token_id": eot_id, "tie_word_embeddings": True,
            "torch_dtype": "float32"}


def gpt_config(config_json: dict) -> GPTConfig:
    """Our GPTConfig from either config.json layout: GPT-2's, or this project's older own fields."""
    if config_json.get("model_type") != "gpt2":
        return GPTConfig(**config_json)
    return GPTConfig(vocab_size=config_json["vocab_size"], block_size=config_json["n_positions"],
                     n_layer=config_json["n_layer"], n_head=config_json["n_head"],
                     n_embd=config_json["n_embd"], dropout=config_json.get("resid_pdrop", 0.0))
