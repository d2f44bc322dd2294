"""Continuous training as a Prefect flow: one cycle for each new, complete drop under ct.watch.

A cycle (continuous/ holds each step's rules):
  hygiene     the drop alone and against the corpus so far; a bad drop is quarantined
  drift       the champion's bits per byte on the drop against its test split; no drift, no training
  retrain     the stages, from the champion, on the drop mixed with a replay of the corpus, with
              every output under the cycle's folder (`lmp --params <cycle>/params.yaml <stage>`);
              first, what it reads is archived with DVC (continuous/archive.py)
  register    the usual gates plus the forgetting guard on the corpus so far
  canary      with ct.endpoint: the endpoint must swap to the new champion and answer probes with
              the evaluated model's log-probabilities, without errors or slowness; else the
              champion is rolled back (the endpoint follows); a promoted drop that stays joins the
              corpus
Each cycle ends in a named outcome: quarantined, no_drift, not_promoted, promoted, rolled_back,
rollback_refused (the canary failed and the registry refused to roll back: the version stays
champion, and the log says why) or failed (a stage of the retraining failed, its log names it,
or the cycle could not go on safely, the reason says why; the drop is not retried), in the ledger
(ct.state_dir/drops.json), on the flow run (a markdown artifact) and, when a version was
registered, on it (tag ct.outcome, with ct.drop and ct.drops: which drops, in which order, and
ct.archive: the DVC entry `lmp lineage --rebuild` trains it again from). A pass in which a cycle
failed or a rollback was refused ends Failed, once every drop has its outcome (`lmp ct` exits 1):
those wait on a person. A cycle interrupted after its register stage decided is taken up from
there by the next pass (the ledger records each step: drops.py).

    lmp ct                       # one pass over ct.watch (`lmp run` is unchanged)
    lmp deploy --continuous      # or on a Prefect server: a run on each drop the watcher announces
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from lm_pipeline import tracking
from lm_pipeline.config import Config, load_config
from lm_pipeline.continuous.archive import ArchiveError, archive_cycle, archived_drop
from lm_pipeline.continuous.canary import Canary, probe, probe_texts, wait_for_version
from lm_pipeline.continuous.drift import Drift, measure_drift
from lm_pipeline.continuous.drops import Drop, Ledger
from lm_pipeline.continuous.hygiene import Hygiene, check_drop, quarantine, read_drop_documents
from lm_pipeline.continuous.plan import corpus_so_far, cycle_config, extend_corpus, write_params
from lm_pipeline.data.documents import read_documents
from lm_pipeline.data.split import assign_split
from lm_pipeline.flows.pipeline import StageFailed, run_command
from lm_pipeline.flows.watch import pending_drops
from lm_pipeline.io import read_json
from lm_pipeline.model.backends import resolve_device
from lm_pipeline.registry.aliases import RegistryError, current_champion
from lm_pipeline.registry.decision import load_registered
from lm_pipeline.registry.manage import rollback
from lm_pipeline.serving.protocol import TOKEN_ENV
from lm_pipeline.stages import STAGES
from lm_pipeline.text import markdown_literal

OUTCOMES = ("quarantined", "no_drift", "not_promoted", "promoted", "rolled_back", "rollback_refused",
            "failed")
NEEDS_A_PERSON = ("failed", "rollback_refused")
MAX_CLAIMS = 3  # a drop whose cycles died this often ends failed: the drops after it are not held up


class CyclesNeedAPerson(RuntimeError):
    """A pass ended with outcomes that wait on a person; `results` holds every drop's."""

    def __init__(self, results: list[dict]):
        self.results = results
        super().__init__("; ".join(f"drop {r['drop']}: {r['outcome']} ({r['reason']})"
                                   for r in results if r["outcome"] in NEEDS_A_PERSON))

    def __reduce__(self):  # pickled with its results (Prefect may keep a run's exception)
        return type(self), (self.results,)


@flow(name="lm-continuous-training", log_prints=True)
def continuous_training(project_dir: str = ".") -> list[dict]:
    """Every new, complete drop under ct.watch, one cycle each: those a cycle claimed before first,
    then in name order."""
    with contextlib.chdir(project_dir):
        cfg = load_config("params.yaml")
        ledger = Ledger(cfg.ct.state_dir)
        results = [claimed_cycle(cfg, ledger, drop, str(Path.cwd())) for drop in pending_drops(cfg, ledger)]
    if not results:
        get_run_logger().info("no new drop under %s", cfg.ct.watch)
    create_markdown_artifact(markdown=outcome_table(results, cfg.ct.watch), key="lm-continuous-training",
                             description="what each drop led to")
    if any(r["outcome"] in NEEDS_A_PERSON for r in results):
        raise CyclesNeedAPerson(results)  # the run shows Failed; the next drops were not held up
    return results


def claimed_cycle(cfg: Config, ledger: Ledger, drop: Drop, project_dir: str) -> dict:
    """The drop's cycle under a claim in the ledger. A claim that ends in an error or an interrupt
    is released (the run shows it; the next pass takes the drop up again); one whose process died
    unseen (killed, out of memory) stays, and after MAX_CLAIMS of those the drop ends failed."""
    ledger.claim(drop)
    try:
        return cycle(cfg, ledger, drop, project_dir)
    except BaseException:
        ledger.release(drop)
        raise


def cycle(cfg: Config, ledger: Ledger, drop: Drop, project_dir: str) -> dict:
    corpus = corpus_so_far(cfg)
    if registered := registration(ledger.step(drop, "retraining")):  # interrupted after its register stage
        get_run_logger().warning("drop %s: taken up again after version %s was registered", drop.name,
                                 registered["version"])
        return conclude(cfg, ledger, drop, corpus, registered, read_drop_documents(cfg, drop))
    if ledger.claims(drop) > MAX_CLAIMS:
        return finish(ledger, drop, "failed", f"claimed {MAX_CLAIMS} times by cycles that died without an "
                      "error (killed, or out of memory): not taken again")
    work = Path(cfg.ct.state_dir) / "cycles" / f"{drop.name}-{drop.digest[:12]}"
    report, documents = check_hygiene(cfg, drop, corpus, work)
    if not report.passed:
        quarantine(cfg, drop, report)
        return finish(ledger, drop, "quarantined", "; ".join(report.problems))
    drift, champion = check_drift(cfg, [d["text"] for d in documents], corpus)
    if not drift.drifted:
        return finish(ledger, drop, "no_drift", drift.describe(), gap=drift.gap, low=drift.low)
    parent = f"models:/{cfg.register_.model_name}/{champion}"
    try:
        archive = archive_inputs(cfg, drop, corpus, parent, ledger.promoted())
        # Trained from the archived copy: what the rebuild restores, at the same path.
        cycle_cfg = cycle_config(cfg, archived_drop(archive["path"]), corpus.resolve(), work, parent)
        retraining = {"archive": archive, "gap": drift.gap, "record": str(cycle_cfg.register_.record_file)}
        ledger.record(drop, retraining=retraining)
        retrain(cycle_cfg, drop, work, project_dir)
    except (StageFailed, ArchiveError) as err:  # recorded: the next drops are not held up behind it
        return finish(ledger, drop, "failed", str(err).splitlines()[0].rstrip(":"), gap=drift.gap)
    return conclude(cfg, ledger, drop, corpus, registration(retraining), documents)


def registration(retraining: dict | None) -> dict | None:
    """What the retraining's register stage decided (its record file), with what the cycle
    archived and measured; None before it decided (retrain removes an older record first)."""
    if retraining is None or not Path(retraining["record"]).is_file():
        return None
    decision = read_json(retraining["record"])
    return {key: decision[key] for key in ("version", "promoted", "reason")} | {
        "archive": retraining["archive"], "gap": retraining["gap"]}


def conclude(cfg: Config, ledger: Ledger, drop: Drop, corpus: Path, registered: dict,
             documents: list[dict]) -> dict:
    """What follows the registration: the verdict (recorded once reached), the corpus, the
    version's tags, the outcome. A cycle interrupted after registering resumes here, and each step
    may run again."""
    verdict = ledger.step(drop, "verdict")
    if verdict is None:
        verdict = judge(cfg, registered, documents, corpus)
        ledger.record(drop, verdict=verdict, corpus_bytes=corpus.stat().st_size)
    if verdict["outcome"] == "promoted":
        extend_corpus(corpus, documents, ledger.step(drop, "corpus_bytes"))
    version, archive = registered["version"], registered["archive"]
    tag_version(cfg, version, drop, verdict["outcome"], ledger, archive)
    return finish(ledger, drop, **verdict, version=version, gap=registered["gap"], archive=archive)


def judge(cfg: Config, registered: dict, documents: list[dict], corpus: Path) -> dict:
    """The register stage's decision; with ct.endpoint, a promoted version's canary too, rolled
    back if it fails: the outcome and the reason, and the canary's numbers if it ran."""
    version, reason = registered["version"], registered["reason"]
    if not (registered["promoted"] and cfg.ct.endpoint):
        return {"outcome": "promoted" if registered["promoted"] else "not_promoted", "reason": reason}
    champion = current_champion(mlflow_client(cfg), cfg.register_.model_name)
    if champion != version:  # rolled back by an interrupted pass, or moved by someone since
        return {"outcome": "failed", "reason": f"version {version} was promoted, and version {champion} is "
                                               "champion now: no canary ran on it; the champion stays"}
    canary = check_canary(cfg, version, documents, corpus)
    outcome, reason = ("promoted", reason) if canary.passed else roll_back(cfg, version, canary)
    return {"outcome": outcome, "reason": reason, "canary": asdict(canary)}


@task(task_run_name="hygiene of {drop.name}")
def check_hygiene(cfg: Config, drop: Drop, corpus: Path, work: Path) -> tuple[Hygiene, list[dict]]:
    report, documents = check_drop(cfg, drop, corpus, work)
    get_run_logger().info("drop %s: %d documents, %d repeat the corpus, %d test documents leaked%s",
                          drop.name, report.documents, report.repeats, len(report.leaked_test_documents),
                          "" if report.passed else ": " + "; ".join(report.problems))
    return report, documents


@task(task_run_name="drift")
def check_drift(cfg: Config, texts: list[str], corpus: Path) -> tuple[Drift, str]:
    """The champion's drift on the drop, and which version the champion was (what a retraining
    starts from, however the alias moves meanwhile)."""
    name = cfg.register_.model_name
    champion = current_champion(mlflow_client(cfg), name)
    if champion is None:
        raise RuntimeError(f"continuous training keeps a champion current, and {name} has none: "
                           "run the pipeline once (`make run` or `lmp run`)")
    model, tokenizer = load_registered(name, champion, resolve_device(cfg.evaluate.device))
    test = [d["text"] for d in read_documents(corpus) if assign_split(d["text"], cfg.split) == "test"]
    drift = measure_drift(model, tokenizer, texts, test, cfg.ct, cfg.evaluate.stride)
    get_run_logger().info("champion v%s: %s", champion, drift.describe())
    return drift, champion


@task(task_run_name="archive {drop.name}")
def archive_inputs(cfg: Config, drop: Drop, corpus: Path, parent: str, promoted: list[dict]) -> dict:
    """The drop and what else the retraining reads, versioned with DVC before it trains."""
    entry = archive_cycle(cfg, drop, corpus, parent, promoted)
    get_run_logger().info("drop %s archived at %s (DVC %s), with the corpus it replays and its parent %s",
                          drop.name, entry["path"], entry["md5"], parent)
    return entry


@task(task_run_name="retrain on {drop.name}")
def retrain(cycle_cfg: Config, drop: Drop, work: Path, project_dir: str) -> None:
    """The stages with the cycle's params, up to the register stage's record of its decision."""
    Path(cycle_cfg.register_.record_file).unlink(missing_ok=True)  # a retry's record is its own
    params = write_params(cycle_cfg, work / "params.yaml")
    lmp = str(Path(sys.executable).parent / "lmp")
    for stage in STAGES:
        run_command(stage, [lmp, "--params", str(params), stage], project_dir)


@task(task_run_name="canary of version {version}")
def check_canary(cfg: Config, version: str, documents: list[dict], corpus: Path) -> Canary:
    """The new champion through the endpoint: probes from the test split of the drop and the corpus."""
    name = cfg.register_.model_name
    model, tokenizer = load_registered(name, version)
    texts = [d["text"] for d in [*documents, *read_documents(corpus)]
             if assign_split(d["text"], cfg.split) == "test"]
    canary = probe(cfg.ct.endpoint.rstrip("/"), os.environ.get(TOKEN_ENV), f"{name}/{version}", model,
                   tokenizer, probe_texts(texts, cfg.ct.canary_documents, cfg.ct.seed), cfg.ct)
    get_run_logger().info("canary of %s/%s at %s: %d requests, %d errors, p95 %.0f ms, log-probabilities "
                          "within %.2g nats of the evaluated model%s", name, version, cfg.ct.endpoint,
                          canary.requests, canary.errors, canary.p95_ms, canary.max_logprob_gap,
                          "" if canary.passed else ": FAILED: " + "; ".join(canary.problems))
    return canary


@task(task_run_name="roll back version {version}")
def roll_back(cfg: Config, version: str, canary: Canary) -> tuple[str, str]:
    """Give champion back to the version before, unless someone has moved it since; the endpoint
    follows. The outcome (rolled_back, or rollback_refused: the registry said no) and the reason,
    as the promotion log has it."""
    name = cfg.register_.model_name
    reason = f"continuous training: the canary of version {version} failed: {'; '.join(canary.problems)}"
    try:
        entry = rollback(cfg, reason, expected=version)
    except RegistryError as err:  # moved since by someone else (theirs stands), or nothing trusted before it
        get_run_logger().warning("%s (%s)", err, reason)
        return "rollback_refused", f"{reason}; {err}"
    previous = f"{name}/{entry['champion_after']}"
    served = wait_for_version(cfg.ct.endpoint.rstrip("/"), os.environ.get(TOKEN_ENV), previous,
                              cfg.ct.canary_timeout_s)
    get_run_logger().warning("rolled back to %s (the endpoint serves %s): %s", previous, served, reason)
    return "rolled_back", reason


def mlflow_client(cfg: Config):
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri(cfg))
    return mlflow.MlflowClient()


def tag_version(cfg: Config, version: str, drop: Drop, outcome: str, ledger: Ledger, archive: dict) -> None:
    """The version says which drop made it, with the drops promoted before it the whole order, and
    where what it was trained on is archived."""
    before = [e["name"] for e in ledger.promoted()]
    client, name = mlflow_client(cfg), cfg.register_.model_name
    for key, value in {"ct.drop": f"{drop.name} ({drop.digest})", "ct.outcome": outcome,
                       "ct.drops": json.dumps(before + [drop.name]),
                       "ct.archive": json.dumps(archive)}.items():
        client.set_model_version_tag(name, version, key, value)


def finish(ledger: Ledger, drop: Drop, outcome: str, reason: str, **details) -> dict:
    ledger.finish(drop, outcome, reason=reason, **details)
    get_run_logger().info("drop %s: %s (%s)", drop.name, outcome, reason)
    return {"drop": drop.name, "digest": drop.digest, "outcome": outcome, "reason": reason, **details}


def outcome_table(results: list[dict], watch: str) -> str:
    """Markdown (Prefect renders it as HTML): names and reasons come from the drop, so escaped."""
    rows = [f"| {markdown_literal(r['drop'])} | **{r['outcome']}** | {r.get('version', '')} | "
            f"{markdown_literal(r['reason'])} |" for r in results] or ["| (none new) | | | |"]
    return "\n".join([f"## Continuous training: {len(results)} drop(s) under {markdown_literal(watch)}", "",
                      "| drop | outcome | version | why |", "|---|---|---|---|", *rows]) + "\n"
