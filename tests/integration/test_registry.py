"""The model registry on real MLflow: gated promotion, manual moves, the log, serving."""

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml

from lm_pipeline.registry import history
from tests import services
from tests.integration.conftest import lmp
from tests.services import BIN, free_port, process

pytestmark = [pytest.mark.registry, pytest.mark.integration]


def client(project: Path):
    uri = f"sqlite:///{project / 'mlflow.db'}"
    return mlflow.MlflowClient(uri, registry_uri=uri)


def champion(project: Path) -> str:
    return str(client(project).get_model_version_by_alias("lm-pipeline", "champion").version)


def promotion_log(project: Path) -> list[dict]:
    c = client(project)
    run = c.search_runs([c.get_experiment_by_name("lm-pipeline").experiment_id],
                        filter_string="tags.`lmp.promotion_log` = 'lm-pipeline'")[0]
    return history.read_log(c, run.info.run_id)


@pytest.fixture(scope="module")
def project(registered_project):
    return registered_project


def test_first_version_becomes_champion(project):
    first = json.loads((project / "decisions.json").read_text())[0]
    assert first["version"] == "1" and first["promoted"] and first["champion_before"] is None


def test_worse_model_stays_challenger_and_says_which_gate_failed(project):
    worse = json.loads((project / "decisions.json").read_text())[1]
    assert worse["version"] == "2" and not worse["promoted"]
    assert worse["champion_before"] == worse["champion_after"] == "1"
    tags = client(project).get_model_version("lm-pipeline", "2").tags
    assert tags["promotion.decision"] == "challenger"
    assert "failed beats_champion" in tags["promotion.reason"]
    assert tags["gate.beats_champion"].startswith("FAIL: bits/byte")


def test_better_model_takes_champion_with_a_significant_gain(project):
    better = json.loads((project / "decisions.json").read_text())[2]
    assert better["version"] == "3" and better["promoted"] and better["champion_before"] == "1"
    gate = next(g for g in better["gates"] if g["name"] == "beats_champion")
    assert gate["passed"] and gate["value"] > 0
    assert "95% CI [" in gate["detail"]
    kept = next(g for g in better["gates"] if g["name"] == "does_not_forget")  # register.guard_documents
    assert kept["passed"] and kept["value"] > 0 and "on the guarded documents" in kept["detail"]
    description = client(project).get_model_version("lm-pipeline", "3").description
    assert description.startswith(f"all {len(better['gates'])} gates passed")  # the privacy gates too
    assert "pass does_not_forget" in description


def test_rollback_restores_the_previous_champion_and_the_log_keeps_both(project):
    assert champion(project) == "3"
    out = lmp(project, "rollback", "--reason", "bad samples in review")
    assert "champion 3 -> 1" in out and champion(project) == "1"
    log = promotion_log(project)
    assert [(e["action"], e["champion_before"], e["champion_after"]) for e in log] == [
        ("register", None, "1"), ("register", "1", "1"), ("register", "1", "3"), ("rollback", "3", "1")]
    assert log[-1]["reason"] == "bad samples in review" and log[-1]["user"]
    lmp(project, "promote", "3", "--reason", "reviewed again")
    assert champion(project) == "3" and promotion_log(project)[-1]["action"] == "promote"


def test_lineage_prints_tags_and_rebuild_commands(project):
    out = lmp(project, "lineage", "models:/lm-pipeline/1")
    tags = client(project).get_model_version("lm-pipeline", "1").tags
    assert f"git checkout {tags['git_commit']}" in out and "dvc repro" in out
    assert tags["weights_sha256"] in out and len(tags["data_sha256"]) == 64


def test_mlflow_models_serve_answers_with_generated_text(project, tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/lm-pipeline@champion",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", url.rsplit(":", 1)[1]]
    with process(cmd, tmp_path / "serve.log", env=env, cwd=project, ready_url=f"{url}/ping"):
        body = json.dumps({"dataframe_records": [{"prompt": "The tuple"}, {"prompt": "A module"}],
                           "params": {"max_new_tokens": 8}}).encode()
        request = urllib.request.Request(f"{url}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    assert answer["predictions"] == expected_completions(project, ["The tuple", "A module"], 8)


def expected_completions(project: Path, prompts: list[str], tokens: int) -> list[str]:
    """Greedy completions by the champion's weights, read as safetensors and generated here,
    not through the served pyfunc."""
    from lm_pipeline.model.generate import complete_batch
    from lm_pipeline.registry.decision import load_registered

    model, tokenizer = load_registered("lm-pipeline", champion(project))
    return complete_batch(model, tokenizer, prompts, tokens)


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server (SQLite backend, proxied artifacts) on a loopback port."""
    with services.mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "mlflow.log",
                                "--artifacts-destination", str(tmp_path / "artifacts"), cwd=tmp_path) as url:
        yield url


def test_two_processes_registering_at_once_get_distinct_versions_and_one_champion(project, mlflow_server):
    server = mlflow.MlflowClient(mlflow_server, registry_uri=mlflow_server)
    experiment = server.create_experiment("lm-pipeline")
    procs = {}
    for name in ("a", "b"):  # each process: its own copy of the model, with a run on the server
        model_dir = project / f"models/concurrent-{name}"
        subprocess.run(["cp", "-r", str(project / "models/model"), str(model_dir)], check=True)
        run_id = server.create_run(experiment).info.run_id
        (model_dir / "run.json").write_text(json.dumps({"mlflow_run_id": run_id}))
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["train"]["model_dir"] = str(model_dir)
        params["register"]["record_file"] = f"reports/concurrent-{name}.json"
        (project / f"concurrent-{name}.yaml").write_text(yaml.safe_dump(params))
    for name in ("a", "b"):
        procs[name] = subprocess.Popen(
            [str(BIN / "lmp"), "-q", "--params", f"concurrent-{name}.yaml", "register"], cwd=project,
            env=os.environ | {"MLFLOW_TRACKING_URI": mlflow_server}, stderr=subprocess.PIPE, text=True)
    for proc in procs.values():
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    decisions = [json.loads((project / f"reports/concurrent-{n}.json").read_text()) for n in ("a", "b")]
    assert sorted(d["version"] for d in decisions) == ["1", "2"]
    promoted = [d["version"] for d in decisions if d["promoted"]]
    assert len(promoted) == 1  # identical weights: the second cannot beat the first
    assert str(server.get_model_version_by_alias("lm-pipeline", "champion").version) == promoted[0]


@pytest.mark.security
def test_a_champion_whose_weights_changed_after_registration_is_refused_not_run(project):
    """The gate reads the champion's safetensors (its pyfunc code never runs) and checks the weights
    hash recorded at registration: a tampered artifact stops register; champion stays."""
    from safetensors.torch import load_file, save_file

    before = champion(project)
    source = client(project).get_model_version_download_uri("lm-pipeline", before)
    weights = next(Path(source.removeprefix("file://")).rglob("model.safetensors"))
    original = weights.read_bytes()
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 0.01  # still a valid model, not the registered one
    save_file(tensors, weights, metadata={"format": "pt"})
    candidate = project / "models/tamper-candidate"  # a new run's model, so a new version is compared
    subprocess.run(["cp", "-r", str(project / "models/model"), str(candidate)], check=True)
    c = client(project)
    run_id = c.create_run(c.get_experiment_by_name("lm-pipeline").experiment_id).info.run_id
    (candidate / "run.json").write_text(json.dumps({"mlflow_run_id": run_id}))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["model_dir"] = str(candidate)
    params["register"]["record_file"] = "reports/tamper.json"
    (project / "tamper.yaml").write_text(yaml.safe_dump(params))
    try:
        out = subprocess.run([str(BIN / "lmp"), "--params", "tamper.yaml", "register"], cwd=project,
                             capture_output=True, text=True)
    finally:
        weights.write_bytes(original)
    assert out.returncode == 1, out.stderr[-2000:]
    assert f"models:/lm-pipeline/{before}: its weights hash" in out.stderr
    assert "changed after it was registered" in out.stderr
    assert champion(project) == before


class Killed(BaseException):
    """The stage's process dying at this point (not an error any code could catch and handle)."""


CRASH_POINTS = ("after_registering", "after_logging", "after_moving_challenger", "after_moving_champion")


def crash_point(crash_at: str) -> tuple[object, str]:
    """(owner, name) of the call after which a register attempt dies."""
    from lm_pipeline.stages import register

    return {"after_registering": (mlflow, "register_model"),
            "after_logging": (history, "append"),
            "after_moving_challenger": (mlflow.MlflowClient, "set_registered_model_alias"),
            "after_moving_champion": (register, "set_champion")}[crash_at]


@pytest.mark.security
@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_register_killed_anywhere_and_retried_leaves_one_version_one_entry_and_its_champion(
        project, monkeypatch, crash_at):
    """Prefect retries register: the rerun finishes the first attempt's version, not a new one."""
    from lm_pipeline.config import load_config
    from lm_pipeline.stages import register

    name = f"retry-{crash_at.replace('_', '-')}"  # a model of its own: its first version is champion
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    cfg = load_config(project / "params.yaml")
    cfg = cfg.model_copy(update={"register_": cfg.register_.model_copy(
        update={"model_name": name, "record_file": project / f"runs/{name}.json"})})
    owner, attribute = crash_point(crash_at)
    original = getattr(owner, attribute)

    def dies_after(*args, **kwargs):
        original(*args, **kwargs)
        raise Killed(crash_at)

    with monkeypatch.context() as patched:
        patched.setattr(owner, attribute, dies_after)
        with pytest.raises(Killed):
            register.run(cfg)
    decision = register.run(cfg)  # the retry

    c = client(project)
    versions = c.search_model_versions(f"name = '{name}'")
    assert len(versions) == 1 and decision.version == "1" and decision.promoted
    assert str(c.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(c.get_model_version_by_alias(name, "challenger").version) == "1"
    log_run = c.search_runs([c.get_experiment_by_name("lm-pipeline").experiment_id],
                            filter_string=f"tags.`lmp.promotion_log` = '{name}'")[0]
    entries = history.read_log(c, log_run.info.run_id)
    assert [(e["action"], e["version"]) for e in entries] == [("register", "1")]
    assert json.loads((project / f"runs/{name}.json").read_text())["champion_after"] == "1"
