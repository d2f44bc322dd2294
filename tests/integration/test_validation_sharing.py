"""Validation shares its batches out over the ranks instead of every rank running all of them,
and the loss is still the single-process one: with the real DDP and FSDP2 over gloo in 2
processes, 3 fixed batches (an odd count, so one rank runs a spare, uncounted forward)."""

import os
import time
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist

from lm_pipeline.model.transformer import GPT, GPTConfig
from lm_pipeline.training.batches import fixed_batches
from tests.services import free_port, spawn

pytestmark = [pytest.mark.metrics, pytest.mark.distributed]

TOKENS = np.random.default_rng(1).integers(0, 64, size=4000)
BATCHES = 3


def losses_and_forwards(rank: int, world: int, strategy: str, port: int, out: str) -> None:
    if world > 1:
        os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo"}
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    result = validate_once(world, strategy)
    torch.save(result, f"{out}.{rank}")
    if world > 1:
        dist.destroy_process_group()


def validate_once(world: int, strategy: str) -> dict:
    """The loss and this rank's forwards. The model lives only here, so it dies before the
    process group (see test_gradients)."""
    from torch.nn.parallel import DistributedDataParallel

    from lm_pipeline.training.loop import validation_loss
    from lm_pipeline.training.parallel import parallelize

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32))
    forwards = []
    model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    if world > 1:
        model = (DistributedDataParallel(model) if strategy == "ddp"
                 else parallelize(model, "fsdp", torch.device("cpu")))
    batches = fixed_batches(TOKENS, BATCHES, 4, 16)
    return {"loss": validation_loss(model, batches, torch.device("cpu")), "forwards": len(forwards)}


def run(tmp_path, world: int, strategy: str) -> list[dict]:
    out = str(tmp_path / strategy)
    args = (world, strategy, free_port(), out)
    if world > 1:
        spawn(losses_and_forwards, args, world)
    else:
        losses_and_forwards(0, *args)
    return [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(world)]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return run(tmp_path_factory.mktemp("single"), 1, "single")[0]


def test_one_process_runs_every_batch_once(single):
    assert single["forwards"] == BATCHES


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_split_the_batches_and_agree_on_the_single_process_loss(tmp_path, single, strategy):
    ranks = run(tmp_path, 2, strategy)
    assert [r["forwards"] for r in ranks] == [2, 2]  # 3 batches: 2 + 1 and a spare, not 3 + 3
    for r in ranks:
        assert r["loss"] == pytest.approx(single["loss"], rel=1e-6)


def budget_decisions(rank: int, world: int, port: int, out: str) -> None:
    from lm_pipeline.training.loop import time_ran_out

    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo"}
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    # Each rank's clock: one started an hour ago, the other 30 s ago. A minute's budget is spent
    # on every rank if it is on rank 0's clock, on none if not (and never without a budget).
    now, cpu = time.perf_counter(), torch.device("cpu")
    decisions = []
    for late_rank in (0, 1):
        start = now - (3600 if rank == late_rank else 30)
        decisions += [time_ran_out(start, 1.0, cpu), time_ran_out(start, None, cpu)]
    torch.save(decisions, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.optimization
def test_the_time_budget_is_rank_0s_decision_so_every_rank_stops_at_the_same_validation(tmp_path):
    out = str(tmp_path / "budget")
    spawn(budget_decisions, (2, free_port(), out), 2)
    expected = [True, False, False, False]  # rank 0 an hour in: stop; rank 1 an hour in: go on
    assert [torch.load(f"{out}.{rank}", weights_only=True) for rank in (0, 1)] == [expected] * 2
