"""Before launch: what a training run takes per rank, and whether it fits (`lmp plan`; the train
stage logs the same block, records it in the MLflow run, and refuses a plan that does not fit
before any worker starts).

The model is built on the meta device (no memory, any size) to count its parameters. Memory per
rank, in bytes, for fp32 weights (mixed precision keeps fp32 master weights):

  weights      4 N, over the ranks under FSDP, plus two decoder layers gathered whole (the one
               computing and the one prefetched)
  gradients    4 N_trainable, over the ranks under FSDP; DDP keeps a second copy in its buckets
  optimizer    AdamW's two moments, 8 N_trainable, over the ranks under FSDP
  activations  what the backward pass keeps per micro-batch: each decoder layer's tensors (all of
               them, or only its input under activation checkpointing, plus one layer recomputed),
               and the logits at the loss
  runtime      what torch's first forward and backward add to a worker beyond its import
  process      the size of this process before any model (a worker imports as much)

The activation and runtime constants were fitted to peaks measured on the built-in GPT, on the CPU
in fp32 (`lmp plan --warmup-steps` measures one worker's peak here; benchmarks/plan.py compares
the estimate with measured peaks of DDP and FSDP ranks too; docs/scale.md).
"""

from __future__ import annotations

import ctypes
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from lm_pipeline.config import Config
from lm_pipeline.model import parent as parents

log = logging.getLogger(__name__)

MiB, GiB = 1 << 20, 1 << 30
# Fitted to the peaks of 14 shapes trained on the CPU in fp32 (within 22%, most within 10%):
LAYER_FLOATS_PER_EMBD = 10  # floats a token keeps per decoder layer, per n_embd (fused attention
#                             keeps no T x T scores)
LORA_FLOATS_PER_EMBD = 14  # what PEFT's adapters add per decoder layer (their inputs and outputs)
LOGIT_COPIES = 2.8  # logits, their log-softmax and its gradient meet at the loss
RUNTIME_BYTES = 220 * MiB  # what torch's first training step adds (thread pools, kernel caches)
COLLECTIVES_BYTES = 60 * MiB  # and a process group's buffers, with more than one rank
ASSUMED_MFU = 0.4  # for a time from train.peak_tflops when nothing was measured
# Dense peaks of known accelerators in the precision a run computes in, for MFU (train.peak_tflops
# overrides): bf16 tensor cores, and TF32 for fp32 (the loop turns TF32 on).
PEAK_TFLOPS = {"bf16": {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0},
               "fp32": {"H100": 494.0, "H200": 494.0, "A100": 156.0, "L4": 60.0}}


class PlanError(ValueError):
    """A run that will not fit the workers' memory; the message names the settings to change."""


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of the network."""

    params: int
    trainable: int
    n_layer: int
    n_embd: int
    n_head: int
    vocab_size: int
    layer_params: int  # the largest decoder layer's


@dataclass(frozen=True)
class Plan:
    shape: Shape
    strategy: str
    world: int
    micro_batch: int
    block_size: int
    tokens_per_step: int
    flops_per_token: float
    memory: dict[str, float]
    budget: float | None  # bytes a worker may use; None when unknown
    max_steps: int
    step_seconds: float | None = None
    timed_by: str = ""  # how step_seconds was found
    measured_peak: float | None = None  # what the model added to one worker here, at its peak
    advice: list[str] = field(default_factory=list)

    @property
    def per_rank(self) -> float:
        return sum(self.memory.values())

    @property
    def fits(self) -> bool:
        return self.budget is None or self.per_rank <= self.budget

    def metrics(self) -> dict[str, float]:
        return {"plan.params": self.shape.params, "plan.trainable_params": self.shape.trainable,
                "plan.flops_per_token": self.flops_per_token, "plan.tokens_per_step": self.tokens_per_step,
                "plan.memory_per_rank_bytes": self.per_rank,
                **{f"plan.memory_{k}_bytes": v for k, v in self.memory.items()}}

    def lines(self) -> list[str]:
        s = self.shape
        out = [f"plan: {s.params:,} parameters, {s.trainable:,} trainable ({s.trainable / s.params:.2%}); "
               f"{self.world} x {self.strategy}",
               f"  FLOPs per token    {self.flops_per_token:.3g} (training: forward and backward)",
               f"  tokens per step    {self.tokens_per_step:,} ({self.micro_batch} x {self.block_size} per "
               f"micro-batch)",
               f"  memory per rank    {gib(self.per_rank)}"
               + (f" of {gib(self.budget)} a worker has" if self.budget else " (no budget known: set "
                  "train.worker_memory_gb)")]
        out += [f"    {name:<12} {gib(size)}" for name, size in self.memory.items()]
        if self.measured_peak:
            out.append(f"  measured here      {gib(self.measured_peak)} at the peak (the estimate without "
                       f"process: {gib(self.per_rank - self.memory['process'])})")
        if self.step_seconds:
            hours = self.step_seconds * self.max_steps / 3600
            out.append(f"  time               {self.step_seconds:.3g} s a step, {hours:.3g} h for "
                       f"{self.max_steps:,} steps ({self.timed_by})")
        if not self.fits:
            out.append("  DOES NOT FIT: " + "; ".join(self.advice))
        return out


def gib(size: float) -> str:
    return f"{size / GiB:.2f} GiB" if size >= GiB else f"{size / MiB:.0f} MiB"


def peak_tflops(device, precision: str) -> float:
    """`device`'s dense peak for `precision` (bf16 or fp32), 0 when unknown (a CPU)."""
    import torch

    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS[precision].items() if k in name), 0.0)


def training_flops_per_token(shape: Shape, block_size: int) -> float:
    """Forward 2N and backward 4N per token (PaLM appendix B), where a frozen weight's backward
    computes only its input's gradient (2N, not 4N): 4N + 2N_trainable. Attention adds 12 L d T."""
    return 4 * shape.params + 2 * shape.trainable + 12 * shape.n_layer * shape.n_embd * block_size


def memory_per_rank(shape: Shape, cfg: Config, world: int) -> dict[str, float]:
    fsdp = cfg.train.strategy == "fsdp" and world > 1
    shards = world if fsdp else 1
    root = shape.params - shape.n_layer * shape.layer_params  # embeddings, final norm: FSDP's root unit
    # FSDP gathers two layers (computing, prefetched) and keeps its root whole through the step;
    # their gradients are whole until reduce-scattered. DDP's buckets hold a second gradient copy.
    gathered = 4 * (2 * shape.layer_params + root) if fsdp else 0
    whole_gradients = 4 * (shape.layer_params + root) if fsdp else 0
    bucket_copy = 2 if cfg.train.strategy == "ddp" and world > 1 else 1
    return {"weights": 4 * shape.params / shards + gathered,
            "gradients": 4 * shape.trainable * bucket_copy / shards + whole_gradients,
            "optimizer": 8 * shape.trainable / shards,
            "activations": activation_bytes(shape, cfg),
            "runtime": RUNTIME_BYTES + (COLLECTIVES_BYTES if world > 1 else 0),
            "process": process_bytes()}


def process_bytes() -> float:
    """A worker imports what this process has (torch, the pipeline): its size before any model."""
    import psutil

    return psutil.Process().memory_info().rss


def activation_bytes(shape: Shape, cfg: Config) -> float:
    tokens = cfg.train.batch_size * cfg.model.block_size
    width = 2 if cfg.train.precision == "bf16" else 4  # what autocast saves
    floats_per_embd = LAYER_FLOATS_PER_EMBD + (LORA_FLOATS_PER_EMBD if cfg.lora.r else 0)
    layer = tokens * width * floats_per_embd * shape.n_embd
    layers = (shape.n_layer * tokens * width * shape.n_embd + layer if cfg.train.activation_checkpointing
              else shape.n_layer * layer)
    return layers + LOGIT_COPIES * tokens * shape.vocab_size * 4  # the loss is computed in fp32


def advice(plan_memory: dict[str, float], cfg: Config, budget: float) -> list[str]:
    """The settings that shrink the largest parts, most effective first."""
    state = plan_memory["weights"] + plan_memory["gradients"] + plan_memory["optimizer"]
    tips = []
    if plan_memory["activations"] > state:
        if not cfg.train.activation_checkpointing:
            tips.append("train.activation_checkpointing: true")
        tips.append(f"a smaller train.batch_size (now {cfg.train.batch_size}; train.grad_accum_steps "
                    "keeps the tokens per step)")
    if cfg.train.strategy != "fsdp":
        tips.append("train.strategy: fsdp with more train.num_workers (shards weights, gradients and "
                    "optimizer state)")
    elif state > budget / 2:
        tips.append(f"more train.num_workers (now {cfg.train.num_workers})")
    if cfg.train.init_from and not cfg.lora.r:
        tips.append("lora.r > 0 (trains adapters only: no gradients or optimizer state for the base)")
    return tips


def make_plan(cfg: Config, shape: Shape, budget: float | None, step_seconds: float | None = None,
              timed_by: str = "", measured_peak: float | None = None) -> Plan:
    world = cfg.train.num_workers
    memory = memory_per_rank(shape, cfg, world)
    if step_seconds is None and cfg.train.peak_tflops:
        flops = training_flops_per_token(shape, cfg.model.block_size)
        step_seconds = (flops * cfg.train.batch_size * cfg.model.block_size * cfg.train.grad_accum_steps
                        / (cfg.train.peak_tflops * 1e12 * ASSUMED_MFU))
        timed_by = f"train.peak_tflops {cfg.train.peak_tflops:g} at an assumed MFU of {ASSUMED_MFU}"
    plan = Plan(shape, cfg.train.strategy, world, cfg.train.batch_size, cfg.model.block_size,
                cfg.train.batch_size * cfg.model.block_size * cfg.train.grad_accum_steps * world,
                training_flops_per_token(shape, cfg.model.block_size), memory, budget,
                cfg.train.max_steps, step_seconds, timed_by, measured_peak)
    if not plan.fits:
        plan.advice.extend(advice(memory, cfg, budget))
    return plan


def shape_of(model) -> Shape:
    """Counted on the model as built (on the meta device, it costs nothing)."""
    layers = list(model.layers())
    config = getattr(model, "config", None) or model.hf.config
    get = lambda *names: next(getattr(config, n) for n in names if hasattr(config, n))  # noqa: E731
    return Shape(params=sum(p.numel() for p in model.parameters()),
                 trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                 n_layer=len(layers), n_embd=get("n_embd", "hidden_size"),
                 n_head=get("n_head", "num_attention_heads"), vocab_size=get("vocab_size"),
                 layer_params=max(sum(p.numel() for p in layer.parameters()) for layer in layers))


def worker_budget(cfg: Config, on_this_machine: bool) -> float | None:
    """train.worker_memory_gb, else (workers on this machine) its memory shared by the workers."""
    if cfg.train.worker_memory_gb:
        return cfg.train.worker_memory_gb * GiB
    if not on_this_machine:
        return None
    import psutil

    return psutil.virtual_memory().total / cfg.train.num_workers


def warm_up(cfg: Config, vocab_size: int, eot: int, parent: Path | None,
            steps: int) -> tuple[float, float | None]:
    """(seconds per optimizer step, bytes the model added to this process at its peak) of one
    worker's model trained here, by the loop's own step, on random tokens; the first step is not
    timed. The peak needs Linux (None elsewhere)."""
    import numpy as np
    import torch

    from lm_pipeline.model.backends import build_model
    from lm_pipeline.training.parallel import checkpoint_activations
    from lm_pipeline.training.step import train_step, with_precision

    device = torch.device("cpu")
    cfg = with_precision(cfg, device)
    torch.set_num_threads(cfg.train.cpus_per_worker)
    before = reset_peak()
    model = build_model(cfg.model, cfg.lora, vocab_size, eot, parent, cfg.train.seed)
    if cfg.train.activation_checkpointing:
        checkpoint_activations(model)
    optimizer = model.configure_optimizer(cfg.train.lr, cfg.train.weight_decay,
                                          (cfg.train.beta1, cfg.train.beta2))
    tokens = np.random.default_rng(cfg.train.seed).integers(0, vocab_size, 4 * (cfg.model.block_size + 1))
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        train_step(model, optimizer, tokens, [cfg.train.seed, step], cfg.train.lr, cfg, device)
        times.append(time.perf_counter() - start)
    return min(times[1:]), (proc_status("VmHWM") - before if before else None)


def reset_peak() -> float | None:
    """Give freed heap back to the system and restart this process's peak from now (Linux:
    clear_refs 5); the resident bytes now, or None where that cannot be done."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        return proc_status("VmRSS")
    except OSError:
        return None


def proc_status(key: str) -> float:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(key))
    return int(line.split()[1]) * 1024  # kB


def planned(cfg: Config, meta, on_this_machine: bool, warmup_steps: int = 0) -> Plan:
    """The plan of the run cfg describes on the data `meta` describes; with `warmup_steps`, one
    worker's step time and peak memory measured here on the real model."""
    from lm_pipeline.model.sharded import meta_model

    parent = parents.pinned_folder(cfg.data.processed_dir) if meta.parent else None
    shape = shape_of(meta_model(cfg.model, cfg.lora, meta.vocab_size, meta.eot_id, parent))
    if not warmup_steps:
        return make_plan(cfg, shape, worker_budget(cfg, on_this_machine))
    seconds, peak = warm_up(cfg, meta.vocab_size, meta.eot_id, parent, warmup_steps)
    timed_by = f"measured here over {warmup_steps} steps on {cfg.train.cpus_per_worker} CPU threads"
    return make_plan(cfg, shape, worker_budget(cfg, on_this_machine), seconds, timed_by,
                     peak if cfg.train.num_workers == 1 else None)  # one process is one worker's peak


def check_fits(plan: Plan) -> None:
    """Refuse, before any worker starts, a plan whose ranks would not fit the workers' memory."""
    if not plan.fits:
        raise PlanError(f"train: a rank needs about {gib(plan.per_rank)} but a worker has {gib(plan.budget)} "
                        "(train.worker_memory_gb, or this machine's memory per worker); change "
                        + "; or ".join(plan.advice))
