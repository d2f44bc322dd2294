"""What a training run shows while it runs: rank 0's progress, and the seconds each phase of the
loop takes (logged as time_<phase>_s)."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager


class PhaseClock:
    """Seconds per phase of the loop (setup, steps, validation, logging, checkpoints), measured on
    every rank and logged by rank 0 as time_<phase>_s: what a run spends besides its steps."""

    def __init__(self):
        self.start, self.seconds = time.perf_counter(), defaultdict(float)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)


class Progress:
    """Rank 0's progress: a bar drawn on the driver's terminal, or periodic log lines."""

    def __init__(self, session, start: int, total: int, bar: bool):
        self.enabled, self.total, self.bar = session.rank == 0, total, None
        self.every = max(1, total // 10)
        if self.enabled and bar:
            self.bar = session.progress_bar(total, start)

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
