"""The search as a Prefect flow: data stages, Ray Tune search, then the best model's evaluation
and registry gates.

    lmp tune                            # run once
    python -m lm_pipeline.flows.tune

The data stages run through DVC like the pipeline's (skipped when up to date). The search and
the best model's evaluation write under tune.model_dir and tune.report_dir, so the pipeline's own
outputs (and `dvc status`) are untouched; the registry is shared, and the best trial can only
become champion by passing the same gates as any model. To make the best config the pipeline's,
run the `dvc exp run -S ...` command the search prints (also in reports/tune/best.json).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from lm_pipeline.flows.pipeline import IO_RETRIES, publish_summary, report_failure, run_command, run_stage
from lm_pipeline.flows.temporary_server import temporary_server

DATA_STAGES = ("ingest", "validate", "filter", "preprocess")  # the search trains on their output


@task(task_run_name="{step}")
def run_lmp(step: str, args: list[str], project_dir: str) -> None:
    run_command(step, ["lmp", *args], project_dir)


@flow(name="lm-pipeline-tune", log_prints=True, on_failure=[report_failure])
def tune(project_dir: str = ".", force: bool = False) -> None:
    """ingest -> validate -> filter -> preprocess -> search -> evaluate (best) -> register (best)."""
    for stage in DATA_STAGES:
        retries = IO_RETRIES if stage == "ingest" else {}
        run_stage.with_options(**retries)(stage, project_dir, force)
    run_lmp("search", ["search"], project_dir)
    run_lmp("evaluate", ["evaluate", "--tuned"], project_dir)
    run_lmp.with_options(**IO_RETRIES)("register", ["register", "--tuned"], project_dir)
    publish_summary(Path(project_dir), tuned=True)


if __name__ == "__main__":
    with temporary_server():
        tune()
