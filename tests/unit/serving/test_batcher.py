"""The batcher: what waits while the model is busy shares the next batch, answers go to their own
requests, and a failed batch fails the request that failed it only."""

import asyncio
import threading

import pytest

from lm_pipeline.serving.batcher import Batcher


class Model:
    """Doubles each job; busy with a batch until `free` is set (a test decides how long)."""

    def __init__(self):
        self.batches: list[list[int]] = []
        self.free = threading.Event()

    def run(self, jobs: list[int]) -> list[int]:
        self.batches.append(list(jobs))
        self.free.wait(timeout=10)
        if -1 in jobs:
            raise ValueError("a batch that fails")
        return [2 * job for job in jobs]


def test_requests_arriving_while_a_batch_runs_share_the_next_one_and_get_their_own_answers():
    model = Model()

    async def scenario():
        batcher = Batcher(model.run, max_batch_size=4, wait_s=0.01)
        first = asyncio.create_task(batcher.submit(0))
        later = []
        for i in range(1, 7):  # one every 25 ms while the first batch runs (longer than wait_s)
            await asyncio.sleep(0.025)
            later.append(asyncio.create_task(batcher.submit(i)))
        await asyncio.sleep(0.025)
        model.free.set()
        return await first, await asyncio.gather(*later)

    first, later = asyncio.run(scenario())
    assert first == 0 and later == [2, 4, 6, 8, 10, 12]
    assert model.batches == [[0], [1, 2, 3, 4], [5, 6]]  # waited together, capped at max_batch_size


def test_a_failed_batch_is_answered_again_one_request_at_a_time_so_only_its_culprit_fails():
    """One request that fails the forward (running out of memory, a bad input the checks missed)
    failed every request batched with it."""
    model = Model()
    model.free.set()

    async def scenario():
        batcher = Batcher(model.run, max_batch_size=2, wait_s=0.01)
        failing = await asyncio.gather(*(batcher.submit(job) for job in (-1, 3)), return_exceptions=True)
        return failing, await batcher.submit(5)

    (culprit, neighbour), after = asyncio.run(scenario())
    assert isinstance(culprit, ValueError) and neighbour == 6 and after == 10
    assert model.batches == [[-1, 3], [-1], [3], [5]]


@pytest.mark.parametrize("wait_s", [0.0, 0.05])
def test_requests_sent_together_to_an_idle_model_share_the_first_batch(wait_s):
    model = Model()
    model.free.set()

    async def scenario():
        batcher = Batcher(model.run, max_batch_size=8, wait_s=wait_s)
        return await asyncio.gather(*(batcher.submit(i) for i in range(3)))

    assert asyncio.run(scenario()) == [0, 2, 4]
    assert model.batches == [[0, 1, 2]]


def test_a_batch_answered_wrongly_fails_its_culprit_and_a_dead_loop_leaves_nobody_waiting():
    model = Model()
    model.free.set()
    sizes: list[int] = []

    def short_answer(jobs: list[int]) -> list[int]:  # a bug: one result too few
        return model.run(jobs)[:-1] if -2 in jobs else model.run(jobs)

    def count(size: int) -> None:  # a bug in the loop itself, for the batch of three
        sizes.append(size)
        if size == 3:
            raise ValueError("statistics broke")

    async def scenario():
        batcher = Batcher(short_answer, max_batch_size=4, wait_s=0.01, on_batch=count)
        wrong = await asyncio.gather(*(batcher.submit(job) for job in (-2, 3)), return_exceptions=True)
        dead = await asyncio.wait_for(asyncio.gather(*(batcher.submit(job) for job in (1, 2, 3)),
                                                     return_exceptions=True), timeout=5)
        return wrong, dead, await asyncio.wait_for(batcher.submit(4), timeout=5)

    wrong, dead, after = asyncio.run(scenario())
    culprit, neighbour = wrong  # the batch failed, then each was answered alone
    assert isinstance(culprit, RuntimeError) and "0 answers for a batch of 1" in str(culprit)
    assert neighbour == 6
    assert all(isinstance(r, RuntimeError) and "batching loop stopped" in str(r) for r in dead)
    assert after == 8 and sizes == [2, 3, 1]  # a new loop took the next request
