"""The filter stage's funnel: what each step removed, counted as the documents stream past, and
the report a person reads in filter.report_dir (and MLflow, beside the training run):

    metrics.json   documents and characters in, removed and trimmed per step, kept; PII found
    report.md      the table, and a few removed documents per step (redacted; shown as text, never markup)
    funnel.png     documents and characters left after each step
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lm_pipeline.data.pii import redact_all
from lm_pipeline.io import atomic_path, write_json
from lm_pipeline.text import markdown_literal

METRICS_FILE = "metrics.json"
EXAMPLE_CHARS = 300


@dataclass
class StepCount:
    removed: int = 0
    removed_chars: int = 0
    trimmed_chars: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)


@dataclass
class Funnel:
    steps: list[str]
    examples: int
    documents: int = 0
    characters: int = 0
    pii: dict[str, int] = field(default_factory=dict)
    counts: dict[str, StepCount] = field(default_factory=dict)

    def __post_init__(self):
        self.counts = {step: StepCount() for step in self.steps}

    def read(self, text_chars: int, trimmed: dict[str, int], pii: dict[str, int]) -> None:
        """A document entered the funnel (text_chars: its length as ingested)."""
        self.documents += 1
        self.characters += text_chars
        for step, chars in trimmed.items():
            self.counts[step].trimmed_chars += chars
        for category, matches in pii.items():
            self.pii[category] = self.pii.get(category, 0) + matches

    def remove(self, step: str, reason: str, doc: dict) -> None:
        count = self.counts[step]
        count.removed += 1
        count.removed_chars += len(doc["text"])
        kind = reason.split(" of ")[0].split(" (")[0]  # "duplicate of <id>" -> "duplicate"
        count.reasons[kind] = count.reasons.get(kind, 0) + 1
        if len(count.examples) < self.examples:
            count.examples.append({"id": str(doc.get("id", "")), "reason": reason,
                                   # redacted whole, then cut: a cut secret no longer matches
                                   "text": redact_all(doc["text"])[:EXAMPLE_CHARS]})

    def rows(self) -> list[dict]:
        """Per step: documents and characters in, removed, trimmed, left."""
        rows, documents, characters = [], self.documents, self.characters
        for step, count in self.counts.items():
            row = {"step": step, "documents_in": documents, "removed": count.removed,
                   "removed_chars": count.removed_chars, "trimmed_chars": count.trimmed_chars}
            documents -= count.removed
            characters -= count.removed_chars + count.trimmed_chars
            rows.append(row | {"documents_left": documents, "characters_left": characters})
        return rows

    def metrics(self) -> dict[str, float]:
        left = self.rows()[-1] if self.steps else {"documents_left": self.documents,
                                                   "characters_left": self.characters}
        metrics = {"documents_in": self.documents, "characters_in": self.characters,
                   "documents_kept": left["documents_left"], "characters_kept": left["characters_left"]}
        for row in self.rows():
            metrics |= {f"{row['step']}_removed": row["removed"],
                        f"{row['step']}_removed_chars": row["removed_chars"],
                        f"{row['step']}_trimmed_chars": row["trimmed_chars"]}
        return metrics | {f"pii_{category}": n for category, n in sorted(self.pii.items())}

    def write(self, report_dir: Path) -> None:
        report_dir = Path(report_dir)
        write_json(report_dir / METRICS_FILE, self.metrics())
        with atomic_path(report_dir / "report.md") as tmp:
            tmp.write_text(self.markdown())
        self.plot(report_dir / "funnel.png")

    def markdown(self) -> str:
        kept = self.metrics()
        lines = ["# Filter funnel", "",
                 f"{kept['documents_kept']} of {self.documents} documents kept "
                 f"({kept['characters_kept']:,} of {self.characters:,} characters). Removed documents "
                 "are in removed.jsonl beside the kept ones, each with the step and reason.", "",
                 "| step | documents in | removed | characters removed | characters trimmed | why |",
                 "|---|---|---|---|---|---|"]
        for row in self.rows():
            reasons = ", ".join(f"{markdown_literal(k)} {v}"
                                for k, v in sorted(self.counts[row["step"]].reasons.items()))
            lines.append(f"| {row['step']} | {row['documents_in']} | {row['removed']} | "
                         f"{row['removed_chars']:,} | {row['trimmed_chars']:,} | {reasons} |")
        if self.pii:
            lines += ["", "Personal data found: " + ", ".join(f"{k} {v}" for k, v in sorted(self.pii.items()))
                      + " (redacted or dropped as filter.pii says)."]
        for step, count in self.counts.items():
            if count.examples:
                lines += ["", f"## Removed by {step}", "",
                          "Each shown with personal data redacted, cut at 300 characters.", ""]
                lines += [f"- {markdown_literal(e['id'])} ({markdown_literal(e['reason'])}): "
                          f"{markdown_literal(e['text'])}" for e in count.examples]
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt

        names = ["ingested"] + [row["step"] for row in self.rows()]
        documents = [self.documents] + [row["documents_left"] for row in self.rows()]
        characters = [self.characters] + [row["characters_left"] for row in self.rows()]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        panels = ((documents, "documents left"), (characters, "characters left"))
        for ax, (values, label) in zip(axes, panels, strict=True):
            ax.bar(range(len(names)), values, color="tab:blue")
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
            ax.set_title(label)
        fig.suptitle("Filter funnel")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
