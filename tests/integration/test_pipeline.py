"""The whole pipeline through real Prefect, DVC, Great Expectations, Ray (2 workers) and MLflow."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.integration.conftest import TINY_PARAMS, make_project

pytestmark = [pytest.mark.integration, pytest.mark.distributed]

DVC = str(Path(sys.executable).parent / "dvc")


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
    """A project after one complete flow run."""
    from flows.pipeline import pipeline

    root = make_project(tmp_path_factory.mktemp("project"), TINY_PARAMS)
    state = pipeline(project_dir=str(root), return_state=True)
    assert state.is_completed(), state.message
    return root


def test_flow_registers_a_champion_with_all_metrics(project):
    decision = json.loads((project / "reports/registry.json").read_text())
    assert decision["promoted"] and decision["version"] == "1"
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
    assert metrics["test/perplexity"] < 0.8 * metrics["test/unigram_perplexity"]
    history = client.get_metric_history(run.info.run_id, "train_loss")
    steps = TINY_PARAMS["train"]["max_steps"]
    assert [m.step for m in history] == list(range(1, steps + 1))  # every step, once, on one run
    assert history[-1].value < history[0].value
    assert run.data.params["train.num_workers"] == "2"
    assert metrics["test/perplexity_ci_low"] < metrics["test/perplexity"] < metrics["test/perplexity_ci_high"]
    assert 0 < metrics["test/bits_per_byte"] < 8
    assert 0 <= metrics["test/crows_pairs_stereotype_preference"] <= 1


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


def test_champion_loads_from_the_registry_and_generates(project, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(project))  # undone after the test
    model = mlflow.pyfunc.load_model("models:/lm-pipeline@champion")
    out = model.predict(pd.DataFrame({"prompt": ["The tuple", "A module"]}),
                        params={"max_new_tokens": 8})
    assert len(out) == 2 and all(isinstance(text, str) for text in out)


def test_changing_a_train_param_reruns_train_and_what_follows_only(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["lr"] = params["train"]["lr"] / 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(json.loads(dvc(project, "status", "--json"))) == {"train"}  # directly changed
    out = dvc(project, "repro")
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"train", "evaluate", "register"}
    client = mlflow_client(project)
    assert str(client.get_model_version_by_alias("lm-pipeline", "challenger").version) == "2"
    decision = json.loads((project / "reports/registry.json").read_text())
    champion = str(client.get_model_version_by_alias("lm-pipeline", "champion").version)
    assert champion == ("2" if decision["promoted"] else "1")


@pytest.mark.bad_input
def test_broken_corpus_stops_at_validate(tmp_path, prefect_server):
    from flows.pipeline import pipeline

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": "" if i % 3 == 0 else f"document {i}"}) + "\n"
                              for i in range(300)))
    root = make_project(tmp_path / "project", TINY_PARAMS | {"data": {"source": str(corpus)}})
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
    assert "stage validate failed" in report and "champion is unchanged" in report
