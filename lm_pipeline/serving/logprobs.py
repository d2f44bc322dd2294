"""Token log-probabilities in the OpenAI completions format ({tokens, token_logprobs,
top_logprobs, text_offset}), as lm-evaluation-harness's `local-completions` reads them: with echo,
the prompt's tokens first (the first has no context, so no value, unless it follows our
<|endoftext|>), then the generated ones; each value and its alternatives come from one
log-softmax, so "is the chosen token the most likely" compares equal floats."""

from __future__ import annotations

import torch


@torch.inference_mode()
def choice_logprobs(served, ids: list[int], generated: list[int], echo_from: int, echo: bool,
                    top: int) -> dict:
    """Log-probabilities of `generated` after `ids` (and of ids[echo_from:] too, with echo),
    with the `top` most likely alternatives at each position."""
    sequence = ids + generated
    logits = served.model(torch.tensor([sequence], device=next(served.model.parameters()).device))[0]
    logprobs = logits[0].float().log_softmax(dim=-1)  # (T, V): position t predicts token t + 1
    first = echo_from if echo else len(ids)
    out: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    offset = 0
    for t in range(first, len(sequence)):
        piece = served.tokenizer.decode([sequence[t]])
        out["tokens"].append(piece)
        out["text_offset"].append(offset)
        offset += len(piece)
        if t == 0:  # nothing before it to predict it from
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            continue
        row = logprobs[t - 1]
        out["token_logprobs"].append(float(row[sequence[t]]))
        out["top_logprobs"].append(alternatives(served, row, top))
    return out


def alternatives(served, row: torch.Tensor, top: int) -> dict[str, float]:
    if top == 0:
        return {}
    values, indices = row.topk(top)
    return {served.tokenizer.decode([int(i)]): float(v) for v, i in zip(values, indices, strict=True)}
