"""Generation quality: greedy continuations of held-out documents against their true
continuations, and parallel pairs (source -> target through a prompt template), for BLEU/chrF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lm_pipeline.config import EvaluateConfig
from lm_pipeline.data.tokenizer import eot_id
from lm_pipeline.evaluation.metrics import load_metric
from lm_pipeline.model.generate import complete_batch, decode_until_eot, generate
from lm_pipeline.model.transformer import device_of
from lm_pipeline.progress import Progress


def continuations(model, tokenizer, docs: list[np.ndarray],
                  evaluate: EvaluateConfig) -> tuple[list[str], list[str]]:
    """Greedy continuations of held-out documents and their true continuations, as text."""
    p, c = evaluate.prompt_tokens, evaluate.continuation_tokens
    long_docs = [d for d in docs if len(d) >= p + c][: evaluate.bleu_documents]
    if not long_docs:
        raise ValueError(f"evaluate: no test document has {p + c} tokens for BLEU; "
                         "lower evaluate.prompt_tokens or evaluate.continuation_tokens")
    eot = eot_id(tokenizer)
    prompts = torch.tensor(np.stack([np.concatenate([[eot], d[:p]]) for d in long_docs]).astype(np.int64))
    predictions = []
    with Progress("evaluate: continuations for BLEU", len(prompts), "documents") as progress:
        for batch in prompts.split(evaluate.batch_size):  # equal-length prompts batch without padding
            out = generate(model, batch.to(device_of(model)), max_new_tokens=c)[:, p + 1:]
            predictions += [decode_until_eot(tokenizer, row.tolist()) for row in out]
            progress.update(len(batch))
    references = [tokenizer.decode(d[p:p + c].tolist()) for d in long_docs]
    return predictions, references


def read_parallel_pairs(path: Path) -> list[dict]:
    """evaluate.parallel_data: JSON lines of {"source": ..., "target": ...}, blank lines skipped."""
    pairs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"evaluate.parallel_data: {path}:{number}"
        try:
            pair = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not JSON ({err.msg})") from None
        if not isinstance(pair, dict) or not all(isinstance(pair.get(k), str) for k in ("source", "target")):
            raise ValueError(f"{where}: needs source and target, each a string (got {line[:80]!r})")
        pairs.append(pair)
    if not pairs:
        raise ValueError(f"evaluate.parallel_data: {path}: no source/target pairs")
    return pairs


def parallel_bleu(model, tokenizer, pairs: list[dict], evaluate: EvaluateConfig) -> dict:
    """Source -> target pairs through the prompt template; the first generated line is the output."""
    prompts = [evaluate.parallel_template.format(source=pair["source"]) for pair in pairs]
    outputs = [text.strip().split("\n")[0] for text in complete_batch(
        model, tokenizer, prompts, evaluate.continuation_tokens, batch_size=evaluate.batch_size)]
    return load_metric("bleu").compute(predictions=outputs, references=[pair["target"] for pair in pairs])
