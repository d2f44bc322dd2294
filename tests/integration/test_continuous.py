"""The continuous-training flow on the registry module's project (its champion, and its MLflow
store behind a real MLflow server; tests/conftest.py runs this module after the registry and
serving modules, on their lane), on the session's Prefect server: drops that are incomplete,
repeated or renamed are not taken; bad drops are quarantined and kept; a drop like the corpus
costs no training; a drop from a new domain trained on without replay is blocked by the
forgetting guard, and with a replay of the corpus is promoted past both gates, served and joins
the corpus; a canary failure rolls back; a version of two cycles is rebuilt from the DVC remote."""

import contextlib
import json
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import yaml

from lm_pipeline.config import load_config
from lm_pipeline.continuous.canary import wait_for_version
from lm_pipeline.continuous.drops import Ledger, find_drops
from lm_pipeline.data.split import assign_split
from tests.integration.conftest import lmp
from tests.unit.continuous.corpora import (
    BIRDS,
    NATURE,
    PLACES,
    SKY,
    documents,
    stdlib_docstrings_left_out,
    word_salad,
)

pytestmark = [pytest.mark.continuous, pytest.mark.integration]

MODEL = "lm-pipeline"


@pytest.fixture(scope="module")
def project(registered_project, registry_server, prefect_server):
    """The registry module's project, its store behind the session's MLflow server: the cycles'
    stages and the canary go through it, as the endpoint does (the tests read the SQLite file)."""
    original = (registered_project / "params.yaml").read_text()
    yield ct_project(registered_project, registry_server)
    (registered_project / "params.yaml").write_text(original)  # the store as the other modules know it


def ct_project(registered_project: Path, tracking_uri: str) -> Path:
    params = yaml.safe_load((registered_project / "params.yaml").read_text())
    params["mlflow"]["tracking_uri"] = tracking_uri
    # Measured on this project: a drop like the corpus drifts by 0.05 bits/byte (interval about
    # -0.1 to 0.2), a new domain by 0.6 (0.5 to 0.7); with this tiny model a new domain with a
    # replay of four fifths forgets 0.06 bits/byte of the (filtered) corpus (interval 0.05 to 0.09),
    # without replay 0.8: the guard's bar sits between.
    params["ct"] = {"watch": "incoming", "state_dir": "ct", "quarantine_dir": "quarantine",
                    "min_drift_bits_per_byte": 0.25, "drift_documents": 64, "max_steps": 60,
                    "replay_fraction": 0.8, "max_forgetting": 0.15}
    (registered_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The numbers above are the best version's (the fixture's third); the modules before may have
    # left another one champion.
    lmp(registered_project, "promote", "3", "--reason", "continuous-training tests start from version 3")
    return registered_project


@pytest.fixture(scope="module")
def served(project, endpoint) -> Iterator[tuple[str, str]]:
    """The session's endpoint (tests/integration/conftest.py), following the champion within a
    second, as (its /v1 URL, its token). This module is the last to use it: it stops with the module
    rather than idle to the end of the session."""
    yield f"{endpoint.url}/v1", endpoint.token
    endpoint.stop()


@contextlib.contextmanager
def ct_params(project: Path, **changes):
    """params.yaml's ct section changed for the block (a test's own setting)."""
    path = project / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    params["ct"] |= changes
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        yield
    finally:
        path.write_text(original)


def drop(project: Path, name: str, texts: list[str], complete: bool = True) -> Path:
    folder = project / "incoming" / name
    folder.mkdir(parents=True)
    (folder / "part-0.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    if complete:
        (folder / "_SUCCESS").touch()
    return folder


def cycle(project: Path) -> dict[str, dict]:
    from lm_pipeline.flows.continuous import continuous_training

    return {r["drop"]: r for r in continuous_training(project_dir=str(project))}


@contextlib.contextmanager
def client_load(url: str, token: str):
    """One client calling the endpoint in a loop while the block runs; yields its answers as
    (HTTP status, model), a failure to answer counting as status 0."""
    answers, stop = [], threading.Event()
    body = json.dumps({"model": MODEL, "prompt": "The tuple", "max_tokens": 4, "temperature": 0}).encode()
    request = urllib.request.Request(f"{url}/completions", data=body, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})

    def call() -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    answers.append((response.status, json.loads(response.read())["model"]))
            except urllib.error.HTTPError as err:
                answers.append((err.code, ""))
            except OSError as err:
                answers.append((0, repr(err)))
            time.sleep(0.2)

    thread = threading.Thread(target=call)
    thread.start()
    try:
        yield answers
        time.sleep(1)  # an answer or two after the cycle: the endpoint's swap is done by then
    finally:
        stop.set()
        thread.join()


def registry(project: Path):
    uri = f"sqlite:///{project / 'mlflow.db'}"
    return mlflow.MlflowClient(uri, registry_uri=uri)


def versions(project: Path) -> set[str]:
    return {v.version for v in registry(project).search_model_versions(f"name = '{MODEL}'")}


def corpus(project: Path) -> list[dict]:
    """What the champion was trained on (the filtered corpus, the start of the corpus so far)."""
    return [json.loads(line) for line in (project / "data/filtered/documents.jsonl").read_text().splitlines()]


@pytest.mark.usefixtures("forget_mlflow_uri")
def test_drops_like_the_corpus_or_bad_ones_train_nothing_and_bad_ones_are_kept_in_quarantine(project):
    before = versions(project)
    docs = corpus(project)
    cfg = load_config(project / "params.yaml")
    leaked = [d["text"] for d in docs if assign_split(d["text"], cfg.split) == "test"][:3]
    drop(project, "a-like-the-corpus", stdlib_docstrings_left_out())
    drop(project, "b-repeats", [d["text"] for d in docs[:40]])
    drop(project, "c-leaks-test-documents", documents(BIRDS + PLACES, 30, seed=5) + leaked)
    drop(project, "d-half-written", documents(BIRDS, 10, seed=6), complete=False)
    results = cycle(project)
    assert set(results) == {"a-like-the-corpus", "b-repeats", "c-leaks-test-documents"}
    like = results["a-like-the-corpus"]
    assert like["outcome"] == "no_drift" and like["low"] < 0.25, like
    assert results["b-repeats"]["outcome"] == "quarantined"
    assert "40 of 40 documents (100%) repeat the corpus" in results["b-repeats"]["reason"]
    assert results["c-leaks-test-documents"]["outcome"] == "quarantined"
    assert "contains 3 test-split documents" in results["c-leaks-test-documents"]["reason"]
    for name in ("b-repeats", "c-leaks-test-documents"):  # kept, with the report, beside the original
        (kept,) = (project / "quarantine").glob(f"{name}-*")
        assert json.loads((kept / "hygiene.json").read_text())["passed"] is False
        original = project / "incoming" / name / "part-0.jsonl"
        assert (kept / "part-0.jsonl").read_bytes() == original.read_bytes()
    assert versions(project) == before  # nothing was trained or registered
    shutil.copytree(project / "incoming" / "b-repeats", project / "incoming" / "b-repeats-renamed")
    assert cycle(project) == {}  # the same drops, one renamed, the half-written one still open
    ledger = json.loads((project / "ct/drops.json").read_text())
    assert sorted(e["outcome"] for e in ledger.values()) == ["no_drift", "quarantined", "quarantined"]


@pytest.mark.usefixtures("forget_mlflow_uri")
def test_a_challenger_trained_without_replay_learns_the_drop_but_the_forgetting_guard_blocks_it(project):
    champion = str(registry(project).get_model_version_by_alias(MODEL, "champion").version)
    drop(project, "e-no-replay", word_salad(NATURE, 120, seed=7))
    with ct_params(project, replay_fraction=0.0):
        result = cycle(project)["e-no-replay"]
    assert result["outcome"] == "not_promoted" and "failed does_not_forget" in result["reason"], result
    version = registry(project).get_model_version(MODEL, result["version"])
    assert "pass beats_champion" in version.description  # it did learn the new domain
    assert version.tags["ct.outcome"] == "not_promoted"
    assert str(registry(project).get_model_version_by_alias(MODEL, "champion").version) == champion


@pytest.mark.usefixtures("forget_mlflow_uri")
def test_a_failed_retraining_is_recorded_and_the_pass_fails_with_lmp_ct_exiting_1(
        project, monkeypatch, capsys):
    """A stage that fails (injected: the retraining's first command is replaced by a process that
    exits 3) ends the cycle `failed`, as does a drop whose cycles died 3 times without an error
    (its ledger entry says so), taken up first; the pass ends Failed in Prefect and `lmp ct` exits
    1 after printing every outcome. A failed drop is not taken again: the next pass is clean."""
    from lm_pipeline import cli
    from lm_pipeline.flows import continuous

    champion = str(registry(project).get_model_version_by_alias(MODEL, "champion").version)
    before = versions(project)
    drop(project, "h-stage-fails", word_salad(NATURE, 64, seed=10))
    drop(project, "i-died-thrice", word_salad(SKY, 8, seed=11))
    ledger = Ledger(project / "ct")
    (died,) = [d for d in find_drops(str(project / "incoming"))[0] if d.name == "i-died-thrice"]
    for _ in range(3):
        ledger.claim(died)
    run_command = continuous.run_command
    monkeypatch.setattr(continuous, "run_command", lambda step, command, cwd: run_command(
        step, [sys.executable, "-c", "raise SystemExit(3)"], cwd))
    monkeypatch.chdir(project)
    assert cli.main(["ct"]) == 1
    out, err = capsys.readouterr()
    shown = [line for line in out.splitlines() if line.startswith(("h-", "i-"))]  # the claimed drop first
    assert shown[0].startswith("i-died-thrice: failed (claimed 3 times by cycles that died without an "
                               "error"), shown
    assert shown[1:] == ["h-stage-fails: failed (stage ingest failed (exit 3))"]
    assert "lmp ct: CyclesNeedAPerson: drop i-died-thrice: failed (claimed 3 times" in err
    assert "; drop h-stage-fails: failed (stage ingest failed (exit 3))" in err
    assert latest_run_state("lm-continuous-training") == "FAILED"  # visible in Prefect's UI
    ledger = json.loads((project / "ct/drops.json").read_text())
    assert [e["outcome"] for e in ledger.values() if e["name"].startswith(("h-", "i-"))] == ["failed"] * 2
    assert versions(project) == before  # nothing registered, the champion untouched
    assert str(registry(project).get_model_version_by_alias(MODEL, "champion").version) == champion
    assert cli.main(["ct"]) == 0 and latest_run_state("lm-continuous-training") == "COMPLETED"


class Died(Exception):
    """The process running a cycle died here (injected)."""


@contextlib.contextmanager
def dying_at(step: str):
    """In the block, the process dies when the cycle reaches `step` (a function of
    flows/continuous.py)."""
    from lm_pipeline.flows import continuous

    def die(*args, **kwargs):
        raise Died(step)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(continuous, step, die)
        yield


def latest_run_state(flow_name: str) -> str:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                       sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1)
    return run.state.type.value


@pytest.mark.usefixtures("forget_mlflow_uri")
def test_a_drop_from_a_new_domain_is_trained_on_with_replay_promoted_served_and_joins_the_corpus(
        project, served, monkeypatch):
    url, token = served
    monkeypatch.setenv("LMP_SERVE_TOKEN", token)
    champion = str(registry(project).get_model_version_by_alias(MODEL, "champion").version)
    corpus_before, before = (project / "ct/corpus.jsonl").read_text().count("\n"), versions(project)
    drop(project, "f-birds", word_salad(NATURE, 120, seed=8))
    with ct_params(project, endpoint=url), client_load(url, token) as answers:
        with dying_at("tag_version"), pytest.raises(Died):  # after the canary, the corpus has grown
            cycle(project)
        result = cycle(project)["f-birds"]  # taken up after the registration: not trained again
    assert result["outcome"] == "promoted", result
    assert len(versions(project) - before) == 1
    # A client calling all through the cycle: never failed, answered by the old champion, then the new.
    assert [status for status, _ in answers if status != 200] == [], answers[-5:]
    seen = [model for _, model in answers]
    assert seen[0] == f"{MODEL}/{champion}" and seen[-1] == f"{MODEL}/{result['version']}", set(seen)
    canary = result["canary"]  # the endpoint swapped, and serves the weights that were evaluated
    assert canary["served"] == f"{MODEL}/{result['version']}" and canary["requests"] >= 8
    assert canary["errors"] == 0 and canary["max_logprob_gap"] <= 1e-3 and not canary["problems"]
    assert result["gap"] > 0.25
    client = registry(project)
    new = client.get_model_version_by_alias(MODEL, "champion")
    assert str(new.version) == result["version"] != champion
    assert new.tags["ct.outcome"] == "promoted" and new.tags["ct.drop"].startswith("f-birds (")
    assert json.loads(new.tags["ct.drops"]) == ["f-birds"]
    assert new.tags["parent_model"] == f"models:/{MODEL}/{champion}"  # warm start from the champion
    assert "pass does_not_forget" in new.description and "pass beats_champion" in new.description
    assert (project / "ct/corpus.jsonl").read_text().count("\n") == corpus_before + 120  # once
    params = yaml.safe_load(next((project / "ct/cycles").glob("f-birds-*/params.yaml")).read_text())
    assert [s["name"] for s in params["data"]["sources"]] == ["drop f-birds", "replay"]


@pytest.mark.usefixtures("forget_mlflow_uri")
def test_a_canary_failure_rolls_the_champion_back_and_serving_follows(project, served, monkeypatch):
    """The failure is injected as a latency bar no endpoint meets (1 ms): the canary fails after
    the swap, the alias moves back, and the endpoint serves the previous champion again."""
    url, token = served
    monkeypatch.setenv("LMP_SERVE_TOKEN", token)
    before = str(registry(project).get_model_version_by_alias(MODEL, "champion").version)
    corpus_before = (project / "ct/corpus.jsonl").read_text()
    # A domain the champion has not seen; 240 documents, so that the cycle's test split holds
    # enough of them for the gain over the champion to be shown (120 left its interval at -0.02).
    drop(project, "g-sky", word_salad(SKY, 240, seed=9))
    with ct_params(project, endpoint=url, canary_max_p95_ms=1.0):
        with dying_at("roll_back"), pytest.raises(Died):  # the canary failed; the champion not moved yet
            cycle(project)
        result = cycle(project)["g-sky"]  # taken up after the registration: judged again
    assert result["outcome"] == "rolled_back", result
    assert result["canary"]["served"] == f"{MODEL}/{result['version']}"  # it was served, then judged
    assert "p95 latency" in result["reason"] and "ct.canary_max_p95_ms" in result["reason"]
    client = registry(project)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == before
    assert client.get_model_version(MODEL, result["version"]).tags["ct.outcome"] == "rolled_back"
    reason = client.get_model_version(MODEL, before).tags["promotion.reason"]  # as the log has it
    assert reason.startswith(f"rollback: continuous training: the canary of version {result['version']}")
    assert wait_for_version(url, token, f"{MODEL}/{before}", 30) == f"{MODEL}/{before}"
    assert (project / "ct/corpus.jsonl").read_text() == corpus_before  # a rolled-back drop is not learned


@pytest.mark.usefixtures("forget_mlflow_uri")
def test_lineage_of_a_version_two_cycles_made_lists_both_drops_and_rebuilds_it_from_the_dvc_remote(
        project, tmp_path):
    """The canary test's version (drop g-sky) was trained on top of the version drop f-birds made:
    two cycles. With the archive's folders, its .dvc files and the DVC cache gone from the checkout,
    `lmp lineage --rebuild` brings the drops back from the DVC remote and trains both cycles again
    to the registered weights."""
    client = registry(project)
    sky, birds = (next(v for v in client.search_model_versions(f"name = '{MODEL}'")
                       if v.tags.get("ct.drop", "").startswith(f"{name} (")) for name in ("g-sky", "f-birds"))
    assert sky.tags["parent_model"] == f"models:/{MODEL}/{birds.version}"
    for path in ("drops", ".dvc/cache"):
        shutil.rmtree(project / path)
    out = lmp(project, "lineage", f"models:/{MODEL}/{sky.version}", "--rebuild", str(tmp_path / "rebuild"))
    assert f"Continuous training: {birds.tags['parent_model']}, then 2 cycle(s):" in out
    first, second = f"version {birds.version}: drop f-birds (", f"version {sky.version}: drop g-sky ("
    assert out.index(first) < out.index(second)
    assert "its drops, in order: f-birds, g-sky" in out
    assert "dvc repro" not in out  # the pipeline's own rebuild commands are not this version's
    for version in (birds, sky):
        assert f"version {version.version}: rebuilt in {tmp_path / 'rebuild'}" in out
        assert f"weights {version.tags['weights_sha256'][:16]}... as registered" in out
    archive = json.loads(sky.tags["ct.archive"])
    assert (project / archive["path"] / "drop" / "part-0.jsonl").read_bytes() == \
        (project / "incoming" / "g-sky" / "part-0.jsonl").read_bytes()
