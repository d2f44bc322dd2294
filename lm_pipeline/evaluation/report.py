"""The evaluation report: Markdown and a self-contained HTML page, with plots.

Plots: training and validation loss, perplexity by document length, bias gaps per category and
CrowS-Pairs preference per bias type. The same series are written as CSV for `dvc plots`.
"""

from __future__ import annotations

import base64
import csv
import hashlib
from pathlib import Path

import numpy as np

from lm_pipeline.text import markdown_literal

STYLE = ("body{font-family:sans-serif;max-width:60em;margin:auto}td,th{border:1px solid #ccc;"
         "padding:2px 6px}table{border-collapse:collapse}img{max-width:100%}")
# What the report's own Markdown renders to: any other element in the page came from its data.
REPORT_TAGS = {"h1", "h2", "p", "code", "img", "table", "thead", "tbody", "tr", "th", "td"}


def perplexity_by_length(nll: np.ndarray, counts: np.ndarray, buckets: int = 5) -> list[dict]:
    """Test documents in equal-count buckets of length; token-weighted perplexity per bucket."""
    order = np.argsort(counts, kind="stable")
    rows = []
    for part in np.array_split(order, min(buckets, len(order))):
        rows.append({"max_tokens": int(counts[part].max()), "documents": len(part),
                     "perplexity": float(np.exp(nll[part].sum() / counts[part].sum()))})
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_curve(path: Path) -> tuple[list[int], list[float]]:
    if not path.exists():
        return [], []
    with open(path) as f:
        rows = list(csv.DictReader(f))
    key = next(k for k in rows[0] if k != "step") if rows else ""
    return [int(r["step"]) for r in rows], [float(r[key]) for r in rows]


def plot_all(out: Path, curves_dir: Path, by_length: list[dict], bias: dict, crows: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    def save(fig, name: str) -> Path:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        return out / name

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("train_loss", "val_loss"):
        steps, values = read_curve(curves_dir / f"{key}.csv")
        ax.plot(steps, values, label=key, marker="o" if key == "val_loss" else None)
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="Training")
    ax.legend()
    plots = [save(fig, "loss.png")]

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["max_tokens"] for r in by_length], [r["perplexity"] for r in by_length], marker="o")
    ax.set(xlabel="document length (tokens, bucket upper bound)", ylabel="perplexity",
           title="Perplexity by document length", xscale="log")
    plots.append(save(fig, "perplexity_by_length.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    cats = bias["per_category"]
    excess = np.array([c["excess_gap"] for c in cats.values()])
    # The bootstrap interval need not contain the point estimate (it can lie wholly on one side).
    errors = np.clip([excess - [c["excess_ci_low"] for c in cats.values()],
                      [c["excess_ci_high"] for c in cats.values()] - excess], 0, None)
    axes[0].barh(list(cats), excess, xerr=errors, capsize=3, label="excess over shuffled terms, 95% CI")
    axes[0].scatter([c["gap"] for c in cats.values()], list(cats), color="black", marker="|", s=80,
                    zorder=3, label="raw gap (above 0 even with no group effect)")
    axes[0].axvline(0, color="gray", linestyle="--")
    axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize="small")  # under the bars
    axes[0].set(xlabel="gap between groups (nats)", title="Counterfactual bias gaps")
    types = crows["per_bias_type"]
    axes[1].barh(list(types), [t["stereotype_preference"] for t in types.values()])
    axes[1].axvline(0.5, color="gray", linestyle="--")
    axes[1].axvspan(crows["ci_low"], crows["ci_high"], color="tab:orange", alpha=0.2,
                    label=f"all {crows['pairs']} pairs: 95% interval")
    axes[1].legend(loc="lower right", fontsize="small")
    axes[1].set(xlim=(0, 1), xlabel="share preferring the stereotype (0.5 = none)", title="CrowS-Pairs")
    plots.append(save(fig, "bias.png"))
    return plots


def bias_rows(bias: dict) -> list[dict]:
    """The bias gaps per category, as bias_gaps.csv holds them for `dvc plots`."""
    keys = ("gap", "ci_low", "ci_high", "null_gap", "excess_gap", "excess_ci_low", "excess_ci_high")
    return [{"category": category} | {key: values[key] for key in keys}
            for category, values in bias["per_category"].items()]


def interval_of(low: str, metrics: dict) -> str | None:
    """The metric a `..._ci_low...` key bounds, by the names the evaluation gives them: perplexity
    and perplexity_ci_low, bias_gap_<c> and bias_ci_low_<c>, crows_pairs_sample_stereotype_preference
    and crows_pairs_sample_ci_low."""
    for value in (low.replace("_ci_low", ""), low.replace("ci_low", "gap"),
                  low.replace("ci_low", "stereotype_preference")):
        if value != low and value in metrics and low.replace("ci_low", "ci_high") in metrics:
            return value
    return None


def metric_rows(metrics: dict) -> list[str]:
    """One row a metric, its 95% interval in the same cell: `212.4 [175.2, 239.7]`."""
    bounds = {value: (low, low.replace("ci_low", "ci_high")) for low in metrics
              if "ci_low" in low and (value := interval_of(low, metrics))}
    folded = {key for pair in bounds.values() for key in pair}
    rows = []
    for key, value in metrics.items():
        if key in folded:
            continue
        text = f"{value:.4g}" if isinstance(value, int | float) else markdown_literal(value)
        if key in bounds:
            low, high = bounds[key]
            text += f" [{metrics[low]:.4g}, {metrics[high]:.4g}]"
        rows.append(f"| {markdown_literal(key)} | {text} |")
    return rows


def markdown(metrics: dict, bleu: dict, parallel: dict, samples: list[dict], plots: list[Path]) -> str:
    rows = "\n".join(metric_rows(metrics))
    # Prompts come from the corpus and continuations from the model: data, never markup.
    sample_rows = "\n".join(f"| {markdown_literal(repr(s['reference']))} | "
                             f"{markdown_literal(repr(s['prediction']))} |" for s in samples)
    images = "\n\n".join(f"![{p.stem}]({p.name})" for p in plots)
    harness_note = ("\n`<task>/<metric>` rows are lm-evaluation-harness tasks (its `hf` model class on the "
                    "model folder);\nthe `lmp_*` tasks are built from the test split: their data and YAML "
                    "are in `harness/`.\n" if any("/" in k for k in metrics) else "")
    return f"""# Evaluation report

Perplexity is token-weighted over the whole test split (sliding window); bits per byte divides
the total negative log-likelihood by the UTF-8 bytes of the test text, so models with different
tokenizers compare. Intervals are 95%: bootstrap over documents (segments for BLEU, pairs for
CrowS-Pairs, templates and terms for the bias probes); exact binomial for extraction and exposure.

| metric | value [95% interval] |
|---|---|
{rows}
{harness_note}
BLEU signature: `{bleu['bleu_signature']}`; chrF signature: `{bleu['chrf_signature']}`.
Parallel-pairs BLEU (`{parallel.get('bleu_signature', '')}`) uses the prompt template from params.

{images}

## Continuations (first test documents)

| reference | greedy continuation |
|---|---|
{sample_rows}
"""


def html(markdown_text: str, plots: list[Path]) -> str:
    """A single page with the plots embedded, readable without the PNG files next to it.

    Whatever the Markdown holds, the page keeps only the report's own elements (an allow-list:
    no link, script or event handler), images only as its plots, and its Content-Security-Policy
    loads nothing and runs nothing, should a browser ever meet markup that got through."""
    import markdown as md
    import nh3

    body = md.markdown(markdown_text, extensions=["tables"])
    embedded = set()
    for plot in plots:
        source = "data:image/png;base64," + base64.b64encode(plot.read_bytes()).decode()
        body = body.replace(f'src="{plot.name}"', f'src="{source}"')
        embedded.add(source)
    body = nh3.clean(body, tags=REPORT_TAGS, attributes={"img": {"alt"}},
                     tag_attribute_values={"img": {"src": embedded}}, url_schemes={"data"})
    return (f"<!doctype html><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{content_security_policy()}\">"
            f"<title>Evaluation report</title><style>{STYLE}</style>\n" + body)


def content_security_policy() -> str:
    """Images only as embedded data, the page's own style only (by its hash), nothing else: no
    script, frame, font, connection, form target or base URL."""
    style = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
    return (f"default-src 'none'; img-src data:; style-src 'sha256-{style}'; base-uri 'none'; "
            "form-action 'none'")
