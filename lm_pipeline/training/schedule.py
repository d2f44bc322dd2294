"""Learning-rate schedule: linear warmup, then cosine decay to min_lr."""

from __future__ import annotations

import math

from lm_pipeline.config import TrainConfig


def get_lr(step: int, train: TrainConfig) -> float:
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    progress = (step - train.warmup_steps) / max(1, train.max_steps - 1 - train.warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))  # 1 -> 0
    return train.min_lr + coeff * (train.lr - train.min_lr)
