"""The per-worker training loop that Ray Train runs on every rank.

The loop only coordinates: restore, then `train_step` until max_steps, with validation, logging
and checkpoints at their intervals. Rank 0 alone logs to MLflow and writes checkpoints; every
rank calls `ray.train.report` the same number of times (it is a barrier).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from lm_pipeline.config import Config
from lm_pipeline.data.preprocess import load_tokens
from lm_pipeline.io import read_json
from lm_pipeline.model.transformer import GPT, GPTConfig
from lm_pipeline.training.batches import fixed_batches, random_batch
from lm_pipeline.training.schedule import get_lr

STATE_FILE = "state.pt"


@dataclass
class TrainState:
    step: int = 0
    tokens_seen: int = 0


def model_config(cfg: Config, vocab_size: int) -> GPTConfig:
    m = cfg.model
    return GPTConfig(vocab_size=vocab_size, block_size=m.block_size, n_layer=m.n_layer,
                     n_head=m.n_head, n_embd=m.n_embd, dropout=m.dropout)


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    cfg = Config.model_validate(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    meta = read_json(cfg.data.processed_dir / "meta.json")

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = GPT(model_config(cfg, meta["vocab_size"]))
    optimizer = model.configure_optimizer(cfg.train.lr, cfg.train.weight_decay,
                                          (cfg.train.beta1, cfg.train.beta2))
    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            restore(os.path.join(d, STATE_FILE), model, optimizer, state, rank)
    ddp_model = ray.train.torch.prepare_model(model)
    device = next(ddp_model.parameters()).device

    train_tokens = load_tokens(cfg.data.processed_dir, "train")
    val_batches = fixed_batches(load_tokens(cfg.data.processed_dir, "val"), cfg.train.eval_batches,
                                cfg.train.batch_size, cfg.model.block_size)
    logger = None
    if rank == 0 and loop_config.get("mlflow_run_id"):
        from lm_pipeline.tracking import MetricLogger

        logger = MetricLogger(loop_config["tracking_uri"], loop_config["mlflow_run_id"])
    progress = Progress(rank, state.step, cfg.train.max_steps, loop_config.get("progress_bar", False))
    tokens_per_step = cfg.train.batch_size * cfg.model.block_size * cfg.train.grad_accum_steps * world

    while state.step < cfg.train.max_steps:
        t0 = time.perf_counter()
        lr = get_lr(state.step, cfg.train)
        loss = train_step(ddp_model, optimizer, train_tokens, [cfg.train.seed, rank, state.step], lr,
                          cfg, device)
        state.step += 1
        state.tokens_seen += tokens_per_step
        metrics = {"train_loss": loss, "lr": lr, "tokens_per_s": tokens_per_step / (time.perf_counter() - t0),
                   "tokens_seen": state.tokens_seen}
        last = state.step == cfg.train.max_steps
        if state.step % cfg.train.eval_interval == 0 or last:
            metrics["val_loss"] = validation_loss(model, val_batches, device)
        if not np.isfinite(loss):
            raise FloatingPointError(f"train loss is {loss} at step {state.step}; lower train.lr "
                                     "or raise train.warmup_steps")
        if logger:
            logger.log(metrics, state.step)
        progress.update(state.step, metrics)
        if state.step % cfg.train.checkpoint_interval == 0 or last:
            if logger:
                logger.flush()  # the curve is complete up to every checkpoint
            report(metrics | {"step": state.step}, model, optimizer, state, rank)
    progress.close()


def train_step(ddp_model, optimizer, tokens, seed: list[int], lr: float, cfg: Config, device) -> float:
    """One optimizer step over grad_accum_steps micro-batches; returns the mean loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    ddp_model.train()
    accum = cfg.train.grad_accum_steps
    total = 0.0
    for micro in range(accum):
        x, y = random_batch(tokens, cfg.train.batch_size, cfg.model.block_size, seed + [micro])
        # Gradients are all-reduced on the last micro-step only.
        sync = micro == accum - 1 or not hasattr(ddp_model, "no_sync")
        with nullcontext() if sync else ddp_model.no_sync():
            _, loss, _ = ddp_model(x.to(device), y.to(device))
            (loss / accum).backward()
        total += loss.item()
    if cfg.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(ddp_model.parameters(), cfg.train.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / accum


@torch.no_grad()
def validation_loss(model: GPT, batches, device) -> float:
    model.eval()
    losses = [model(x.to(device), y.to(device))[1].item() for x, y in batches]
    return float(np.mean(losses))


def report(metrics: dict, model: GPT, optimizer, state: TrainState, rank: int) -> None:
    """Report metrics from every rank; rank 0 attaches the checkpoint (DDP weights are equal)."""
    import ray.train

    tmpdir = tempfile.mkdtemp(prefix="lmp-ckpt-")
    try:
        checkpoint = None
        if rank == 0:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "step": state.step, "tokens_seen": state.tokens_seen},
                       os.path.join(tmpdir, STATE_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(tmpdir)
        ray.train.report(metrics, checkpoint=checkpoint)  # copies the files before returning
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def restore(path: str, model: GPT, optimizer, state: TrainState, rank: int) -> None:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    state.step, state.tokens_seen = saved["step"], saved["tokens_seen"]
    print(f"[rank {rank}] resumed from step {state.step}")


class Progress:
    """Rank 0's progress: a bar drawn on the driver's terminal, or periodic log lines."""

    def __init__(self, rank: int, start: int, total: int, bar: bool):
        self.enabled, self.total, self.bar = rank == 0, total, None
        self.every = max(1, total // 10)
        if self.enabled and bar:
            from ray.experimental.tqdm_ray import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", unit="step")

    def update(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        if self.bar:
            self.bar.update(1)
        elif step % self.every == 0 or step == self.total:
            val = f" val_loss {metrics['val_loss']:.3f}" if "val_loss" in metrics else ""
            print(f"step {step}/{self.total} train_loss {metrics['train_loss']:.3f}{val} "
                  f"lr {metrics['lr']:.2e} {metrics['tokens_per_s']:.0f} tok/s", flush=True)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
