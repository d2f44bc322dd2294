"""Progress of long work, for people watching: a bar on a terminal, and otherwise a log line when
the work starts, at a steady interval while it runs and when it ends, with the count, the rate and
the time left, so `lmp run`, the Prefect UI and CI logs show it too. Lines go to the
`lm_pipeline.progress` logger (INFO), so `lmp -q` hides them with the rest.

    with Progress("evaluate: perplexity", total=len(batches), unit="batches") as progress:
        for batch in batches:
            ...
            progress.update()

    with ticking("evaluate: benchmark tasks"):   # one long call whose count is not ours to see
        simple_evaluate(...)
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("lm_pipeline.progress")
INTERVAL_S = 10.0  # between lines, without a terminal


class Progress:
    def __init__(self, what: str, total: int, unit: str = "items", interval_s: float = INTERVAL_S):
        self.what, self.total, self.unit, self.interval_s = what, total, unit, interval_s
        self.done, self.start = 0, time.monotonic()
        self.last_line = self.start
        self.bar = None
        if sys.stderr.isatty() and log.isEnabledFor(logging.INFO):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=what, unit=unit, file=sys.stderr, leave=False)
        else:
            log.info("%s: %d %s to go", what, total, unit)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last_line >= self.interval_s and self.done < self.total:
            self.last_line = now
            log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        left = f", about {(self.total - self.done) / rate:.0f} s left" if rate > 0 else ""
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        return f"{self.what}: {self.done}/{self.total} {self.unit}{share}, {rate:.3g} {self.unit}/s{left}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        log.info("%s: %d %s in %.1f s", self.what, self.done, self.unit, time.monotonic() - self.start)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def ticking(what: str, interval_s: float = INTERVAL_S) -> Iterator[None]:
    """Lines for one long call that reports no count: started, still running every interval
    (with the time so far), done or failed."""
    start, stop = time.monotonic(), threading.Event()
    log.info("%s: started", what)

    def tick() -> None:
        while not stop.wait(interval_s):
            log.info("%s: running, %.0f s so far", what, time.monotonic() - start)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    except BaseException:
        log.info("%s: failed after %.1f s", what, time.monotonic() - start)
        raise
    else:
        log.info("%s: done in %.1f s", what, time.monotonic() - start)
    finally:
        stop.set()
        ticker.join()
