"""The deployment manifests parse and describe the same job (they are not applied here: no
Kubernetes cluster or Docker engine on this machine)."""

import re
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"


def pods(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_kuberay_cluster_and_job_share_image_and_storage():
    cluster = yaml.safe_load((INFRA / "kuberay/raycluster.yaml").read_text())
    job = yaml.safe_load((INFRA / "kuberay/rayjob.yaml").read_text())
    assert (cluster["kind"], job["kind"]) == ("RayCluster", "RayJob")
    assert cluster["apiVersion"] == job["apiVersion"] == "ray.io/v1"
    assert " train" in job["spec"]["entrypoint"] and job["spec"]["entrypoint"].startswith("lmp ")
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        containers = pods(spec)
        assert {c["image"] for c in containers} == {"lm-pipeline:latest"}
        assert all(m["mountPath"] == "/workspace/shared" for c in containers for m in c["volumeMounts"])
        assert sum(g["replicas"] for g in spec["workerGroupSpecs"]) >= 2


def test_cluster_launcher_starts_head_and_workers_from_the_project_env():
    launcher = yaml.safe_load((INFRA / "ray/cluster.yaml").read_text())
    assert launcher["provider"]["type"] == "local"
    assert any("--head" in c for c in launcher["head_start_ray_commands"])
    assert any("--address" in c for c in launcher["worker_start_ray_commands"])
    assert len(launcher["provider"]["worker_ips"]) == launcher["max_workers"]


COMPOSE = INFRA / "docker-compose.yml"
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN")
SERVICES = {"secrets", "postgres", "minio", "buckets", "mlflow", "mlflow-user", "prefect-server",
            "prefect-worker", "ray-head", "ray-worker", "serve"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def env_example() -> dict[str, str]:
    lines = (INFRA / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_compose_runs_every_service_and_waits_on_health_checks():
    services = compose()
    assert set(services) == SERVICES
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits on {dependency}"
    assert services["mlflow"]["depends_on"]["buckets"]["condition"] == "service_completed_successfully"


def test_compose_takes_every_secret_from_the_env_file():
    text = COMPOSE.read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    assert used <= set(env_example()), used - set(env_example())
    for service in compose().values():
        environment = service.get("environment", {})
        for key, value in environment.items():
            if any(word in key for word in SECRET_WORDS):
                assert str(value).startswith("${"), f"{key} is written into the compose file"
    assert all(value.startswith("change-me") or not any(w in key for w in SECRET_WORDS)
               for key, value in env_example().items())
    assert "/infra/.env" in (INFRA.parent / ".gitignore").read_text().splitlines()


def test_compose_clients_point_at_the_servers_ports():
    services = compose()
    worker = services["prefect-worker"]["environment"]
    assert worker["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    prefect_port = flag(services["prefect-server"], "--port")
    assert worker["PREFECT_API_URL"] == f"http://prefect-server:{prefect_port}/api"
    assert worker["RAY_ADDRESS"] == "ray-head:" + flag(services["ray-head"], "--port")
    assert "--app-name basic-auth" in (INFRA / "compose/mlflow-server.sh").read_text()
    assert "--pool lm-pipeline" in " ".join(services["prefect-worker"]["command"])
    assert {db for _, db in database_urls()} == set(database_owners())


INIT_SQL = INFRA / "compose/postgres-init.sql"
MLFLOW_SERVER = INFRA / "compose/mlflow-server.sh"


def database_owners() -> dict[str, str]:
    """Each database the init script creates, and the role that owns it."""
    return dict(re.findall(r"CREATE DATABASE (\w+) OWNER (\w+);", INIT_SQL.read_text()))


def database_urls() -> list[tuple[str, str]]:
    """(role, database) of every PostgreSQL URL the services connect with."""
    text = COMPOSE.read_text() + MLFLOW_SERVER.read_text() + (INFRA / "compose/mlflow-auth.ini").read_text()
    return re.findall(r"postgresql(?:\+\w+)?://(\w+)(?::[^@\n]*)?@[\w:.-]*/(\w+)", text)


def script_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.security
def test_each_service_connects_as_its_own_role_owning_its_databases():
    superuser = compose()["postgres"]["environment"]["POSTGRES_USER"]
    owners, urls = database_owners(), database_urls()
    assert len(urls) == 3 and superuser not in {role for role, _ in urls}
    assert all(owners[db] == role for role, db in urls), (urls, owners)
    assert len({role for role, _ in urls}) == 2  # MLflow's and Prefect's
    holders = {name for name, s in compose().items() if "${POSTGRES_PASSWORD" in str(s.get("environment"))}
    assert holders == {"secrets", "postgres"}  # the superuser's password: postgres and its init only
    sql = INIT_SQL.read_text()
    assert f"REVOKE ALL ON DATABASE {', '.join(owners)} FROM PUBLIC;" in sql
    # Each role's password comes from the postgres service's environment, quoted by psql as a literal.
    environment = compose()["postgres"]["environment"]
    for role, variable in re.findall(r"\\getenv (\w+)_password (\w+)", sql):
        assert f"CREATE ROLE {role} LOGIN PASSWORD :'{role}_password';" in sql
        assert environment[variable] == f"${{{variable}:?set in infra/.env}}"
    assert {"mlflow", "prefect"} <= set(re.findall(r"CREATE ROLE (\w+)", sql))


@pytest.mark.security
def test_the_mlflow_server_writes_no_file_and_puts_no_password_on_a_command_line():
    lines = script_lines(MLFLOW_SERVER)
    assert not [line for line in lines if "/tmp" in line or re.search(r">|\btee\b", line)]
    command = [line for line in lines if line.startswith("exec ")]
    assert command == ['exec mlflow server --app-name basic-auth --host 0.0.0.0 --port 5000 "$@"']
    assert not re.search(r"://\w+:", MLFLOW_SERVER.read_text())  # no user:password@ in a URI
    environment = compose()["mlflow"]["environment"]
    assert environment["PGPASSWORD"] == "${MLFLOW_DB_PASSWORD:?set in infra/.env}"
    assert "POSTGRES_PASSWORD" not in environment
    mlflow_deployment, _ = yaml.safe_load_all((INFRA / "k8s/mlflow.yaml").read_text())
    env = {e["name"]: e for e in mlflow_deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "MLFLOW_DB_PASSWORD"
    assert "POSTGRES_PASSWORD" not in env


@pytest.mark.security
def test_the_pipeline_logs_to_mlflow_as_its_own_user_not_admin():
    services = compose()
    for name in ("prefect-worker", "ray-head", "ray-worker"):
        environment = services[name]["environment"]
        assert environment["MLFLOW_TRACKING_USERNAME"] == "pipeline", name
        assert environment["MLFLOW_TRACKING_PASSWORD"] == "${MLFLOW_PIPELINE_PASSWORD:?set in infra/.env}"
    # The admin's password reaches the server, the one-shot that makes the user, and the check only.
    holders = {name for name, s in services.items() if "${MLFLOW_ADMIN_PASSWORD" in str(s.get("environment"))}
    assert holders == {"secrets", "mlflow", "mlflow-user"}
    one_shot = services["mlflow-user"]
    assert one_shot["command"][:2] == ["python", "infra/compose/mlflow-pipeline-user.py"]
    worker_waits_for = services["prefect-worker"]["depends_on"]["mlflow-user"]["condition"]
    assert worker_waits_for == "service_completed_successfully"
    auth = (INFRA / "compose/mlflow-auth.ini").read_text()
    assert re.search(r"^default_permission = (NO_PERMISSIONS|READ)$", auth, re.M)
    job = yaml.safe_load((INFRA / "kuberay/rayjob.yaml").read_text())  # the same on KubeRay
    env = {e["name"]: e for c in pods(job["spec"]["rayClusterSpec"]) for e in c.get("env", [])}
    assert env["MLFLOW_TRACKING_USERNAME"]["value"] == "pipeline"
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "MLFLOW_PIPELINE_PASSWORD"


def test_the_production_docs_name_the_published_ports():
    readme = (INFRA.parent / "docs/production.md").read_text()
    published = {int(p.split(":")[-2]) for s in compose().values() for p in s.get("ports", [])}
    documented = {int(p) for p in re.findall(r"http://localhost:(\d+)", readme)}
    assert published == documented


def test_kubernetes_manifests_agree_on_service_names_and_secrets():
    mlflow_deployment, mlflow_service = yaml.safe_load_all((INFRA / "k8s/mlflow.yaml").read_text())
    port = mlflow_service["spec"]["ports"][0]["port"]
    container = mlflow_deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == port
    job = yaml.safe_load((INFRA / "kuberay/rayjob.yaml").read_text())
    namespace = mlflow_service["metadata"]["namespace"]
    assert job["metadata"]["namespace"] == namespace
    assert (f"MLFLOW_TRACKING_URI: http://{mlflow_service['metadata']['name']}.{namespace}.svc:{port}"
            in job["spec"]["runtimeEnvYAML"])
    secret_keys = {ref["valueFrom"]["secretKeyRef"]["key"]
                   for c in [container, *pods(job["spec"]["rayClusterSpec"])]
                   for ref in c.get("env", []) if "valueFrom" in ref}
    assert secret_keys and secret_keys <= set(env_example())
    worker = yaml.safe_load((INFRA / "k8s/prefect-worker-values.yaml").read_text())["worker"]
    assert worker["config"]["type"] == "kubernetes"
    assert worker["selfHostedServerApiConfig"]["apiUrl"].endswith(f".{namespace}.svc:4200/api")


def flag(service: dict, name: str) -> str:
    """The value of `--name value` or `--name=value` in a service's command."""
    command = service["command"]
    for i, arg in enumerate(command):
        if arg == name:
            return command[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise KeyError(name)


def ignored(pattern_lines: list[str], path: str) -> bool:
    """Docker's .dockerignore rule, for the simple patterns used here: the last match wins."""
    import fnmatch

    result = False
    for line in pattern_lines:
        negate, pattern = line.startswith("!"), line.lstrip("!").strip("/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*"):
            result = not negate
    return result


@pytest.mark.security
def test_the_image_holds_no_secret_checkout_history_or_data():
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert "COPY . ." in dockerfile  # so the build context is what .dockerignore leaves
    rules = [line.strip() for line in (INFRA.parent / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    for path in ("infra/.env", ".env", ".git/config", "mlflow.db", "data/raw/documents.jsonl",
                 "models/model/model.safetensors", "checkpoints/train-1/x", "mlartifacts/1/a", "mlruns/0/x",
                 ".venv/bin/python", "dvc-remote/ab/cd", ".dvc/cache/ab", ".dvc/config.local"):
        assert ignored(rules, path), f"{path} would be baked into the image"
    for path in ("lm_pipeline/cli.py", "lm_pipeline/flows/pipeline.py", "infra/compose/mlflow-server.sh",
                 "dvc.yaml", "params.yaml", "pyproject.toml"):
        assert not ignored(rules, path), f"{path} is needed in the image"


@pytest.mark.security
def test_published_ports_bind_loopback_unless_asked():
    for name, service in compose().items():
        for port in service.get("ports", []):
            assert port.startswith("${LMP_BIND_ADDRESS:-127.0.0.1}:"), f"{name} publishes {port} everywhere"


@pytest.mark.security
def test_the_prefect_api_asks_for_credentials():
    services = compose()
    assert services["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"] == \
        "admin:${PREFECT_API_PASSWORD:?set in infra/.env}"
    worker = services["prefect-worker"]["environment"]
    assert worker["PREFECT_API_AUTH_STRING"] == "admin:${PREFECT_API_PASSWORD}"


@pytest.mark.security
@pytest.mark.parametrize("placeholder", ["POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "PREFECT_DB_PASSWORD",
                                         "MLFLOW_ADMIN_PASSWORD", "MLFLOW_PIPELINE_PASSWORD",
                                         "RAY_AUTH_TOKEN", "PREFECT_API_PASSWORD"])
def test_start_up_refuses_placeholder_secrets(placeholder):
    import subprocess

    real = {key: "s3cret-" + "x" * 20 for key in env_example() if any(w in key for w in SECRET_WORDS)}
    script = ["sh", str(INFRA / "compose/check-secrets.sh")]
    assert subprocess.run(script, env=real, capture_output=True).returncode == 0
    proc = subprocess.run(script, env=real | {placeholder: env_example()[placeholder]},
                          capture_output=True, text=True)
    assert proc.returncode == 1 and f"{placeholder} is still the placeholder" in proc.stderr
    services = compose()
    roots = [n for n, s in services.items() if n != "secrets" and not s.get("depends_on")]
    assert not roots, f"{roots} start without the secrets check"
    assert services["secrets"]["environment"].keys() >= real.keys()


@pytest.mark.security
def test_the_rayservice_runs_lmp_serves_application_with_its_token_from_a_secret():
    import importlib

    from lm_pipeline.serving.app import Settings

    service = yaml.safe_load((INFRA / "kuberay/rayservice.yaml").read_text())
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    module, name = app["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), name))
    shape = ("replicas", "cpus_per_replica", "max_queued_requests")
    Settings(**{k: v for k, v in app["args"].items() if k not in shape})  # every other arg is a setting
    cluster = service["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    for pod in pods:
        env = {e["name"]: e for e in pod["template"]["spec"]["containers"][0]["env"]}
        assert "secretKeyRef" in env["LMP_SERVE_TOKEN"]["valueFrom"]  # never a value in the file
    assert config["http_options"]["host"] == "0.0.0.0"  # hence the token
