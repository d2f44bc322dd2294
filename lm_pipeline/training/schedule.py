"""Learning-rate schedule: linear warmup, then cosine decay to min_lr."""

from __future__ import annotations

import math

from lm_pipeline.config import TrainConfig


def get_lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - 1 - cfg.warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)
