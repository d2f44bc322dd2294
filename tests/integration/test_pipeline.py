"""The whole pipeline through real Prefect, DVC, Great Expectations and MLflow.

It trains as params.yaml does by default, one worker in the stage's own process: the flow's
training on Ray (2 workers) is the production deployment's (tests/production), and Ray Train's own
properties are test_training's. Each Ray run here would add about 45 s of start-up to a 20 s run."""

import csv
import difflib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.integration.conftest import make_project, tiny_params

pytestmark = [pytest.mark.integration]

DVC = str(Path(sys.executable).parent / "dvc")
PARAMS = tiny_params({"train": {"num_workers": 1}})


def dvc(project: Path, *args: str) -> str:
    proc = subprocess.run([DVC, *args], cwd=project, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def tracking_uri(project: Path) -> str:
    return f"sqlite:///{project / 'mlflow.db'}"


def mlflow_client(project: Path):
    # Not mlflow.set_tracking_uri: it exports MLFLOW_TRACKING_URI to every later subprocess.
    import mlflow

    return mlflow.MlflowClient(tracking_uri(project), registry_uri=tracking_uri(project))


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server):
    """A project after one complete flow run, from a clone's state: the flow rewrites the committed
    dvc.lock and reports/, which must not make the tree count as dirty."""
    from lm_pipeline.flows.pipeline import pipeline

    root = make_project(tmp_path_factory.mktemp("project"), PARAMS, with_results=True)
    state = pipeline(project_dir=str(root), return_state=True)
    assert state.is_completed(), state.message
    return root


def test_flow_registers_a_champion_with_all_metrics(project):
    decision = json.loads((project / "reports/registry.json").read_text())
    assert decision["promoted"] and decision["version"] == "1"
    gates = {g["name"]: g for g in decision["gates"]}  # the default model gives nothing away
    assert gates["max_extraction_rate"]["passed"] and gates["max_canary_exposure"]["passed"], gates
    client = mlflow_client(project)
    champion = client.get_model_version_by_alias("lm-pipeline", "champion")
    assert str(champion.version) == "1" and "challenger" in champion.aliases
    for key in ("test.perplexity", "test.bleu", "test.bias_max_gap", "git_commit", "data_sha256"):
        assert champion.tags[key], key
    run = client.get_run(champion.run_id)
    metrics = run.data.metrics
    assert {"test/perplexity", "test/unigram_perplexity", "test/bleu", "test/bias_max_gap"} <= set(metrics)
    assert {"data/duplicate_share", "data/near_duplicate_share", "data/test_train_overlap_max"} <= set(
        metrics)
    assert metrics["test/canaries"] == 4 and metrics["test/extraction_documents"] > 0
    assert metrics["test/perplexity"] < 0.8 * metrics["test/unigram_perplexity"]
    history = client.get_metric_history(run.info.run_id, "train_loss")
    steps = PARAMS["train"]["max_steps"]
    assert [m.step for m in history] == list(range(1, steps + 1))  # every step, once, on one run
    assert history[-1].value < history[0].value
    assert run.data.params["train.num_workers"] == "1"
    assert metrics["test/perplexity_ci_low"] < metrics["test/perplexity"] < metrics["test/perplexity_ci_high"]
    # bits per byte and perplexity, from the same NLL: bits = log2(perplexity) x tokens, over the
    # test text's bytes (counted at preprocess) plus one per document
    meta = json.loads((project / "data/processed/meta.json").read_text())
    n_bytes = meta["text_bytes"]["test"] + metrics["test/test_documents"]
    assert metrics["test/bits_per_byte"] == pytest.approx(
        math.log2(metrics["test/perplexity"]) * metrics["test/test_tokens"] / n_bytes, rel=1e-9)
    assert metrics["test/crows_pairs_sample_pairs"] > 0  # the built-in sample, apart from the dataset's keys
    assert not any(k.startswith("test/crows_pairs_") and "_sample_" not in k for k in metrics)
    # where the train stage's time went: the workers' phases fit inside the stage
    phases = sum(metrics[f"time_{p}_s"] for p in ("setup", "steps", "validation", "checkpoints"))
    assert 0 < metrics["time_steps_s"] and phases < metrics["time_driver_fit_s"] < metrics["time_stage_s"]


@pytest.mark.metrics
def test_crows_pairs_matches_an_independent_computation_with_transformers(project):
    """The template-token score recomputed from the exported folder by transformers' own GPT-2
    (not our model code or scoring), compared at 3 decimals as the paper's metric.py does: the
    same share, up to one near-tie flipping in float noise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = project / "models/model"
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    with open(project / "lm_pipeline/evaluation/data/crows_pairs_sample.csv", newline="") as f:
        rows = list(csv.DictReader(f))

    def logp(ids):  # log p(token | <|endoftext|>, tokens before it)
        with torch.no_grad():
            logits = model(torch.tensor([[tokenizer.eos_token_id] + ids[:-1]])).logits[0]
        return logits.log_softmax(-1)[torch.arange(len(ids)), torch.tensor(ids)]

    wins, scored = 0, 0
    for r in rows:
        more, less = (tokenizer(r[k], add_special_tokens=False)["input_ids"]
                      for k in ("sent_more", "sent_less"))
        if max(len(more), len(less)) > model.config.n_positions:
            continue
        same = [op for op in difflib.SequenceMatcher(None, more, less, autojunk=False).get_opcodes()
                if op[0] == "equal"]
        lm, ll = logp(more), logp(less)
        score_more = round(float(sum(lm[i1:i2].sum() for _, i1, i2, _, _ in same)), 3)
        wins += score_more > round(float(sum(ll[j1:j2].sum() for *_, j1, j2 in same)), 3)
        scored += 1
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["crows_pairs_sample_pairs"] == scored > 0
    assert metrics["crows_pairs_sample_stereotype_preference"] == pytest.approx(wins / scored,
                                                                               abs=1.01 / scored)


@pytest.mark.metrics
def test_evaluation_report_is_logged_and_plotted(project):
    client = mlflow_client(project)
    run_id = json.loads((project / "models/model/run.json").read_text())["mlflow_run_id"]
    logged = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/report.html", "evaluation/report.md", "evaluation/loss.png",
            "evaluation/perplexity_by_length.png", "evaluation/bias.png"} <= logged
    html = (project / "reports/evaluation/report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "<table>" in html
    assert "bits_per_byte" in dvc(project, "metrics", "show")
    out = dvc(project, "plots", "show", "-o", str(project / "dvc_plots"))
    assert (project / "dvc_plots/index.html").is_file(), out


def test_flow_leaves_dvc_clean_and_pushable(project):
    assert json.loads(dvc(project, "status", "--json")) == {}
    assert "Data and pipelines are up to date" in dvc(project, "repro")
    dvc(project, "push")  # the committed default remote works out of the box
    assert any((project / "dvc-remote").rglob("*")), "nothing reached the local remote"


@pytest.mark.filter
def test_the_flow_filters_the_corpus_and_a_filter_setting_reruns_only_what_it_changes(project):
    metrics = json.loads((project / "reports/filter/metrics.json").read_text())
    kept = (project / "data/filtered/documents.jsonl").read_text().splitlines()
    removed = [json.loads(line) for line in (project / "data/filtered/removed.jsonl").open()]
    assert metrics["documents_kept"] == len(kept) and metrics["documents_in"] == len(kept) + len(removed)
    assert removed and all(d["filter"] and d["reason"] for d in removed)
    assert "| language |" in (project / "reports/filter/report.md").read_text()
    assert "documents_kept" in dvc(project, "metrics", "show")
    run_id = json.loads((project / "models/model/run.json").read_text())["mlflow_run_id"]
    client = mlflow_client(project)
    assert client.get_run(run_id).data.metrics["filter/documents_kept"] == len(kept)
    logged = {a.path for a in client.list_artifacts(run_id, "filter")}
    assert {"filter/report.md", "filter/funnel.png"} <= logged

    params = (project / "params.yaml").read_text()
    try:
        # A setting that changes no document (the corpus holds no phone number): filter reruns,
        # its output is the same, and nothing after it is out of date.
        set_param(project, "pii", "phone", "drop")
        assert "Running stage 'filter'" in dvc(project, "repro", "filter")
        assert json.loads(dvc(project, "status", "--json")) == {}
        # One that does: preprocess, and what follows, must run again.
        set_param(project, "language", "min_confidence", 0.95)
        dvc(project, "repro", "filter")
        assert "preprocess" in json.loads(dvc(project, "status", "--json"))
    finally:
        (project / "params.yaml").write_text(params)
        dvc(project, "repro", "filter")
    assert json.loads(dvc(project, "status", "--json")) == {}


def set_param(project: Path, step: str, key: str, value) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["filter"][step][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_champion_loads_from_the_registry_and_generates(project, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(project))  # undone after the test
    model = mlflow.pyfunc.load_model("models:/lm-pipeline@champion")
    out = model.predict(pd.DataFrame({"prompt": ["The tuple", "A module"]}),
                        params={"max_new_tokens": 8})
    from lm_pipeline.model.backends import load_model
    from lm_pipeline.model.generate import complete_batch

    folder, tokenizer = load_model(project / "models/model")  # version 1 is this folder
    assert list(out) == complete_batch(folder, tokenizer, ["The tuple", "A module"], 8)


def test_the_exported_model_folder_loads_with_transformers_and_generates(project):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = project / "models/model"
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([[tokenizer.eos_token_id] + tokenizer("The tuple")["input_ids"]])
    out = model.eval().generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids.shape[1] and isinstance(tokenizer.decode(out[0, ids.shape[1]:]), str)


@pytest.mark.registry
def test_lineage_commands_rebuild_the_champions_weights_in_a_fresh_clone(project, tmp_path):
    """The flow registered from a clean commit (its own rewritten outputs aside): `lmp lineage` says
    so, and its commands rebuild the same weights."""
    tags = mlflow_client(project).get_model_version("lm-pipeline", "1").tags
    assert tags["git_dirty"] == "false"
    out = subprocess.run([str(Path(sys.executable).parent / "lmp"), "lineage", "models:/lm-pipeline/1"],
                         cwd=project, capture_output=True, text=True, check=True).stdout
    assert "the tree was clean" in out
    commands = [line.split("#")[0].strip() for line in out.splitlines()
                if line.strip().startswith(("git checkout", "dvc repro"))]
    assert commands == [f"git checkout {tags['git_commit']}", "dvc repro train"]
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command in commands:
        subprocess.run(command.split(), cwd=clone, check=True, capture_output=True, env=env)
    from lm_pipeline.model.backends import weights_sha256
    from lm_pipeline.model.pretrained import load_pretrained

    assert weights_sha256(load_pretrained(clone / "models/model")[0]) == tags["weights_sha256"]


@pytest.mark.optimization
def test_dvc_experiment_reruns_train_and_what_follows_and_matches_its_mlflow_run(project):
    lr = PARAMS["train"]["lr"] / 2
    out = dvc(project, "exp", "run", "--name", "half-lr", "-S", f"train.lr={lr}", "-S", "train.max_steps=150")
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"train", "evaluate", "register"}
    shown = json.loads(dvc(project, "exp", "show", "--json"))
    experiment = next(e for rev in shown for group in rev.get("experiments") or []
                      for e in group["revs"] if e["name"] == "half-lr")["data"]
    assert experiment["params"]["params.yaml"]["data"]["train"]["lr"] == lr
    summary = experiment["metrics"]["reports/training/summary.json"]["data"]
    assert "perplexity" in experiment["metrics"]["reports/metrics.json"]["data"]
    # The experiment's MLflow run carries its name, and the params and metrics Tune trials have.
    client = mlflow_client(project)
    experiment_id = client.get_experiment_by_name("lm-pipeline").experiment_id
    (run,) = client.search_runs([experiment_id], "tags.`dvc.exp_name` = 'half-lr'")
    assert float(run.data.params["train.lr"]) == lr
    assert run.data.metrics["best_val_loss"] == pytest.approx(summary["best_val_loss"])
    assert str(client.get_model_version_by_alias("lm-pipeline", "challenger").version) == "2"
    decision = json.loads((project / "reports/registry.json").read_text())
    champion = str(client.get_model_version_by_alias("lm-pipeline", "champion").version)
    assert champion == ("2" if decision["promoted"] else "1")


@pytest.mark.optimization
def test_flow_fine_tunes_the_champion_on_a_new_corpus(project, tmp_path, monkeypatch):
    """Last in this module: it moves the project to a new corpus. The new run starts from the
    champion's weights: its validation loss at step 0 is the champion's own on the new data."""
    from tokenizers import Tokenizer

    from lm_pipeline.flows.pipeline import pipeline
    from lm_pipeline.registry.decision import load_registered

    corpus = tmp_path / "second.jsonl"  # new text (lowercased) the champion's tokenizer still fits
    with open(project / "data/raw/documents.jsonl") as src, open(corpus, "w") as out:
        for line in list(src)[:350]:
            out.write(json.dumps({"text": json.loads(line)["text"].lower()}) + "\n")
    client = mlflow_client(project)
    parent = str(client.get_model_version_by_alias("lm-pipeline", "champion").version)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["source"] = str(corpus)
    params["train"] |= {"init_from": "models:/lm-pipeline@champion", "max_steps": 20, "warmup_steps": 5,
                        "lr": 0.002, "min_lr": 0.0002}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    state = pipeline(project_dir=str(project), return_state=True)
    assert state.is_completed(), state.message

    meta = json.loads((project / "data/processed/meta.json").read_text())
    assert meta["parent"]["model_version"] == f"models:/lm-pipeline/{parent}"  # the alias, pinned
    run_id = json.loads((project / "models/model/run.json").read_text())["mlflow_run_id"]
    start = {m.step: m.value for m in client.get_metric_history(run_id, "val_loss")}[0]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(project))
    champion, tokenizer = load_registered("lm-pipeline", parent)
    reused = Tokenizer.from_file(str(project / "data/processed/tokenizer.json"))
    assert reused.to_str() == tokenizer.to_str()
    assert start == pytest.approx(validation_loss_on(project, champion, params), rel=1e-5)

    decision = json.loads((project / "reports/registry.json").read_text())
    version = client.get_model_version("lm-pipeline", decision["version"])
    assert version.tags["parent_model"] == f"models:/lm-pipeline/{parent}"
    assert client.get_run(run_id).data.tags["parent.model"] == f"models:/lm-pipeline/{parent}"
    lineage = subprocess.run([str(Path(sys.executable).parent / "lmp"), "lineage",
                              f"models:/lm-pipeline/{decision['version']}"], cwd=project,
                             capture_output=True, text=True, check=True).stdout
    assert f"parent_model: models:/lm-pipeline/{parent}" in lineage


def validation_loss_on(project: Path, model, params: dict) -> float:
    """A model's loss on the project's validation batches, computed here, as training does."""
    import torch

    from lm_pipeline.data.processed import load_tokens
    from lm_pipeline.training.batches import fixed_batches
    from lm_pipeline.training.loop import validation_loss

    batches = fixed_batches(load_tokens(project / "data/processed", "val"), params["train"]["eval_batches"],
                            params["train"]["batch_size"], params["model"]["block_size"])
    return validation_loss(model, batches, torch.device("cpu"))


@pytest.mark.bad_input
def test_only_a_stage_that_failed_for_a_passing_reason_is_retried(tmp_path, prefect_server):
    """The retried stages (ingest, register) are tried again only after a failure that may pass,
    which `lmp` says by exiting 75 (EX_TEMPFAIL), through `dvc repro`: a missing corpus or a bad
    record was read four times over 35 s before the run failed."""
    from prefect import flow

    from lm_pipeline.flows.pipeline import IO_RETRIES, run_stage

    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "passing": {"cmd": "echo attempt >> passing.log; test -f tried || { touch tried; exit 75; }"},
        "lasting": {"cmd": "echo attempt >> lasting.log; exit 1"}}}))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=tmp_path, check=True)

    @flow
    def two_stages():
        return [run_stage.with_options(**IO_RETRIES)(stage, str(tmp_path), return_state=True)
                for stage in ("passing", "lasting")]

    passing, lasting = two_stages()
    assert passing.is_completed() and (tmp_path / "passing.log").read_text().count("attempt") == 2
    assert lasting.is_failed() and (tmp_path / "lasting.log").read_text().count("attempt") == 1


@pytest.mark.bad_input
def test_broken_corpus_stops_at_validate(tmp_path, prefect_server):
    from lm_pipeline.flows.pipeline import pipeline

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": "" if i % 3 == 0 else f"document {i}"}) + "\n"
                              for i in range(300)))
    root = make_project(tmp_path / "project", tiny_params({"data": {"source": str(corpus)}}))
    state = pipeline(project_dir=str(root), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"(?s)stage validate failed.*text length in \[1, 1000000\] "
                                         r"\(non-empty\)\): observed 100 \(e.g. .*corpus.jsonl:1, "):
        state.result()
    assert (root / "reports/validation/data_docs/index.html").is_file()
    assert not (root / "data/processed").exists() and not (root / "models").exists()
    assert not (root / "mlflow.db").exists()  # nothing was trained or registered
    # The on_failure hook left a report on the flow run saying what failed.
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    report = {a.key: a.data for a in artifacts}["lm-pipeline-failure"]
    assert "stage validate failed" in report and "lm-pipeline has no champion (no MLflow store yet)" in report
