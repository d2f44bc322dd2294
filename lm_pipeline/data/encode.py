"""Documents to token ids, a batch at a time: on this machine's cores, or as Ray Data across a cluster.

Both paths cut documents.jsonl into batches, encode each batch with `encode_texts` and give the
batches back in file order, so preprocessing writes the same shards from either. A batch is a
dict of equal-length columns, one entry per document:

    digest      8 bytes that tell texts apart (duplicates are dropped by the writer, first copy kept)
    split       train, val or test (a function of the text)
    ids         the token ids and the closing end-of-text token, as bytes of the shard dtype
    characters  len(text); text_bytes: its UTF-8 length
    unknown     how many ids are <unk>; text: the text when there are any (for examples), else ""

On Ray, the file is read on the driver's node in byte ranges that end with a line (no other node
needs a path to it), every CPU of the cluster encodes, one single-threaded task per CPU, and the
driver writes the shards in order.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from lm_pipeline.cluster import init_ray, worker_env
from lm_pipeline.config import Config, SplitConfig
from lm_pipeline.data.documents import read_documents
from lm_pipeline.data.split import assign_split, text_digest
from lm_pipeline.data.tokenizer import UNK, eot_id

log = logging.getLogger(__name__)

ENCODE_BATCH_CHARS = 2_000_000  # text per local encode_batch call: enough to keep every core busy
RAY_BATCH_DOCUMENTS = 2048  # documents per Ray task: a few MB of text, seconds of work
RANGE_BYTES = 64 << 20  # documents.jsonl is read in pieces of about this size, a task each
COLUMNS = ("digest", "split", "ids", "characters", "text_bytes", "unknown", "text")


def encode_texts(texts: list[str], tokenizer: Tokenizer, split: SplitConfig, dtype) -> dict[str, list]:
    """One batch of documents as the columns above."""
    eot, unk = eot_id(tokenizer), tokenizer.token_to_id(UNK)
    batch: dict[str, list] = {name: [] for name in COLUMNS}
    for text, encoding in zip(texts, tokenizer.encode_batch_fast(texts, add_special_tokens=False),
                              strict=True):
        ids = np.asarray([*encoding.ids, eot], dtype=dtype)
        unknown = int(np.count_nonzero(ids == unk)) if unk is not None else 0
        batch["digest"].append(text_digest(text))
        batch["split"].append(assign_split(text, split))
        batch["ids"].append(ids.tobytes())
        batch["characters"].append(len(text))
        batch["text_bytes"].append(len(text.encode("utf-8")))  # decoding would drop <unk>
        batch["unknown"].append(unknown)
        batch["text"].append(text if unknown else "")
    return batch


def use_ray(cfg: Config, source: Path) -> bool:
    """data.preprocess_on: auto takes Ray for a large corpus when a cluster is configured."""
    if cfg.data.preprocess_on != "auto":
        return cfg.data.preprocess_on == "ray"
    return bool(cfg.ray_address) and source.stat().st_size >= cfg.data.ray_preprocess_min_bytes


def local_batches(source: Path, tokenizer: Tokenizer, cfg: Config, dtype) -> Iterator[dict]:
    """Encoded batches of documents.jsonl on this machine (the tokenizer's threads use every core)."""
    texts: list[str] = []
    size = 0
    for doc in read_documents(source):
        texts.append(doc["text"])
        size += len(doc["text"])
        if size >= ENCODE_BATCH_CHARS:
            yield encode_texts(texts, tokenizer, cfg.split, dtype)
            texts, size = [], 0
    if texts:
        yield encode_texts(texts, tokenizer, cfg.split, dtype)


def ray_batches(source: Path, tokenizer: Tokenizer, cfg: Config, dtype) -> Iterator[dict]:
    """Encoded batches of documents.jsonl from Ray Data tasks on every CPU of the cluster, in order.

    Streaming: the file is read a range at a time and Ray Data bounds the blocks in flight, so
    memory does not grow with the corpus."""
    import ray.data

    init_ray(cfg.ray_address, cpus=1)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the shards keep the file's order
    context.enable_progress_bars = sys.stderr.isatty()
    here = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}  # read where the file is
    pieces = ray.data.from_items([{"start": a, "end": b} for a, b in line_ranges(source, RANGE_BYTES)])
    lines = pieces.map_batches(read_lines, batch_size=1, batch_format="numpy", label_selector=here,
                               fn_kwargs={"path": str(Path(source).resolve())})
    encoded = lines.map_batches(
        encode_lines, batch_size=RAY_BATCH_DOCUMENTS, batch_format="numpy", num_cpus=1,
        fn_kwargs={"tokenizer_json": tokenizer.to_str(), "split": cfg.split.model_dump(),
                   "dtype": np.dtype(dtype).name},
        # One thread per task: Ray runs a task per CPU, so the tokenizer's own threads would oversubscribe.
        runtime_env={"env_vars": worker_env(TOKENIZERS_PARALLELISM="false")})
    log.info("preprocess: encoding on Ray Data (%s CPUs)", ray.cluster_resources().get("CPU"))
    yield from encoded.iter_batches(batch_size=None, batch_format="numpy")


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


def encode_lines(batch: dict[str, np.ndarray], tokenizer_json: str, split: dict, dtype: str) -> dict:
    """Ray Data task: documents.jsonl lines -> encoded columns (object arrays: bytes stay whole)."""
    texts = [json.loads(line)["text"] for line in batch["text"]]
    columns = encode_texts(texts, tokenizer_from_json(tokenizer_json), SplitConfig(**split), dtype)
    return {name: np.array(values, dtype=object) for name, values in columns.items()}


@functools.lru_cache(maxsize=2)
def tokenizer_from_json(tokenizer_json: str) -> Tokenizer:
    """A worker builds the tokenizer once and reuses it for every task it runs."""
    return Tokenizer.from_str(tokenizer_json)
