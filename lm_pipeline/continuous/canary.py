"""After a promotion, is the served model the one that was evaluated, and does it behave?

The endpoint (`lmp serve`, following the champion alias) must swap to the new version within
ct.canary_timeout_s; then probe documents are scored through it (echo + logprobs, as
lm-evaluation-harness scores through it) and each token's log-probability must equal the one
computed offline from the registered weights within ct.canary_tolerance; no request may fail
beyond ct.canary_max_error_rate, and the p95 latency must stay under ct.canary_max_p95_ms. A
canary that fails any of these rolls the champion back (the flow does it; this module only
measures).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import numpy as np

from lm_pipeline.config import ContinuousConfig
from lm_pipeline.data.tokenizer import eot_id
from lm_pipeline.evaluation.scoring import token_logprobs
from lm_pipeline.serving.protocol import VERSION_HEADER

CONFIRMATIONS = 5  # answers in a row naming the new version: every replica has swapped, likely


@dataclass
class Canary:
    served: str = ""  # the version the endpoint named last
    requests: int = 0
    errors: int = 0
    p95_ms: float = 0.0
    max_logprob_gap: float = 0.0  # nats per token, served against offline
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def probe(endpoint: str, token: str | None, model_id: str, model, tokenizer, texts: list[str],
          ct: ContinuousConfig) -> Canary:
    """Wait for `model_id` ("<name>/<version>") to be served at `endpoint` (…/v1), then score
    `texts` through it and offline with `model`."""
    canary = Canary()
    canary.served = wait_for_version(endpoint, token, model_id, ct.canary_timeout_s)
    if canary.served != model_id:
        canary.problems.append(f"the endpoint still serves {canary.served or 'nothing'} "
                               f"{ct.canary_timeout_s:.0f} s after {model_id} became champion")
        return canary
    eot, context = eot_id(tokenizer), model.block_size
    rows = [tokenizer.encode(t, add_special_tokens=False).ids[:context - 1] for t in texts]
    offline = token_logprobs(model, [np.asarray(r) for r in rows], eot,
                             what="canary: offline log-probabilities")
    latencies, gaps, others = [], [], set()
    for ids, expected in zip(rows, offline, strict=True):
        started = time.monotonic()
        status, headers, body = post(endpoint, token, {"model": model_id, "prompt": [eot, *ids],
                                                       "max_tokens": 0, "echo": True, "logprobs": 0})
        latencies.append((time.monotonic() - started) * 1000)
        canary.requests += 1
        if status != 200:
            canary.errors += 1
            continue
        if headers.get(VERSION_HEADER.lower()) != model_id:
            others.add(str(headers.get(VERSION_HEADER.lower())))
        gaps.append(logprob_gap(body, expected))
    if others:
        canary.problems.append(f"probes were answered by {', '.join(sorted(others))}, not {model_id}")
    canary.p95_ms = float(np.percentile(latencies, 95)) if latencies else 0.0
    canary.max_logprob_gap = max(gaps, default=0.0)
    judge(canary, ct)
    return canary


def logprob_gap(body: dict, expected: np.ndarray) -> float:
    """The largest difference between a response's prompt log-probabilities and `expected`;
    infinite for a response without them, of another length, or with a value that is not a number."""
    try:
        served = np.array(body["choices"][0]["logprobs"]["token_logprobs"][1:], dtype=np.float64)
    except (KeyError, IndexError, TypeError, ValueError):
        return np.inf
    if len(served) != len(expected) or not np.isfinite(served).all():
        return np.inf
    return float(np.abs(served - expected).max())


def judge(canary: Canary, ct: ContinuousConfig) -> None:
    rate = canary.errors / max(canary.requests, 1)
    if rate > ct.canary_max_error_rate:
        canary.problems.append(f"{canary.errors} of {canary.requests} probes failed "
                               f"(ct.canary_max_error_rate {ct.canary_max_error_rate:.0%})")
    if canary.p95_ms > ct.canary_max_p95_ms:
        canary.problems.append(f"p95 latency {canary.p95_ms:.0f} ms over ct.canary_max_p95_ms "
                               f"{ct.canary_max_p95_ms:.0f}")
    if canary.max_logprob_gap > ct.canary_tolerance:
        canary.problems.append(f"the served log-probabilities differ from the evaluated model's by up to "
                               f"{canary.max_logprob_gap:.3g} nats a token (ct.canary_tolerance "
                               f"{ct.canary_tolerance:g}): the endpoint is not serving what was evaluated")


def wait_for_version(endpoint: str, token: str | None, model_id: str, timeout: float) -> str:
    """The version the endpoint names once it has named `model_id` CONFIRMATIONS times in a row,
    or the last one it named when `timeout` runs out ("" if it never answered)."""
    deadline, streak, last = time.monotonic() + timeout, 0, ""
    while time.monotonic() < deadline and streak < CONFIRMATIONS:
        status, _, body = get(f"{endpoint}/models", token)
        if status == 200 and body.get("data"):
            last = str(body["data"][0].get("id", ""))
        streak = streak + 1 if last == model_id else 0
        if streak < CONFIRMATIONS:
            time.sleep(0.5)
    return last


def post(endpoint: str, token: str | None, body: dict) -> tuple[int, dict, dict]:
    request = urllib.request.Request(f"{endpoint}/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    return send(request, token)


def get(url: str, token: str | None) -> tuple[int, dict, dict]:
    return send(urllib.request.Request(url), token)


def lower_keys(headers) -> dict[str, str]:
    """HTTP header names are case-insensitive (the endpoint sends them lower-cased)."""
    return {key.lower(): value for key, value in headers.items()}


def send(request: urllib.request.Request, token: str | None) -> tuple[int, dict, dict]:
    """(status, headers by lower-case name, JSON body); status 0 when the endpoint did not answer."""
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, lower_keys(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, lower_keys(err.headers), {}
    except (urllib.error.URLError, OSError, json.JSONDecodeError):
        return 0, {}, {}


def probe_texts(texts: list[str], n: int, seed: int) -> list[str]:
    """A seeded sample of n texts (all of them if there are fewer)."""
    if len(texts) <= n:
        return list(texts)
    return [texts[i] for i in sorted(np.random.default_rng(seed).choice(len(texts), n, replace=False))]
