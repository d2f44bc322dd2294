"""The filter stage at scale, side by side with datatrove's own pipeline, on a corpus of English
technical prose (lines of the Python documentation shuffled into new documents) of about 100 MB,
and its peak memory at 100 MB and 1 GB. Adds its keys to benchmarks/results.json.

    make bench-filter            # or: python -m benchmarks.filter [--sizes 100 1000]

Each measurement runs in a fresh process, so its peak memory is its own: the peak RSS of the main
process plus that of its largest worker process.
- stage: `lmp filter` with the four datatrove heuristics (gopher_repetition, gopher_quality, c4,
  fineweb), streamed in batches over a process pool of every core, removed documents written aside.
- datatrove: the same four filters with the same thresholds in datatrove's LocalPipelineExecutor
  (JsonlReader -> filters -> JsonlWriter, uncompressed), one task and worker per core; datatrove
  parallelizes over files, so its input is the same documents cut into one file per core.
- all: the stage with every step (language, the heuristics, personal data, exact and near
  duplicates): filter_mb_per_s.
- default: the stage with the default steps (language, personal data, exact and near duplicates)
  at 100 MB and 1 GB: its throughput and peak memory at each size (the heuristics would take
  about 45 minutes at 1 GB on 2 cores; they hold no state across documents, so they add no memory
  that grows with the corpus).

Keys: filter_vs_datatrove_ratio (throughput, stage / datatrove, heuristics only), filter_mb_per_s
(every step), filter_heuristics_mb_per_s, datatrove_mb_per_s, filter_default_mb_per_s_<size>,
filter_peak_rss_mb_<size>, filter_peak_rss_1gb_over_100mb. (datatrove's own peak memory is not
reported: its worker processes escape ru_maxrss.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import markdown_table, save_results

HEURISTICS = ["gopher_repetition", "gopher_quality", "c4", "fineweb"]
EVERY_STEP = ["language", *HEURISTICS, "pii", "exact_dedup", "near_dedup"]
DEFAULT_STEPS = ["language", "pii", "exact_dedup", "near_dedup"]
SIZES = {100: "100mb", 1000: "1gb"}


def generate_corpus(path: Path, megabytes: int, seed: int = 0) -> None:
    """Documents of 10-60 lines drawn at random from the default corpus's lines (English prose and
    code of the Python documentation), so each filter sees real text and few documents repeat."""
    import numpy as np

    from lm_pipeline.data.sources.python_docs import python_docs

    lines = [line for doc in python_docs(1) for line in doc["text"].splitlines() if line.strip()]
    rng = np.random.default_rng(seed)
    target, written, doc = megabytes * 1_000_000, 0, 0
    with open(path, "w") as f:
        while written < target:
            text = "\n".join(lines[i] for i in rng.integers(0, len(lines), rng.integers(10, 60)))
            line = json.dumps({"id": f"g{doc}", "text": text})
            f.write(line + "\n")
            written, doc = written + len(line) + 1, doc + 1


def measure(kind: str, workdir: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.filter", "--child", kind, str(workdir)],
                          check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(kind: str, workdir: Path) -> None:
    start = time.perf_counter()
    if kind == "datatrove":
        run_datatrove(workdir)
    else:
        run_stage(workdir, {"stage": HEURISTICS, "all": EVERY_STEP, "default": DEFAULT_STEPS}[kind])
    seconds = time.perf_counter() - start
    # The main process's peak plus its largest worker's (ru_maxrss of children is the largest one).
    peak_kib = sum(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_kib / 1024}))


def run_stage(workdir: Path, steps: list[str]) -> None:
    from lm_pipeline.config import Config
    from lm_pipeline.stages import filter

    filter.run(Config.model_validate({
        "data": {"raw_dir": str(workdir / "raw")},
        "validate": {"report_dir": str(workdir / "validation"), "required": False},
        "filter": {"steps": steps, "output_dir": str(workdir / f"out-{len(steps)}"),
                   "report_dir": str(workdir / f"report-{len(steps)}")}}))


def run_datatrove(workdir: Path) -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from lm_pipeline.config import FilterConfig
    from lm_pipeline.data.screen import datatrove_rule

    rules = [datatrove_rule(step, getattr(FilterConfig(), step).model_dump()) for step in HEURISTICS]
    cores = os.cpu_count() or 1
    LocalPipelineExecutor(
        pipeline=[JsonlReader(str(workdir / "parts")), *rules,
                  JsonlWriter(str(workdir / "datatrove-out"), compression=None)],
        tasks=cores, workers=cores, logging_dir=str(workdir / "datatrove-logs")).run()


def split_into_parts(source: Path, parts: Path, n: int) -> None:
    """The corpus as n files of about equal size, for datatrove's one task per file."""
    parts.mkdir()
    outs = [open(parts / f"part-{i}.jsonl", "w") for i in range(n)]
    with open(source) as f:
        for i, line in enumerate(f):
            outs[i % n].write(line)
    for out in outs:
        out.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), choices=list(SIZES),
                        help="corpus sizes in MB (default: %(default)s; datatrove runs at the smallest)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    results = {}
    for megabytes in sorted(args.sizes):
        label = SIZES[megabytes]
        with tempfile.TemporaryDirectory(prefix="lmp-bench-filter-") as tmp:
            workdir = Path(tmp)
            (workdir / "raw").mkdir()
            print(f"generating {megabytes} MB ...", flush=True)
            generate_corpus(workdir / "raw/documents.jsonl", megabytes)
            size_mb = (workdir / "raw/documents.jsonl").stat().st_size / 1e6
            default = measure("default", workdir)
            results |= {f"filter_default_mb_per_s_{label}": size_mb / default["seconds"],
                        f"filter_peak_rss_mb_{label}": default["peak_rss_mb"]}
            if megabytes == min(args.sizes):
                split_into_parts(workdir / "raw/documents.jsonl", workdir / "parts", os.cpu_count() or 1)
                every, stage, datatrove = (measure(kind, workdir) for kind in ("all", "stage", "datatrove"))
                results |= {"filter_mb_per_s": size_mb / every["seconds"],
                            "filter_heuristics_mb_per_s": size_mb / stage["seconds"],
                            "datatrove_mb_per_s": size_mb / datatrove["seconds"],
                            "filter_vs_datatrove_ratio": datatrove["seconds"] / stage["seconds"],
                            "filter_benchmark_corpus_mb": size_mb}
            print(markdown_table(results), flush=True)
    if {"100mb", "1gb"} <= {SIZES[m] for m in args.sizes}:
        results["filter_peak_rss_1gb_over_100mb"] = (results["filter_peak_rss_mb_1gb"]
                                                     / results["filter_peak_rss_mb_100mb"])
    save_results(results)


if __name__ == "__main__":
    main()
