"""A replica's request statistics: Ray Serve metrics (Prometheus, through Ray's metrics agent) and
the same numbers in a log line per interval and on GET /stats, where a person or a test reads them."""

from __future__ import annotations

import logging
import os
import time
from collections import deque

import numpy as np

log = logging.getLogger("lm_pipeline.serving")


class Stats:
    def __init__(self, window: int = 2000):
        from ray.serve import metrics

        self.requests = metrics.Counter("lmp_requests", "completion requests answered", tag_keys=("status",))
        self.latency = metrics.Histogram("lmp_request_latency_ms", "time to the whole answer",
                                         boundaries=[10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000])
        self.tokens = metrics.Counter("lmp_generated_tokens", "tokens generated")
        self.batch_sizes = metrics.Histogram("lmp_batch_size", "requests per forward batch",
                                             boundaries=[1, 2, 4, 8, 16, 32])
        self.recent_ms: deque[float] = deque(maxlen=window)
        self.recent_batches: deque[int] = deque(maxlen=window)
        self.counts = {"ok": 0, "client_error": 0, "server_error": 0}
        self.generated, self.started, self.last_log = 0, time.monotonic(), time.monotonic()

    def request(self, status: int, seconds: float, tokens: int = 0) -> None:
        kind = "ok" if status < 400 else "client_error" if status < 500 else "server_error"
        self.counts[kind] += 1
        self.requests.inc(tags={"status": kind})
        self.latency.observe(seconds * 1000)
        self.recent_ms.append(seconds * 1000)
        self.generated += tokens
        if tokens:
            self.tokens.inc(tokens)

    def batch(self, size: int) -> None:
        self.batch_sizes.observe(size)
        self.recent_batches.append(size)

    def snapshot(self, model_id: str) -> dict:
        ms = np.array(self.recent_ms) if self.recent_ms else np.zeros(1)
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {"model": model_id, "pid": os.getpid(), "requests": dict(self.counts),
                "latency_p50_ms": float(np.percentile(ms, 50)),
                "latency_p95_ms": float(np.percentile(ms, 95)),
                "generated_tokens": self.generated, "tokens_per_s": self.generated / elapsed,
                "batches": len(self.recent_batches),
                "batch_mean": float(np.mean(self.recent_batches)) if self.recent_batches else 0.0}

    def log_line(self, model_id: str) -> None:
        s = self.snapshot(model_id)
        log.info("serve %s: %d ok, %d client errors, %d server errors; p50 %.0f ms, p95 %.0f ms; %.1f tok/s; "
                 "mean batch %.2f", model_id, s["requests"]["ok"], s["requests"]["client_error"],
                 s["requests"]["server_error"], s["latency_p50_ms"], s["latency_p95_ms"], s["tokens_per_s"],
                 s["batch_mean"])
