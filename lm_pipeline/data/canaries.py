"""Canaries: random secrets planted in the training split, whose exposure after training says how
much a model memorizes what it saw once (Carlini et al. 2019, "The Secret Sharer").

Each canary is "The secret number of canary <i> is <digits>." with canaries.digits random digits;
its references are other secrets of the same form, never planted. Preprocess appends the canaries'
tokens to the training shards only (canaries.repeats times each) and records them
in meta.json: they are in no documents.jsonl, so never in validation, test, the filter's output or
continuous training's corpus, and evaluation reads them from meta.json.
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

from lm_pipeline.config import CanaryConfig
from lm_pipeline.data.shards import ShardWriter
from lm_pipeline.data.tokenizer import eot_id


def secrets(canaries: CanaryConfig) -> list[dict[str, str]]:
    """[{prefix, secret}] for canaries.count canaries, fixed by canaries.seed."""
    rng = np.random.default_rng([canaries.seed, 0])
    return [{"prefix": f"The secret number of canary {i} is", "secret": digits(rng, canaries.digits)}
            for i in range(canaries.count)]


def references(planted: list[str], n: int, seed: int) -> list[str]:
    """n secrets of the planted ones' form (as many digits), none of them planted."""
    rng = np.random.default_rng([seed, 1])
    out: list[str] = []
    while len(out) < n:
        secret = digits(rng, len(planted[0]))
        if secret not in planted:
            out.append(secret)
    return out


def digits(rng: np.random.Generator, n: int) -> str:
    return "".join(map(str, rng.integers(0, 10, n)))


def encode(tokenizer: Tokenizer, prefix: str, secret: str) -> tuple[list[int], list[int]]:
    """The prefix's and the secret's tokens, encoded apart so that every candidate secret follows
    the same prefix tokens (the planted sequence is prefix + secret + <|endoftext|>)."""
    return (tokenizer.encode(prefix, add_special_tokens=False).ids,
            tokenizer.encode(f" {secret}.", add_special_tokens=False).ids)


def plant(writer: ShardWriter, tokenizer: Tokenizer, canaries: CanaryConfig, counts: dict) -> list[dict]:
    """Append each canary canaries.repeats times to the training shards, counted as training
    documents (counts as write_shards made them); returns the canaries planted."""
    planted = secrets(canaries)
    for _ in range(canaries.repeats):
        for canary in planted:
            prefix, secret = encode(tokenizer, canary["prefix"], canary["secret"])
            ids = np.asarray([*prefix, *secret, eot_id(tokenizer)], dtype=writer.dtype)
            text = f"{canary['prefix']} {canary['secret']}."
            writer.append(ids)
            counts["tokens"]["train"] += len(ids)
            counts["documents"]["train"] += 1
            counts["characters"]["train"] += len(text)
            counts["text_bytes"]["train"] += len(text.encode())
    return planted
