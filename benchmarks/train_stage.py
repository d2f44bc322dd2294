"""The whole train stage against the reference loop, side by side, and where the stage's time goes.

    python -m benchmarks.train_stage [--steps 2000]

Setup (not timed): the built-in corpus with a character tokenizer (about 2 MB of text), ingested
and preprocessed once. Then, on the same data and params (4 layers, 4 heads, 128 wide, context
64, batch 12, validation every 250 steps, one worker with both cores), each run once in a fresh
process and timed from start to exit:
- reference: `python -m benchmarks.reference_loop` (one file, no Ray, MLflow or Prefect);
- stage: `lmp train`, everything a user waits for: Ray, the MLflow run, every step, validation,
  checkpoint and the export.

Keys: train_stage_vs_reference_wall_ratio (reference wall / stage wall; 1.0 = no overhead),
step_vs_reference_ratio (median steady step time, reference / stage), train_stage_seconds,
reference_loop_seconds, and train_stage_phase_<phase>_s: the stage's wall time split into its
phases (from the run's time_* metrics, see progress.PhaseClock and train_stage.driver_times).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import markdown_table, save_results

BIN = Path(sys.executable).parent
MODEL = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0}
BATCH = 12


def write_params(workdir: Path, steps: int) -> Path:
    from lm_pipeline.config import Config

    params = Config.model_validate({
        "data": {"raw_dir": str(workdir / "raw"), "processed_dir": str(workdir / "processed"),
                 "report_file": str(workdir / "ingest.json")},
        "validate": {"report_dir": str(workdir / "validation"), "required": False},  # times train only
        "tokenizer": {"kind": "char"},
        "model": MODEL,
        "train": {"num_workers": 1, "cpus_per_worker": 2, "batch_size": BATCH, "max_steps": steps,
                  "eval_interval": 250, "checkpoint_interval": 250,
                  "model_dir": str(workdir / "model"), "checkpoint_dir": str(workdir / "ckpt"),
                  "curves_dir": str(workdir / "curves")},
        "mlflow": {"tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}", "experiment": "bench"},
    }).model_dump(mode="json", by_alias=True)
    path = workdir / "bench.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def stage_phases(workdir: Path) -> tuple[dict[str, float], float]:
    """The train run's time_* metrics, and its median steady step time (from tokens_per_s)."""
    import mlflow

    run_id = json.loads((workdir / "model/run.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    metrics = client.get_run(run_id).data.metrics
    rates = [m.value for m in sorted(client.get_metric_history(run_id, "tokens_per_s"), key=lambda m: m.step)]
    tokens_per_step = BATCH * MODEL["block_size"]
    return ({k: v for k, v in metrics.items() if k.startswith("time_")},
            statistics.median(tokens_per_step / r for r in rates[10:]))


def breakdown(phases: dict[str, float], wall: float) -> dict[str, float]:
    """The process's wall time, phase by phase: start-up (the process and its imports, the MLflow
    run, Ray, Ray's worker processes, the model and data on the worker), steps, validation,
    checkpoints (with the reports to Ray), logging, export and the rest."""
    worker = {p: phases.get(f"time_{p}_s", 0.0) for p in ("setup", "steps", "validation", "checkpoints",
                                                          "logging")}
    return {"startup_process_and_mlflow": wall - phases["time_stage_s"] + phases["time_driver_prepare_s"],
            "startup_ray": phases.get("time_driver_ray_start_s", 0.0),  # 0 when it runs in-process
            "startup_workers": phases["time_driver_fit_s"] - sum(worker.values()),
            "startup_worker_setup": worker.pop("setup"), **worker,
            "export": phases["time_driver_export_s"], "report": phases["time_driver_report_s"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lmp-bench-stage-") as tmp:
        workdir = Path(tmp)
        params = write_params(workdir, args.steps)
        for stage in ("ingest", "filter", "preprocess"):
            subprocess.run([str(BIN / "lmp"), "-q", "--params", str(params), stage], cwd=workdir, check=True)
        reference_out = workdir / "reference.json"
        reference_wall = timed([str(BIN / "python"), "-m", "benchmarks.reference_loop", "--params",
                                str(params), "--out", str(reference_out)], Path.cwd())
        stage_wall = timed([str(BIN / "lmp"), "-q", "--params", str(params), "train"], workdir)
        reference = json.loads(reference_out.read_text())
        phases, stage_step = stage_phases(workdir)
    results = {"train_stage_vs_reference_wall_ratio": reference_wall / stage_wall,
               "step_vs_reference_ratio": reference["step_median_s"] / stage_step,
               "train_stage_seconds": stage_wall, "reference_loop_seconds": reference_wall,
               **{f"train_stage_phase_{k}_s": v for k, v in breakdown(phases, stage_wall).items()},
               **{f"reference_loop_{k}": v for k, v in reference.items() if k.endswith("_s")}}
    print(markdown_table(results))
    save_results(results, replaces="train_stage_phase_")


if __name__ == "__main__":
    main()
