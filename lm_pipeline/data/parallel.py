"""documents.jsonl mapped a batch at a time, in file order: on this machine's cores, or as Ray
Data tasks on every CPU of a cluster. Preprocessing (encode.py) and filtering (screen.py) both
stream through here, so either path gives back the same batches in the same order.

On Ray, the file is read on the driver's node in byte ranges that end with a line (no other node
needs a path to it); the driver gets the mapped batches back in order. Locally, a pool of
processes maps batches with a bounded number in flight, so memory does not grow with the corpus.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from lm_pipeline.cluster import init_ray
from lm_pipeline.config import Config

log = logging.getLogger(__name__)

RANGE_BYTES = 64 << 20  # documents.jsonl is read in pieces of about this size, a task each


def ray_map_lines(what: str, source: Path, fn: Callable, fn_kwargs: dict, ray_address: str | None,
                  batch_size: int, env: dict[str, str] | None = None) -> Iterator[dict]:
    """fn(batch) -> columns, for batches of `batch_size` lines ({"text": lines}), as Ray Data tasks
    (one CPU each); the mapped batches in file order (numpy columns)."""
    import ray.data

    init_ray(ray_address, cpus=1)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # outputs keep the file's order
    context.enable_progress_bars = sys.stderr.isatty()
    here = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}  # read where the file is
    pieces = ray.data.from_items([{"start": a, "end": b} for a, b in line_ranges(source, RANGE_BYTES)])
    lines = pieces.map_batches(read_lines, batch_size=1, batch_format="numpy", label_selector=here,
                               fn_kwargs={"path": str(Path(source).resolve())})
    mapped = lines.map_batches(fn, batch_size=batch_size, batch_format="numpy", num_cpus=1,
                               fn_kwargs=fn_kwargs, runtime_env={"env_vars": env or {}})
    log.info("%s on Ray Data (%s CPUs)", what, ray.cluster_resources().get("CPU"))
    yield from mapped.iter_batches(batch_size=None, batch_format="numpy")


def use_ray(cfg: Config, source: Path) -> bool:
    """data.preprocess_on, for preprocessing and filtering: auto takes Ray for a large corpus
    when a cluster is configured."""
    if cfg.data.preprocess_on != "auto":
        return cfg.data.preprocess_on == "ray"
    return bool(cfg.ray_address) and source.stat().st_size >= cfg.data.ray_preprocess_min_bytes


def line_ranges(path: Path, size: int) -> list[tuple[int, int]]:
    """[start, end) byte ranges of about `size` that cover the file, each ending with a line."""
    ranges, start, total = [], 0, Path(path).stat().st_size
    with open(path, "rb") as f:
        while start < total:
            f.seek(min(start + size, total))
            f.readline()  # on to the end of the line the cut fell in
            ranges.append((start, f.tell()))
            start = f.tell()
    return ranges


def read_lines(batch: dict[str, np.ndarray], path: str) -> dict:
    """Ray Data task: one byte range of documents.jsonl -> its lines (a range's worth in memory)."""
    with open(path, "rb") as f:
        f.seek(int(batch["start"][0]))
        data = f.read(int(batch["end"][0]) - int(batch["start"][0]))
    return {"text": np.array([line.decode("utf-8") for line in data.split(b"\n") if line.strip()],
                             dtype=object)}


def line_batches(source: Path, batch_chars: int) -> Iterator[list[str]]:
    """documents.jsonl's lines in batches of about `batch_chars` characters."""
    batch, size = [], 0
    with open(source, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                batch.append(line)
                size += len(line)
            if size >= batch_chars:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def local_map(fn: Callable, batches: Iterator, workers: int | None = None) -> Iterator:
    """fn(batch) for each batch, in order, on `workers` processes (all cores by default); at most
    two batches a worker in flight. One worker, or a single batch, runs in this process."""
    workers = workers or os.cpu_count() or 1
    batches = iter(batches)
    first = next(batches, None)
    second = next(batches, None)
    if first is None:
        return
    if second is None or workers == 1:
        yield from map(fn, [first] + ([second] if second is not None else []))
        yield from map(fn, batches)
        return
    fork = multiprocessing.get_context("fork")  # the workers inherit this process's imports
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=fork) as pool:
        pending = deque([pool.submit(fn, first), pool.submit(fn, second)])
        for batch in batches:
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
            pending.append(pool.submit(fn, batch))
        while pending:
            yield pending.popleft().result()
