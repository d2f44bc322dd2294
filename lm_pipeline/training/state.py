"""Complete training state in a checkpoint folder, so a resumed run continues exactly.

  state.pt          model, optimizer, step, tokens seen (rank 0; DDP weights are equal on all ranks)
  rng_rank{r}.pt    every RNG of rank r: python, numpy, torch CPU and CUDA

The data loader's position needs no entry: each step's batch is a pure function of
(seed, rank, step), so restoring `step` restores the position. Everything loads with
weights_only=True (no arbitrary unpickling).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "state.pt"


@dataclass
class TrainState:
    step: int = 0
    tokens_seen: int = 0


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def save(folder: Path, model, optimizer, state: TrainState, rank: int) -> None:
    folder = Path(folder)
    if rank == 0:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "step": state.step, "tokens_seen": state.tokens_seen}, folder / STATE_FILE)
    torch.save(rng_state(), folder / rng_file(rank))


def load(folder: Path, model, optimizer, rank: int) -> TrainState:
    folder = Path(folder)
    saved = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    rng = folder / rng_file(rank)
    if rng.exists():  # absent when resuming with more ranks than were saved
        set_rng_state(torch.load(rng, weights_only=True))
    return TrainState(saved["step"], saved["tokens_seen"])


def read_state(folder: Path) -> dict:
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
