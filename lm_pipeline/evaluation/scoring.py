"""Model-side scoring: per-sequence negative log-likelihoods with a sliding window.

Each sequence is scored as a document: <|endoftext|> opens it as context, then every token of
the document and the closing <|endoftext|> is predicted exactly once. Sequences longer than the
context are covered by windows that advance by `stride`; each window scores only the targets the
previous window did not, so late tokens still see up to block_size - stride tokens of context.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lm_pipeline.data.tokenizer import eot_id
from lm_pipeline.model.transformer import device_of
from lm_pipeline.progress import Progress


def stride_for(block_size: int, stride: int) -> int:
    """The configured stride where it fits this model's context, else half the context: a
    champion with a shorter context than the candidate is still scored on every token."""
    return stride if 0 < stride <= block_size else block_size // 2


def document_bits(model, tokenizer, texts: list[str], stride: int, batch_size: int = 16,
                  what: str = "scoring documents") -> tuple[np.ndarray, np.ndarray]:
    """Each text as a document under a model with its own tokenizer: the bits it costs (its tokens
    and the closing <|endoftext|>) and its UTF-8 bytes plus one for its end, as the evaluate stage
    counts bits per byte."""
    ids = [np.asarray(e.ids, dtype=np.int64) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    nll, _ = sequence_nll(model, ids, eot_id(tokenizer), model.block_size,
                          stride_for(model.block_size, stride), batch_size, what=what)
    return nll / math.log(2), np.array([len(t.encode("utf-8")) + 1 for t in texts], dtype=np.float64)


def window_spans(n_inputs: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first_scored) over input positions 0..n_inputs; every position scored once."""
    spans, scored_until, start = [], 0, 0
    while scored_until < n_inputs:
        end = min(start + block_size, n_inputs)
        spans.append((start, end, scored_until))
        scored_until = end
        start += stride
    return spans


def sequence_nll(
    model,
    sequences: Sequence[np.ndarray],
    eot: int,
    block_size: int,
    stride: int,
    batch_size: int = 16,
    prefixes: Sequence[np.ndarray] | None = None,
    what: str = "scoring",
) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL (nats) and number of scored tokens for each sequence of token ids.

    A sequence's prefix (if given) is context only: it follows the opening <|endoftext|> and is
    not scored, so the result is -log p(sequence, <|endoftext|> | prefix). `what` names the work
    in the progress lines.
    """
    if not 0 < stride <= block_size:
        raise ValueError(f"stride {stride} must be in 1..block_size ({block_size}): "
                         "a larger one skips tokens")
    windows = []  # (sequence index, inputs, targets with unscored positions = -1)
    for i, seq in enumerate(sequences):
        prefix = np.asarray([] if prefixes is None else prefixes[i], dtype=np.int64)
        full = np.concatenate([[eot], prefix, np.asarray(seq, dtype=np.int64), [eot]])
        inputs, targets = full[:-1], full[1:].copy()
        targets[: len(prefix)] = -1
        for start, end, first in window_spans(len(inputs), block_size, stride):
            t = targets[start:end].copy()
            t[: first - start] = -1
            windows.append((i, inputs[start:end], t))
    nll = np.zeros(len(sequences))
    count = np.zeros(len(sequences), dtype=np.int64)
    for (i, _, targets), losses in zip(windows, window_losses(model, windows, batch_size, what), strict=True):
        nll[i] += losses.sum()
        count[i] += (targets >= 0).sum()
    return nll, count


def token_logprobs(model, sequences: Sequence[np.ndarray], eot: int,
                   batch_size: int = 16, what: str = "scoring") -> list[np.ndarray]:
    """log p(token | <|endoftext|>, the tokens before it) for every token of each sequence."""
    for i, seq in enumerate(sequences):
        if len(seq) > model.block_size:
            raise ValueError(f"sequence {i} has {len(seq)} tokens, more than the context "
                             f"({model.block_size})")
    ids = [np.asarray(seq, dtype=np.int64) for seq in sequences]
    windows = [(i, np.concatenate([[eot], seq[:-1]]), seq) for i, seq in enumerate(ids)]
    return [-losses for losses in window_losses(model, windows, batch_size, what)]


@torch.inference_mode()
def window_losses(model, windows: list[tuple[int, np.ndarray, np.ndarray]],
                  batch_size: int, what: str = "scoring") -> list[np.ndarray]:
    """Per-position NLL (nats, float64) of each (index, inputs, targets) window; 0 where a target is -1."""
    device = device_of(model)
    order = sorted(range(len(windows)), key=lambda w: len(windows[w][1]))  # similar lengths: little padding
    out: list[np.ndarray] = [np.zeros(0)] * len(windows)
    with Progress(what, len(windows), "windows") as progress:
        for b in range(0, len(order), batch_size):
            chunk = order[b:b + batch_size]
            x, y = _pad([windows[w][1] for w in chunk], 0), _pad([windows[w][2] for w in chunk], -1)
            logits = model(x.to(device))[0].float()
            losses = F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(),
                                     ignore_index=-1, reduction="none").view(y.shape).double().cpu().numpy()
            for row, w in enumerate(chunk):
                out[w] = losses[row, : len(windows[w][2])]
            progress.update(len(chunk))
    return out


def _pad(rows: list[np.ndarray], value: int) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for j, r in enumerate(rows):
        out[j, : len(r)] = torch.from_numpy(np.asarray(r, dtype=np.int64))
    return out


def unigram_nll(train_tokens, sequences: Sequence[np.ndarray], vocab_size: int, eot: int):
    """The same targets scored by an add-one-smoothed unigram model of the training split."""
    counts = train_tokens.token_counts(vocab_size) + 1.0
    logp = np.log(counts / counts.sum())
    nll = np.array([-(logp[np.asarray(s, dtype=np.int64)].sum() + logp[eot]) for s in sequences])
    return nll, np.array([len(s) + 1 for s in sequences])
