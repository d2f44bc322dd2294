"""Hyperparameter search: real Ray Tune over real Ray Train trials, through the Prefect tune flow."""

import csv
import json

import pytest
import yaml

from tests.integration.conftest import make_project, tiny_params

pytestmark = [pytest.mark.optimization, pytest.mark.integration]

STEPS = 100  # the better trials beat the unigram baseline on the filtered corpus (at 60: 188.4 vs 188.35)
# A grid, so the trials are known: two learning rates (one far too low) by two depths, two trials
# at a time. ASHA sees every trial's validation loss at step 20 and stops those in the worse half.
SEARCH = {"num_samples": 1, "max_concurrent_trials": 2, "workers_per_trial": 1, "grace_period": 20,
          "reduction_factor": 2, "time_budget_s": 900,
          "space": {"train.lr": {"grid": [0.01, 0.0001]}, "model.n_layer": {"grid": [1, 2]}}}


@pytest.fixture(scope="module")
def searched(tmp_path_factory, prefect_server, s3):
    """The tune flow, with the trials reading the processed data from a bucket (data.shards_url)."""
    from lm_pipeline.flows.tune import tune

    params = tiny_params({
        "data": {"shards_url": "s3://corpus/tune-shards"},
        "train": {"max_steps": STEPS, "eval_interval": 10, "checkpoint_interval": STEPS}})
    root = make_project(tmp_path_factory.mktemp("tune"), params)
    merged = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(merged | {"tune": SEARCH}, sort_keys=False))
    with pytest.MonkeyPatch.context() as env:
        for key, value in s3.env().items():
            env.setenv(key, value)
        env.setenv("LMP_SHARDS_CACHE", str(root / "node-cache"))
        state = tune(project_dir=str(root), return_state=True)
    assert state.is_completed(), state.message
    return root


def test_trials_read_the_data_from_the_bucket(searched, s3):
    from lm_pipeline.hashing import tree_sha256

    digest = tree_sha256(searched / "data/processed")
    assert any(key.startswith(f"tune-shards/{digest}/train/") for key in s3.keys("corpus"))
    assert tree_sha256(searched / "node-cache" / digest) == digest  # the trials' node copy


def client_for(project):
    import mlflow

    uri = f"sqlite:///{project / 'mlflow.db'}"
    return mlflow.MlflowClient(uri, registry_uri=uri)


def children(client, parent_id: str) -> list:
    experiment = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_id}'")


def test_every_trial_is_a_child_run_and_asha_stops_the_weak_ones(searched):
    best = json.loads((searched / "reports/tune/best.json").read_text())
    client = client_for(searched)
    trials = children(client, best["parent_run_id"])
    assert len(trials) == 4 == best["trials"]
    # Each trial trained with its own values, logged under the same keys as a pipeline run.
    assert {(t.data.params["train.lr"], t.data.params["model.n_layer"]) for t in trials} == {
        ("0.01", "1"), ("0.01", "2"), ("0.0001", "1"), ("0.0001", "2")}
    assert all(t.data.params["train.num_workers"] == "1" for t in trials)  # workers_per_trial
    status = {t.info.run_id: t.data.tags["tune.status"] for t in trials}
    stopped = [t for t in trials if status[t.info.run_id] == "stopped_by_asha"]
    assert stopped and "completed" in status.values(), status
    # Tune's view of how far each trial got (a stopped trial may train a few steps more before
    # Tune's decision reaches it, so its MLflow curve can run a little past the rung).
    with open(searched / "reports/tune/trials.csv") as f:
        reached = {row["mlflow_run_id"]: int(row["steps"]) for row in csv.DictReader(f)}
    for trial in trials:
        if trial in stopped:  # cut at a rung, and its MLflow run says so
            assert reached[trial.info.run_id] < STEPS and trial.info.status == "KILLED"
        else:
            assert reached[trial.info.run_id] == STEPS and trial.info.status == "FINISHED"
    # The far too low learning rate loses at the rung whatever the order; which of the good ones
    # survive depends on the running median ASHA compares each newcomer with.
    assert all(t in stopped for t in trials if t.data.params["train.lr"] == "0.0001")


def test_parent_run_records_the_best_config_and_a_plot_of_the_trials(searched):
    best = json.loads((searched / "reports/tune/best.json").read_text())
    client = client_for(searched)
    parent = client.get_run(best["parent_run_id"])
    lowest = {t.info.run_id: min(m.value for m in client.get_metric_history(t.info.run_id, "val_loss")
                                 if m.step > 0)
              for t in children(client, parent.info.run_id)}
    assert best["mlflow_run_id"] == min(lowest, key=lowest.get)
    assert parent.data.metrics["best_val_loss"] == pytest.approx(lowest[best["mlflow_run_id"]])
    assert parent.data.params["best.train.lr"] == str(best["values"]["train.lr"]) == "0.01"
    assert json.loads(parent.data.params["tune.space"]) == SEARCH["space"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best.json", "trials.csv", "trials.png"} <= artifacts
    assert best["dvc_exp_run"].startswith("dvc exp run -S model.n_layer=")


def test_best_trial_is_evaluated_and_meets_the_registry_gates(searched):
    best = json.loads((searched / "reports/tune/best.json").read_text())
    run = json.loads((searched / "models/tuned/run.json").read_text())
    assert run["mlflow_run_id"] == best["mlflow_run_id"]
    client = client_for(searched)
    metrics = client.get_run(best["mlflow_run_id"]).data.metrics  # evaluate logged to the trial's run
    evaluated = json.loads((searched / "reports/tune/metrics.json").read_text())
    assert evaluated["perplexity"] < evaluated["unigram_perplexity"]  # it learned beyond word counts
    assert metrics["test/perplexity"] == pytest.approx(evaluated["perplexity"])
    assert metrics["test/bleu"] == pytest.approx(evaluated["bleu"])
    decision = json.loads((searched / "reports/tune/registry.json").read_text())
    version = client.get_model_version("lm-pipeline", decision["version"])
    assert version.run_id == best["mlflow_run_id"] and decision["promoted"]  # first version
    assert not (searched / "models/model").exists()  # the pipeline's own outputs are untouched
