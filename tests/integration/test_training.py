"""Training that survives failures and scales: real Ray Train on this machine."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from lm_pipeline.hashing import tree_sha256
from tests.integration.conftest import (
    make_project,
    ray_processes,
    tiny_params,
    two_ray_nodes,
    with_prepared_corpus,
)
from tests.services import mlflow_server

LMP = str(Path(sys.executable).parent / "lmp")
# Slow enough (tens of ms a step) that a test can act between the first checkpoint and the end
# (60 steps and two checkpoints later); what these runs check (resume, restart, storage) needs no
# more steps than that.
TRAIN = {"model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64},
         "train": {"batch_size": 16, "max_steps": 80, "warmup_steps": 10, "eval_interval": 20,
                   "eval_batches": 2, "checkpoint_interval": 20, "max_failures": 2}}


@pytest.fixture(scope="module")
def project(tmp_path_factory, prepared_corpus):
    """A project whose data is ingested, validated and tokenized, ready to train."""
    return with_prepared_corpus(make_project(tmp_path_factory.mktemp("train-project"), tiny_params(TRAIN)),
                                prepared_corpus)


def params_file(project: Path, name: str, model: dict | None = None, **train) -> Path:
    """params for one training run, with its own checkpoint and model folders."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["model"].update(model or {})
    params["train"].update({"checkpoint_dir": f"runs/{name}/checkpoints",
                            "model_dir": f"runs/{name}/model", "curves_dir": f"runs/{name}/curves"},
                           **train)
    path = project / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def start_train(project: Path, params: Path) -> subprocess.Popen:
    return subprocess.Popen([LMP, "--params", str(params), "train"], cwd=project, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


# The deadlines below guard against a hang, not a slow run: under the other lane's load in CI, the
# worker-kill run took 271 s (84 s alone), and another missed a 180 s wait for its first checkpoint.
STAGE_DEADLINE_S = 480


def finish(proc: subprocess.Popen, timeout: float = STAGE_DEADLINE_S) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def train(project: Path, params: Path) -> str:
    return finish(start_train(project, params))


def checkpoint_snapshot(run_root: Path) -> dict:
    """What Ray Train has registered of the run's checkpoints (a folder alone may still be
    uploading); empty before the first, or while the snapshot is being rewritten."""
    for snapshot in run_root.glob("checkpoints/*/checkpoint_manager_snapshot.json"):
        try:
            return json.loads(snapshot.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def committed_checkpoints(run_root: Path) -> int:
    return len(checkpoint_snapshot(run_root).get("checkpoint_results", []))


def latest_committed_step(run_root: Path) -> int:
    """The step of the newest registered checkpoint; 0 before the first."""
    latest = checkpoint_snapshot(run_root).get("latest_checkpoint_result") or {}
    return latest.get("metrics", {}).get("step", 0)


def wait_for_checkpoint(run_root: Path, proc: subprocess.Popen) -> None:
    wait_until_committed(proc, lambda: committed_checkpoints(run_root))


def wait_until_committed(proc: subprocess.Popen, committed: Callable[[], int],
                         timeout: float = STAGE_DEADLINE_S) -> None:
    """Until `committed()` counts a checkpoint of `proc`'s run; else the stage is stopped and its
    output shown."""
    deadline = time.monotonic() + timeout
    while not committed():
        if proc.poll() is not None:
            raise AssertionError(f"training ended before the checkpoint awaited:\n{stopped_output(proc)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no checkpoint in {timeout:.0f} s:\n{stopped_output(proc)}")
        time.sleep(0.2)


def stopped_output(proc: subprocess.Popen) -> str:
    """The end of what a stage printed, once its whole process group is stopped (a stage left
    running after its test failed would train on, beside the next tests)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.communicate()[0][-4000:]


def resumed_before_the_end(out: str, max_steps: int = TRAIN["train"]["max_steps"]) -> bool:
    """The rerun resumed from a checkpoint with steps still to train: a kill that came after the
    run had finished tests no resume."""
    step = re.search(r"resumed from the checkpoint at step (\d+)", out)
    return bool(step) and int(step[1]) < max_steps


def wait_until_no_training_workers(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until no training worker of `proc`'s stage (its process group: driver, Ray, workers) runs."""
    deadline = time.monotonic() + timeout
    while ray_processes("ray::RayTrainWorker", proc.pid):
        assert time.monotonic() < deadline, "Ray's training workers outlived the killed stage"
        time.sleep(0.2)


def curve(project: Path, run_name: str, key: str = "train_loss",
          tracking_uri: str = "") -> list[tuple[int, float]]:
    run_id = json.loads((project / f"runs/{run_name}/model/run.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(tracking_uri or f"sqlite:///{project / 'mlflow.db'}")
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# 120 steps: after the killed run's second checkpoint (step 60) it still has time to be killed.
SHARDED = {"num_workers": 2, "strategy": "fsdp", "max_steps": 120, "model": {"dropout": 0.1}}


@pytest.fixture(scope="module")
def straight(project) -> list[tuple[int, float]]:
    """The loss curve of an uninterrupted run of two FSDP ranks with dropout: what the runs killed
    below (the whole stage, or one worker) must give back, float for float."""
    train(project, params_file(project, "straight", **SHARDED))
    return curve(project, "straight")


@pytest.mark.metrics
@pytest.mark.fault_tolerance
@pytest.mark.distributed
def test_a_killed_worker_then_a_killed_and_rerun_stage_resume_to_the_uninterrupted_curve(project, straight):
    """Two failures of one run of two FSDP ranks with dropout. One rank killed: Ray Train restarts
    the group from the latest checkpoint. Then the whole stage (driver, Ray and workers) killed and
    run again: it resumes from its latest checkpoint. The restored RNG states must give every rank
    its dropout masks back each time (a worker of a DDP run is killed on two nodes below)."""
    run_root, interval = project / "runs/killed", TRAIN["train"]["checkpoint_interval"]
    proc = start_train(project, params_file(project, "killed", **SHARDED))
    wait_until_committed(proc, lambda: latest_committed_step(run_root))
    first = latest_committed_step(run_root)
    workers = ray_processes("ray::RayTrainWorker", proc.pid)  # this stage's, not another lane's
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)
    # One more checkpoint may have been committed before the kill landed; the one after it was
    # written by the restarted group.
    wait_until_committed(proc, lambda: latest_committed_step(run_root) >= first + 2 * interval)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out = train(project, project / "killed.yaml")
    assert "resuming" in out and resumed_before_the_end(out, SHARDED["max_steps"])
    resumed = curve(project, "killed")
    assert [s for s, _ in resumed] == list(range(1, SHARDED["max_steps"] + 1))  # no gap, no duplicate
    # gloo sums in a fixed order, so in practice the floats are equal; 1e-6 leaves room for
    # reduction order, and a rank with the wrong dropout masks would be far outside it.
    curves_match(straight, resumed, rel=1e-6)
    restarts = curve(project, "killed", "resumed_from_step")
    assert len(restarts) == 2 and all(step % interval == 0 for _, step in restarts), restarts
    # Each rank draws its own dropout masks: their random streams differ.
    checkpoint = next(run_root.glob("checkpoints/*/checkpoint_*"))
    streams = [torch.load(checkpoint / f"rng_rank{r}.pt", weights_only=True)["torch"] for r in (0, 1)]
    assert not torch.equal(*streams)
    # Each rank wrote its own shard, and the run exported one whole model.
    assert sorted(p.name for p in checkpoint.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert (run_root / "model/model.safetensors").is_file()


@pytest.mark.security
@pytest.mark.fault_tolerance
def test_a_tampered_checkpoint_is_refused_at_resume_naming_the_file(project):
    # No retries: a refused checkpoint is refused again on every retry (of Ray or of the in-process
    # runner that one worker gets), and there would be 2.
    proc = start_train(project, params_file(project, "tampered", num_workers=1, max_failures=0,
                                            checkpoint_interval=10))
    wait_for_checkpoint(project / "runs/tampered", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_until_no_training_workers(proc)  # so no checkpoint is still being written after the tampering
    shards = list((project / "runs/tampered").glob("checkpoints/*/checkpoint_*/__0_0.distcp"))
    assert shards
    for shard in shards:  # one bit of one weight: DCP itself would load it without a word
        data = bytearray(shard.read_bytes())
        data[-1] ^= 1
        shard.write_bytes(data)
    rerun = start_train(project, project / "tampered.yaml")
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode != 0, out
    assert "__0_0.distcp: sha256 differs from the manifest" in out
    assert "resumed from the checkpoint" not in out


def committed_in_bucket(s3, bucket: str, prefix: str = "") -> int:
    """committed_checkpoints, for a run whose storage is a bucket."""
    client = s3.client()
    for key in s3.keys(bucket):
        if key.startswith(prefix) and key.endswith("/checkpoint_manager_snapshot.json"):
            try:
                body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                return len(json.loads(body)["checkpoint_results"])
            except (json.JSONDecodeError, KeyError, client.exceptions.NoSuchKey):
                return 0
    return 0


@pytest.mark.metrics
@pytest.mark.fault_tolerance
def test_a_run_killed_in_process_resumes_on_a_ray_worker_to_the_identical_curve(project):
    """One worker without a cluster runs in the `lmp train` process; its checkpoints are Ray
    Train's files, so a rerun on Ray Train (run_on: ray) continues the same run."""
    straight = train(project, params_file(project, "inproc-straight", num_workers=1))
    assert "[rank 0/1] this process (no Ray)" in straight
    proc = start_train(project, params_file(project, "inproc-killed", num_workers=1))
    wait_for_checkpoint(project / "runs/inproc-killed", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out = train(project, params_file(project, "inproc-killed", num_workers=1, run_on="ray"))
    assert re.search(r"\[rank 0/1\] node \w+", out) and resumed_before_the_end(out)
    curves_match(curve(project, "inproc-straight"), curve(project, "inproc-killed"), rel=1e-6)
    assert len(curve(project, "inproc-killed", "resumed_from_step")) == 1


@pytest.mark.fault_tolerance
def test_an_in_process_run_retries_a_failed_attempt_from_its_latest_checkpoint(project, monkeypatch, caplog):
    """What Ray's FailureConfig does for workers, the in-process runner does for attempts: the
    same final state as a run that never failed, and max_failures bounds the retries."""
    from lm_pipeline.config import load_config
    from lm_pipeline.training import loop, runners

    monkeypatch.chdir(project)
    cfg = load_config(params_file(project, "retry", num_workers=1, max_steps=100, max_failures=1,
                                      checkpoint_interval=40, eval_interval=40))
    real_step, failures, calls = loop.guarded_step, [], []

    def failing_at(steps):
        def step(model, optimizer, tokens, at, *args):
            calls.append(at)
            if at in steps and at not in failures:
                failures.append(at)
                raise ConnectionError(f"lost the tracking server at step {at}")
            return real_step(model, optimizer, tokens, at, *args)
        return step

    threads = torch.get_num_threads()  # the runner sets this process's torch threads
    try:
        straight = runners.train_in_process(cfg, None, str(project / "runs/retry/a"), "run")
        # Rerun when finished (`dvc repro --force`): nothing to train, the same result, as on Ray.
        again = runners.train_in_process(cfg, None, str(project / "runs/retry/a"), "run")
        assert again.metrics == straight.metrics and again.best_checkpoints == straight.best_checkpoints
        monkeypatch.setattr(loop, "guarded_step", failing_at({70}))
        retried = runners.train_in_process(cfg, None, str(project / "runs/retry/b"), "run")
        assert failures == [70] and "restart 1 of 1 from the latest checkpoint" in caplog.text
        assert calls[calls.index(70) + 1] == 40  # the retry went on from the checkpoint at step 40
        assert retried.metrics["step"] == 100
        assert retried.metrics["val_loss"] == pytest.approx(straight.metrics["val_loss"], rel=1e-6)
        assert retried.metrics["train_loss"] == pytest.approx(straight.metrics["train_loss"], rel=1e-6)
        failures.clear()
        monkeypatch.setattr(loop, "guarded_step", failing_at({30, 60}))
        with pytest.raises(runners.TrainingError, match="rank 0: ConnectionError: lost the tracking "
                           "server at step 60"):
            runners.train_in_process(cfg, None, str(project / "runs/retry/c"), "run")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.optimization
def test_a_spent_time_budget_stops_training_at_the_next_validation_as_early_stopping_does(project,
                                                                                       monkeypatch):
    from lm_pipeline.config import load_config
    from lm_pipeline.training import runners

    monkeypatch.chdir(project)
    cfg = load_config(params_file(project, "budget", num_workers=1, max_minutes=1e-9))
    threads = torch.get_num_threads()  # the runner sets this process's torch threads
    try:
        result = runners.train_in_process(cfg, None, str(project / "runs/budget"), "run")
    finally:
        torch.set_num_threads(threads)
    assert result.metrics["step"] == TRAIN["train"]["eval_interval"] < TRAIN["train"]["max_steps"]
    assert result.metrics["early_stopped"] and result.best_checkpoints  # a checkpoint to export
    try:  # rerun (a retry, `dvc repro --force`): the stopped run resumes with nothing to train
        again = runners.train_in_process(cfg, None, str(project / "runs/budget"), "run")
    finally:
        torch.set_num_threads(threads)
    assert again.metrics == result.metrics


@pytest.fixture(scope="module")
def fine_tune_data(project) -> Path:
    """The project's corpus preprocessed for a fine-tune of a fresh parent in the project's shape."""
    from lm_pipeline.config import load_config
    from lm_pipeline.data.processed import read_meta
    from lm_pipeline.model.backends import build_model, save_model

    cfg = load_config(project / "params.yaml")
    torch.manual_seed(0)
    meta = read_meta(project / cfg.data.processed_dir)
    parent = build_model(cfg.model, cfg.lora, meta.vocab_size, meta.eot_id)
    save_model(parent, project / cfg.data.processed_dir, project / "runs/parent", {"mlflow_run_id": ""})
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["processed_dir"] = "runs/fine-tune-data"
    params["train"]["init_from"] = "runs/parent"
    (project / "fine-tune-data.yaml").write_text(yaml.safe_dump(params))
    subprocess.run([LMP, "-q", "--params", "fine-tune-data.yaml", "preprocess"], cwd=project, check=True)
    return project / "runs/fine-tune-data"


@pytest.mark.metrics
@pytest.mark.fault_tolerance
@pytest.mark.usefixtures("forget_mlflow_uri")  # start_run sets MLflow's URI for the whole process
def test_a_fine_tune_resumed_from_its_step_0_checkpoint_is_the_uninterrupted_run(project, fine_tune_data,
                                                                                    monkeypatch):
    """A fine-tune validates its parent at step 0 and checkpoints it (the parent is a candidate).
    Killed before the first scheduled checkpoint, it resumes from that one: step 0 must not be
    validated, logged and counted again. No validation improves here (min_delta is huge), so
    patience 2 stops the run at its second validation, step 20, resumed or not."""
    from lm_pipeline import tracking
    from lm_pipeline.config import load_config
    from lm_pipeline.training import loop, runners
    from lm_pipeline.training.export import best_checkpoint, summarize_training

    monkeypatch.chdir(project)
    params = yaml.safe_load((project / "fine-tune-data.yaml").read_text())
    params["train"] |= {"num_workers": 1, "max_steps": 60, "eval_interval": 10, "checkpoint_interval": 30,
                        "early_stopping_patience": 2, "min_delta": 100.0, "max_failures": 1}
    (project / "fine-tune.yaml").write_text(yaml.safe_dump(params))
    cfg = load_config(project / "fine-tune.yaml")
    real_step, failed = loop.guarded_step, []

    def killed_at_step_5(model, optimizer, tokens, at, *args):
        if at == 5 and not failed:
            failed.append(at)
            raise ConnectionError("killed between the step-0 checkpoint and the first scheduled one")
        return real_step(model, optimizer, tokens, at, *args)

    client, outcome = mlflow.MlflowClient(tracking.tracking_uri(cfg)), {}
    threads = torch.get_num_threads()  # the runner sets this process's torch threads
    try:
        for name in ("straight", "resumed"):
            if name == "resumed":
                monkeypatch.setattr(loop, "guarded_step", killed_at_step_5)
            run_id = tracking.start_run(cfg, f"fine-tune-{name}", {})
            result = runners.train_in_process(cfg, run_id, str(project / f"runs/ft-{name}"), "run")
            best = best_checkpoint(result.best_checkpoints)[1]
            history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val_loss"))
            outcome[name] = (result.metrics["step"], history,
                             summarize_training(client, run_id, best, result.metrics, cfg.train.min_delta))
    finally:
        torch.set_num_threads(threads)
    assert failed == [5]  # the resumed run was killed and went on from its step-0 checkpoint
    assert outcome["straight"][0] == 20 and [step for step, _ in outcome["straight"][1]] == [0, 10, 20]
    assert outcome["resumed"][0] == outcome["straight"][0]
    assert [s for s, _ in outcome["resumed"][1]] == [s for s, _ in outcome["straight"][1]]
    assert [v for _, v in outcome["resumed"][1]] == pytest.approx([v for _, v in outcome["straight"][1]],
                                                                  rel=1e-6)
    resumed, straight = outcome["resumed"][2], outcome["straight"][2]
    assert resumed.keys() == straight.keys()
    for key, value in straight.items():
        assert resumed[key] == (pytest.approx(value, rel=1e-6, nan_ok=True) if isinstance(value, float)
                                else value), key


@pytest.mark.distributed
def test_one_worker_and_two_fsdp_ranks_follow_the_same_loss_curve(project):
    """Same seed and global batch (1 x 16 = 2 x 8): FSDP2 shards the model over 2 ranks, each
    reading its own half of every batch, and follows the single worker to float rounding (AdamW
    on sharded parameters, the schedule, the ranks' data). That each split of a batch, DDP's or
    FSDP's, gives the single process's gradient is test_gradients'; the killed-and-rerun FSDP run
    above checks every rank's checkpoint shard and its export."""
    steps = {"max_steps": 30, "checkpoint_interval": 15, "eval_interval": 30}
    train(project, params_file(project, "w1", num_workers=1, batch_size=16, **steps))
    out = train(project, params_file(project, "fsdp", num_workers=2, batch_size=8, strategy="fsdp", **steps))
    assert "strategy fsdp" in out
    one, sharded = curve(project, "w1"), curve(project, "fsdp")
    assert [s for s, _ in one] == list(range(1, 31))
    assert one[-1][1] < one[0][1] - 0.5  # and it learned
    curves_match(one, sharded, rel=1e-5)  # 8e-7 at most on the 2-core AMD EPYC


@pytest.mark.scale
def test_the_plan_goes_with_the_run_and_a_run_that_cannot_fit_is_refused_before_any_worker(project, straight):
    """`straight` (2 FSDP ranks) logged its plan; the same run with workers of 10 MiB is refused
    before a worker, a checkpoint or an MLflow run exists, naming what to change."""
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run_id = json.loads((project / "runs/straight/model/run.json").read_text())["mlflow_run_id"]
    run = client.get_run(run_id)
    plan = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/plan.txt")
    assert "2 x fsdp" in plan and "memory per rank" in plan
    assert run.data.metrics["plan.params"] == int(run.data.params["model.total_params"])
    runs_before = len(client.search_runs([run.info.experiment_id]))
    printed = subprocess.run([LMP, "--params", str(params_file(project, "planned", **SHARDED)), "plan"],
                             cwd=project, capture_output=True, text=True)
    assert printed.returncode == 0
    assert printed.stdout.splitlines()[:3] == plan.splitlines()[:3]  # parameters, FLOPs, tokens per step
    refused = subprocess.run([LMP, "--params", str(params_file(project, "too-big", worker_memory_gb=0.01,
                                                                **SHARDED)), "train"],
                             cwd=project, capture_output=True, text=True)
    assert refused.returncode == 1 and "PlanError" in refused.stderr
    assert "train.activation_checkpointing: true" in refused.stderr
    assert not (project / "runs/too-big").exists()
    assert len(client.search_runs([run.info.experiment_id])) == runs_before


@pytest.mark.fault_tolerance
@pytest.mark.bad_input
def test_non_finite_loss_stops_training_naming_the_step(project):
    """On a Ray Train worker (one is enough): the worker's error must come through Ray's, naming
    its rank (the in-process runner's is `retries a failed attempt` above)."""
    proc = start_train(project, params_file(project, "nan", lr=1e30, max_failures=0, num_workers=1,
                                            run_on="ray"))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1
    error = r"rank 0: FloatingPointError: train loss is (nan|inf|-inf) at step \d+"
    assert re.search(error, out), out[-3000:]
    assert not (project / "runs/nan/model").exists()
    assert not any((project / "runs/nan").glob("checkpoints/*/checkpoint_*"))


def curves_match(a: list, b: list, rel: float) -> None:
    assert [s for s, _ in a] == [s for s, _ in b]
    for (_, x), (_, y) in zip(a, b, strict=True):
        assert y == pytest.approx(x, rel=rel)


@pytest.fixture
def mlflow_over_http(tmp_path) -> str:
    """A tracking server the workers reach over HTTP (artifacts proxied to its own folder)."""
    with mlflow_server(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "mlflow.log",
                       "--artifacts-destination", str(tmp_path / "artifacts")) as url:
        yield url


@pytest.mark.scale
@pytest.mark.fault_tolerance
@pytest.mark.distributed
def test_two_nodes_sharing_only_a_bucket_train_through_a_killed_worker(project, s3, mlflow_over_http,
                                                                       monkeypatch):
    """One worker per node; each node's workers get the data from the bucket into a cache of the
    node's own, write checkpoints to the bucket and log over HTTP: no folder is shared. A worker
    killed mid-run is replaced and the run resumes from the bucket's latest checkpoint."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_over_http)
    params = params_file(project, "bucket-only", num_workers=2, cpus_per_worker=1,
                         checkpoint_dir="s3://checkpoints/bucket-only")
    config = yaml.safe_load(params.read_text())
    config["data"]["shards_url"] = "s3://corpus/shards"
    params.write_text(yaml.safe_dump(config))
    with two_ray_nodes(s3.env()) as nodes:  # the nodes get the store's address and keys, as on a cluster
        monkeypatch.setenv("RAY_ADDRESS", nodes.address)
        proc = start_train(project, params)
        wait_until_committed(proc, lambda: committed_in_bucket(s3, "checkpoints", "bucket-only/"))
        workers = ray_processes("ray::RayTrainWorker", *nodes.process_groups)
        assert len(workers) == 2
        os.kill(workers[-1], signal.SIGKILL)
        out = finish(proc)
    nodes_of_ranks = dict(re.findall(r"\[rank (\d)/2\] node (\w+)", out))
    assert set(nodes_of_ranks) == {"0", "1"} and len(set(nodes_of_ranks.values())) == 2, out[-3000:]
    steps = [s for s, _ in curve(project, "bucket-only", tracking_uri=mlflow_over_http)]
    assert steps == list(range(1, TRAIN["train"]["max_steps"] + 1))  # no gap, no duplicate
    restarts = curve(project, "bucket-only", "resumed_from_step", tracking_uri=mlflow_over_http)
    assert len(restarts) == 1 and restarts[0][1] % TRAIN["train"]["checkpoint_interval"] == 0
    # Each node holds its own copy of the data, identical to the driver's, taken from the bucket.
    digest = tree_sha256(project / "data/processed")
    assert all(tree_sha256(cache / digest) == digest for cache in nodes.caches)
    assert any(key.startswith(f"shards/{digest}/train/") for key in s3.keys("corpus"))
    # Each rank's manifest, and the MLflow run a rerun of the stage continues (a rerun that finds
    # the run's records in a bucket is test_checkpoints' `the same store in a bucket`; one that
    # resumes a killed stage, the local `killed and rerun` above).
    keys = [key for key in s3.keys("checkpoints") if key.startswith("bucket-only/")]
    assert any(key.endswith("/manifest_rank1.json") for key in keys), keys[:20]
    assert any(key.endswith("/mlflow_run.json") for key in keys), keys[:20]
    assert not (project / "runs/bucket-only/checkpoints").exists()
    assert (project / "runs/bucket-only/model/model.safetensors").is_file()  # exported from the bucket

