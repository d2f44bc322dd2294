"""Stage 4, preprocess: dedupe, split by document, train the tokenizer, write token shards.

Streams the filtered documents (filter.output_dir/documents.jsonl) twice and never holds the
corpus in memory: once to train the tokenizer on the training split (a seeded sample of it when
the corpus is larger than tokenizer.max_train_chars), once to encode every document in batches,
on all cores (the tokenizer's own threads) or as Ray Data on every CPU of a cluster
(data.preprocess_on; data/encode.py), and write fixed-size shards (data/tokenized.py).

The output, data/processed/ (its format: data/processed.py), is written atomically as one folder.
With train.init_from, the parent model is pinned in it and its tokenizer reused; a corpus that
tokenizer does not cover is refused (see model/parent.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lm_pipeline.config import Config, corpus_description
from lm_pipeline.data import canaries
from lm_pipeline.data.documents import documents_path
from lm_pipeline.data.encode import local_batches, ray_batches
from lm_pipeline.data.parallel import use_ray
from lm_pipeline.data.processed import ProcessedMeta, token_dtype, tokenizer_path, write_meta
from lm_pipeline.data.quality import check_validation_passed, source_of
from lm_pipeline.data.shards import ShardWriter
from lm_pipeline.data.split import SPLITS
from lm_pipeline.data.tokenized import tokenizer_coverage, tokenizer_sample, write_shards
from lm_pipeline.data.tokenizer import eot_id, read_tokenizer, train_tokenizer
from lm_pipeline.hashing import file_sha256
from lm_pipeline.io import atomic_path, remove_leftovers
from lm_pipeline.model import parent as parents
from lm_pipeline.registry import downloads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessResult:
    path: Path
    vocab_size: int
    tokens: dict[str, int]
    duplicates_dropped: int


def run(cfg: Config) -> PreprocessResult:
    out, source = cfg.data.processed_dir, documents_path(cfg.filter.output_dir)
    check_validation_passed(cfg.validate_.report_dir, cfg.validate_.required,
                            source_of(source), source, "preprocess")
    remove_leftovers(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        parent = fetch_parent(cfg, tmp / parents.PARENT_DIR) if cfg.train.init_from else None
        if parent:
            tokenizer = read_tokenizer(tokenizer_path(tmp / parents.PARENT_DIR))
            log.info("preprocess: fine-tuning %s: its tokenizer (%d tokens) encodes this corpus; "
                     "the tokenizer section of params.yaml is not used", parents.describe(parent),
                     tokenizer.get_vocab_size())
        else:
            tokenizer = train_tokenizer(tokenizer_sample(source, cfg), cfg.tokenizer)
        tokenizer.save(str(tokenizer_path(tmp)))
        dtype = token_dtype(tokenizer.get_vocab_size())
        writers = {name: ShardWriter(tmp / name, dtype, cfg.data.shard_tokens) for name in SPLITS}
        encode = ray_batches if use_ray(cfg, source) else local_batches
        counts, duplicates = write_shards(encode(source, tokenizer, cfg, dtype), tokenizer, writers)
        for name in SPLITS:
            if not counts["documents"][name]:
                raise ValueError(f"preprocess: the {name} split is empty ({sum(counts['documents'].values())}"
                                 " documents); add documents or raise split fractions in params.yaml")
        planted = canaries.plant(writers["train"], tokenizer, cfg.canaries, counts)
        coverage = tokenizer_coverage(counts)
        if parent:
            parents.check_tokenizer_covers(coverage, tmp / parents.PARENT_DIR, parent, cfg.tokenizer)
        meta = ProcessedMeta(
            source=corpus_description(cfg.data.source, cfg.data.sources),
            vocab_size=tokenizer.get_vocab_size(),
            dtype=np.dtype(dtype).name,
            eot_id=eot_id(tokenizer),
            tokenizer_kind="parent" if parent else cfg.tokenizer.kind,
            tokenizer_sha256=file_sha256(tokenizer_path(tmp)),
            shards={name: writer.close() for name, writer in writers.items()},
            tokens=counts["tokens"], documents=counts["documents"], characters=counts["characters"],
            text_bytes=counts["text_bytes"], unknown=counts["unknown"],
            **coverage,
            duplicates_dropped=duplicates,
            parent=parent,
            canaries=planted, canary_repeats=cfg.canaries.repeats if planted else 0,
        )
        write_meta(tmp, meta)
    log.info("preprocess: vocab %d, tokens %s in shards of %d, %d duplicates dropped -> %s",
             meta.vocab_size, meta.tokens, cfg.data.shard_tokens, duplicates, out)
    return PreprocessResult(out, meta.vocab_size, meta.tokens, duplicates)


def fetch_parent(cfg: Config, dest: Path) -> dict:
    """The train.init_from model pinned into `dest`: a registered version from the registry, a
    folder from disk."""
    if cfg.train.init_from.startswith("models:/"):
        return downloads.fetch_parent(cfg, cfg.train.init_from, dest)
    return parents.fetch(cfg.train.init_from, dest)
