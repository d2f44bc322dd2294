"""LoRA through `peft`, for either backend: adapters injected in place, merged for export, and
saved in PEFT's own format (`PeftModel.from_pretrained` loads them onto the exported model's
family).

Injecting in place (not wrapping in a PeftModel) keeps one model interface for the loop: the
built-in GPT and HFCausalLM keep their forward, and only the adapters require gradients, so the
optimizer and the checkpoints hold the adapters alone.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from lm_pipeline.config import LoraConfig
from lm_pipeline.model.hf_format import GPT2_MODULES, gpt2_name

ADAPTER_DIR = "adapter"  # in the exported model folder
GPT_TARGETS = ["qkv", "proj", "fc"]  # the built-in GPT's attention and MLP projections


def network(model: nn.Module) -> nn.Module:
    """What carries the adapters: the built-in GPT itself, or the transformers model inside."""
    return getattr(model, "hf", model)


def target_modules(model: nn.Module, lora: LoraConfig) -> list[str]:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    if lora.target_modules:
        return list(lora.target_modules)
    if network(model) is model:
        return GPT_TARGETS
    model_type = network(model).config.model_type
    if model_type not in DEFAULTS:
        raise ValueError(f"lora.target_modules: peft has no default for {model_type}; name the layers")
    return list(DEFAULTS[model_type])


def peft_config(model: nn.Module, lora: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    conv1d = any(type(m).__name__ == "Conv1D" for m in network(model).modules())  # GPT-2's layout
    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=target_modules(model, lora), fan_in_fan_out=conv1d,
                          task_type="CAUSAL_LM")


def add_lora(model: nn.Module, lora: LoraConfig, seed: int = 0) -> nn.Module:
    """Freeze every weight and inject trainable adapters (B starts at zero: same outputs)."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(peft_config(model, lora), network(model))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_adapter(name) and not p.is_meta:  # meta: sharded.py fills them
                p.copy_(adapter_value(name, p.shape, seed))
    return model


def is_adapter(name: str) -> bool:
    return ".lora_" in name


def adapter_value(name: str, shape: torch.Size, seed: int) -> torch.Tensor:
    """An adapter's starting value, as PEFT draws it (A: Kaiming-uniform, B: zeros; embeddings' A
    zeros, B normal), from the run's seed and the adapter's name. PEFT's own draw comes from the
    global stream, which the base model's construction has used up differently on each path (a
    sharded model is built on the meta device): this one is the same on every path and rank."""
    value = torch.zeros(shape)
    if ".lora_B." in name or ".lora_embedding_A." in name:
        return value
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    if ".lora_embedding_B." in name:
        return value.normal_(generator=generator)
    return nn.init.kaiming_uniform_(value, a=math.sqrt(5), generator=generator)


def has_lora(model: nn.Module) -> bool:
    return any(is_adapter(name) for name, _ in model.named_parameters())


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer and remove the adapters: a plain model again."""
    from peft.tuners.lora import LoraLayer

    root = network(model)
    for name, module in list(root.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(root.get_submodule(parent_name), child, module.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def save_adapter(model: nn.Module, lora: LoraConfig, out_dir: Path, base: str) -> None:
    """The adapters in PEFT's layout: adapter_model.safetensors + adapter_config.json, with the
    exported family's names (the built-in GPT's are GPT-2's)."""
    gpt = network(model) is model
    state = {}
    for name, p in network(model).named_parameters():
        if is_adapter(name):
            name = name.replace(".default.", ".")
            state["base_model.model." + (gpt2_name(name) if gpt else name)] = p.detach().cpu().contiguous()
    config = peft_config(model, lora)
    if gpt:  # GPT-2 keeps these layers as Conv1D (weights stored in x out)
        config.target_modules = sorted(GPT2_MODULES.get(t, t) for t in config.target_modules)
        config.fan_in_fan_out = True
    config.base_model_name_or_path = base
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out_dir))
    save_file(state, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
