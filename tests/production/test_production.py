"""Production mode: the pipeline deployed on a real Prefect server, run by a worker, tracked and
registered on a real MLflow server backed by PostgreSQL with basic-auth."""

import base64
import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from uuid import UUID

import pytest
import yaml

from tests.production.conftest import (
    MODEL_NAME,
    PARAMS,
    far_from_now_cron,
    lmp_deploy,
    make_pipeline_user,
    prefect_client,
    prefect_env,
)
from tests.services import BIN, process, process_group

pytestmark = [pytest.mark.production, pytest.mark.integration]


def mlflow_client(server, monkeypatch):
    import mlflow

    for key, value in server.env().items():  # credentials reach MLflow only through the environment
        monkeypatch.setenv(key, value)
    return mlflow.MlflowClient(server.uri)


def test_deployment_has_cron_schedule_process_pool_and_limit_of_one(deployment):
    client = prefect_client(deployment.api_url)
    dep = client.read_deployment(UUID(deployment.deployment_id))
    assert [s.schedule.cron for s in dep.schedules] == [dep.schedules[0].schedule.cron]
    assert dep.schedules[0].active and dep.schedules[0].schedule.cron.startswith("0 ")
    assert dep.global_concurrency_limit.limit == 1
    assert dep.concurrency_options.collision_strategy == "ENQUEUE"
    assert client.read_work_pool(dep.work_pool_name).type == "process"
    assert {"lm-pipeline", "schedule:nightly"} <= set(dep.tags)
    assert dep.parameters == {"project_dir": str(deployment.project)}
    assert dep.job_variables == {"working_dir": str(deployment.project)}
    # The server's scheduler has already queued the schedule's upcoming runs.
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter

    upcoming = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
        flow_run_filter=FlowRunFilter(id={"not_any_": [UUID(r) for r in deployment.flow_run_ids]}))
    assert upcoming and all(r.state.is_scheduled() and r.auto_scheduled for r in upcoming)


def test_second_trigger_waits_for_the_first_and_both_complete(deployment):
    client = prefect_client(deployment.api_url)
    runs = [client.read_flow_run(UUID(r)) for r in deployment.flow_run_ids]
    assert all(run.state.is_completed() for run in runs), [run.state for run in runs]
    # The worker takes both at once and may start either first (they were triggered a moment
    # apart): the other waits for the slot, and starts after it ends.
    first, second = sorted(runs, key=lambda run: run.start_time)
    waited = [s.name for s in client.read_flow_run_states(second.id)]
    assert "AwaitingConcurrencySlot" in waited, waited
    assert second.start_time >= first.end_time  # never both in the workspace at once
    assert {"lm-pipeline", "schedule:nightly"} <= set(first.tags)
    # The second run found everything up to date: DVC skipped every stage.
    assert dvc_status(deployment.project) == {}


def test_the_run_log_shows_evaluation_progress_though_no_terminal_watches(deployment):
    """The worker's runs log at INFO, as a deployment's do, with the stages' output piped into
    them: evaluate's long parts each log a start, their count and an end, the benchmark tasks a
    start and an end."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    client, messages = prefect_client(deployment.api_url), []
    runs = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(r) for r in deployment.flow_run_ids]))
    while page := client.read_logs(log_filter=runs, limit=200, offset=len(messages)):
        messages += [entry.message for entry in page]
    for part in ("evaluate: perplexity", "evaluate: continuations for BLEU", "evaluate: bias probes"):
        said = [m for m in messages if m.split(" INFO lm_pipeline.progress: ")[-1].startswith(f"{part}: ")]
        assert any(" to go" in m for m in said) and any(m.endswith(" s") for m in said), (part, said)
    tasks = [m for m in messages if "lm_pipeline.progress: evaluate: benchmark tasks " in m]
    assert tasks and tasks[0].endswith("(lm-evaluation-harness): started") and " done in " in tasks[-1], tasks


def test_each_run_has_a_summary_artifact_with_the_registry_decision(deployment):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    client = prefect_client(deployment.api_url)
    summaries = ArtifactFilter(key=ArtifactFilterKey(any_=["lm-pipeline-summary"]))
    artifacts = client.read_artifacts(artifact_filter=summaries)
    by_run = {str(a.flow_run_id): a for a in artifacts}
    assert set(deployment.flow_run_ids) <= set(by_run)
    assert "| perplexity |" in by_run[deployment.flow_run_ids[0]].data
    assert f"## {MODEL_NAME} v1" in by_run[deployment.flow_run_ids[0]].data


def test_pipeline_tracks_and_registers_on_the_postgres_backed_server(deployment, mlflow_server, postgres,
                                                                     s3, monkeypatch):
    client = mlflow_client(mlflow_server, monkeypatch)
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert str(champion.version) == "1"
    run = client.get_run(champion.run_id)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert steps == sorted(set(steps)) and steps[-1] == PARAMS["train"]["max_steps"]
    assert run.data.params["train.num_workers"] == "2"  # the worker's flow trained on Ray
    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics)
    assert {"test/perplexity", "test/bleu", "test/bias_max_gap"} <= set(run.data.metrics)
    # Artifacts go through the server's proxy, not to a path on the client.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert "evaluation" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # ...which stores them in the S3 bucket: the run's reports and the registered model's files.
    keys = s3.keys("mlflow")
    assert any(run.info.run_id in key and "/evaluation/" in key for key in keys), keys[:20]
    assert any(key.endswith("/MLmodel") for key in keys), keys[:20]
    # ...and the rows really are in PostgreSQL.
    assert postgres.psql("SELECT count(*) FROM model_versions", "mlflow") == "1"
    assert int(postgres.psql("SELECT count(*) FROM metrics WHERE key = 'train_loss'", "mlflow")) >= len(steps)


def test_unauthenticated_and_wrong_password_requests_are_refused(deployment, mlflow_server):
    url = f"{mlflow_server.uri}/api/2.0/mlflow/registered-models/search"
    assert http_status(url) == 401
    assert http_status(url, mlflow_server.username, "not-the-password") == 401
    assert http_status(url, mlflow_server.username, mlflow_server.password) == 200


def test_no_credentials_were_written_into_the_project(deployment, mlflow_server):
    tracked = subprocess.run(["git", "grep", "-l", mlflow_server.password], cwd=deployment.project,
                             capture_output=True, text=True)
    assert tracked.returncode == 1 and not tracked.stdout  # git grep: 1 means no match
    record = json.loads((deployment.project / "models/model/run.json").read_text())
    assert record["tracking_uri"] == mlflow_server.uri


def dvc_status(project) -> dict:
    out = subprocess.run([str(BIN / "dvc"), "status", "--json"], cwd=project, capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


def http_status(url: str, username: str | None = None, password: str | None = None,
                body: dict | None = None) -> int:
    """The HTTP status of a GET (or, with a body, a JSON POST), with basic-auth if given."""
    request = urllib.request.Request(url) if body is None else urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"})
    if username:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_image_deployment_targets_a_kubernetes_pool_with_the_project_image(deployment, services_dir):
    """`lmp deploy --image` for infra/k8s: the flow runs from the image's working directory."""
    env = prefect_env(services_dir, deployment.api_url)
    # As the Helm chart's worker would: a pool with Prefect's Kubernetes job template.
    subprocess.run([str(BIN / "prefect"), "work-pool", "create", "lm-pipeline-k8s", "--type", "kubernetes"],
                   env=env, check=True, capture_output=True)
    lmp_deploy(deployment.project, env, "--name", "nightly-k8s", "--pool", "lm-pipeline-k8s",
               "--image", "lm-pipeline:latest")
    client = prefect_client(deployment.api_url)
    dep = client.read_deployment_by_name("lm-pipeline/nightly-k8s")
    assert dep.work_pool_name == "lm-pipeline-k8s" and dep.job_variables["image"] == "lm-pipeline:latest"
    assert dep.entrypoint == "lm_pipeline/flows/pipeline.py:pipeline"
    assert dep.parameters == {"project_dir": "."}
    assert dep.global_concurrency_limit.limit == 1


def test_a_served_schedule_keeps_its_timezone_and_ctrl_c_exits_130(deployment, services_dir):
    """`lmp deploy --serve` (no worker: this process runs the flow); --timezone was dropped, so a
    schedule meant for 02:00 in Berlin ran at 02:00 UTC. Prefect's serve catches Ctrl-C itself:
    the command exited 0, as if it had succeeded."""
    env = prefect_env(services_dir, deployment.api_url)
    client = prefect_client(deployment.api_url)
    cron, log = far_from_now_cron(), services_dir / "lmp-deploy-serve.log"
    with process([str(BIN / "lmp"), "deploy", "--serve", "--name", "served", "--cron", cron,
                  "--timezone", "Europe/Berlin"], log, env=env, cwd=deployment.project) as proc:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(Exception):
                dep = client.read_deployment_by_name("lm-pipeline/served")
                break
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, log.read_text()[-2000:]
    assert "lmp deploy: stopped serving" in log.read_text()
    (schedule,) = [s.schedule for s in dep.schedules]
    assert (schedule.cron, schedule.timezone) == (cron, "Europe/Berlin")
    assert dep.parameters == {"project_dir": str(deployment.project)}


HOLD_LOCK = """
import sys, time
from lm_pipeline.registry import history
with history.registry_lock(sys.argv[1], sys.argv[2]):
    print("acquired", time.time(), flush=True)
    time.sleep(float(sys.argv[3]))
    print("released", time.time(), flush=True)
"""


def hold_champion_lock(uri: str, seconds: float, env: dict) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "python"), "-c", HOLD_LOCK, uri, MODEL_NAME, str(seconds)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stamps(proc: subprocess.Popen) -> dict[str, float]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return {word: float(t) for word, t in (line.split() for line in out.splitlines())}


@pytest.mark.security
def test_champion_moves_serialise_across_machines_through_the_prefect_server(
        prefect_api, mlflow_server, services_dir, tmp_path):
    """Two processes that share no temporary folder (two machines, as far as a file lock can tell)
    and spell the tracking URI differently still take turns: the lock lives on the Prefect server."""
    env = prefect_env(services_dir, prefect_api) | mlflow_server.env()
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = hold_champion_lock(mlflow_server.uri, 4, env | {"TMPDIR": str(tmp_path / "a")})
    assert first.stdout.readline().startswith("acquired")
    second = hold_champion_lock(mlflow_server.uri + "/", 0, env | {"TMPDIR": str(tmp_path / "b")})
    released, acquired = stamps(first)["released"], stamps(second)["acquired"]
    assert acquired >= released, f"second process took the lock {released - acquired:.1f} s early"
    limit = prefect_client(prefect_api).read_global_concurrency_limit_by_name(f"lmp-champion-{MODEL_NAME}")
    assert limit.limit == 1 and limit.active_slots == 0


@pytest.mark.security
def test_each_service_connects_as_its_own_role_to_its_own_databases_only(deployment, postgres, db_roles):
    sessions = postgres.psql("SELECT DISTINCT datname || ':' || usename FROM pg_stat_activity "
                             "WHERE datname IN ('mlflow', 'mlflow_auth', 'prefect')")
    assert set(sessions.split()) == {"mlflow:mlflow", "mlflow_auth:mlflow", "prefect:prefect"}
    assert postgres.psql("SELECT string_agg(rolname, ',') FROM pg_roles WHERE rolsuper") == postgres.user
    for role, own, others in ((db_roles.mlflow, ("mlflow", "mlflow_auth"), ("prefect",)),
                              (db_roles.prefect, ("prefect",), ("mlflow", "mlflow_auth"))):
        assert all(role.psql("SELECT 1", db) == "1" for db in own)
        for db in others:
            refused = role.run_psql(["-c", "SELECT 1"], db, check=False)
            assert refused.returncode != 0, (role.user, db)
            assert "permission denied for database" in refused.stderr


@pytest.mark.security
def test_no_database_password_is_on_a_command_line_or_in_a_temporary_file(
        mlflow_server, prefect_api, postgres, db_roles, server_pids, services_dir):
    passwords = {db_roles.mlflow.password, db_roles.prefect.password, postgres.password,
                 mlflow_server.admin_password}
    pids = [pid for group in server_pids.values() for pid in process_group(group)]
    assert len(pids) >= 3  # each server, and the workers they forked
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert not [p for p in passwords if p in cmdline], f"a password on the command line of {cmdline!r}"
        # ...nor the superuser's in any server's environment: it stays with postgres and its init.
        assert postgres.password.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    # The old start script wrote its configuration, database password included, to /tmp.
    written = [*Path(tempfile.gettempdir()).glob("*"), *services_dir.rglob("*")]
    assert not files_holding(db_roles.mlflow.password, written)


@pytest.mark.security
def test_the_pipeline_user_owns_the_model_it_registered_and_nothing_more(deployment, mlflow_server,
                                                                         monkeypatch):
    from mlflow.server.auth.client import AuthServiceClient

    for key, value in mlflow_server.admin_env().items():
        monkeypatch.setenv(key, value)
    auth = AuthServiceClient(mlflow_server.uri)
    assert not auth.get_user(mlflow_server.username).is_admin
    owned = auth.get_user_permission(mlflow_server.username, "registered_model", MODEL_NAME)
    assert owned.permission == "MANAGE"  # it created the model itself
    import mlflow

    admins_only = mlflow.MlflowClient(mlflow_server.uri).create_experiment("admins-only")
    url = f"{mlflow_server.uri}/api/2.0/mlflow/experiments/get?experiment_id={admins_only}"
    assert http_status(url, "admin", mlflow_server.admin_password) == 200
    assert http_status(url, mlflow_server.username, mlflow_server.password) == 403
    new_user = {"username": "eve", "password": "a-long-enough-password"}
    assert http_status(f"{mlflow_server.uri}/api/2.0/mlflow/users/create", mlflow_server.username,
                       mlflow_server.password, body=new_user) == 403


@pytest.mark.security
def test_the_pipeline_user_gets_edit_on_an_experiment_and_model_it_did_not_create(mlflow_server,
                                                                                 monkeypatch):
    """An install where the pipeline logged as admin: the one-shot grants its user what exists."""
    import mlflow

    for key, value in mlflow_server.admin_env().items():
        monkeypatch.setenv(key, value)
    client = mlflow.MlflowClient(mlflow_server.uri)
    experiment_id = client.create_experiment("made-by-admin")
    client.create_registered_model("made-by-admin")
    for key, value in mlflow_server.env().items():
        monkeypatch.setenv(key, value)
    with pytest.raises(mlflow.exceptions.MlflowException, match="403"):
        client.create_run(experiment_id)
    make_pipeline_user(mlflow_server, "--experiment", "made-by-admin", "--model", "made-by-admin")
    client.create_run(experiment_id)
    client.set_registered_model_tag("made-by-admin", "by", "pipeline")


def files_holding(secret: str, paths: list[Path], max_bytes: int = 1 << 20) -> list[Path]:
    """Those of `paths` that are small readable files containing `secret`."""
    found = []
    for path in paths:
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink() and path.stat().st_size <= max_bytes \
                    and secret.encode() in path.read_bytes():
                found.append(path)
    return found


@pytest.mark.continuous
def test_a_watcher_run_announces_new_drops_and_their_event_starts_a_cycle_on_the_worker(
        deployment, mlflow_server, services_dir):
    """Continuous training as deployed (`lmp deploy --continuous`), last in this module: the
    watcher, run by the worker, announces each new complete drop as an event; the server's trigger
    starts the cycle deployment, whose run checks the drops against the champion on the MLflow
    server. A half-written drop is not announced, and the same drop renamed is not announced again."""
    from tests.unit.continuous.corpora import stdlib_docstrings_left_out

    project, env = deployment.project, prefect_env(services_dir, deployment.api_url)
    params_path = project / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    # Hours between scheduled watcher runs: this test runs it itself. A drift bar that a drop like
    # the corpus stays under whatever the 60-step champion makes of it (tested closely elsewhere).
    params["ct"] |= {"watch_interval_s": 7200, "min_drift_bits_per_byte": 1.0, "drift_documents": 32}
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        corpus = (project / "data/raw/documents.jsonl").read_text().splitlines()[:30]
        write_drop(project / "data/incoming/a-like-the-corpus",
                   [json.dumps({"text": t}) for t in stdlib_docstrings_left_out()])
        write_drop(project / "data/incoming/b-repeats", corpus)
        write_drop(project / "data/incoming/c-half-written", corpus[:5], complete=False)
        lmp_deploy(project, env, "--cron", far_from_now_cron(), "--continuous")
        client = prefect_client(deployment.api_url)
        watcher = client.read_deployment_by_name("lm-ct-watch/watch")
        cycle = client.read_deployment_by_name("lm-continuous-training/on-drop")
        assert [s.schedule.interval.total_seconds() for s in watcher.schedules] == [7200]
        # A watcher run due while one runs is dropped; cycles queue, one at a time.
        assert watcher.concurrency_options.collision_strategy == "CANCEL_NEW"
        assert cycle.concurrency_options.collision_strategy == "ENQUEUE"
        assert cycle.global_concurrency_limit.limit == 1
        (automation,) = client.read_resource_related_automations(f"prefect.deployment.{cycle.id}")
        assert automation.trigger.expect == {"lmp.drop.arrived"}
        worker_env = env | mlflow_server.env() | {"PREFECT_WORKER_QUERY_SECONDS": "2"}
        with process([str(BIN / "prefect"), "worker", "start", "--pool", "lm-pipeline"],
                     services_dir / "prefect-worker-ct.log", env=worker_env, cwd=project):
            assert run_deployment(client, project, env, "lm-ct-watch/watch").is_completed()
            ledger = wait_for_ledger(project, {"a-like-the-corpus", "b-repeats"}, timeout=300)
            announced = json.loads((project / "data/ct/announced.json").read_text())
            assert set(announced) == set(ledger)  # the two complete drops, by digest; not the third
            shutil.copytree(project / "data/incoming/b-repeats", project / "data/incoming/b-renamed")
            assert run_deployment(client, project, env, "lm-ct-watch/watch").is_completed()
            assert json.loads((project / "data/ct/announced.json").read_text()) == announced
            remembered = json.loads((project / "data/ct/digests.json").read_text())  # for its next run
            assert {Path(p).parent.name for p in remembered} == {"a-like-the-corpus", "b-repeats",
                                                                 "b-renamed"}
            runs = wait_for_runs(client, cycle.id, timeout=120)
    finally:
        params_path.write_text(original)
    outcomes = {entry["name"]: entry["outcome"] for entry in ledger.values()}
    assert outcomes == {"a-like-the-corpus": "no_drift", "b-repeats": "quarantined"}, ledger
    like = next(e for e in ledger.values() if e["name"] == "a-like-the-corpus")
    assert isinstance(like["gap"], float)  # the champion, from the MLflow server, scored the drop
    assert runs and all(run.state.is_completed() for run in runs), [run.state for run in runs]
    assert any(run.parameters == {"project_dir": str(project)} for run in runs)


def write_drop(folder: Path, lines: list[str], complete: bool = True) -> None:
    folder.mkdir(parents=True)
    (folder / "part-0.jsonl").write_text("".join(line + "\n" for line in lines))
    if complete:
        (folder / "_SUCCESS").touch()


def run_deployment(client, project: Path, env: dict, name: str):
    """`prefect deployment run`, then the run's final state."""
    out = subprocess.run([str(BIN / "prefect"), "deployment", "run", name], cwd=project, env=env,
                         check=True, capture_output=True, text=True).stdout
    run_id = UUID(out.split("UUID:")[1].split()[0])
    deadline = time.monotonic() + 180
    while not (state := client.read_flow_run(run_id).state).is_final():
        assert time.monotonic() < deadline, f"{name} run still {state.name}"
        time.sleep(1)
    return state


def wait_for_ledger(project: Path, names: set[str], timeout: float) -> dict:
    """The continuous-training ledger once every drop in `names` has an outcome."""
    path, deadline = project / "data/ct/drops.json", time.monotonic() + timeout
    while True:
        ledger = json.loads(path.read_text()) if path.is_file() else {}
        if {e["name"] for e in ledger.values() if "outcome" in e} >= names:
            return ledger
        assert time.monotonic() < deadline, f"no outcome for {names} in {timeout} s: {ledger}"
        time.sleep(1)


def wait_for_runs(client, deployment_id, timeout: float) -> list:
    """The deployment's flow runs, once all of them are final."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout
    only = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    while True:
        runs = client.read_flow_runs(deployment_filter=only)
        if runs and all(run.state.is_final() for run in runs):
            return runs
        assert time.monotonic() < deadline, [run.state for run in runs]
        time.sleep(1)
