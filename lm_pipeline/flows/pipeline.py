"""The pipeline as a Prefect flow: one task per DVC stage, run in order.

Each task runs `dvc repro --single-item <stage>`: DVC decides whether the stage is up to date,
runs `lmp <stage>` if not, and records the result in dvc.lock. So there is one execution path,
and after a flow run `dvc status` is clean and `dvc repro` has nothing to do. Prefect adds the
schedule, retries on the I/O-bound stages, state and logs.

    python -m lm_pipeline.flows.pipeline            # run once (same as `lmp run` / `make run`)
    lmp deploy --cron "0 2 * * *"       # a deployment on a Prefect server (flows/deploy.py)
    lmp deploy --serve                  # or: schedule and run from this process
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from prefect import flow, get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.actions import ArtifactCreate
from prefect.logging.loggers import flow_run_logger
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from lm_pipeline.config import load_config
from lm_pipeline.failures import TEMPORARY_FAILURE
from lm_pipeline.flows.temporary_server import temporary_server
from lm_pipeline.io import read_json, without_credentials
from lm_pipeline.registry.aliases import current_champion
from lm_pipeline.stages import STAGES
from lm_pipeline.text import fenced, without_url_credentials
from lm_pipeline.tracking import FLOW_RUN_ENV
from lm_pipeline.training.tuned import best_values, tuned_config

IO_BOUND = {"ingest", "register"}  # a bucket, a tracking server: failures that may pass


class StageFailed(RuntimeError):
    def __init__(self, message: str, may_pass: bool = False):
        super().__init__(message)
        self.may_pass = may_pass


def failed_for_a_passing_reason(task, task_run, state) -> bool:
    """Retry only what `lmp` said may pass (exit 75): bad input or settings fail the same again."""
    return getattr(state.result(raise_on_failure=False), "may_pass", False)


IO_RETRIES = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=5),
              "retry_jitter_factor": 0.5,  # waits of about 5, 10, 20 s
              "retry_condition_fn": failed_for_a_passing_reason}


@task(task_run_name="{stage}")
def run_stage(stage: str, project_dir: str, force: bool = False) -> str:
    """Reproduce one DVC stage; returns 'ran' or 'skipped'."""
    started = time.perf_counter()
    outcome = "ran" if force or not stage_is_current(stage, project_dir) else "skipped"
    run_command(stage, ["dvc", "repro", "--single-item", stage] + (["--force"] if force else []), project_dir)
    get_run_logger().info("stage %s %s in %.1f s", stage, outcome, time.perf_counter() - started)
    return outcome


def stage_is_current(stage: str, project_dir: str) -> bool:
    """DVC's own answer, as JSON (`dvc status --json`: {} when nothing of the stage changed), to
    whether `dvc repro` will skip the stage; its upstream stages have run by then."""
    status = subprocess.run([str(Path(sys.executable).parent / "dvc"), "status", "--json", stage],
                            cwd=project_dir, capture_output=True, text=True)
    if status.returncode != 0:
        raise StageFailed(f"`dvc status {stage}` failed (exit {status.returncode}): {status.stderr.strip()}")
    return json.loads(status.stdout or "{}") == {}


def run_command(step: str, cmd: list[str], project_dir: str) -> list[str]:
    """Run cmd in the project, its output streamed into the flow run's logs; the last lines back."""
    logger = get_run_logger()
    # `dvc` and the stages' `lmp` come from this interpreter's environment.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = os.environ | {"PATH": path, FLOW_RUN_ENV: str(flow_run.id or "")}
    proc = subprocess.Popen(cmd, cwd=project_dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            logger.info(line)
            tail = (tail + [line])[-20:]
    if proc.wait() != 0:
        # lmp's own exit, or as `dvc repro` reports it: "failed to run: lmp <stage>, exited with 75"
        passing = proc.returncode == TEMPORARY_FAILURE or \
            any(line.endswith(f"exited with {TEMPORARY_FAILURE}") for line in tail[-3:])
        raise StageFailed(f"stage {step} failed (exit {proc.returncode}):\n" + "\n".join(tail), passing)
    return tail


def report_failure(flow, run, state) -> None:
    """on_failure hook: say which stage failed and why, and where the champion is now (read from
    the registry, not assumed), in the logs and as an artifact on the run."""
    message = state.message or "no message"
    champion = champion_status(run.parameters.get("project_dir", "."))
    flow_run_logger(run, flow).error("lm-pipeline failed; %s. %s", champion, message)
    with get_client(sync_client=True) as client:
        client.create_artifact(ArtifactCreate(
            flow_run_id=run.id, key="lm-pipeline-failure", type="markdown",
            description="what failed in this run",
            data=f"## lm-pipeline failed\n\n{fenced(message)}\n\nNothing after the failed stage "
                 f"ran. Registry now: {champion}. A failed register is finished by running it again "
                 "(it reuses its own version).\n"))


def champion_status(project_dir: str) -> str:
    """The champion as the project's registry has it now (without creating a store)."""
    try:
        import mlflow

        cfg = load_config(Path(project_dir) / "params.yaml")
        uri, name = cfg.tracking_uri, cfg.register_.model_name
        if uri.startswith("sqlite:///"):
            db = Path(project_dir) / uri.removeprefix("sqlite:///")  # an absolute path stays itself
            if not db.is_file():
                return f"{name} has no champion (no MLflow store yet)"
            uri = f"sqlite:///{db.resolve()}"
        version = current_champion(mlflow.MlflowClient(uri, registry_uri=uri), name)
        return f"{name} champion is version {version}" if version else f"{name} has no champion"
    except Exception as err:  # the hook reports; it must not fail itself
        return f"the champion could not be read ({without_url_credentials(err)})"


@flow(name="lm-pipeline", log_prints=True, on_failure=[report_failure])
def pipeline(project_dir: str = ".", force: bool = False) -> dict:
    """ingest -> validate -> filter -> preprocess -> train -> evaluate -> register."""
    outcome = {}
    for stage in STAGES:
        retries = IO_RETRIES if stage in IO_BOUND else {}
        outcome[stage] = run_stage.with_options(**retries)(stage, project_dir, force)
    publish_summary(Path(project_dir))
    return outcome


def publish_summary(project_dir: Path, tuned: bool = False) -> None:
    summary = summarize(project_dir, tuned)
    create_markdown_artifact(key="lm-pipeline-summary", markdown=summary["markdown"],
                             description="metrics and registry decision of this run")
    print(summary["text"])


def summarize(project_dir: Path, tuned: bool = False) -> dict[str, str]:
    cfg = load_config(project_dir / "params.yaml")
    if tuned:
        cfg = tuned_config(cfg, best_values(project_dir / cfg.tune.report_dir))
    metrics = json.loads((project_dir / cfg.evaluate.metrics_file).read_text())
    decision = json.loads((project_dir / cfg.register_.record_file).read_text())
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in metrics.items() if isinstance(v, int | float))
    markdown = (f"## {decision['model_name']} v{decision['version']}\n\n{decision['reason']}\n\n"
                f"| metric | value |\n|---|---|\n{rows}\n")
    alias = "champion" if decision["promoted"] else "challenger"
    funnel = read_json(project_dir / cfg.filter.report_dir / "metrics.json")
    text = (f"\nDone: {decision['reason']}\n"
            f"  filter:     kept {funnel['documents_kept']} of {funnel['documents_in']} documents "
            f"({cfg.filter.report_dir / 'report.md'})\n"
            f"  test perplexity {metrics['perplexity']:.2f} (unigram baseline "
            f"{metrics['unigram_perplexity']:.2f}), BLEU {metrics['bleu']:.2f}, "
            f"largest bias gap {metrics['bias_max_gap']:.3f}\n"
            f"  model URI:  models:/{decision['model_name']}@{alias}  "
            f"(version {decision['version']})\n"
            f"  MLflow UI:  {ui_hint(without_credentials(cfg.tracking_uri))}\n"
            f"  try it:     lmp generate --model models:/{decision['model_name']}@{alias} \"The\"\n")
    return {"markdown": markdown, "text": text}


def ui_hint(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return uri  # a tracking server serves its own UI
    return f"mlflow ui --backend-store-uri {uri}  -> http://127.0.0.1:5000"


def serve(name: str = "nightly", cron: str = "0 2 * * *", timezone: str = "UTC") -> None:
    """Serve the flow from this process with a cron schedule until Ctrl-C or SIGTERM, which end
    it as an interrupt (KeyboardInterrupt, its `signum` the signal's)."""
    from prefect.schedules import Cron

    interrupted = []

    def on_interrupt(signum, frame):  # Ctrl-C as Python's own handler takes it, and noted
        interrupted.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)  # the CLI's main thread
    try:
        # One run at a time: DVC locks the workspace.
        pipeline.serve(name=name, schedule=Cron(cron, timezone=timezone), tags=["lm-pipeline"],
                       parameters={"project_dir": str(Path.cwd())}, limit=1)
    finally:
        signal.signal(signal.SIGINT, previous)
    # Prefect's serve returns only once stopped, and says nothing of why: it catches Ctrl-C, and
    # SIGTERM is its runner's graceful shutdown. A stop is no success, for a shell or a supervisor.
    stop = KeyboardInterrupt("stopped serving")
    stop.signum = signal.SIGINT if interrupted else signal.SIGTERM
    raise stop


if __name__ == "__main__":
    with temporary_server():
        pipeline()
