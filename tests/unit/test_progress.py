"""Long work shows progress without a terminal too: a line at the start, lines at the interval with
count, rate and time left, and one at the end; a call with no count of its own ticks."""

import logging
import time

import pytest

from lm_pipeline.progress import Progress, ticking


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lm_pipeline.progress"]


def test_work_with_a_count_logs_start_interval_lines_and_end(caplog):
    caplog.set_level(logging.INFO, "lm_pipeline.progress")
    with Progress("evaluate: perplexity", total=4, unit="windows", interval_s=0.0) as progress:
        for _ in range(4):
            time.sleep(0.01)
            progress.update()
    said = lines(caplog)
    assert said[0] == "evaluate: perplexity: 4 windows to go"
    assert said[1].startswith("evaluate: perplexity: 1/4 windows (25%), ") and "s left" in said[1]
    assert " windows/s, about " in said[1]
    assert len(said) == 5 and said[-1].startswith("evaluate: perplexity: 4 windows in ")


def test_a_long_call_ticks_until_it_ends_and_says_how(caplog):
    caplog.set_level(logging.INFO, "lm_pipeline.progress")
    with ticking("evaluate: benchmark tasks", interval_s=0.05):
        time.sleep(0.3)
    said = lines(caplog)
    assert said[0] == "evaluate: benchmark tasks: started"
    assert said[-1].startswith("evaluate: benchmark tasks: done in")
    assert any(line.startswith("evaluate: benchmark tasks: running, ") for line in said[1:-1])
    with pytest.raises(RuntimeError), ticking("harness", interval_s=10):
        raise RuntimeError("no such task")
    assert lines(caplog)[-1].startswith("harness: failed after ")
