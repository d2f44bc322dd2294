"""The evaluation report: corpus text is data, never markup."""

import pytest

from lm_pipeline.evaluation import report

pytestmark = pytest.mark.security

SCRIPT = "<script>alert('x')</script> | <img src=x onerror=alert(1)>"


def test_corpus_text_in_the_report_is_escaped_in_markdown_and_html():
    bleu = {"bleu_signature": "sig", "chrf_signature": "sig"}
    samples = [{"reference": SCRIPT, "prediction": "a | b " + SCRIPT}]
    text = report.markdown({"perplexity": 1.0, "<b>task</b>/acc": 0.5}, bleu, {}, samples, [])
    page = report.html(text, [])
    assert "<script" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;" in page
    rows = [line for line in text.splitlines() if "script" in line]
    assert rows and all(line.count(" | ") == 1 for line in rows)  # two cells: the pipe stays text
