"""Data-parallel strategies: DDP (replicated weights) or FSDP2 (sharded weights).

Both wrap the same GPT; the loop sees one interface: `parallelize`, `gradient_sync` and
`unwrap`. Checkpoints go through torch.distributed.checkpoint (see state.py), which saves either
one without gathering the model on a single rank.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from lm_pipeline.model.transformer import GPT


def parallelize(model: GPT, strategy: str, device: torch.device):
    """Place the model on this worker's device and wrap it for data-parallel training."""
    import ray.train.torch

    if strategy == "ddp":
        return ray.train.torch.prepare_model(model)  # moves to the device, wraps in DDP if world > 1
    from torch.distributed.fsdp import fully_shard

    model.to(device)
    for block in model.blocks:  # one all-gather per block: only one block is whole at a time
        fully_shard(block)
    fully_shard(model)  # the rest: embeddings (tied with the head), final norm
    return model


def unwrap(model) -> GPT:
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
