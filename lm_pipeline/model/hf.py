"""The `hf` backend: any `transformers` causal LM (AutoModelForCausalLM) behind the built-in GPT's
interface, so the training loop, scoring, generation and export treat both alike.

A model comes from a config (from scratch: a folder with config.json, or an inline mapping with
`model_type`) or from a local pretrained folder (`train.init_from: hf:<path>`, as
`hf download` leaves it). Loading never downloads (`local_files_only`), reads only
safetensors (no pickle), and never runs code from the folder (`trust_remote_code` stays off).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lm_pipeline.model.transformer import configure_adamw, padded_positions

# A config's context length under either name: GPT-2 style configs keep it as n_positions, with
# max_position_embeddings an alias that would overwrite it if both were passed.
CONTEXT_KEYS = {"max_position_embeddings", "n_positions"}


class HFCausalLM(nn.Module):
    """A transformers causal LM with GPT's forward: (logits, loss, cache)."""

    def __init__(self, hf_model: nn.Module, block_size: int):
        super().__init__()
        self.hf = hf_model
        self.block_size = block_size  # the context the pipeline trains and scores with

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, past=None,
                use_cache: bool = False, label_smoothing: float = 0.0,
                attention_mask: torch.Tensor | None = None):
        padding = {}
        if attention_mask is not None:  # left-padded rows, placed where each would be alone
            padding = {"attention_mask": attention_mask.long(),
                       "position_ids": padded_positions(attention_mask)[:, -idx.size(1):]}
        out = self.hf(input_ids=idx, cache=past, use_cache=use_cache, **padding)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(out.logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1,
                                   label_smoothing=label_smoothing)
        return out.logits, loss, out.cache if use_cache else None

    def layers(self) -> list[nn.Module]:
        """The decoder layers, found from the model: the classes it declares it must not split
        (`_no_split_modules`, e.g. LlamaDecoderLayer, GPT2Block), so FSDP shards any family."""
        names = set(getattr(self.hf, "_no_split_modules", None) or ())
        layers = [m for m in self.hf.modules() if type(m).__name__ in names]
        if not layers:
            raise ValueError(f"{type(self.hf).__name__} declares no decoder layer class (_no_split_modules)")
        return layers

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def configure_optimizer(self, lr: float, weight_decay: float, betas: tuple[float, float]):
        return configure_adamw(self, lr, weight_decay, betas)


def config_from(spec: dict | str, vocab_size: int, eot_id: int, block_size: int):
    """A from-scratch model's config: an inline mapping with model_type, or a folder holding
    config.json. The vocabulary and special tokens are the pipeline tokenizer's."""
    from transformers import AutoConfig

    special = dict.fromkeys(("bos_token_id", "eos_token_id", "pad_token_id"), eot_id)
    special["vocab_size"] = vocab_size
    if isinstance(spec, dict):
        fields = dict(spec)
        model_type = fields.pop("model_type", None)
        if not model_type:
            raise ValueError("model.hf_config: an inline config needs model_type (e.g. llama, gpt2, qwen2)")
        if not CONTEXT_KEYS & fields.keys():  # block_size is only the default context length
            fields["max_position_embeddings"] = block_size
        config = AutoConfig.for_model(model_type, **fields)
    else:
        config = AutoConfig.from_pretrained(spec, local_files_only=True, trust_remote_code=False)
    for key, value in special.items():
        setattr(config, key, value)
    return config


def from_config(config, block_size: int) -> HFCausalLM:
    from transformers import AutoModelForCausalLM

    check_context(config, block_size)
    return HFCausalLM(AutoModelForCausalLM.from_config(config, dtype=torch.float32), block_size)


def from_pretrained(folder: Path, block_size: int | None = None) -> HFCausalLM:
    """A local model folder's weights (safetensors only), in fp32 for training and scoring."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()  # a bar per load of a few files is noise in the stage logs

    hf_model = AutoModelForCausalLM.from_pretrained(
        str(folder), local_files_only=True, use_safetensors=True, trust_remote_code=False,
        dtype=torch.float32)
    block_size = block_size or hf_model.config.max_position_embeddings
    check_context(hf_model.config, block_size)
    return HFCausalLM(hf_model, block_size)


def check_context(config, block_size: int) -> None:
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and block_size > limit:
        raise ValueError(f"model.block_size {block_size} exceeds the model's max_position_embeddings {limit}")
