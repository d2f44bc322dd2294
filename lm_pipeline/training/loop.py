"""The per-worker training loop: Ray Train runs it on every rank, or this process runs it alone
(session.py says where, and owns the few calls that differ).

The loop only coordinates: restore, then step -> validate -> log -> checkpoint until max_steps.
The components own their timing: the Validator decides when to validate, the Checkpointer when to
save. Rank 0 alone logs to MLflow; every rank writes its part of each checkpoint and calls
`ray.train.report` the same number of times (it is a barrier).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lm_pipeline.config import Config, TrainConfig
from lm_pipeline.data import published
from lm_pipeline.data.processed import load_tokens, read_meta
from lm_pipeline.model import parent as parents
from lm_pipeline.model.backends import build_model
from lm_pipeline.model.sharded import load_parent_shards, meta_model
from lm_pipeline.tracking import MetricLogger
from lm_pipeline.training import state as checkpoint_state
from lm_pipeline.training.batches import fixed_batches
from lm_pipeline.training.parallel import checkpoint_activations, parallelize, unwrap
from lm_pipeline.training.plan import peak_tflops, shape_of, training_flops_per_token
from lm_pipeline.training.progress import PhaseClock, Progress
from lm_pipeline.training.schedule import get_lr
from lm_pipeline.training.session import RaySession
from lm_pipeline.training.spec import WorkerSpec
from lm_pipeline.training.state import TrainState
from lm_pipeline.training.step import (
    autocast,
    distributed_rank_and_size,
    enable_fast_math,
    train_step,
    with_precision,
)


def train_loop_per_worker(spec: dict) -> None:
    """The function Ray Train runs on each worker, given a WorkerSpec as a dict."""
    train_loop(WorkerSpec.from_dict(spec), RaySession())


def train_loop(spec: WorkerSpec, session) -> None:
    clock = PhaseClock()
    rank, world, device = session.rank, session.world, session.device
    cfg = with_precision(Config.model_validate(spec.config), device)
    processed_dir = published.node_copy(spec.shards_url) if spec.shards_url else cfg.data.processed_dir
    meta = read_meta(processed_dir)
    parent = parents.pinned_folder(processed_dir) if spec.fine_tune else None
    sharded = parent is not None and cfg.train.strategy == "fsdp"  # each rank reads its own shard

    print(f"[rank {rank}/{world}] {session.where} device {device} strategy {cfg.train.strategy} "
          f"precision {cfg.train.precision}", flush=True)
    enable_fast_math(device)
    model = initial_model(cfg, meta, parent, on_meta=sharded)  # a checkpoint overrides its weights
    frozen = checkpoint_state.frozen_names(model)
    shape = shape_of(model)
    flops_per_token = training_flops_per_token(shape, cfg.model.block_size)  # LoRA: fewer
    if rank == 0:
        print(f"[rank 0] {shape.trainable:,} of {shape.params:,} parameters trainable "
              f"({shape.trainable / shape.params:.2%})", flush=True)
    if cfg.train.activation_checkpointing:
        checkpoint_activations(model)
    model = parallelize(model, cfg.train.strategy, device)
    if sharded:
        read = load_parent_shards(model, parent, cfg.train.seed)
        print(f"[rank {rank}] loaded its shard of the parent ({read / 2**20:,.1f} MiB read)", flush=True)
    optimizer = unwrap(model).configure_optimizer(cfg.train.lr, cfg.train.weight_decay,
                                                  (cfg.train.beta1, cfg.train.beta2))
    if cfg.train.compile:
        model = torch.compile(model)
    seed_rank(cfg.train.seed, rank)  # after the shared init; a checkpoint's RNG states replace it
    checkpointer = Checkpointer(model, optimizer, session, cfg.train, frozen)
    state = checkpointer.restore()
    peak = (cfg.train.peak_tflops or peak_tflops(device, cfg.train.precision)) * 1e12 * world

    train_tokens = load_tokens(processed_dir, "train")
    validator = Validator(load_tokens(processed_dir, "val"), train_tokens, device, cfg, checkpointer)
    logger = metric_logger(spec.mlflow_run_id, cfg.tracking_uri, state,
                           restarted=checkpointer.restored) if rank == 0 else None
    progress = Progress(session, state.step, cfg.train.max_steps, spec.progress_bar)
    tokens_per_step = cfg.train.batch_size * cfg.model.block_size * cfg.train.grad_accum_steps * world
    clock.add("setup", time.perf_counter() - clock.start)
    # Where the curve starts (for a fine-tune: the parent on this data). A run restored from its
    # step-0 checkpoint did this already: validating again would log step 0 twice and count the
    # parent's loss twice against early stopping.
    if state.step == 0 and not checkpointer.restored:
        with clock.phase("validation"):
            initial = validator.losses(model)  # every rank: a collective under FSDP
        if logger:
            logger.log(initial, 0)
        if parent:  # the parent is a candidate: a fine-tune never exports worse
            state.record_validation(initial["val_loss"], cfg.train.min_delta)
            with clock.phase("checkpoints"):
                if logger:
                    logger.flush()  # as before every checkpoint: a resume from it logs step 0 no more
                checkpointer.save(state, initial | {"step": 0, "best_step": 0, "early_stopped": False})

    while state.step < cfg.train.max_steps and not state.stopped:
        t0 = time.perf_counter()
        lr = get_lr(state.step, cfg.train)
        loss = guarded_step(model, optimizer, train_tokens, state.step, lr, cfg, device)
        state.step += 1
        state.tokens_seen += tokens_per_step
        step_seconds = time.perf_counter() - t0
        clock.add("steps", step_seconds)
        tokens_per_s = tokens_per_step / step_seconds
        metrics = {"train_loss": loss, "lr": lr, "tokens_per_s": tokens_per_s,
                   "tokens_seen": state.tokens_seen}
        if peak:
            metrics["mfu"] = flops_per_token * tokens_per_s / peak
        improved = False
        if validator.should_validate(state.step):
            with clock.phase("validation"):
                metrics |= validator.losses(model)
            improved = state.record_validation(metrics["val_loss"], cfg.train.min_delta)
        out_of_time = ("val_loss" in metrics and state.step < cfg.train.max_steps
                       and time_ran_out(clock.start, cfg.train.max_minutes, device))
        stop = patience_ran_out(state, cfg.train.early_stopping_patience) or out_of_time
        state.stopped = stop  # in the checkpoint below: a resume of a stopped run trains no further
        with clock.phase("logging"):
            if logger:
                logger.log(metrics | ({"early_stopped_at": state.step} if stop else {}), state.step)
            progress.update(state.step, metrics)
        if "val_loss" in metrics:  # reported at every validation: Tune's schedulers act on them
            reported = metrics | {"step": state.step, "best_step": state.best_step, "early_stopped": stop}
            with clock.phase("checkpoints"):
                if checkpointer.should_save(state.step, improved, stop):
                    if logger:
                        logger.flush()  # the curve is complete up to every checkpoint
                    checkpointer.save(state, reported)
                else:
                    session.report(reported)
        if stop:
            why = (f"the budget of {cfg.train.max_minutes:g} minutes is spent" if out_of_time else
                   f"val_loss has not improved for {state.evals_since_best} validations")
            print(f"[rank {rank}] early stopping at step {state.step}: {why} (best "
                  f"{state.best_val_loss:.4f} at step {state.best_step})", flush=True)
            break
    progress.close()
    if logger:  # where this attempt's time went (a resumed run logs its own attempt's)
        logger.log({f"time_{name}_s": seconds for name, seconds in clock.seconds.items()}, state.step)
        logger.flush()


def initial_model(cfg: Config, meta, parent: Path | str | None, on_meta: bool = False):
    """The model before training: the same on every rank (seeded), from the parent if fine-tuning;
    on_meta: its parameters on the meta device, for load_parent_shards to fill once sharded."""
    torch.manual_seed(cfg.train.seed)
    parent = Path(parent) if parent else None
    if on_meta:
        return meta_model(cfg.model, cfg.lora, meta.vocab_size, meta.eot_id, parent)
    return build_model(cfg.model, cfg.lora, meta.vocab_size, meta.eot_id, parent, cfg.train.seed)


def seed_rank(seed: int, rank: int) -> None:
    """Each rank its own random stream (dropout masks): with one seed every rank would drop the
    same units of its different examples."""
    torch.manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))


def patience_ran_out(state: TrainState, patience: int) -> bool:
    return patience > 0 and state.evals_since_best >= patience


def time_ran_out(start: float, max_minutes: float | None, device: torch.device) -> bool:
    """Whether the budget is spent, as rank 0's clock says: every rank must stop at the same step."""
    if max_minutes is None:
        return False
    spent = torch.tensor([float(time.perf_counter() - start >= max_minutes * 60)], device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast(spent, src=0)
    return bool(spent.item())


class Checkpointer:
    """Owns when checkpoints are written and how: at every checkpoint_interval and the last step
    (resumable), at every new best validation loss (the model to export), and at early stopping.

    Every rank saves its own shards and reports them (a barrier); Ray merges them into one."""

    def __init__(self, model, optimizer, session, train: TrainConfig, frozen: frozenset[str]):
        self.model, self.optimizer, self.session, self.frozen = model, optimizer, session, frozen
        self.rank = session.rank
        self.interval, self.last_step = train.checkpoint_interval, train.max_steps
        self.restored = False

    def restore(self) -> TrainState:
        """The state of the run's latest checkpoint (a fresh one when the run is new)."""
        with self.session.latest_checkpoint() as d:
            if d is None:
                return TrainState()
            state = checkpoint_state.load(d, self.model, self.optimizer, self.rank, self.frozen)
        self.restored = True
        print(f"[rank {self.rank}] resumed from the checkpoint at step {state.step}", flush=True)
        return state

    def is_scheduled(self, step: int) -> bool:
        return step % self.interval == 0 or step == self.last_step

    def should_save(self, step: int, improved: bool, stop: bool) -> bool:
        return self.is_scheduled(step) or improved or stop

    def save(self, state: TrainState, metrics: dict) -> None:
        tmpdir = tempfile.mkdtemp(prefix="lmp-ckpt-")
        try:
            checkpoint_state.save(tmpdir, self.model, self.optimizer, state, self.rank, self.frozen)
            # Both sessions copy the files before report returns, so tmpdir can go after.
            self.session.report(metrics, Path(tmpdir))
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)


class Validator:
    """Owns the validation set (the same windows every time) and when to measure it: every
    eval_interval steps and at every scheduled checkpoint, so each checkpoint has its val_loss.

    It also measures the training split the same way (`train_eval_loss`: as many fixed windows,
    eval mode, no label smoothing), so the generalization gap compares like with like; the
    logged `train_loss` is the optimized one, with dropout and label smoothing."""

    def __init__(self, val_tokens, train_tokens, device, cfg: Config, checkpointer: Checkpointer):
        t = cfg.train
        self.val = fixed_batches(val_tokens, t.eval_batches, t.batch_size, cfg.model.block_size)
        self.train = fixed_batches(train_tokens, t.eval_batches, t.batch_size, cfg.model.block_size)
        self.device, self.precision = device, cfg.train.precision
        self.interval, self.checkpointer = cfg.train.eval_interval, checkpointer

    def should_validate(self, step: int) -> bool:
        return step % self.interval == 0 or self.checkpointer.is_scheduled(step)

    def losses(self, model) -> dict[str, float]:
        return {"val_loss": validation_loss(model, self.val, self.device, self.precision),
                "train_eval_loss": validation_loss(model, self.train, self.device, self.precision)}


def metric_logger(run_id: str | None, tracking_uri: str, state: TrainState, restarted: bool):
    """Rank 0's MLflow logger; on a restart it marks the step and skips steps already logged."""
    if not run_id:
        return None
    logger = MetricLogger(tracking_uri, run_id)
    logged = logger.last_step("train_loss")
    if restarted or logged >= 0:  # an earlier attempt of this run got this far
        logger.log({"resumed_from_step": state.step}, state.step)
        logger.skip_through(logged)
    return logger


def guarded_step(model, optimizer, tokens, step: int, lr: float, cfg: Config, device) -> float:
    """train_step, with out-of-memory and non-finite losses turned into errors that say what to do.

    The check comes before any checkpoint or log, so a bad state is never saved.
    """
    try:
        loss = train_step(model, optimizer, tokens, [cfg.train.seed, step], lr, cfg, device)
    except torch.OutOfMemoryError as err:
        raise MemoryError(
            f"out of memory at step {step + 1} on {device}: lower train.batch_size (and raise "
            "train.grad_accum_steps to keep the global batch), lower model.block_size or model size, "
            "set train.precision: bf16, or train.strategy: fsdp to shard weights") from err
    if not np.isfinite(loss):
        raise FloatingPointError(f"train loss is {loss} at step {step + 1}; lower train.lr, "
                                 "raise train.warmup_steps or set train.grad_clip")
    return loss


@torch.no_grad()
def validation_loss(model, batches, device, precision: str = "fp32") -> float:
    """The mean loss over the batches. Every rank calls it and gets the same value; the ranks
    share the batches out (rank r takes every world-th from r) instead of each running them all.

    Every rank runs the same number of forwards, since FSDP's is collective: where the batches do
    not divide evenly, a rank short of one runs a spare forward that is not counted."""
    model.eval()
    rank, world = distributed_rank_and_size()
    mine = batches[rank::world]
    total = torch.zeros((), device=device)
    with autocast(device, precision):
        for i in range(-(-len(batches) // world)):
            x, y = mine[i] if i < len(mine) else batches[0]
            loss = model(x.to(device), y.to(device))[1].float()
            if i < len(mine):
                total += loss
    sums = torch.stack([total.double(), torch.tensor(float(len(mine)), dtype=torch.float64, device=device)])
    if world > 1:
        torch.distributed.all_reduce(sums)
    return (sums[0] / sums[1]).item()


