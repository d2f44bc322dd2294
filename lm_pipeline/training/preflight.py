"""Checks a training run passes before any worker starts: the fine-tuning parent agrees with the
data and the model section, and every split holds at least one training window."""

from __future__ import annotations

import logging

from lm_pipeline.config import Config
from lm_pipeline.data.processed import ProcessedMeta
from lm_pipeline.model import parent as parents
from lm_pipeline.model.hf_format import gpt_config

log = logging.getLogger(__name__)
ARCHITECTURE = ("n_layer", "n_head", "n_embd", "block_size")  # what fine-tuning cannot change


def check_parent(cfg: Config, meta: ProcessedMeta) -> None:
    """train.init_from and the data must agree: preprocess pinned the parent the run starts from,
    and the model section must describe it (fine-tuning keeps the parent's shape)."""
    record, parent_config = parents.load(cfg.data.processed_dir)
    if bool(cfg.train.init_from) != bool(record) or (record and record["init_from"] != cfg.train.init_from):
        raise parents.ParentError(
            f"train.init_from is {cfg.train.init_from!r} but {cfg.data.processed_dir} was preprocessed "
            f"for {record['init_from'] if record else None!r}: run `lmp preprocess` (or `dvc repro`) first")
    if not record:
        return
    if record.get("backend", "gpt") != cfg.model.backend:  # parents pinned before backends: gpt
        backend = record.get("backend", "gpt")
        raise parents.ParentError(f"train.init_from {parents.describe(record)} is a {backend} model but "
                                  f"model.backend is {cfg.model.backend}: set model.backend: {backend}")
    if cfg.model.backend == "hf":  # the parent's config.json is the architecture
        log.info("train: fine-tuning %s (weights %s...)", parents.describe(record),
                 record["weights_sha256"][:12])
        return
    shape = gpt_config(parent_config).to_dict()  # either config.json layout
    wrong = [f"model.{key} is {getattr(cfg.model, key)} but the parent has {shape[key]}"
             for key in ARCHITECTURE if getattr(cfg.model, key) != shape[key]]
    if wrong:
        raise parents.ParentError(
            f"train.init_from {parents.describe(record)}: {'; '.join(wrong)}. Fine-tuning keeps the "
            "parent's architecture: set these in params.yaml, or drop init_from")
    log.info("train: fine-tuning %s (weights %s...) with a fresh optimizer and LR schedule",
             parents.describe(record), record["weights_sha256"][:12])


def check_data_fits(cfg: Config, meta: ProcessedMeta) -> None:
    """Every training and validation batch is windows of block_size + 1 tokens: a shorter split
    would fail inside a Ray worker, so it is refused here, naming the split and the key."""
    for split in ("train", "val"):
        if meta.tokens[split] <= cfg.model.block_size:
            raise ValueError(f"train: the {split} split has {meta.tokens[split]} tokens: fewer than "
                             f"model.block_size + 1 ({cfg.model.block_size + 1}); lower model.block_size, "
                             "or add documents (or raise split fractions)")
