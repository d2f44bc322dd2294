"""Gradients, not loss curves: AdamW divides a constant gradient scale away, so a wrong average
(a sum over ranks, a missing 1/accum) would leave the curves of earlier tests looking right.

One optimizer step of the real train_step, with the real DDP and FSDP2 over gloo in 2 processes,
wrapped by the pipeline's own parallelize, and an optimizer that records each gradient when the
step comes (after the clip, before any update): 1 process x batch 16, 2 ranks x batch 8 (DDP and
FSDP), 1 process x 4 micro-batches of 4, and 2 ranks x 2 micro-batches of 4 (DDP's no_sync and
FSDP2's set_requires_gradient_sync(False) on the first) see the same 16 windows and must produce
the same gradients, within float32 reduction-order noise (rtol 1e-5, atol 1e-7). Once with
clipping off (scale errors show) and once with clipping on (FSDP must clip by the norm of the
whole gradient, not of its shard, as DDP does)."""

import os
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist

from lm_pipeline.config import Config
from lm_pipeline.model.transformer import GPT, GPTConfig
from tests.services import free_port, spawn

pytestmark = [pytest.mark.metrics, pytest.mark.distributed]

TOKENS = np.random.default_rng(0).integers(0, 64, size=4000)
CLIPS = {"off": 0.0, "on": 0.05}  # the natural norm here is ~1: 0.05 always clips


class RecordingOptimizer(torch.optim.SGD):
    """lr 0 SGD that keeps a full copy of every gradient when step() is called."""

    def __init__(self, named_parameters):
        named = list(named_parameters)
        super().__init__([p for _, p in named], lr=0.0)
        self.named, self.grads = named, {}

    def step(self, closure=None):
        for name, p in self.named:  # full_tensor() is a collective: every rank, the same order
            grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            self.grads[name.removeprefix("module.")] = grad.detach().clone()


def step_gradients(world: int, strategy: str, batch: int, accum: int, clip: float) -> dict:
    """The gradients of one train_step. The model dies on return: a DDP reducer that outlives its
    process group can hang its process at exit (seen here, about one run in two)."""
    from lm_pipeline.training.parallel import parallelize
    from lm_pipeline.training.step import train_step

    cfg = Config.model_validate({"model": {"block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32},
                                 "train": {"batch_size": batch, "grad_accum_steps": accum,
                                           "grad_clip": clip}})
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32))
    model = parallelize(model, strategy, torch.device("cpu"))
    optimizer = RecordingOptimizer(model.named_parameters())
    train_step(model, optimizer, TOKENS, [1337, 0], 0.0, cfg, torch.device("cpu"))
    return optimizer.grads


def gradients(rank: int, world: int, splits: dict, port: int, out: str) -> None:
    """Each split's gradients, with clipping off and on, in one process group of `world` ranks."""
    if world > 1:
        os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo"}
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    results = {name: {label: step_gradients(world, strategy, batch, accum, clip)
                      for label, clip in CLIPS.items()}
               for name, (strategy, batch, accum) in splits.items()}
    if rank == 0:
        torch.save(results, out)
    if world > 1:
        dist.destroy_process_group()


def run(tmp_path, world: int, splits: dict) -> dict:
    out = str(tmp_path / f"world-{world}.pt")
    args = (world, splits, free_port(), out)
    if world > 1:
        spawn(gradients, args, world)
    else:
        gradients(0, *args)
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The splits as (strategy, batch per rank, micro-batches); the 2-rank ones share one pair of
    processes (each starts an interpreter and imports torch)."""
    tmp = tmp_path_factory.mktemp("gradients")
    one_process = {"single": ("ddp", 16, 1), "accum": ("ddp", 4, 4)}
    two_ranks = {"ddp": ("ddp", 8, 1), "fsdp": ("fsdp", 8, 1), "ddp_accum": ("ddp", 4, 2),
                 "fsdp_accum": ("fsdp", 4, 2)}
    return run(tmp, 1, one_process) | run(tmp, 2, two_ranks)


def global_norm(grads: dict) -> float:
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())))


@pytest.mark.parametrize("split", ["ddp", "fsdp", "accum", "ddp_accum", "fsdp_accum"])
@pytest.mark.parametrize("clip", list(CLIPS))
def test_every_split_of_the_batch_gives_the_single_process_gradient(runs, split, clip):
    reference, grads = runs["single"][clip], runs[split][clip]
    assert grads.keys() == reference.keys() and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], rtol=1e-5, atol=1e-7, msg=name)


def test_clipping_scales_to_the_norm_of_the_whole_gradient(runs):
    unclipped = global_norm(runs["single"]["off"])
    assert unclipped > 2 * CLIPS["on"]  # the clip is active
    for split in ("single", "ddp", "fsdp", "accum", "ddp_accum", "fsdp_accum"):
        assert global_norm(runs[split]["on"]) == pytest.approx(CLIPS["on"], rel=1e-4), split
