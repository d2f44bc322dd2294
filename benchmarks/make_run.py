"""`make run` on a fresh clone of this checkout, timed end to end, and where the time goes.

    python -m benchmarks.make_run

The quick start's figure is for a fresh clone once the environment exists, so the clone borrows this
checkout's .venv (make is told it is up to date with `-o`) and PYTHONPATH puts the clone's own
code first. One run, nothing else running.

Keys: make_run_seconds (wall time of `make run`), make_run_phase_<stage>_s (each stage's task, as
the flow logs it: `dvc repro` and the `lmp` process it starts), make_run_phase_orchestration_s
(the rest: make, the flow's process, Prefect's temporary server, the summary), and
make_run_train_time_<phase>_s (the train stage's own breakdown), and
make_run_test_perplexity, to show the time was not bought by training less.

Side by side in the same run, the reference loop (benchmarks/reference_loop.py) trains the clone's
default model and steps on the clone's processed data: make_run_reference_train_s is its wall
time, the floor this machine sets for the training alone. make_run_overhead_s (make run minus that
floor) is what the pipeline adds, and make_run_vs_reference_ratio its share; those two compare
across machines, where the seconds do not (a 2 GHz Zen 1 core steps about 2.7x slower than the
machine that first met the 150 s goal). make_run_machine_matmul_gflops says which machine it was.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import save_results

ROOT = Path(__file__).resolve().parents[1]
STAGE_LINE = re.compile(r"stage (\w+) (ran|skipped) in ([\d.]+) s")


def fresh_clone(into: Path) -> Path:
    clone = into / "lm-pipeline"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    (clone / ".venv").symlink_to(ROOT / ".venv")
    return clone


def timed_make_run(clone: Path) -> tuple[float, list[str]]:
    env = os.environ | {"PYTHONPATH": str(clone), "PATH": f"{clone / '.venv/bin'}:{os.environ['PATH']}"}
    start = time.perf_counter()
    proc = subprocess.run(["make", "-o", ".venv/.installed", "run"], cwd=clone, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"make run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return seconds, (proc.stdout + proc.stderr).splitlines()


def stage_seconds(lines: list[str]) -> dict[str, float]:
    return {m[1]: float(m[3]) for line in lines if (m := STAGE_LINE.search(line))}


def train_phases(clone: Path, cfg) -> dict[str, float]:
    """The train stage's own breakdown (its run's time_* metrics: progress.PhaseClock, driver_times)."""
    import mlflow

    run_id = json.loads((clone / cfg.train.model_dir / "run.json").read_text())["mlflow_run_id"]
    db = clone / cfg.tracking_uri.removeprefix("sqlite:///")  # the default store, in the clone
    uri = f"sqlite:///{db}" if cfg.tracking_uri.startswith("sqlite:///") else cfg.tracking_uri
    metrics = mlflow.MlflowClient(uri).get_run(run_id).data.metrics
    return {f"make_run_train_{k}": v for k, v in sorted(metrics.items()) if k.startswith("time_")}


def reference_train_seconds(clone: Path) -> float:
    """The reference loop's wall time for the default params, on the data the clone's run wrote."""
    out = clone / "reference.json"
    subprocess.run([sys.executable, "-m", "benchmarks.reference_loop", "--params", "params.yaml",
                    "--out", str(out)], cwd=clone, check=True, stdout=subprocess.DEVNULL,
                   env=os.environ | {"PYTHONPATH": str(clone)})
    return json.loads(out.read_text())["wall_s"]


def matmul_gflops(threads: int, size: int = 2048, repeats: int = 10) -> float:
    """This machine's fp32 matrix-multiply speed on the training's threads: which machine the
    seconds above came from (they differ threefold between the 2-core machines seen here)."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(size, size)
    a @ a  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main(argv: list[str] | None = None) -> None:
    from lm_pipeline.config import load_config

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lmp-bench-make-run-") as tmp:
        clone = fresh_clone(Path(tmp))
        wall, lines = timed_make_run(clone)
        cfg = load_config(clone / "params.yaml")  # where the clone's stages wrote
        stages = stage_seconds(lines)
        train = train_phases(clone, cfg)
        perplexity = json.loads((clone / cfg.evaluate.metrics_file).read_text())["perplexity"]
        reference = reference_train_seconds(clone)
        gflops = matmul_gflops(cfg.train.cpus_per_worker)
    results = {"make_run_seconds": wall, "make_run_reference_train_s": reference,
               "make_run_overhead_s": wall - reference, "make_run_vs_reference_ratio": wall / reference,
               "make_run_machine_matmul_gflops": gflops,
               **{f"make_run_phase_{stage}_s": s for stage, s in stages.items()},
               "make_run_phase_orchestration_s": wall - sum(stages.values()),
               **train, "make_run_test_perplexity": perplexity}
    print(f"make run {wall:.1f} s, the reference loop's training alone {reference:.1f} s: "
          f"{wall - reference:.1f} s added by the pipeline (ratio {wall / reference:.2f})")
    save_results(results, replaces="make_run_")


if __name__ == "__main__":
    main()
