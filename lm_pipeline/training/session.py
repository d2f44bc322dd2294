"""Where the training loop runs, behind the few calls it makes: who am I, which device, the
checkpoint to resume from, report (metrics, and a checkpoint), a progress bar.

- RaySession: a Ray Train worker (any number of workers and nodes; Ray restarts failed ones).
- LocalSession: this process, for one worker without a cluster. It saves what Ray's start-up and
  worker processes cost (about 20 s of a short run on a small machine) and runs the steps on the
  main thread. Its checkpoints are Ray Train's files (checkpoints.RunCheckpoints), so the same
  run folder resumes under either.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from lm_pipeline.training.checkpoints import RunCheckpoints
from lm_pipeline.training.state import CheckpointError


class RaySession:
    def __init__(self):
        import ray
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.where = f"node {ray.get_runtime_context().get_node_id()[:12]}"

    def latest_checkpoint(self):
        import ray.train

        return as_folder(ray.train.get_checkpoint())

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        """Every rank calls it (it is a barrier); Ray merges the ranks' checkpoint folders."""
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(with_placement_group(metrics), checkpoint=checkpoint)

    def progress_bar(self, total: int, initial: int):
        from ray.experimental.tqdm_ray import tqdm  # drawn on the driver's terminal

        return tqdm(total=total, initial=initial, desc="train", unit="step")


@contextmanager
def as_folder(checkpoint) -> Iterator[Path | None]:
    """A checkpoint (Ray's or checkpoints.StoredCheckpoint: both have as_directory) as a local
    folder, or None for none: what the sessions' latest_checkpoint gives the loop."""
    if not checkpoint:
        yield None
        return
    with checkpoint.as_directory() as d:
        try:
            yield Path(d)
        except CheckpointError as err:  # it names the local copy of a bucket's, gone once it is read
            raise CheckpointError(str(err).replace(str(d), stored_path(checkpoint))) from None


def stored_path(checkpoint) -> str:
    """Where the checkpoint is kept: its URL (ours), or its filesystem's path and scheme (Ray's)."""
    path, fs = str(checkpoint.path), getattr(checkpoint, "filesystem", None)
    scheme = getattr(fs, "type_name", "local") if fs is not None else "local"
    return path if "://" in path or scheme == "local" else f"{scheme}://{path}"


def with_placement_group(metrics: dict) -> dict:
    """Tune kills a trial it stops early with its Train controller, but Ray keeps the workers'
    placement group until the job ends: the search frees it by this id (search.free_workers_callback)."""
    import ray

    return metrics | {"placement_group": ray.get_runtime_context().get_placement_group_id() or ""}


class LocalSession:
    rank, world, where = 0, 1, "this process (no Ray)"

    def __init__(self, checkpoints: RunCheckpoints, use_gpu: bool):
        # A finished run, rerun, reports nothing: its result is its last checkpoint's (as on Ray).
        latest = checkpoints.latest_result
        self.checkpoints, self.last_metrics = checkpoints, latest["metrics"] if latest else {}
        self.bar = None
        self.device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")

    def latest_checkpoint(self):
        return as_folder(self.checkpoints.latest())

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        if checkpoint_dir:
            self.checkpoints.add(checkpoint_dir, metrics)
        else:
            self.checkpoints.count_report()
        self.last_metrics = metrics

    def progress_bar(self, total: int, initial: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", file=sys.stderr)
        return self.bar

    def close(self) -> None:
        """After an attempt, failed or not: its bar is closed (a retry draws its own)."""
        if self.bar:
            self.bar.close()
