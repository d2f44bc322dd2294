"""What every benchmark shares: a small project config in a temporary folder, its data, and the
results file (benchmarks/results.json) with its printed table."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).with_name("results.json")
WARMUP_STEPS = 10  # excluded from steady state: allocator warm-up, first checkpoint


def bench_config(workdir: Path, steps: int, **train):
    from lm_pipeline.config import Config

    config = {
        "data": {"raw_dir": str(workdir / "raw"), "processed_dir": str(workdir / "processed"),
                 "report_file": str(workdir / "ingest.json")},
        "validate": {"report_dir": str(workdir / "validation"), "required": False},  # measures the others
        "filter": {"output_dir": str(workdir / "filtered"), "report_dir": str(workdir / "filter-report")},
        "train": {"num_workers": 1, "cpus_per_worker": 2, "max_steps": steps, "warmup_steps": 5,
                  "eval_interval": steps, "checkpoint_interval": steps,
                  "model_dir": str(workdir / "model"), "checkpoint_dir": str(workdir / "ckpt"),
                  "curves_dir": str(workdir / "curves")},
        "mlflow": {"tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}", "experiment": "bench"},
    }
    config["train"].update(train)
    return Config.model_validate(config)


def prepare_data(cfg) -> None:
    from lm_pipeline.stages import filter, ingest, preprocess

    ingest.run(cfg)
    filter.run(cfg)
    preprocess.run(cfg)


def markdown_table(results: dict[str, float]) -> str:
    rows = "\n".join(f"| {name} | {value:.3f} |" for name, value in results.items())
    return f"| measurement | value |\n|---|---|\n{rows}"


def save_results(results: dict[str, float], replaces: str | None = None) -> None:
    """Merge into benchmarks/results.json (other benchmarks' keys stay; with `replaces`, earlier
    keys starting with it go, so a phase that no longer happens leaves no stale figure) and
    print the table."""
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if replaces:
        previous = {k: v for k, v in previous.items() if not k.startswith(replaces)}
    RESULTS.write_text(json.dumps(previous | results, indent=2, sort_keys=True) + "\n")
    print(markdown_table(results))
    print(f"\nwritten to {RESULTS}")
