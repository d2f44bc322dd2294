"""Production mode on loopback: PostgreSQL, an MLflow server with basic-auth, a Prefect server and a
process worker, and one deployment of the pipeline triggered twice at once.

Everything is started once per test session (a few seconds each, the pipeline run about a minute)."""

from __future__ import annotations

import copy
import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import TINY_PARAMS, deep_update, make_project
from tests.services import BIN, Postgres, free_port, postgres_server, process

PARAMS = deep_update(copy.deepcopy(TINY_PARAMS),
                     {"train": {"max_steps": 60, "eval_interval": 20, "checkpoint_interval": 60}})
MODEL_NAME = "lm-pipeline"


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    username: str
    password: str

    def env(self) -> dict[str, str]:
        """What a client needs, all of it from the environment."""
        return {"MLFLOW_TRACKING_URI": self.uri, "MLFLOW_TRACKING_USERNAME": self.username,
                "MLFLOW_TRACKING_PASSWORD": self.password}


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
def mlflow_server(postgres, services_dir) -> MlflowServer:
    """`mlflow server --app-name basic-auth` on PostgreSQL, artifacts proxied to a local folder."""
    postgres.create_database("mlflow")
    postgres.create_database("mlflow_auth")
    auth_config = services_dir / "basic_auth.ini"
    auth_config.write_text(
        "[mlflow]\ndefault_permission = READ\nadmin_username = admin\n"
        f"database_uri = {postgres.url('mlflow_auth')}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    server = MlflowServer(f"http://127.0.0.1:{free_port()}", "admin", secrets.token_urlsafe(18))
    env = os.environ | {"MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
                        "MLFLOW_AUTH_ADMIN_PASSWORD": server.password,
                        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    cmd = [str(BIN / "mlflow"), "server", "--app-name", "basic-auth",
           "--backend-store-uri", postgres.url("mlflow"),
           "--artifacts-destination", str(services_dir / "mlflow-artifacts"),
           "--host", "127.0.0.1", "--port", server.uri.rsplit(":", 1)[1], "--workers", "1"]
    with process(cmd, services_dir / "mlflow.log", env=env, ready_url=f"{server.uri}/health"):
        yield server


@pytest.fixture(scope="session")
def prefect_api(postgres, services_dir) -> str:
    """`prefect server start` on PostgreSQL."""
    postgres.create_database("prefect")
    port = free_port()
    env = prefect_env(services_dir) | {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": postgres.url("prefect", "postgresql+asyncpg"),
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "3"}
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    api_url = f"http://127.0.0.1:{port}/api"
    with process(cmd, services_dir / "prefect-server.log", env=env, ready_url=f"{api_url}/health"):
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
    """`lmp deploy`, a worker with the MLflow credentials in its environment, and two runs
    triggered back to back with `prefect deployment run`; returns once both have finished."""
    project = make_project(tmp_path_factory.mktemp("deployed"), PARAMS)
    env = prefect_env(services_dir, prefect_api)
    lmp_deploy(project, env, "--cron", far_from_now_cron())
    client = prefect_client(prefect_api)
    deployment_id = str(client.read_deployment_by_name("lm-pipeline/nightly").id)
    worker_env = env | mlflow_server.env() | {"PREFECT_WORKER_QUERY_SECONDS": "2"}
    with process([str(BIN / "prefect"), "worker", "start", "--pool", "lm-pipeline"],
                 services_dir / "prefect-worker.log", env=worker_env, cwd=project):
        run_ids = tuple(trigger(project, env) for _ in range(2))
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
