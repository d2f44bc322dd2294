"""Sampling with a KV cache: greedy, temperature, top-k and top-p (nucleus).

Shared by evaluation (BLEU continuations), `lmp generate` and the registered MLflow model.
"""

from __future__ import annotations

import torch

from lm_pipeline.data.tokenizer import eot_id
from lm_pipeline.model.transformer import GPT


@torch.inference_mode()
def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extend idx (B, T) by max_new_tokens tokens; temperature 0 means greedy."""
    block_size = model.config.block_size
    idx_cond, past = idx[:, -(block_size - 1):], None  # leave room for at least one new token
    for _ in range(max_new_tokens):
        logits, _, past = model(idx_cond, past=past, use_cache=True)
        next_token = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
        idx = torch.cat([idx, next_token], dim=1)
        if past[0][0].size(2) >= block_size:
            # Positions are absolute and learned: when the window is full, re-encode the recent
            # half of it so generation can continue past block_size.
            idx_cond, past = idx[:, -(block_size // 2):], None
        else:
            idx_cond = next_token
    return idx


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
    logits = logits / temperature
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
    return torch.multinomial(probs, num_samples=1, generator=generator)


def complete(model: GPT, tokenizer, prompt: str, max_new_tokens: int, generator=None, **sampling) -> str:
    """Text in, continuation out: the prompt opens a document, as in training."""
    ids = [eot_id(tokenizer)] + tokenizer.encode(prompt).ids
    out = generate(model, torch.tensor([ids]), max_new_tokens, generator=generator, **sampling)
    return decode_until_eot(tokenizer, out[0, len(ids):].tolist())


def decode_until_eot(tokenizer, ids: list[int]) -> str:
    """Decode generated ids, stopping where the model ended the document."""
    eot = eot_id(tokenizer)
    return tokenizer.decode(ids[: ids.index(eot)] if eot in ids else ids)
