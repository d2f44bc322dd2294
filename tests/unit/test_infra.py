"""The deployment manifests parse, describe the same job and keep the security review's rules:
secrets, mounts, users, privileges, object-store reach and image pins (they are not applied here:
no Kubernetes cluster or Docker engine on this machine, so they are checked against the schemas
of compose, Kubernetes and KubeRay instead)."""

import copy
import gzip
import json
import re
import tomllib
from pathlib import Path
from typing import NamedTuple

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
PROJECT_IMAGE = f"lm-pipeline:{VERSION}"  # built from infra/Dockerfile, tagged with the package's version


def pods(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_kuberay_cluster_and_job_share_image_and_storage():
    cluster = yaml.safe_load((INFRA / "kuberay/raycluster.yaml").read_text())
    job = yaml.safe_load((INFRA / "kuberay/rayjob.yaml").read_text())
    assert (cluster["kind"], job["kind"]) == ("RayCluster", "RayJob")
    assert cluster["apiVersion"] == job["apiVersion"] == "ray.io/v1"
    # in the shared volume: the run's relative outputs (model, curves, reports) outlive the head pod
    assert " train" in job["spec"]["entrypoint"]
    assert job["spec"]["entrypoint"].startswith("cd /workspace/shared && lmp ")
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        containers = pods(spec)
        assert {c["image"] for c in containers} == {PROJECT_IMAGE}
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
SERVICES = {"secrets", "postgres", "minio", "minio-setup", "mlflow", "mlflow-user", "prefect-server",
            "prefect-worker", "ray-head", "ray-worker", "serve"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def env_example() -> dict[str, str]:
    lines = (INFRA / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def secret_variables() -> set[str]:
    return {key for key in env_example() if any(word in key for word in SECRET_WORDS)}


def required(variable: str) -> str:
    """A variable as compose reads it from the env file: it refuses to start while it is unset."""
    return f"${{{variable}:?set in the env file}}"


def test_compose_runs_every_service_and_waits_on_health_checks():
    services = compose()
    assert set(services) == SERVICES
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits on {dependency}"
    assert services["mlflow"]["depends_on"]["minio-setup"]["condition"] == "service_completed_successfully"


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
        assert environment[variable] == required(variable)
    assert {"mlflow", "prefect"} <= set(re.findall(r"CREATE ROLE (\w+)", sql))


@pytest.mark.security
def test_the_mlflow_server_writes_no_file_and_puts_no_password_on_a_command_line():
    lines = script_lines(MLFLOW_SERVER)
    assert not [line for line in lines if "/tmp" in line or re.search(r">|\btee\b", line)]
    command = [line for line in lines if line.startswith("exec ")]
    assert command == ['exec mlflow server --app-name basic-auth --host 0.0.0.0 --port 5000 "$@"']
    assert not re.search(r"://\w+:", MLFLOW_SERVER.read_text())  # no user:password@ in a URI
    environment = compose()["mlflow"]["environment"]
    assert environment["PGPASSWORD"] == required("MLFLOW_DB_PASSWORD")
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
        assert environment["MLFLOW_TRACKING_PASSWORD"] == required("MLFLOW_PIPELINE_PASSWORD")
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
                 ".venv/bin/python", "dvc-remote/ab/cd", ".dvc/cache/ab", ".dvc/config.local", "drops/d1/a"):
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
        "admin:" + required("PREFECT_API_PASSWORD")
    worker = services["prefect-worker"]["environment"]
    assert worker["PREFECT_API_AUTH_STRING"] == "admin:${PREFECT_API_PASSWORD}"


@pytest.mark.security
@pytest.mark.parametrize("placeholder", ["POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "PREFECT_DB_PASSWORD",
                                         "MLFLOW_ADMIN_PASSWORD", "MLFLOW_PIPELINE_PASSWORD",
                                         "MINIO_MLFLOW_PASSWORD", "MINIO_PIPELINE_PASSWORD",
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


# Issue 35, the infrastructure findings of the security review.

ENV_FILE = "~/.config/lm-pipeline/infra.env"  # in the operator's home: outside anything a container mounts
CHECKOUT = "/workspace/lm-pipeline"  # the project's directory in every container
# What DVC and the stages write in the checkout: the only paths the worker may write there.
PIPELINE_OUTPUTS = ("data", "models", "checkpoints", "reports", "drops", ".dvc/cache", ".dvc/tmp", "dvc.lock")
# Paths of the checkout each service mounts, and whether it may write them. The code comes from the
# image; the worker runs DVC in the checkout; Ray nodes read the processed data and write checkpoints
# at the paths the driver names; `lmp serve` reads params.yaml.
CHECKOUT_MOUNTS = {
    "prefect-worker": {".": False} | dict.fromkeys(PIPELINE_OUTPUTS, True),
    "ray-head": {"data": False, "checkpoints": True},
    "ray-worker": {"data": False, "checkpoints": True},
    "serve": {"params.yaml": False},
}
# The env file's secrets each service's environment holds; the `secrets` check holds them all.
SECRETS_SEEN = {
    "postgres": {"POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "PREFECT_DB_PASSWORD"},
    "minio": {"MINIO_ROOT_PASSWORD"},
    "minio-setup": {"MINIO_ROOT_PASSWORD", "MINIO_MLFLOW_PASSWORD", "MINIO_PIPELINE_PASSWORD"},
    "mlflow": {"MLFLOW_DB_PASSWORD", "MINIO_MLFLOW_PASSWORD", "MLFLOW_ADMIN_PASSWORD",
               "MLFLOW_FLASK_SERVER_SECRET_KEY"},
    "mlflow-user": {"MLFLOW_ADMIN_PASSWORD", "MLFLOW_PIPELINE_PASSWORD"},
    "prefect-server": {"PREFECT_DB_PASSWORD", "PREFECT_API_PASSWORD"},
    # where corpora are parsed: the pipeline's own MLflow and MinIO users, never an admin or a root
    "prefect-worker": {"PREFECT_API_PASSWORD", "RAY_AUTH_TOKEN", "MLFLOW_PIPELINE_PASSWORD",
                       "MINIO_PIPELINE_PASSWORD"},
    # training (checkpoints and shards may be in MinIO) and Serve replicas (the bearer token)
    **dict.fromkeys(("ray-head", "ray-worker"), {"RAY_AUTH_TOKEN", "MLFLOW_PIPELINE_PASSWORD",
                                                 "MINIO_PIPELINE_PASSWORD", "LMP_SERVE_TOKEN"}),
    "serve": {"RAY_AUTH_TOKEN", "MLFLOW_PIPELINE_PASSWORD", "LMP_SERVE_TOKEN"},
}


class Mount(NamedTuple):
    kind: str  # bind, volume or tmpfs
    source: str | None  # a bind's host path (relative to infra/), a volume's name
    target: str
    writable: bool


def mounts(service: dict) -> list[Mount]:
    """A compose service's mounts, from the short (`src:dst[:ro]`) or the long syntax."""
    found = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source, target, *mode = entry.split(":")
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            found.append(Mount(kind, source, target, "ro" not in mode))
        else:
            writable = not entry.get("read_only")
            found.append(Mount(entry["type"], entry.get("source"), entry["target"], writable))
    return found


def within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def checkout_mounts(service: dict) -> dict[str, bool]:
    """The checkout's paths a service binds (infra/compose's files aside), and whether it may write them."""
    found = {}
    for mount in mounts(service):
        host = (INFRA / mount.source).resolve() if mount.kind == "bind" else None
        if host and within(host, ROOT) and not within(host, INFRA / "compose"):
            path = host.relative_to(ROOT).as_posix()
            assert mount.target == CHECKOUT + ("" if path == "." else f"/{path}"), mount  # the driver's paths
            found[path] = mount.writable
    return found


@pytest.mark.security
def test_the_env_file_lives_outside_the_checkout():
    """Every command that reads the env file names it in the operator's home, so no mount of the
    checkout carries the secrets; a file left at infra/.env is hidden from the one service that
    mounts the checkout's root."""
    readers = (ROOT / "docs/production.md", COMPOSE, INFRA / "README.md", INFRA / "k8s/mlflow.yaml",
               INFRA / ".env.example")
    commands = "".join(path.read_text() for path in readers)
    assert set(re.findall(r"--(?:from-)?env-file[ =]([~$\w./-]+)", commands)) == {ENV_FILE}
    services = compose()
    assert not [name for name, service in services.items() if "env_file" in service]
    for name, service in services.items():
        if "." in checkout_mounts(service):
            assert Mount("tmpfs", None, f"{CHECKOUT}/infra", True) in mounts(service), name


@pytest.mark.security
def test_each_service_mounts_only_what_it_needs_and_code_read_only():
    found = {name: checkout_mounts(service) for name, service in compose().items()}
    assert {name: paths for name, paths in found.items() if paths} == CHECKOUT_MOUNTS
    for name, service in compose().items():
        for mount in mounts(service):
            if mount.kind == "bind" and within((INFRA / mount.source).resolve(), INFRA / "compose"):
                assert not mount.writable, f"{name} may write {mount.source}"


def interpolated(text: str) -> str:
    """A compose file with every `${VAR...}` replaced by a value of the env file's shape."""
    values = env_example()
    return re.sub(r"\$\{(\w+)[^}]*\}", lambda m: values[m.group(1)], text)


@pytest.mark.security
def test_the_compose_file_matches_the_compose_spec():
    """The mounts, users and privileges above are keys compose reads, not keys it would refuse or
    ignore (tests/unit/schemas/README.md says where the schema comes from)."""
    with gzip.open(Path(__file__).parent / "schemas/compose-spec.json.gz") as vendored:
        validator = jsonschema.Draft7Validator(json.load(vendored))
    document = yaml.safe_load(interpolated(COMPOSE.read_text()))
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
    assert not errors, "\n".join(errors)


@pytest.mark.security
def test_each_service_sees_only_the_secrets_it_needs():
    seen = {name: set(re.findall(r"\$\{(\w+)", str(service))) & secret_variables()
            for name, service in compose().items()}
    assert seen == SECRETS_SEEN | {"secrets": secret_variables()}


def dockerfile_user() -> str:
    """The user the project image runs as, its build arguments' defaults substituted."""
    text = (INFRA / "Dockerfile").read_text()
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users, "the image runs as root"
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], users[-1])


def containers_in(node) -> list[dict]:
    """Every container (and init container) anywhere in a manifest."""
    if isinstance(node, list):
        return [c for item in node for c in containers_in(item)]
    if not isinstance(node, dict):
        return []
    own = [*node.get("containers", []), *node.get("initContainers", [])]
    return own + [c for key, value in node.items() if key not in ("containers", "initContainers")
                  for c in containers_in(value)]


def kubernetes_containers() -> dict[str, dict]:
    """The containers of infra/k8s and infra/kuberay, by file and name."""
    paths = sorted((INFRA / "k8s").glob("*.yaml")) + sorted((INFRA / "kuberay").glob("*.yaml"))
    return {f"{path.name}:{container['name']}": container for path in paths
            for document in yaml.safe_load_all(path.read_text()) for container in containers_in(document)}


UNPRIVILEGED = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
# Official images that start as root by their own rule: MinIO's image makes its /data volume root's,
# so the server keeps uid 0, with every capability dropped (it cannot read or write another uid's files).
ROOT_BY_IMAGE = {"minio"}


def unprivileged(security_context: dict) -> bool:
    return {key: security_context.get(key) for key in UNPRIVILEGED} == UNPRIVILEGED


@pytest.mark.security
def test_the_image_runs_as_a_numeric_non_root_user():
    uid, gid = dockerfile_user().split(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) > 0 and int(gid) > 0
    assert "--chown" not in (INFRA / "Dockerfile").read_text()  # the code stays root's: read-only to it


@pytest.mark.security
def test_every_kubernetes_container_runs_unprivileged():
    containers = kubernetes_containers()
    for name, container in containers.items():
        assert unprivileged(container.get("securityContext", {})), name
    # MLflow; the head and workers of the RayCluster, the RayJob (and its submitter) and the RayService
    assert len(containers) == 8, sorted(containers)
    worker = yaml.safe_load((INFRA / "k8s/prefect-worker-values.yaml").read_text())["worker"]
    assert unprivileged(worker["containerSecurityContext"])
    assert worker["podSecurityContext"]["runAsNonRoot"] is True


@pytest.mark.security
def test_compose_services_run_without_root_privileges():
    for name, service in compose().items():
        assert service.get("cap_drop") == ["ALL"] and "cap_add" not in service, name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        if name in ROOT_BY_IMAGE:
            continue
        user = service.get("user") or (dockerfile_user() if service["image"] == PROJECT_IMAGE else "root")
        assert user.split(":")[0] not in ("0", "root"), f"{name} runs as root"


MINIO_POLICIES = INFRA / "compose/minio"
# Each MinIO user's buckets, and what it may do there.
MINIO_REACH = {
    "mlflow": {"mlflow": "read-write"},  # its artifact store: clients reach it through MLflow only
    "pipeline": {"dvc": "read-write", "checkpoints": "read-write", "shards": "read-write", "corpora": "read"},
}
READ_ACTIONS = {"s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"}


def reach(policy: dict) -> dict[str, str]:
    """The buckets a MinIO (IAM) policy opens, read or read-write; anything broader fails here."""
    found = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and set(statement) <= {"Sid", "Effect", "Action", "Resource"}
        actions = set(statement["Action"])
        assert all(re.fullmatch(r"s3:[A-Za-z]+", action) for action in actions), actions  # no s3:*, no admin:
        for resource in statement["Resource"]:
            bucket = re.fullmatch(r"arn:aws:s3:::([a-z0-9-]+)(/\*)?", resource).group(1)
            writes = found.get(bucket) == "read-write" or not actions <= READ_ACTIONS
            found[bucket] = "read-write" if writes else "read"
    return found


@pytest.mark.security
def test_each_minio_user_reaches_only_its_buckets():
    policies = {path.stem: json.loads(path.read_text()) for path in MINIO_POLICIES.glob("*.json")}
    assert {user: reach(policy) for user, policy in policies.items()} == MINIO_REACH
    script = "\n".join(script_lines(MINIO_POLICIES / "setup.sh"))
    made = re.search(r"^mc mb --ignore-existing (.+)$", script, re.M).group(1).split()
    assert set(made) == {f"minio/{bucket}" for buckets in MINIO_REACH.values() for bucket in buckets}
    users = dict(re.findall(r'^user (\w+) "\$(\w+)"$', script, re.M))
    assert users == {user: f"MINIO_{user.upper()}_PASSWORD" for user in MINIO_REACH}
    # each user holds the policy of its name, from the file of that name
    assert 'mc admin policy create minio "$1" "/minio/$1.json"' in script
    assert 'mc admin policy attach minio "$1" --user "$1"' in script


@pytest.mark.security
def test_services_reach_minio_as_their_own_user_never_as_root():
    services = compose()
    keys = {name: (s["environment"]["AWS_ACCESS_KEY_ID"], s["environment"]["AWS_SECRET_ACCESS_KEY"])
            for name, s in services.items() if "AWS_ACCESS_KEY_ID" in s.get("environment", {})}
    pipeline = ("pipeline", required("MINIO_PIPELINE_PASSWORD"))
    assert keys == {"mlflow": ("mlflow", required("MINIO_MLFLOW_PASSWORD")), "prefect-worker": pipeline,
                    "ray-head": pipeline, "ray-worker": pipeline}
    assert Mount("bind", "./compose/minio", "/minio", False) in mounts(services["minio-setup"])
    mlflow_deployment, _ = yaml.safe_load_all((INFRA / "k8s/mlflow.yaml").read_text())
    env = {e["name"]: e for e in mlflow_deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["value"] == "mlflow"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "MINIO_MLFLOW_PASSWORD"


KUBERAY = ("raycluster.yaml", "rayjob.yaml", "rayservice.yaml")
CLUSTER_SPEC = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}


def cluster_spec(manifest: dict) -> dict:
    key = CLUSTER_SPEC[manifest["kind"]]
    return manifest["spec"][key] if key else manifest["spec"]


def mlflow_credentials(container: dict) -> tuple:
    env = {e["name"]: e for e in container.get("env", [])}
    password = env.get("MLFLOW_TRACKING_PASSWORD", {}).get("valueFrom", {}).get("secretKeyRef", {})
    return env.get("MLFLOW_TRACKING_USERNAME", {}).get("value"), tuple(sorted(password.items()))


@pytest.mark.security
@pytest.mark.parametrize("manifest", KUBERAY)
def test_every_ray_pod_holds_the_pipelines_mlflow_credentials_from_the_heads_secret(manifest):
    """Training's rank 0 logs to MLflow from whichever pod it lands on, a worker's as well as the head's."""
    spec = cluster_spec(yaml.safe_load((INFRA / "kuberay" / manifest).read_text()))
    secret = (("key", "MLFLOW_PIPELINE_PASSWORD"), ("name", "lm-pipeline-secrets"))
    assert {mlflow_credentials(c) for c in pods(spec)} == {("pipeline", secret)}


@pytest.mark.security
def test_the_rayjob_ships_no_working_dir():
    """The code is in the image; a working_dir would make Ray package (and upload) whatever the
    folder holds, checkpoints and data included."""
    job = yaml.safe_load((INFRA / "kuberay/rayjob.yaml").read_text())
    assert set(yaml.safe_load(job["spec"]["runtimeEnvYAML"])) == {"env_vars"}


def strict(schema):
    """A CRD's openAPIV3Schema as `kubectl apply --validate=strict` reads it: an unknown field is an
    error, not silently pruned (unless the CRD keeps unknown fields there)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: strict(value) for key, value in schema.items()}
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        closed.setdefault("additionalProperties", False)
    return closed


def kuberay_validator(kind: str) -> jsonschema.Validator:
    """KubeRay's own schema of `kind` (tests/unit/schemas/README.md says where it comes from)."""
    with gzip.open(Path(__file__).parent / "schemas/kuberay-v1.7.0.json.gz") as vendored:
        return jsonschema.Draft4Validator(strict(json.load(vendored)[kind]))


@pytest.mark.security
@pytest.mark.parametrize("manifest", KUBERAY)
def test_kuberay_manifests_match_the_crd_schema(manifest):
    document = yaml.safe_load((INFRA / "kuberay" / manifest).read_text())
    assert document["apiVersion"] == "ray.io/v1"
    validator = kuberay_validator(document["kind"])
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
    assert not errors, "\n".join(errors)
    misspelt = copy.deepcopy(document)
    cluster_spec(misspelt)["headGroupSpec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    assert not validator.is_valid(misspelt)  # a misspelt field fails here, not silently on the cluster


@pytest.mark.security
def test_kubernetes_core_manifests_match_the_api_schema():
    for document in yaml.safe_load_all((INFRA / "k8s/mlflow.yaml").read_text()):
        kubernetes_validate.validate(document, "1.34.0", strict=True)


def images() -> dict[str, str]:
    """Every image the infrastructure runs or builds from, by where it is named."""
    found = {f"docker-compose.yml:{name}": service["image"] for name, service in compose().items()}
    found |= {name: container["image"] for name, container in kubernetes_containers().items()}
    worker = yaml.safe_load((INFRA / "k8s/prefect-worker-values.yaml").read_text())["worker"]["image"]
    found["prefect-worker-values.yaml"] = f"{worker['repository']}:{worker['prefectTag']}"
    bases = re.findall(r"^FROM (\S+)", (INFRA / "Dockerfile").read_text(), re.M)
    return found | {f"Dockerfile:FROM {i}": base for i, base in enumerate(bases)}


IMAGE = re.compile(r"(?P<name>[a-z0-9./-]+):(?P<tag>[\w.-]+)(@sha256:(?P<digest>[0-9a-f]{64}))?")
# A release's own tag: 16.15, 3.11.16-slim-bookworm, RELEASE.2025-09-07T16-13-09Z; never latest or 16.
VERSION_TAG = re.compile(r"(\d+\.\d+(\.\d+)*|RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ)(-[\w.-]+)?")


@pytest.mark.security
def test_every_image_names_an_exact_version():
    for where, image in images().items():
        match = IMAGE.fullmatch(image)
        assert match and VERSION_TAG.fullmatch(match["tag"]), f"{where}: {image} names no exact version"
        if match["name"] == "lm-pipeline":
            assert image == PROJECT_IMAGE, where
    prefect = re.search(r"^prefect==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    assert images()["prefect-worker-values.yaml"].startswith(f"prefecthq/prefect:{prefect}-")  # the server's


@pytest.mark.security
def test_official_images_are_pinned_by_digest():
    """Docker Official Images (no namespace) carry the digest docker-library/repo-info recorded for
    their tag; the others are pinned by the operator (docs/production.md)."""
    official = {where: image for where, image in images().items()
                if "/" not in IMAGE.fullmatch(image)["name"] and not image.startswith("lm-pipeline:")}
    assert len(official) == 3, official  # python (the image's base), postgres, busybox
    assert not [image for image in official.values() if not IMAGE.fullmatch(image)["digest"]]


def test_the_image_creates_every_folder_it_hands_to_its_user():
    """`chown` of a path the build context leaves out (.dockerignore) and no `mkdir` makes stops
    the build."""
    run = re.search(r"RUN mkdir -p ([^\\]+)\\\n && chown -R \S+ (.+)", (INFRA / "Dockerfile").read_text())
    made, owned = set(run[1].split()), set(run[2].split())
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert not {path for path in owned - made if path in ignored}
