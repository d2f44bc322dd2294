"""Production mode on loopback: PostgreSQL, an MLflow server with basic-auth, a Prefect server and a
process worker, and one deployment of the pipeline triggered twice at once.

The servers are set up with what infra/ ships: the database roles from compose/postgres-init.sql,
MLflow from compose/mlflow-server.sh and the pipeline's MLflow user from compose/mlflow-pipeline-user.py;
MLflow and Prefect each connect as their own role, the worker as the MLflow user `pipeline`. MLflow
proxies artifacts to the bucket `mlflow` of a real S3 server (moto's, standing in for MinIO).

Everything is started once per test session (a few seconds each, the pipeline run about a minute)."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import make_project, tiny_params
from tests.services import BIN, Postgres, free_port, postgres_server, process

INFRA = Path(__file__).resolve().parents[2] / "infra"

PARAMS = tiny_params({"train": {"max_steps": 60, "eval_interval": 20, "checkpoint_interval": 60}})
MODEL_NAME = "lm-pipeline"


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    username: str  # the pipeline's user, no admin: what the worker gets
    password: str
    admin_password: str

    def env(self) -> dict[str, str]:
        """What a client needs, all of it from the environment."""
        return {"MLFLOW_TRACKING_URI": self.uri, "MLFLOW_TRACKING_USERNAME": self.username,
                "MLFLOW_TRACKING_PASSWORD": self.password}

    def admin_env(self) -> dict[str, str]:
        return self.env() | {"MLFLOW_TRACKING_USERNAME": "admin",
                             "MLFLOW_TRACKING_PASSWORD": self.admin_password}


@dataclass(frozen=True)
class DatabaseRoles:
    mlflow: Postgres
    prefect: Postgres


@dataclass(frozen=True)
class Deployment:
    project: Path
    api_url: str
    deployment_id: str
    flow_run_ids: tuple[str, str]


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def postgres() -> Postgres:
    with postgres_server() as db:
        yield db


@pytest.fixture(scope="session")
def db_roles(postgres) -> DatabaseRoles:
    """The roles `mlflow` and `prefect` and their databases, made by the script compose's postgres
    runs on first start. The passwords hold quotes and a backslash: the script must quote them."""
    roles = DatabaseRoles(postgres.as_role("mlflow", secrets.token_urlsafe(12) + "'; --\\"),
                          postgres.as_role("prefect", secrets.token_urlsafe(12) + "\"'@/"))
    postgres.run_psql(["-f", str(INFRA / "compose/postgres-init.sql")],
                      env={"MLFLOW_DB_PASSWORD": roles.mlflow.password,
                           "PREFECT_DB_PASSWORD": roles.prefect.password})
    return roles


@pytest.fixture(scope="session")
def server_pids() -> dict[str, int]:
    """The process group of each server, by name, as the fixtures below start them."""
    return {}


@pytest.fixture(scope="session")
def mlflow_server(postgres, db_roles, services_dir, server_pids, s3) -> MlflowServer:
    """infra/compose/mlflow-server.sh (`mlflow server --app-name basic-auth` on PostgreSQL as the role
    `mlflow`), artifacts proxied to the S3 bucket `mlflow` as compose's `mlflow` service does (the
    S3 credentials only in the server's environment), then the pipeline's user made as compose does."""
    port = free_port()
    admin_password = secrets.token_urlsafe(18)
    # As compose's service `mlflow`, with the test cluster's and the S3 server's addresses.
    env = os.environ | s3.env() | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                        "PGHOST": postgres.host, "PGPORT": str(postgres.port),
                        "PGPASSWORD": db_roles.mlflow.password,
                        "MLFLOW_ARTIFACTS_DESTINATION": "s3://mlflow/",
                        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
                        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    cmd = ["sh", str(INFRA / "compose/mlflow-server.sh"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    uri = f"http://127.0.0.1:{port}"
    with process(cmd, services_dir / "mlflow.log", env=env, ready_url=f"{uri}/health") as proc:
        server_pids["mlflow"] = proc.pid
        server = MlflowServer(uri, "pipeline", secrets.token_urlsafe(18), admin_password)
        make_pipeline_user(server)
        yield server


def make_pipeline_user(server: MlflowServer, *args: str) -> None:
    """infra/compose/mlflow-pipeline-user.py, as compose's one-shot `mlflow-user` runs it."""
    env = os.environ | server.admin_env() | {"MLFLOW_PIPELINE_PASSWORD": server.password}
    proc = subprocess.run([str(BIN / "python"), str(INFRA / "compose/mlflow-pipeline-user.py"), *args],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def prefect_api(db_roles, services_dir, server_pids) -> str:
    """`prefect server start` on PostgreSQL as the role `prefect`."""
    port = free_port()
    env = prefect_env(services_dir) | {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": db_roles.prefect.url("prefect", "postgresql+asyncpg"),
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "3"}
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    api_url = f"http://127.0.0.1:{port}/api"
    with process(cmd, services_dir / "prefect-server.log", env=env, ready_url=f"{api_url}/health") as proc:
        server_pids["prefect"] = proc.pid
        yield api_url


def prefect_env(services_dir: Path, api_url: str | None = None) -> dict[str, str]:
    env = os.environ | {"PREFECT_HOME": str(services_dir / "prefect-home"),
                        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "INFO"}
    return env | ({"PREFECT_API_URL": api_url} if api_url else {})


def prefect_client(api_url: str):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api=api_url)


@pytest.fixture(scope="session")
def deployment(tmp_path_factory, services_dir, prefect_api, mlflow_server) -> Deployment:
    """`lmp deploy`, two runs triggered back to back with `prefect deployment run`, then a worker
    with the MLflow credentials in its environment; returns once both runs have finished. Both
    are waiting when the worker first looks, so it takes both at once and the second must wait
    for the concurrency slot (triggered while the worker runs, under load, the second could
    arrive after the worker's poll and be held back by the server instead)."""
    project = make_project(tmp_path_factory.mktemp("deployed"), PARAMS)
    env = prefect_env(services_dir, prefect_api)
    lmp_deploy(project, env, "--cron", far_from_now_cron())
    client = prefect_client(prefect_api)
    deployment_id = str(client.read_deployment_by_name("lm-pipeline/nightly").id)
    worker_env = env | mlflow_server.env() | {"PREFECT_WORKER_QUERY_SECONDS": "2"}
    run_ids = tuple(trigger(project, env) for _ in range(2))
    with process([str(BIN / "prefect"), "worker", "start", "--pool", "lm-pipeline"],
                 services_dir / "prefect-worker.log", env=worker_env, cwd=project):
        wait_for_final_states(client, run_ids, timeout=600)
    return Deployment(project, prefect_api, deployment_id, run_ids)


def lmp_deploy(project: Path, env: dict, *args: str) -> None:
    proc = subprocess.run([str(BIN / "lmp"), "deploy", *args], cwd=project, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def far_from_now_cron() -> str:
    """A daily schedule 12 hours away, so it never fires during the test."""
    hour = (time.gmtime().tm_hour + 12) % 24
    return f"0 {hour} * * *"


def trigger(project: Path, env: dict) -> str:
    out = subprocess.run([str(BIN / "prefect"), "deployment", "run", "lm-pipeline/nightly"],
                         cwd=project, env=env, check=True, capture_output=True, text=True).stdout
    return out.split("UUID:")[1].split()[0]


def wait_for_final_states(client, run_ids, timeout: float) -> None:
    from uuid import UUID

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(client.read_flow_run(UUID(rid)).state.is_final() for rid in run_ids):
            return
        time.sleep(2)
    raise TimeoutError(f"flow runs {run_ids} did not finish in {timeout} s")
