"""One optimizer step of the training loop, and what it runs under (precision, the rank): the
loop's, and the plan's warm-up, which times the step a run will take."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from lm_pipeline.config import Config
from lm_pipeline.training.batches import random_batch
from lm_pipeline.training.parallel import gradient_sync


def train_step(model, optimizer, tokens, seed: list[int], lr: float, cfg: Config, device) -> float:
    """One optimizer step over grad_accum_steps micro-batches; returns the global mean loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    if not model.training:  # after a validation; train() walks every module (0.1 ms a step)
        model.train()
    accum = cfg.train.grad_accum_steps
    rank, world = distributed_rank_and_size()
    total = torch.zeros((), device=device)
    for micro in range(accum):
        x, y = random_batch(tokens, cfg.train.batch_size, cfg.model.block_size, seed, rank, world,
                            micro, accum)
        with gradient_sync(model, enabled=micro == accum - 1), autocast(device, cfg.train.precision):
            _, loss, _ = model(x.to(device), y.to(device), label_smoothing=cfg.train.label_smoothing)
            (loss / accum).backward()
        total += loss.detach().float()
    if world > 1:  # the loss of the whole global batch, as one worker would have computed it
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.AVG)
    if cfg.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total.item() / accum


def with_precision(cfg: Config, device: torch.device) -> Config:
    """train.precision auto made what this worker's device runs best: bf16 on a GPU that has it."""
    if cfg.train.precision != "auto":
        return cfg
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    train = cfg.train.model_copy(update={"precision": "bf16" if bf16 else "fp32"})
    return cfg.model_copy(update={"train": train})


def autocast(device: torch.device, precision: str):
    """bf16 autocast keeps fp32 master weights and optimizer state; fp32 runs as is."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def enable_fast_math(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for fp32 matmuls
        torch.backends.cudnn.allow_tf32 = True


def distributed_rank_and_size() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
