"""Data-parallel strategies: DDP (replicated weights) or FSDP2 (sharded weights).

Both wrap either backend's model (the built-in GPT or HFCausalLM): the decoder layers come from
the model's `layers()`, so nothing here knows a family. The loop sees one interface:
`parallelize`, `gradient_sync`, `unwrap`, and `checkpoint_activations`. Checkpoints go through
torch.distributed.checkpoint (see state.py), which saves either one without gathering the model
on a single rank.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
import torch.nn as nn


def parallelize(model: nn.Module, strategy: str, device: torch.device):
    """Place the model on this worker's device and wrap it for data-parallel training."""
    if device.type == "cuda" and device.index is not None:  # collectives use the current device
        torch.cuda.set_device(device)
    if strategy == "ddp":
        model = model.to(device)
        # One worker (in this process, or alone on Ray) has nothing to replicate with.
        if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    if not any(p.is_meta for p in model.parameters()):  # a meta model is placed as it is filled
        model.to(device)
    for layer in model.layers():  # one all-gather per decoder layer: only one is whole at a time
        fully_shard(layer)
    fully_shard(model)  # the rest: embeddings (tied with the head), final norm
    return model


def checkpoint_activations(model: nn.Module) -> None:
    """Keep only each decoder layer's input in the forward pass and recompute the rest in the
    backward pass. The wrapper leaves parameter names (and so checkpoints) unchanged."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    layers = set(model.layers())
    wrapper = partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    apply_activation_checkpointing(model, checkpoint_wrapper_fn=wrapper, check_fn=lambda m: m in layers)


def unwrap(model) -> nn.Module:
    return getattr(model, "module", model)  # DDP keeps the model in .module; FSDP2 is in place


@contextmanager
def gradient_sync(model, enabled: bool):
    """Skip the gradient all-reduce / reduce-scatter on accumulation micro-steps."""
    if enabled:
        yield
    elif hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:  # a single process: nothing to synchronize
        yield
