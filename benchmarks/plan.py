"""`lmp plan`'s memory estimate against the measured peak, per rank, on the CPU.

Each configuration trains a few steps with the loop's own pieces (build, activation checkpointing,
DDP or FSDP over gloo, AdamW, train_step) in fresh processes, one per rank, and reads each rank's
peak resident memory. What is compared is what the model adds: the peak less the process's size
before the model was built, against the plan less its `process` term (the size of the process that
made the plan). Prints each configuration and `plan_memory_error_max`, the largest relative error.

    python -m benchmarks.plan            # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import run_ranks, save_results

MODEL = {"n_layer": 6, "n_head": 8, "n_embd": 384, "block_size": 256}
VOCAB, STEPS = 12000, 3
CONFIGS = {  # name: (train section, lora section)
    "full-1": ({"num_workers": 1, "batch_size": 6}, {}),
    "full-1-checkpointed": ({"num_workers": 1, "batch_size": 6, "activation_checkpointing": True}, {}),
    "lora-1": ({"num_workers": 1, "batch_size": 6}, {"r": 8}),
    "ddp-2": ({"num_workers": 2, "batch_size": 6, "strategy": "ddp"}, {}),
    "fsdp-2": ({"num_workers": 2, "batch_size": 6, "strategy": "fsdp"}, {}),
    "fsdp-2-checkpointed": ({"num_workers": 2, "batch_size": 6, "strategy": "fsdp",
                             "activation_checkpointing": True}, {}),
}


def config(train: dict, lora: dict, model: dict):
    from lm_pipeline.config import Config

    return Config.model_validate({"model": model, "lora": lora, "train": {
        "cpus_per_worker": 1, "precision": "fp32", **train,
        **({"init_from": "parent"} if lora else {})}})  # LoRA adapts a parent (weights random here)


def estimate(train: dict, lora: dict, model: dict) -> float:
    """The plan's bytes per rank beyond the process itself."""
    from lm_pipeline.model.sharded import meta_model
    from lm_pipeline.training.plan import make_plan, shape_of

    cfg = config(train, lora, model)
    plan = make_plan(cfg, shape_of(meta_model(cfg.model, cfg.lora, VOCAB, 0)), budget=None)
    return plan.per_rank - plan.memory["process"]


def rank_peak(rank: int, world: int, port: int, train: dict, lora: dict, model: dict) -> int:
    """Train STEPS steps as one rank of `world`; the peak resident bytes the model added."""
    import numpy as np
    import torch

    from lm_pipeline.model.backends import build_model
    from lm_pipeline.training.parallel import checkpoint_activations, parallelize
    from lm_pipeline.training.plan import proc_status, reset_peak
    from lm_pipeline.training.step import train_step

    torch.set_num_threads(1)
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                             world_size=world)
    cfg = config(train, lora, model)
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=200_000)
    before = reset_peak()  # the model's own peak, not the imports'
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.lora, VOCAB, 0)
    if cfg.train.activation_checkpointing:
        checkpoint_activations(model)
    model = parallelize(model, cfg.train.strategy, torch.device("cpu"))
    optimizer = getattr(model, "module", model).configure_optimizer(1e-3, 0.1, (0.9, 0.95))
    for step in range(STEPS):
        train_step(model, optimizer, tokens, [0, step], 1e-3, cfg, torch.device("cpu"))
    if world > 1:
        torch.distributed.destroy_process_group()
    return proc_status("VmHWM") - before


def measure(name: str, model: dict = MODEL) -> dict[str, float]:
    """Every rank in its own process (a fresh peak); the largest rank's peak."""
    train, lora = CONFIGS[name]
    args = ["--config", name, "--model", json.dumps(model)]
    measured = max(run_ranks("benchmarks.plan", train["num_workers"], args))
    planned = estimate(train, lora, model)
    return {"measured": measured, "planned": planned, "error": abs(planned - measured) / measured}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=json.loads, default=MODEL, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank is not None:  # one rank of a measurement
        train, lora = CONFIGS[args.config]
        Path(args.out).write_text(json.dumps(rank_peak(args.rank, args.world, args.port, train, lora,
                                                       args.model)))
        return
    rows = {name: measure(name) for name in CONFIGS}
    print(f"{'configuration':<22} {'measured MiB':>12} {'planned MiB':>12} {'error':>7}")
    for name, row in rows.items():
        print(f"{name:<22} {row['measured'] / 2**20:>12.0f} {row['planned'] / 2**20:>12.0f} "
              f"{row['error']:>7.1%}")
    save_results({"plan_memory_error_max": max(row["error"] for row in rows.values())})


if __name__ == "__main__":
    main()
