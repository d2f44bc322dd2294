"""Complete training state in a checkpoint folder, so a resumed run continues exactly.

  .metadata, __{r}_0.distcp   model and optimizer through torch.distributed.checkpoint (DCP):
                              each rank writes its own shards, nothing is gathered on one rank;
                              trainable weights only (with LoRA: the adapters; the frozen base
                              is rebuilt from its source)
  trainer_state.json          step, tokens seen, best validation loss so far (rank 0)
  rng_rank{r}.pt              every RNG of rank r: python, numpy, torch CPU and CUDA
  manifest_rank{r}.json       the sha256 of every file rank r wrote

Each rank writes into its own folder and Ray Train merges them into one checkpoint. The data
loader's position needs no entry: each step's batch is a pure function of (seed, step), so
restoring `step` restores the position.

Reading runs nothing the checkpoint holds: DCP's pickles are read through checkpoint_reader (an
allow-list for the metadata, `weights_only=True` for values), RNG states with `weights_only=True`.
Before anything is read, every file of the merged folder must be listed in a manifest with its
hash, and match: a checkpoint altered, swapped or added to after it was written is refused, naming
the file. The manifests live beside the files, so they stop accidents and partial tampering;
whoever can write checkpoint storage can still change the weights (docs/production.md).
"""

from __future__ import annotations

import random
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from lm_pipeline.hashing import file_sha256
from lm_pipeline.io import read_json, write_json
from lm_pipeline.training.checkpoint_reader import SafeLoadPlanner, SafeReader, UnsafeCheckpoint

TRAINER_STATE_FILE = "trainer_state.json"
MANIFEST_GLOB = "manifest_rank*.json"


class CheckpointError(ValueError):
    """A checkpoint whose files are not the ones that were written."""


@dataclass
class TrainState:
    step: int = 0
    tokens_seen: int = 0
    best_val_loss: float | None = None  # the lowest validation loss so far, and when
    best_step: int = 0
    evals_since_best: int = 0  # validations without improvement (early stopping counts them)
    stopped: bool = False  # stopped early (patience or the time budget): a resume has nothing to train

    def record_validation(self, val_loss: float, min_delta: float) -> bool:
        """Note a validation loss; True when it is a new best."""
        if self.best_val_loss is None or val_loss < self.best_val_loss - min_delta:
            self.best_val_loss, self.best_step, self.evals_since_best = val_loss, self.step, 0
            return True
        self.evals_since_best += 1
        return False


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


# Frozen weights (LoRA's base) are neither saved nor loaded; strict=False lets them stay as built,
# while DCP itself fails on any requested (trainable) key the checkpoint lacks.
TRAINABLE = StateDictOptions(ignore_frozen_params=True, strict=False)


def frozen_names(model) -> frozenset[str]:
    """The weights training leaves alone (LoRA's base), tied aliases included (torch's own filter
    misses those: a tied output head would be saved). Taken from the plain model, before DDP,
    FSDP, activation checkpointing or compile wrap it: the names DCP uses."""
    return frozenset(n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad)


def trainable_state(model, optimizer, frozen: frozenset[str]) -> dict:
    model_sd, optim_sd = get_state_dict(model, optimizer, options=TRAINABLE)
    return {"model": {k: v for k, v in model_sd.items() if k not in frozen}, "optimizer": optim_sd}


def save(folder: Path, model, optimizer, state: TrainState, rank: int, frozen: frozenset[str]) -> None:
    """Collective: every rank calls it with its own (local) folder."""
    folder = Path(folder)
    with single_process_ok():
        dcp.save(trainable_state(model, optimizer, frozen), checkpoint_id=folder)
    if rank == 0:
        write_json(folder / TRAINER_STATE_FILE, asdict(state))
    torch.save(rng_state(), folder / rng_file(rank))
    write_json(folder / f"manifest_rank{rank}.json",
               {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file()})


def verify(folder: Path) -> None:
    """Refuse a merged checkpoint folder unless every file is listed in a manifest, unchanged."""
    folder = Path(folder)
    manifests = sorted(folder.glob(MANIFEST_GLOB))
    if not manifests:
        raise CheckpointError(f"checkpoint {folder}: no manifest_rank*.json, so its files cannot be "
                              "checked (written by an older version, or altered); refusing to load it")
    listed: dict[str, str] = {}
    for manifest in manifests:
        listed |= read_manifest(manifest)
    present = {p.name for p in folder.iterdir() if p.is_file() and not p.match(MANIFEST_GLOB)}
    problems = [f"{name}: not in any manifest" for name in sorted(present - listed.keys())]
    problems += [f"{name}: listed but missing" for name in sorted(listed.keys() - present)]
    problems += [f"{name}: sha256 differs from the manifest" for name in sorted(present & listed.keys())
                 if file_sha256(folder / name) != listed[name]]
    if problems:
        raise CheckpointError(f"checkpoint {folder} was altered after it was written, refusing to load it: "
                              + "; ".join(problems))


def read_manifest(path: Path) -> dict[str, str]:
    try:
        hashes = read_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint manifest {path} is not valid JSON: {err}") from None
    if not isinstance(hashes, dict) or not all(isinstance(v, str) for v in hashes.values()):
        raise CheckpointError(f"checkpoint manifest {path} is not a mapping of file name to sha256")
    return hashes


def load(folder: Path, model, optimizer, rank: int, frozen: frozenset[str]) -> TrainState:
    """Collective: every rank reads its shards of the merged checkpoint folder."""
    folder = Path(folder)
    verify(folder)
    saved = trainable_state(model, optimizer, frozen)
    read_dcp(saved, folder)
    set_state_dict(model, optimizer, model_state_dict=saved["model"], optim_state_dict=saved["optimizer"],
                   options=TRAINABLE)
    rng = folder / rng_file(rank)
    if rng.exists():  # absent when resuming with more ranks than were saved
        set_rng_state(torch.load(rng, weights_only=True))
    return TrainState(**read_json(folder / TRAINER_STATE_FILE))


def load_weights(folder: Path, model) -> TrainState:
    """Into a plain, unwrapped model in a single process (the driver's export)."""
    verify(folder)
    frozen = frozen_names(model)
    weights = get_model_state_dict(model, options=TRAINABLE)
    saved = {"model": {k: v for k, v in weights.items() if k not in frozen}}
    read_dcp(saved, Path(folder))
    set_model_state_dict(model, saved["model"], options=TRAINABLE)
    return TrainState(**read_json(Path(folder) / TRAINER_STATE_FILE))


def read_dcp(state_dict: dict, folder: Path) -> None:
    """Fill `state_dict` in place from the folder's DCP files; a pickle that names anything but
    data is refused before it runs."""
    reader = SafeReader(folder)
    try:
        reader.read_metadata()  # DCP would report a refused metadata as a bare AssertionError
        with single_process_ok():
            dcp.load(state_dict, checkpoint_id=folder, storage_reader=reader, planner=SafeLoadPlanner())
    except UnsafeCheckpoint as err:
        raise CheckpointError(f"checkpoint {folder}: {err}; refusing to load it") from None
    except CheckpointException as err:  # how DCP reports what a rank raised
        refused = [e for e, _ in err.failures.values() if isinstance(e, UnsafeCheckpoint)]
        if not refused:
            raise
        raise CheckpointError(f"checkpoint {folder}: {refused[0]}; refusing to load it") from None


@contextmanager
def single_process_ok():
    """DCP warns when no process group exists; a run in one process (and the export) means it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        yield


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_initialized():  # this rank's own device's (parallelize made it current)
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, list):  # written before: every visible device's, by index (the same
            # device's where the placement did not change)
            cuda = cuda[torch.cuda.current_device()] if torch.cuda.current_device() < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)
