"""Sampling with a KV cache: greedy, temperature, top-k and top-p (nucleus).

Shared by evaluation (BLEU continuations), `lmp generate` and the registered MLflow model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from lm_pipeline.data.tokenizer import eot_id
from lm_pipeline.model.transformer import device_of


def generate(model, idx: torch.Tensor, max_new_tokens: int, **sampling) -> torch.Tensor:
    """Extend idx (B, T) by max_new_tokens tokens; `sampling` as generate_tokens takes it
    (temperature 0, the default, means greedy)."""
    return torch.cat([idx, *generate_tokens(model, idx, max_new_tokens, **sampling)], dim=1)


@torch.inference_mode()
def generate_tokens(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """The next token of each row of idx (B, T), as (B, 1), one step at a time (a caller may stop
    early: serving ends a batch when every row has finished, and streams each token).

    Rows of different lengths share a batch left-padded, with attention_mask (B, T) True at real
    tokens; each row is then computed as it would be alone, which needs the whole generation to
    fit the context (no refill below).

    Past the context: each token is predicted from the tokens since the window last filled; once
    a prediction has used a full window (block_size tokens), the cache is dropped and the newest
    block_size // 2 tokens are re-encoded (positions are absolute, so a window cannot slide one
    token at a time without recomputing it). A prompt longer than the context keeps its last
    block_size - 1 tokens. Greedy output equals the uncached model fed those same windows."""
    block_size = model.block_size
    padded = {}
    if attention_mask is not None:
        if idx.size(1) + max_new_tokens > block_size:
            raise ValueError(f"left-padded rows of {idx.size(1)} tokens and {max_new_tokens} new ones "
                             f"exceed the context of {block_size}")
        padded = {"attention_mask": attention_mask.bool()}
    idx_cond, past = idx[:, -(block_size - 1):], None  # leave room for at least one new token
    cached = 0  # positions in the cache (its layout is the backend's own)
    for _ in range(max_new_tokens):
        logits, _, past = model(idx_cond, past=past, use_cache=True, **padded)
        cached += idx_cond.size(1)
        next_token = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
        yield next_token
        idx = torch.cat([idx, next_token], dim=1)
        if padded:
            padded["attention_mask"] = F.pad(padded["attention_mask"], (0, 1), value=True)
        if cached >= block_size:
            # Positions are absolute: when the window is full, re-encode the recent half of it
            # so generation can continue past block_size.
            idx_cond, past, cached = idx[:, -(block_size // 2):], None, 0
        else:
            idx_cond = next_token


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """logits (B, V) -> next token ids (B, 1)."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    # Shifted so the largest is 0 before dividing: a tiny temperature sends the others to -inf
    # (greedy, its limit) instead of overflowing, and one below the float's smallest divides by it.
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / max(temperature, torch.finfo(logits.dtype).tiny)
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token once the tokens before it already cover top_p (the first always stays).
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p
        drop = drop_sorted.scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    if generator is not None and generator.device != probs.device:  # a seeded CPU generator, on a GPU
        return torch.multinomial(probs.cpu(), num_samples=1, generator=generator).to(probs.device)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def complete(model, tokenizer, prompt: str, max_new_tokens: int, generator=None, **sampling) -> str:
    """Text in, continuation out: the prompt opens a document, as in training."""
    return complete_batch(model, tokenizer, [prompt], max_new_tokens, generator=generator, **sampling)[0]


def complete_batch(model, tokenizer, prompts: list[str], max_new_tokens: int, stop: Sequence[str] = (),
                   generator=None, batch_size: int = 16, **sampling) -> list[str]:
    """Continuations of several prompts, in their order, each what it would be alone: prompts
    whose generation fits the context share each forward pass left-padded; longer ones (whose
    window refills depend on their own length) share only with prompts of the same length. Each
    continuation ends at the end-of-text token or before the first stop string."""
    eot = eot_id(tokenizer)
    ids = [[eot] + e.ids for e in tokenizer.encode_batch(prompts, add_special_tokens=False)]
    device = device_of(model)
    groups: dict[int | bool, list[int]] = {}
    for i, row in enumerate(ids):
        groups.setdefault(len(row) + max_new_tokens <= model.block_size or len(row), []).append(i)
    out = [""] * len(prompts)
    for rows in groups.values():
        for chunk in (rows[b:b + batch_size] for b in range(0, len(rows), batch_size)):
            batch, mask = left_padded([ids[i] for i in chunk], eot, device)
            generated = generate(model, batch, max_new_tokens, generator=generator, attention_mask=mask,
                                 **sampling)[:, batch.size(1):]
            for i, row in zip(chunk, generated.tolist(), strict=True):
                out[i] = cut_at_stop(decode_until_eot(tokenizer, row), stop)
    return out


def left_padded(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token rows as one (B, T) batch, padded on the left, and the attention mask that marks their
    real tokens (None when all rows have the same length: nothing to mask)."""
    width = max(len(row) for row in rows)
    batch = torch.tensor([[pad] * (width - len(row)) + row for row in rows], device=device)
    if all(len(row) == width for row in rows):
        return batch, None
    mask = torch.tensor([[False] * (width - len(row)) + [True] * len(row) for row in rows], device=device)
    return batch, mask


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the earliest stop string (stop strings themselves are not returned)."""
    ends = [i for s in stop if s and (i := text.find(s)) >= 0]
    return text[:min(ends)] if ends else text


def decode_until_eot(tokenizer, ids: list[int]) -> str:
    """Decode generated ids, stopping where the model ended the document."""
    eot = eot_id(tokenizer)
    return tokenizer.decode(ids[: ids.index(eot)] if eot in ids else ids)
