"""The argument parser of `lmp` (lm_pipeline/cli.py runs what it parses)."""

from __future__ import annotations

import argparse
import functools
import textwrap
from pathlib import Path

from lm_pipeline.stages import STAGES

FLOW_COMMANDS = ("run", "tune", "ct", "deploy")  # their stages run in processes of their own
PARAMS_FILE = "params.yaml"  # what the stages under dvc repro read
POOL = "lm-pipeline"  # lmp deploy's default work pool
DEBUG_ENV = "LMP_DEBUG"


def common_options(defaults: bool) -> argparse.ArgumentParser:
    """Options taken before or after the command. A subcommand's copy has no defaults, so it
    sets only what is given after it (argparse would otherwise reset what came before)."""
    def default(value):
        return value if defaults else argparse.SUPPRESS

    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--params", type=Path, default=default(Path(PARAMS_FILE)),
                         help=f"the params file (default: {PARAMS_FILE}; the flow commands read "
                              f"{PARAMS_FILE} only)")
    # After the command, its own list: argparse would otherwise replace the one given before it.
    options.add_argument("--set", dest="overrides" if defaults else "overrides_after", action="append",
                         metavar="SECTION.KEY=VALUE",
                         default=default([]), help="override one setting for this command (repeatable; "
                         "typed and checked as in the file), e.g. --set train.max_steps=100")
    options.add_argument("-q", "--quiet", action="store_true", default=default(False),
                         help="only warnings and errors")
    options.add_argument("-v", "--debug", action="store_true", default=default(False),
                         help=f"print the traceback of an error (or set {DEBUG_ENV}=1)")
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmp", parents=[common_options(defaults=True)], description="lm-pipeline: corpus -> "
        "validated -> tokenized -> trained -> evaluated -> registered language model.")
    parser.add_argument("--version", action="version", version=f"lmp {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Every command takes the common options after its name too (`lmp train --params p.yaml`).
    sub.add_parser = functools.partial(sub.add_parser, parents=[common_options(defaults=False)])
    for name, help_text in STAGES.items():
        stage = sub.add_parser(name, help=help_text, description=f"Stage {name}: {help_text}.",
                               epilog=settings_read(name),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        if name in ("evaluate", "register"):
            stage.add_argument("--tuned", action="store_true", help="the best model of the last search "
                               "(tune.model_dir; reports under tune.report_dir)")
    sub.add_parser("search", help="search hyperparameters and architecture with Ray Tune",
                   description="Run the Ray Tune search declared in the tune section (ASHA on val_loss, "
                   "each trial a Ray Train run, MLflow child runs under one parent) and export the best "
                   "trial's model to tune.model_dir. Needs preprocessed data.")
    tune = sub.add_parser("tune", help="data stages, search, then evaluate and register the best model "
                          "(a Prefect flow)", description="Run the tune flow: ingest, validate and "
                          "preprocess through DVC, `lmp search`, then `lmp evaluate --tuned` and `lmp "
                          "register --tuned`: the best trial meets the same gates as any model.")
    tune.add_argument("--force", action="store_true", help="rerun the data stages even if up to date")
    run = sub.add_parser("run", help="run the whole pipeline as a Prefect flow (DVC skips what "
                         "is up to date)", description="Run every stage through the Prefect flow. "
                         "Each task runs its DVC stage (params.yaml), so unchanged stages are "
                         "skipped and dvc.lock stays true.")
    run.add_argument("--force", action="store_true", help="rerun every stage even if up to date")
    sub.add_parser("ct", help="continuous training: one cycle for each new, complete drop under ct.watch",
                   description="Run the continuous-training flow once: each new drop is checked "
                   "(quarantined if bad), the champion is scored on it, and only a drift retrains it "
                   "(from the champion, with a replay of the corpus so far; promoted only if it does "
                   "not forget). Outcomes go to ct.state_dir/drops.json and the flow run; exit status 1 "
                   "when a cycle failed or a rollback was refused.")
    deploy = sub.add_parser("deploy", help="deploy the flow to a Prefect server on a cron schedule",
                            description="Create or update a Prefect deployment of the pipeline with a "
                            "cron schedule, a process work pool and a concurrency limit of 1, on the "
                            "server at PREFECT_API_URL; then start a worker with `prefect worker start "
                            "--pool POOL`. With --serve, no server or worker is needed: this process "
                            "schedules and runs the flow itself until interrupted.")
    deploy.add_argument("--cron", default="0 2 * * *", help="cron schedule (default: %(default)s)")
    deploy.add_argument("--timezone", default="UTC", help="of the cron schedule (default: %(default)s)")
    deploy.add_argument("--name", default="nightly", help="deployment name (default: %(default)s)")
    deploy.add_argument("--pool", default=POOL, help="work pool (default: %(default)s)")
    deploy.add_argument("--image", default=None, help="run in this image, on a Docker or Kubernetes "
                        "pool (default: a process pool running in this checkout)")
    deploy.add_argument("--serve", action="store_true", help="serve from this process (blocks)")
    deploy.add_argument("--continuous", action="store_true", help="also continuous training: a watcher "
                        "of ct.watch every ct.watch_interval_s, and a cycle triggered by each new drop "
                        "it announces (the event lmp.drop.arrived)")
    promote = sub.add_parser("promote", help="make a registered version the champion, by hand",
                             description="Move the champion alias to VERSION; the reason is recorded "
                             "on the version and in the promotion log.")
    promote.add_argument("version", help="registered model version number")
    promote.add_argument("--reason", required=True, help="why (recorded)")
    rollback = sub.add_parser("rollback", help="give champion back to the previous champion",
                              description="Move the champion alias back to the version that was "
                              "champion before the current one (rolling back again goes further "
                              "back, never to a version rolled back from), or to a former champion "
                              "named with --to; only to a version whose weights hash to what was "
                              "recorded at its registration. Recorded in the promotion log.")
    rollback.add_argument("--to", metavar="VERSION", default=None, help="the former champion to go back to")
    rollback.add_argument("--reason", required=True, help="why (recorded)")
    lineage = sub.add_parser("lineage", help="where a registered version came from, and how to rebuild it",
                             description="Print a version's lineage tags (git commit, data, params, "
                             "dvc.lock and weights hashes, runs) and the commands that rebuild it.")
    lineage.add_argument("model_uri", help="models:/<name>/<version> or models:/<name>@<alias>")
    lineage.add_argument("--rebuild", metavar="FOLDER", default=None, help="a version continuous training "
                         "made: train each of its cycles again in FOLDER, from the drops DVC archived, "
                         "and check the weights against the registered ones (exit 1 if they differ)")
    plan = sub.add_parser("plan", help="what a training run takes per rank, and whether it fits",
                          description="Before `lmp train`: parameters (total, trainable), training FLOPs "
                          "per token, tokens per step, memory per rank (weights, gradients, optimizer "
                          "state, activations) for train.strategy on train.num_workers, and the time; "
                          "exit 1, naming the settings to change, if a rank would not fit a worker's "
                          "memory. Needs the preprocessed data (its vocabulary).")
    plan.add_argument("--warmup-steps", type=int, default=0, metavar="N",
                      help="time N steps of the real model here (one worker) for the expected wall time")
    verify = sub.add_parser("verify", help="check a registered version before serving it with MLflow",
                            description="Download a registered version and check that its code (MLmodel, "
                            "the loader, code/, the requirements) and its weights are the ones recorded "
                            "at registration; exit 1 if not. `mlflow models serve` runs that code: serve "
                            "the checked copy, `mlflow models serve -m FOLDER`.")
    verify.add_argument("model_uri", help="models:/<name>/<version> or models:/<name>@<alias>")
    verify.add_argument("--download", metavar="FOLDER", type=Path, default=None,
                        help="a new folder to leave the checked copy in")
    config = sub.add_parser("config", help="print the settings in effect (the params file and --set)",
                            description="Print the settings every command would run with: the params "
                            "file with any --set on top, checked, every default filled in.")
    config.add_argument("--diff", action="store_true", help="only the settings that differ from the defaults")
    gen = sub.add_parser("generate", help="generate text from a trained or registered model",
                         description="Continue prompts with a model folder (either backend, or a "
                         "Hugging Face folder) or an MLflow model URI. One prompt: its continuation "
                         "as it is; several: one JSON line each, {prompt, continuation}.")
    gen.add_argument("prompt", nargs="+", help="text to continue (several: batched)")
    gen.add_argument("--model", default=None, help="model folder or models:/<name>@<alias> "
                     "(default: train.model_dir from the params file)")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    gen.add_argument("--top-k", type=int, default=0, help="0 disables top-k")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--stop", action="append", default=[], help="end a continuation before this "
                     "string (repeatable)")
    gen.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, ...")
    serve = sub.add_parser("serve", help="serve the champion behind an OpenAI-compatible endpoint "
                           "(Ray Serve)", description="Serve a registered version or a model folder at "
                           "/v1/models, /v1/completions and /v1/chat/completions on Ray Serve, until "
                           "interrupted. An alias (the default: champion) is followed: each replica "
                           "swaps to the version it moves to, after checking its weights hash. Settings: "
                           "the serve section of the params file.")
    serve.add_argument("--model", default=None, help="models:/<name>@<alias>, models:/<name>/<n> or a "
                       "model folder (default: serve.model, else models:/<register.model_name>@champion)")
    serve.add_argument("--host", default=None, help="address to bind (default: serve.host)")
    serve.add_argument("--port", type=int, default=None, help="HTTP port (default: serve.port)")
    serve.add_argument("--replicas", type=int, default=None, help="model replicas (default: serve.replicas)")
    serve.add_argument("--detach", action="store_true", help="deploy (or update) the endpoint on the cluster "
                       "at ray.address and return; it keeps running there (the serve flow runs this)")
    return parser


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm-pipeline")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def settings_read(stage: str) -> str:
    """The params a stage reads, as dvc.yaml (in the working directory) declares them."""
    import yaml

    dvc_yaml = Path("dvc.yaml")
    declared = yaml.safe_load(dvc_yaml.read_text()).get("stages", {}).get(stage, {}).get("params", []) \
        if dvc_yaml.is_file() else []
    keys = [k for entry in declared for k in (entry if isinstance(entry, dict) else [entry])]
    if not keys:
        return "Reads its settings from the params file."
    return "Settings it reads (dvc.yaml; change one for this run with --set KEY=VALUE):\n" + \
        textwrap.fill(", ".join(keys), width=100, initial_indent="  ", subsequent_indent="  ")
