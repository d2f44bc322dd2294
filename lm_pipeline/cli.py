"""`lmp`: one subcommand per stage, plus `run`, `search`, `tune`, `deploy` and `generate`. Thin on purpose.

COMMANDS maps each subcommand to its function; each imports its stage or command module when it
runs (the one place project modules are imported inside functions), so `lmp --help` and the small
stages do not pay for torch, Ray, Prefect or Great Expectations.

Exit codes: 0 success, 1 the stage failed (bad data, failed training, ...), 2 bad usage or config,
75 a failure that may pass (may_pass: the flows retry only these), 130 Ctrl-C (128 + the signal:
`lmp serve` stopped by SIGTERM while starting exits 143, `lmp deploy --serve` once serving too).

What it prints can quote a corpus, a drop or a model: errors always show control characters
escaped, and output does on a terminal (piped, it is the exact text: see `show`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from lm_pipeline import env, tracking
from lm_pipeline.cli_args import DEBUG_ENV, FLOW_COMMANDS, PARAMS_FILE, POOL, build_parser
from lm_pipeline.config import Config, ConfigError, load_config
from lm_pipeline.failures import TEMPORARY_FAILURE, may_pass
from lm_pipeline.progress import ticking
from lm_pipeline.text import terminal_safe, without_url_credentials
from lm_pipeline.training.tuned import tuned_config


def main(argv: list[str] | None = None) -> int:
    env.apply()
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    args.overrides = args.overrides + getattr(args, "overrides_after", [])
    # Our own progress at INFO; libraries only when they warn.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("lm_pipeline").setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        if args.command in FLOW_COMMANDS:
            check_flow_settings(args)
        cfg = load_config(args.params, args.overrides, command_settings(args))
    except ConfigError as err:
        print(f"lmp: config error: {printable(err)}", file=sys.stderr)
        return 2
    try:
        if getattr(args, "tuned", False):
            cfg = tuned_config(cfg)
        output = COMMANDS[args.command](cfg, args)
    except ConfigError as err:  # a setting the command found wrong when it looked (a store, a host)
        print(f"lmp {args.command}: config error: {printable(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C; or a stop signal a command turned into one (serve)
        if str(stop):
            print(f"lmp {args.command}: {stop}", file=sys.stderr)
        return 128 + getattr(stop, "signum", signal.SIGINT)
    except Exception as err:  # every stage error ends here: one clear line, non-zero exit
        if debug:
            sys.stderr.write(printable(traceback.format_exc()))
        passing = may_pass(err)
        print(f"lmp {args.command}: {type(err).__name__}: {printable(err)}"
              + (" (it may pass: worth retrying)" if passing else "")
              + ("" if debug else f" (the traceback: --debug or {DEBUG_ENV}=1)"), file=sys.stderr)
        return TEMPORARY_FAILURE if passing else 1
    if output:
        show(output)
    return 0


def check_flow_settings(args) -> None:
    """A flow's stages run in processes of their own (`dvc repro`, `lmp <stage>`) that read the
    project's params.yaml: settings given any other way would not reach them."""
    if args.overrides:
        raise ConfigError(f"--set is for one command's own settings; `lmp {args.command}` runs its "
                          "stages in processes that read the project's params.yaml: change the "
                          "file, or run `dvc exp run -S KEY=VALUE`")
    if Path(args.params).resolve() != Path(PARAMS_FILE).resolve():
        raise ConfigError(f"--params {args.params}: `lmp {args.command}` runs its stages in processes "
                          f"that read the project's {PARAMS_FILE}: put the settings there (or run a "
                          f"stage with --params)")
    if args.command == "deploy":
        check_deploy_options(args)


def command_settings(args) -> dict[str, object]:
    """Settings a command's own flags give (`lmp serve --port`), by key: checked as params.yaml's are."""
    if args.command != "serve":
        return {}
    return {f"serve.{k}": v for k in ("host", "port", "replicas") if (v := getattr(args, k)) is not None}


def printable(value) -> str:
    """An error as the terminal, and a flow's logs, may show it: no escape sequence, no password."""
    return terminal_safe(without_url_credentials(value))


def show(text: str, stream=None) -> None:
    """A command's output. On a terminal its control characters are shown escaped: a model's text
    or a drop's name can hold escape sequences (a clipboard write, a cleared screen). Piped, it is
    exactly the text: there it is data, for a file or another program."""
    stream = stream or sys.stdout
    print(terminal_safe(text) if stream.isatty() else text, file=stream, flush=True)


# --- the commands: (cfg, args) -> text to print, or None -------------------------------------

def ingest(cfg: Config, args) -> None:
    from lm_pipeline.stages import ingest as stage
    with ticking("ingest: reading the corpus"):  # streamed: its count is known only at the end
        stage.run(cfg)


def validate(cfg: Config, args) -> None:
    from lm_pipeline.stages import validate as stage
    with ticking("validate: checking the corpus"):
        stage.run(cfg)


def filter(cfg: Config, args) -> None:  # noqa: A001 (the stage is named filter)
    from lm_pipeline.stages import filter as stage
    stage.run(cfg)


def preprocess(cfg: Config, args) -> None:
    from lm_pipeline.stages import preprocess as stage
    with ticking("preprocess: tokenizer and token shards"):
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
        from lm_pipeline.flows.continuous import CyclesNeedAPerson, continuous_training

        try:
            results = continuous_training()
        except CyclesNeedAPerson as err:  # every outcome, then the error: exit 1
            show_outcomes(err.results)
            raise
        show_outcomes(results)


def show_outcomes(results: list[dict]) -> None:
    for result in results:
        show(f"{result['drop']}: {result['outcome']} ({result['reason']})")


def tune_flow(cfg: Config, args) -> None:
    from lm_pipeline.flows.temporary_server import temporary_server

    with temporary_server():
        from lm_pipeline.flows.tune import tune

        tune(force=args.force)


def check_deploy_options(args) -> None:
    if args.continuous and (args.serve or args.image):
        raise ConfigError("deploy --continuous runs on a Prefect server's process pool, in this checkout: "
                          "its ledger, announcements and corpus so far (ct.state_dir) must outlive each "
                          "run, which a container per run (--image) does not keep; --serve runs the "
                          "pipeline flow alone")
    given = [option for option, value, default in (("--image", args.image, None), ("--pool", args.pool, POOL))
             if value != default]
    if args.serve and given:
        raise ConfigError(f"deploy --serve runs the flow in this process, with no worker: "
                          f"{' and '.join(given)} would be ignored; leave out --serve to deploy to a pool")
    check_schedule(args.cron, args.timezone)


def check_schedule(cron: str, timezone: str) -> None:
    """Prefect's own check of --cron and --timezone, before any server is called."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValueError as err:  # pydantic's ValidationError
        raise ConfigError("; ".join(f"--{e['loc'][0]}: {e['msg'].removeprefix('Value error, ')}"
                                    for e in err.errors())) from None


def deploy_flow(cfg: Config, args) -> str:
    if args.serve:
        from lm_pipeline.flows.pipeline import serve

        return serve(name=args.name, cron=args.cron, timezone=args.timezone)  # until stopped: it raises
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
             else manage.rollback(cfg, args.reason, to=args.to))
    return (f"{entry['model_name']}: champion {entry['champion_before']} -> {entry['champion_after']} "
            f"({entry['action']}: {entry['reason']})")


def plan_run(cfg: Config, args) -> None:
    """What `lmp train` with these settings takes per rank; exit 1 if a rank would not fit."""
    from lm_pipeline.data.processed import read_meta
    from lm_pipeline.training.plan import check_fits, planned
    from lm_pipeline.training.runners import runs_in_process

    plan = planned(cfg, read_meta(cfg.data.processed_dir), runs_in_process(cfg) or not cfg.ray_address,
                   args.warmup_steps)
    show("\n".join(plan.lines()))
    check_fits(plan)


def verify_version(cfg: Config, args) -> str:
    import mlflow

    from lm_pipeline.registry.verified import verify

    mlflow.set_tracking_uri(tracking.existing_store_uri(cfg))
    return verify(args.model_uri, args.download)


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
    show("\n".join([text, *describe(chain)]))
    if args.rebuild and not chain:
        raise ArchiveError(f"version {version.version} was not made by continuous training: rebuild it "
                           "with the commands above")
    for line in rebuild(chain, Path(args.rebuild)) if args.rebuild else []:
        show(line)


def generate_text(cfg: Config, args) -> str:
    """A folder as it is; a registered version (models:/...) as its safetensors, refused unless its
    weights hash is the one recorded at registration (its MLflow loader is code: never run here)."""
    import torch

    from lm_pipeline.model.generate import complete_batch
    from lm_pipeline.serving import source

    model_ref = args.model or str(cfg.train.model_dir)
    if source.is_registered(model_ref):
        import mlflow

        mlflow.set_tracking_uri(tracking.existing_store_uri(cfg))
    served = source.load(model_ref, args.device)
    generator = torch.Generator().manual_seed(args.seed)
    sampling = {"temperature": args.temperature, "top_k": args.top_k or None, "top_p": args.top_p}
    return format_continuations(args.prompt, complete_batch(
        served.model, served.tokenizer, args.prompt, args.max_new_tokens, stop=args.stop,
        generator=generator, **sampling))


def serve_endpoint(cfg: Config, args) -> None:
    from lm_pipeline.serving import launch

    launch.run(cfg, args.model, args.detach)  # --host, --port, --replicas: in cfg (command_settings)


def show_config(cfg: Config, args) -> str:
    import yaml

    settings = cfg.model_dump(by_alias=True, mode="json")
    if args.diff:
        defaults = Config().model_dump(by_alias=True, mode="json")
        settings = {section: changed for section, fields in settings.items()
                    if (changed := {k: v for k, v in fields.items() if v != defaults[section][k]})}
    if not settings:
        return "# every setting is its default"
    return yaml.safe_dump(settings, sort_keys=False).rstrip()


def format_continuations(prompts: list[str], continuations: list[str]) -> str:
    import json

    if len(prompts) == 1:
        return continuations[0]
    return "\n".join(json.dumps({"prompt": p, "continuation": c}, ensure_ascii=False)
                     for p, c in zip(prompts, continuations, strict=True))


COMMANDS = {
    "ingest": ingest, "validate": validate, "filter": filter, "preprocess": preprocess,
    "train": train, "evaluate": evaluate, "register": register, "search": search, "run": run_flow,
    "tune": tune_flow, "ct": ct_flow, "deploy": deploy_flow, "promote": registry_command,
    "rollback": registry_command, "lineage": registry_command, "verify": verify_version, "plan": plan_run,
    "generate": generate_text,
    "serve": serve_endpoint, "config": show_config,
}


if __name__ == "__main__":
    sys.exit(main())
