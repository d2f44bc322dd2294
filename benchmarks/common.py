"""What every benchmark shares: a small project config in a temporary folder, its data, and the
results file (benchmarks/results.json) with its printed table."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
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


def run_ranks(module: str, world: int, args: list[str]) -> list:
    """`world` ranks of `python -m module --rank r --world w --port p --out f ...args`, each in its
    own process (a fresh resident peak) and all at once, over one free port; what each wrote to
    its --out file (JSON)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"{r}.json" for r in range(world)]
        procs = [subprocess.Popen([sys.executable, "-m", module, "--rank", str(r), "--world", str(world),
                                   "--port", str(port), "--out", str(outs[r]), *args], env=os.environ)
                 for r in range(world)]
        if any(p.wait() for p in procs):
            raise RuntimeError(f"{module} {' '.join(args)}: a rank of {world} failed")
        return [json.loads(out.read_text()) for out in outs]
