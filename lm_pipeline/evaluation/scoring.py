"""Model-side scoring: per-sequence negative log-likelihoods with a sliding window.

Each sequence is scored as a document: <|endoftext|> opens it as context, then every token of
the document and the closing <|endoftext|> is predicted exactly once. Sequences longer than the
context are covered by windows that advance by `stride`; each window scores only the targets the
previous window did not, so late tokens still see up to block_size - stride tokens of context.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lm_pipeline.model.transformer import device_of


def window_spans(n_inputs: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first_scored) over input positions 0..n_inputs; every position scored once."""
    spans, scored_until, start = [], 0, 0
    while scored_until < n_inputs:
        end = min(start + block_size, n_inputs)
        spans.append((start, end, scored_until))
        scored_until = end
        start += stride
    return spans


@torch.inference_mode()
def sequence_nll(
    model,
    sequences: Sequence[np.ndarray],
    eot: int,
    block_size: int,
    stride: int,
    batch_size: int = 16,
    prefixes: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL (nats) and number of scored tokens for each sequence of token ids.

    A sequence's prefix (if given) is context only: it follows the opening <|endoftext|> and is
    not scored, so the result is -log p(sequence, <|endoftext|> | prefix).
    """
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
    device = device_of(model)
    windows.sort(key=lambda w: len(w[1]))  # similar lengths share a batch: little padding
    nll = np.zeros(len(sequences))
    count = np.zeros(len(sequences), dtype=np.int64)
    for b in range(0, len(windows), batch_size):
        chunk = windows[b:b + batch_size]
        x, y = _pad([w[1] for w in chunk], 0), _pad([w[2] for w in chunk], -1)
        logits = model(x.to(device))[0].float()
        losses = F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(),
                                 ignore_index=-1, reduction="none").view(y.shape)  # 0 where ignored
        rows = [w[0] for w in chunk]
        np.add.at(nll, rows, losses.double().sum(dim=1).cpu().numpy())
        np.add.at(count, rows, (y >= 0).sum(dim=1).numpy())
    return nll, count


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
