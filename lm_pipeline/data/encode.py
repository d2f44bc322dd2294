"""Documents to token ids, a batch at a time: on this machine's cores, or as Ray Data across a cluster.

Both paths cut documents.jsonl into batches, encode each batch with `encode_texts` and give the
batches back in file order, so preprocessing writes the same shards from either. A batch is a
dict of equal-length columns, one entry per document:

    digest      8 bytes that tell texts apart (duplicates are dropped by the writer, first copy kept)
    split       train, val or test (a function of the text)
    ids         the token ids and the closing end-of-text token, as bytes of the shard dtype
    characters  len(text); text_bytes: its UTF-8 length
    unknown     how many ids are <unk>; text: the text when there are any (for examples), else ""

On Ray (data/parallel.py), every CPU of the cluster encodes, one single-threaded task per CPU,
and the driver writes the shards in order.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from lm_pipeline.cluster import worker_env
from lm_pipeline.config import Config, SplitConfig
from lm_pipeline.data.documents import read_documents
from lm_pipeline.data.parallel import ray_map_lines
from lm_pipeline.data.split import assign_split, text_digest
from lm_pipeline.data.tokenizer import UNK, eot_id, reading_text

log = logging.getLogger(__name__)

ENCODE_BATCH_CHARS = 2_000_000  # text per local encode_batch call: enough to keep every core busy
RAY_BATCH_DOCUMENTS = 2048  # documents per Ray task: a few MB of text, seconds of work
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
    kwargs = {"tokenizer_json": tokenizer.to_str(), "split": cfg.split.model_dump(),
              "dtype": np.dtype(dtype).name}
    yield from ray_map_lines(
        "preprocess: encoding", source, encode_lines, kwargs, cfg.ray_address, RAY_BATCH_DOCUMENTS,
        # One thread per task: Ray runs a task per CPU, so the tokenizer's own threads would oversubscribe.
        env=worker_env(TOKENIZERS_PARALLELISM="false"))


def encode_lines(batch: dict[str, np.ndarray], tokenizer_json: str, split: dict, dtype: str) -> dict:
    """Ray Data task: documents.jsonl lines -> encoded columns (object arrays: bytes stay whole)."""
    texts = [json.loads(line)["text"] for line in batch["text"]]
    columns = encode_texts(texts, tokenizer_from_json(tokenizer_json), SplitConfig(**split), dtype)
    return {name: np.array(values, dtype=object) for name, values in columns.items()}


@functools.lru_cache(maxsize=2)
def tokenizer_from_json(tokenizer_json: str) -> Tokenizer:
    """A worker builds the tokenizer once and reuses it for every task it runs."""
    return reading_text(Tokenizer.from_str(tokenizer_json))
