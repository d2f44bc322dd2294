"""The evaluation report: corpus text is data, never markup."""

import base64
import hashlib
import re
from html.parser import HTMLParser

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


@pytest.mark.metrics
def test_plots_draw_a_bias_gap_whose_interval_lies_above_it(tmp_path):
    """A bootstrap interval can lie wholly on one side of its point estimate (seen on a real model):
    the plot must still be drawn, and the CSV holds the excess the gate reads beside the raw gap."""
    bias = {"per_category": {
        "age": {"gap": 0.2, "ci_low": 0.25, "ci_high": 0.6, "null_gap": 0.15, "excess_gap": 0.05,
                "excess_ci_low": 0.07, "excess_ci_high": 0.3},
        "gender": {"gap": 0.5, "ci_low": 0.1, "ci_high": 0.9, "null_gap": 0.2, "excess_gap": 0.3,
                   "excess_ci_low": -0.1, "excess_ci_high": 0.6}}}
    crows = {"per_bias_type": {"age": {"stereotype_preference": 0.5}}, "ci_low": 0.3, "ci_high": 0.7,
             "pairs": 4}
    by_length = [{"max_tokens": 8, "perplexity": 3.0}]
    plots = report.plot_all(tmp_path, tmp_path / "no-curves", by_length, bias, crows)
    assert [p.name for p in plots] == ["loss.png", "perplexity_by_length.png", "bias.png"]
    assert all(p.stat().st_size > 1000 for p in plots)
    rows = report.bias_rows(bias)
    assert [r["category"] for r in rows] == ["age", "gender"]
    assert rows[1]["excess_gap"] == 0.3 and rows[1]["gap"] == 0.5 and rows[0]["excess_ci_low"] == 0.07


def test_each_metric_is_one_row_with_its_interval_in_the_same_cell():
    metrics = {"perplexity": 212.4, "perplexity_ci_low": 175.2, "perplexity_ci_high": 239.7,
               "bias_gap_age": 1.18, "bias_ci_low_age": 0.034, "bias_ci_high_age": 2.94,
               "bias_excess_gap_age": 0.85, "bias_excess_ci_low_age": -0.57, "bias_excess_ci_high_age": 2.3,
               "crows_pairs_sample_stereotype_preference": 0.58, "crows_pairs_sample_ci_low": 0.38,
               "crows_pairs_sample_ci_high": 0.79, "bits_per_byte": 2.244, "lonely_ci_low": 1.0}
    rows = [row.replace("\\_", "_") for row in report.metric_rows(metrics)]  # names are Markdown-escaped
    assert rows == [
        "| perplexity | 212.4 [175.2, 239.7] |", "| bias_gap_age | 1.18 [0.034, 2.94] |",
        "| bias_excess_gap_age | 0.85 [-0.57, 2.3] |",
        "| crows_pairs_sample_stereotype_preference | 0.58 [0.38, 0.79] |",
        "| bits_per_byte | 2.244 |", "| lonely_ci_low | 1 |"]  # a bound without its pair stays a row


HOSTILE = ["[x](javascript:alert(1))", "![](http://evil.example/pixel.png)", "<script>alert(1)</script>",
           "<img src=x onerror=alert(1)>", "&lt;script&gt; &#106;avascript:alert(1)", "a | b\n| forged |",
           "`code` <http://autolink.example>", '<a href="javascript:alert(1)" onclick="x()">click</a>']


class Elements(HTMLParser):
    """Every start tag of a page, with its attributes."""

    def __init__(self, page: str):
        super().__init__()
        self.found: list[tuple[str, dict]] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))

    def named(self, tag: str) -> list[dict]:
        return [attrs for name, attrs in self.found if name == tag]


def plot_files(folder) -> list:
    plots = [folder / "loss.png", folder / "bias.png"]
    for i, plot in enumerate(plots):
        plot.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([i]) * 32)
    return plots


def assert_only_the_reports_own_elements(page: str, plots: list) -> None:
    elements = Elements(page)
    live = {"a", "script", "iframe", "object", "embed", "svg", "math", "base", "form", "link"}
    assert not [tag for tag, _ in elements.found if tag in live], elements.found
    assert len(elements.named("style")) == 1  # the page's own
    assert not [(tag, name) for tag, attrs in elements.found for name in attrs if name.startswith("on")]
    embedded = {"data:image/png;base64," + base64.b64encode(p.read_bytes()).decode() for p in plots}
    sources = [attrs["src"] for attrs in elements.named("img") if "src" in attrs]
    assert set(sources) == embedded  # the plots, embedded; nothing else loads
    policy = [attrs["content"] for attrs in elements.named("meta")
              if attrs.get("http-equiv", "").lower() == "content-security-policy"]
    assert policy and "default-src 'none'" in policy[0] and "img-src data:" in policy[0]
    style = re.search(r"<style>(.*?)</style>", page, flags=re.DOTALL)[1]
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in policy[0]  # the page's own style, and only it, applies


def test_hostile_samples_give_no_live_link_image_or_script_and_the_report_keeps_its_tables(tmp_path):
    plots = plot_files(tmp_path)
    bleu = {"bleu_signature": "sig", "chrf_signature": "sig"}
    samples = [{"reference": text, "prediction": text} for text in HOSTILE]
    text = report.markdown({"perplexity": 1.0, "[t](javascript:x)/acc": 0.5}, bleu, {}, samples, plots)
    page = report.html(text, plots)
    assert_only_the_reports_own_elements(page, plots)
    assert len(Elements(page).named("table")) == 2 and len(Elements(page).named("tr")) == 3 + 1 + len(HOSTILE)
    assert "javascript:alert(1)" in page and "http://evil.example/pixel.png" in page  # shown as text


def test_markup_that_reaches_the_html_anyway_is_removed_by_the_allow_list(tmp_path):
    plots = plot_files(tmp_path)
    raw = "\n\n".join(HOSTILE + [f"![{p.stem}]({p.name})" for p in plots]
                      + ['<img src="http://evil.example/x.png">', '<img src="loss.png" onerror="x()">',
                         "<iframe src=http://evil.example></iframe><style>body{}</style>"])
    assert_only_the_reports_own_elements(report.html(raw, plots), plots)
