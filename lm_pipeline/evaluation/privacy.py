"""Privacy probes: how much of its training data a model gives away.

- Extraction (Carlini et al. 2023, "Quantifying Memorization Across Neural Language Models"):
  prompted with the first k tokens of a document, does greedy decoding reproduce the next m
  exactly? The rate over a sample of training documents, and over held-out (test) documents as
  the baseline of text that is merely predictable (boilerplate, licences), with exact binomial
  95% intervals.
- Canary exposure (Carlini et al. 2019, "The Secret Sharer"): the canaries preprocess planted
  (data/canaries.py) ranked by likelihood among references, random secrets of the same form:
  exposure = log2(|secrets|) - log2(rank), estimated as -log2 of the share of secrets at least as
  likely (from the references, an exact binomial interval, bounded by the secret space). A model
  that never saw the canary ranks it in the middle (about 1 bit); one that memorized it, first.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lm_pipeline.config import EvaluateConfig, PrivacyConfig
from lm_pipeline.data import canaries as planted
from lm_pipeline.evaluation.scoring import sequence_nll
from lm_pipeline.model.generate import generate
from lm_pipeline.model.transformer import device_of
from lm_pipeline.progress import Progress


def extraction_lengths(privacy: PrivacyConfig, block_size: int) -> tuple[int, int]:
    """(k, m) that fit the context with the opening <|endoftext|>: k at most half of it."""
    k = min(privacy.prefix_tokens, (block_size - 1) // 2)
    return k, min(privacy.suffix_tokens, block_size - 1 - k)


def sample_documents(docs: list[np.ndarray], length: int, n: int, seed: int) -> list[np.ndarray]:
    """Up to n documents of at least `length` tokens, a seeded sample."""
    long_enough = [d for d in docs if len(d) >= length]
    order = np.random.default_rng(seed).permutation(len(long_enough))[:n]
    return [long_enough[i] for i in sorted(order)]


@torch.inference_mode()
def extracted(model, docs: list[np.ndarray], k: int, m: int, eot: int, batch_size: int,
              what: str) -> np.ndarray:
    """For each document, whether greedy decoding from its first k tokens gives its next m exactly."""
    hits = np.zeros(len(docs), dtype=bool)
    with Progress(what, len(docs), "documents") as progress:
        for start in range(0, len(docs), batch_size):
            chunk = docs[start:start + batch_size]
            prompts = torch.tensor(np.stack([np.concatenate([[eot], d[:k]]) for d in chunk]))
            out = generate(model, prompts.to(device_of(model)), m)[:, k + 1:].cpu().numpy()
            hits[start:start + len(chunk)] = [np.array_equal(o, d[k:k + m])
                                              for o, d in zip(out, chunk, strict=True)]
            progress.update(len(chunk))
    return hits


def rate_with_interval(hits: np.ndarray) -> tuple[float, float, float]:
    """The share of hits and its exact (Clopper-Pearson) 95% interval; NaNs for no documents."""
    from scipy.stats import binomtest

    if not len(hits):
        return math.nan, math.nan, math.nan
    interval = binomtest(int(hits.sum()), len(hits)).proportion_ci(method="exact")
    return float(hits.mean()), float(interval.low), float(interval.high)


def extraction(model, train_docs: list[np.ndarray], test_docs: list[np.ndarray], eot: int,
               privacy: PrivacyConfig, batch_size: int) -> dict[str, float]:
    k, m = extraction_lengths(privacy, model.block_size)
    metrics = {"extraction_prefix_tokens": k, "extraction_suffix_tokens": m}
    for name, docs in (("extraction", train_docs), ("heldout_extraction", test_docs)):
        sample = sample_documents(docs, k + m, privacy.extraction_documents, privacy.seed)
        rate, low, high = rate_with_interval(
            extracted(model, sample, k, m, eot, batch_size, f"evaluate: {name.replace('_', ' ')}"))
        metrics |= {f"{name}_rate": rate, f"{name}_rate_ci_low": low, f"{name}_rate_ci_high": high,
                    f"{name}_documents": len(sample)}
    return metrics


def exposure(canary_nll: float, reference_nll: np.ndarray, space_bits: float) -> tuple[float, float, float]:
    """Exposure in bits and its 95% interval, from how many references are at least as likely."""
    from scipy.stats import binomtest

    n, as_likely = len(reference_nll), int((reference_nll <= canary_nll).sum())
    interval = binomtest(as_likely, n).proportion_ci(method="exact")
    floor = 2.0 ** -space_bits  # the canary itself: the share can be no smaller
    share = max((as_likely + 1) / (n + 1), floor)
    return -math.log2(share), -math.log2(max(interval.high, floor)), -math.log2(max(interval.low, floor))


def canary_exposure(model, tokenizer, eot: int, canaries: list[dict], privacy: PrivacyConfig,
                    evaluate: EvaluateConfig) -> dict[str, float]:
    """The most exposed canary's exposure and interval, and the mean over canaries ({} for none)."""
    if not canaries:
        return {}
    secrets = planted.references([c["secret"] for c in canaries], privacy.canary_references, privacy.seed)
    space_bits = len(canaries[0]["secret"]) * math.log2(10)
    results = []
    for i, canary in enumerate(canaries):
        pairs = [planted.encode(tokenizer, canary["prefix"], s) for s in [canary["secret"], *secrets]]
        nll, _ = sequence_nll(model, [s for _, s in pairs], eot, model.block_size, model.block_size,
                              evaluate.batch_size * 8, prefixes=[p for p, _ in pairs],
                              what=f"evaluate: canary {i} among {len(secrets)} references")
        results.append(exposure(nll[0], nll[1:], space_bits))
    top = max(results)
    return {"canary_exposure": top[0], "canary_exposure_ci_low": top[1], "canary_exposure_ci_high": top[2],
            "canary_exposure_mean": float(np.mean([r[0] for r in results])), "canaries": len(canaries)}
