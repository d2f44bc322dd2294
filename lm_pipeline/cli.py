"""`lmp`: one subcommand per stage, plus `run`, `search`, `tune`, `deploy` and `generate`. Thin on purpose.

COMMANDS maps each subcommand to its function; each imports its stage or command module when it
runs (the one place project modules are imported inside functions), so `lmp --help` and the small
stages do not pay for torch, Ray, Prefect or Great Expectations.

Exit codes: 0 success, 1 the stage failed (bad data, failed training, ...), 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lm_pipeline import env, tracking
from lm_pipeline.config import Config, ConfigError, load_config
from lm_pipeline.stages import STAGES
from lm_pipeline.training.tuned import tuned_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmp", description="lm-pipeline: corpus -> validated -> tokenized -> trained -> "
        "evaluated -> registered language model.")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="the params file (default: %(default)s)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in STAGES.items():
        stage = sub.add_parser(name, help=help_text, description=f"Stage {name}: {help_text}. "
                               "Reads its settings from the params file.")
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
                   "not forget). Outcomes go to ct.state_dir/drops.json and the flow run.")
    deploy = sub.add_parser("deploy", help="deploy the flow to a Prefect server on a cron schedule",
                            description="Create or update a Prefect deployment of the pipeline with a "
                            "cron schedule, a process work pool and a concurrency limit of 1, on the "
                            "server at PREFECT_API_URL; then start a worker with `prefect worker start "
                            "--pool POOL`. With --serve, no server or worker is needed: this process "
                            "schedules and runs the flow itself until interrupted.")
    deploy.add_argument("--cron", default="0 2 * * *", help="cron schedule (default: %(default)s)")
    deploy.add_argument("--timezone", default="UTC", help="of the cron schedule (default: %(default)s)")
    deploy.add_argument("--name", default="nightly", help="deployment name (default: %(default)s)")
    deploy.add_argument("--pool", default="lm-pipeline", help="work pool (default: %(default)s)")
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
                              "champion before the current one; recorded in the promotion log.")
    rollback.add_argument("--reason", required=True, help="why (recorded)")
    lineage = sub.add_parser("lineage", help="where a registered version came from, and how to rebuild it",
                             description="Print a version's lineage tags (git commit, data, params, "
                             "dvc.lock and weights hashes, runs) and the commands that rebuild it.")
    lineage.add_argument("model_uri", help="models:/<name>/<version> or models:/<name>@<alias>")
    lineage.add_argument("--rebuild", metavar="FOLDER", default=None, help="a version continuous training "
                         "made: train each of its cycles again in FOLDER, from the drops DVC archived, "
                         "and check the weights against the registered ones (exit 1 if they differ)")
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


def main(argv: list[str] | None = None) -> int:
    env.apply()
    args = build_parser().parse_args(argv)
    # Our own progress at INFO; libraries only when they warn.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("lm_pipeline").setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        cfg = load_config(args.params)
    except ConfigError as err:
        print(f"lmp: config error: {err}", file=sys.stderr)
        return 2
    try:
        if getattr(args, "tuned", False):
            cfg = tuned_config(cfg)
        output = COMMANDS[args.command](cfg, args)
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # every stage error ends here: one clear line, non-zero exit
        logging.getLogger("lmp").debug("traceback", exc_info=True)
        print(f"lmp {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if output:
        print(output)
    return 0


# --- the commands: (cfg, args) -> text to print, or None -------------------------------------

def ingest(cfg: Config, args) -> None:
    from lm_pipeline.stages import ingest as stage
    stage.run(cfg)


def validate(cfg: Config, args) -> None:
    from lm_pipeline.stages import validate as stage
    stage.run(cfg)


def preprocess(cfg: Config, args) -> None:
    from lm_pipeline.stages import preprocess as stage
    stage.run(cfg)


def train(cfg: Config, args) -> None:
    from lm_pipeline.stages import train as stage
    stage.run(cfg)


def evaluate(cfg: Config, args) -> None:
    from lm_pipeline.stages import evaluate as stage
    stage.run(cfg)


def register(cfg: Config, args) -> None:
    from lm_pipeline.stages import register as stage
    stage.run(cfg)


def search(cfg: Config, args) -> None:
    from lm_pipeline.training import search as command
    command.run(cfg)


def run_flow(cfg: Config, args) -> None:
    from lm_pipeline.flows.temporary_server import temporary_server

    with temporary_server():
        from lm_pipeline.flows.pipeline import pipeline

        pipeline(force=args.force)


def ct_flow(cfg: Config, args) -> None:
    from lm_pipeline.flows.temporary_server import temporary_server

    with temporary_server():
        from lm_pipeline.flows.continuous import continuous_training

        for result in continuous_training():
            print(f"{result['drop']}: {result['outcome']} ({result['reason']})")


def tune_flow(cfg: Config, args) -> None:
    from lm_pipeline.flows.temporary_server import temporary_server

    with temporary_server():
        from lm_pipeline.flows.tune import tune

        tune(force=args.force)


def deploy_flow(cfg: Config, args) -> str:
    if args.continuous and (args.serve or args.image):
        raise ConfigError("deploy --continuous runs on a Prefect server's process pool, in this checkout: "
                          "its ledger, announcements and corpus so far (ct.state_dir) must outlive each "
                          "run, which a container per run (--image) does not keep; --serve runs the "
                          "pipeline flow alone")
    if args.serve:
        from lm_pipeline.flows.pipeline import serve

        serve(name=args.name, cron=args.cron)
        return "stopped serving"
    from lm_pipeline.flows.deploy import deploy

    deployment_id = deploy(args.name, args.cron, args.pool, args.timezone, args.image)
    lines = [f"deployment lm-pipeline/{args.name} ({deployment_id}): cron '{args.cron}' "
             f"{args.timezone}, pool {args.pool}, one run at a time"]
    if args.continuous:
        from lm_pipeline.flows.deploy import deploy_continuous

        watcher, cycle = deploy_continuous(args.pool, cfg.ct.watch_interval_s)
        lines += [f"deployment lm-ct-watch/watch ({watcher}): every {cfg.ct.watch_interval_s:g} s, "
                  f"announces new drops under {cfg.ct.watch}",
                  f"deployment lm-continuous-training/on-drop ({cycle}): a cycle on each announced drop"]
    return "\n".join([*lines, f"  start a worker:  prefect worker start --pool {args.pool}",
                       f"  run it now:      prefect deployment run lm-pipeline/{args.name}"])


def registry_command(cfg: Config, args) -> str:
    from lm_pipeline.registry import manage

    if args.command == "lineage":
        return lineage(cfg, args)
    entry = (manage.promote(cfg, args.version, args.reason) if args.command == "promote"
             else manage.rollback(cfg, args.reason))
    return (f"{entry['model_name']}: champion {entry['champion_before']} -> {entry['champion_after']} "
            f"({entry['action']}: {entry['reason']})")


def lineage(cfg: Config, args) -> None:
    """The version's lineage, its continuous-training cycles and, with --rebuild, those trained again."""
    import mlflow

    from lm_pipeline.continuous.archive import ArchiveError
    from lm_pipeline.continuous.rebuild import cycle_chain, describe, rebuild
    from lm_pipeline.registry import manage
    from lm_pipeline.registry.aliases import model_version

    text = manage.lineage(cfg, args.model_uri)  # sets the tracking URI up
    client = mlflow.MlflowClient()
    version = model_version(client, args.model_uri)
    chain = cycle_chain(client, version.name, version.version)
    print("\n".join([text, *describe(chain)]), flush=True)
    if args.rebuild and not chain:
        raise ArchiveError(f"version {version.version} was not made by continuous training: rebuild it "
                           "with the commands above")
    for line in rebuild(chain, Path(args.rebuild)) if args.rebuild else []:
        print(line, flush=True)


def generate_text(cfg: Config, args) -> str:
    """A folder as it is; a registered version (models:/...) as its safetensors, refused unless its
    weights hash is the one recorded at registration (its MLflow loader is code: never run here)."""
    import torch

    from lm_pipeline.model.generate import complete_batch
    from lm_pipeline.serving import source

    model_ref = args.model or str(cfg.train.model_dir)
    if source.is_registered(model_ref):
        import mlflow

        mlflow.set_tracking_uri(tracking.tracking_uri(cfg))
    served = source.load(model_ref, args.device)
    generator = torch.Generator().manual_seed(args.seed)
    sampling = {"temperature": args.temperature, "top_k": args.top_k or None, "top_p": args.top_p}
    return format_continuations(args.prompt, complete_batch(
        served.model, served.tokenizer, args.prompt, args.max_new_tokens, stop=args.stop,
        generator=generator, **sampling))


def serve_endpoint(cfg: Config, args) -> None:
    from lm_pipeline.serving import launch

    overrides = {k: v for k in ("host", "port", "replicas") if (v := getattr(args, k)) is not None}
    if overrides:
        cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update=overrides)})
    launch.run(cfg, args.model, args.detach)


def format_continuations(prompts: list[str], continuations: list[str]) -> str:
    import json

    if len(prompts) == 1:
        return continuations[0]
    return "\n".join(json.dumps({"prompt": p, "continuation": c}, ensure_ascii=False)
                     for p, c in zip(prompts, continuations, strict=True))


COMMANDS = {
    "ingest": ingest, "validate": validate, "preprocess": preprocess, "train": train,
    "evaluate": evaluate, "register": register, "search": search, "run": run_flow, "tune": tune_flow,
    "ct": ct_flow, "deploy": deploy_flow, "promote": registry_command, "rollback": registry_command,
    "lineage": registry_command, "generate": generate_text, "serve": serve_endpoint,
}


if __name__ == "__main__":
    sys.exit(main())
