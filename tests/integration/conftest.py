"""Fixtures for integration tests: a copy of the project with tiny params, one prepared corpus, one
registered project with its MLflow server and serving application, one Prefect server."""

import contextlib
import copy
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.services import BIN, free_port, mlflow_server, process, stop

ROOT = Path(__file__).resolve().parents[2]
UNVALIDATED = {"validate": {"required": False}}  # modules about training skip the validate stage

# Small enough for a 2-core machine, big enough to learn something (loss well below uniform).
_TINY = {
    "tokenizer": {"vocab_size": 512},
    "model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 32},
    "train": {"num_workers": 2, "cpus_per_worker": 1, "batch_size": 16, "max_steps": 300, "warmup_steps": 10,
              "lr": 0.01, "min_lr": 0.001, "eval_interval": 50, "eval_batches": 2,
              "checkpoint_interval": 150},
    "evaluate": {"bleu_documents": 8, "prompt_tokens": 8, "continuation_tokens": 8},
}


def tiny_params(*changes: dict) -> dict:
    """The tiny params with `changes` merged in, as a fresh copy: a module that changes its params
    changes nobody else's."""
    params = copy.deepcopy(_TINY)
    for change in changes:
        deep_update(params, copy.deepcopy(change))
    return params


def deep_update(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        base[key] = deep_update(base.get(key) or {}, value) if isinstance(value, dict) else value
    return base


def make_project(dest: Path, params: dict, with_results: bool = False) -> Path:
    """A fresh git repository holding the project's files and `params`; `with_results` keeps this
    checkout's committed dvc.lock and reports/ as a clone has them (a run rewrites them)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        ours = rel == "dvc.lock" or rel.startswith("reports/")  # this checkout's run history
        if (ROOT / rel).is_file() and (with_results or not ours):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    merged = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), params)
    (dest / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-qm", "test project"], cwd=dest, check=True)
    return dest


def lmp(project: Path, *args: str) -> str:
    out = subprocess.run([str(BIN / "lmp"), *args], cwd=project, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


# What ingest, validate, filter and preprocess write (params.yaml's paths), none of it naming the
# project's own folder: a copy is what the four stages would write in another project.
CORPUS_OUTPUTS = ("data/raw", "reports/ingest.json", "reports/validation", "data/filtered",
                  "reports/filter", "data/processed")


@pytest.fixture(scope="session")
def prepared_corpus(tmp_path_factory) -> Path:
    """A project whose tiny corpus has been through the four data stages, made once per session:
    pytest-xdist's lanes share their session folder, and the first to come makes it under a lock.
    Modules that train on the built-in corpus copy it (with_prepared_corpus) instead of running
    the stages again; those about the data stages run them."""
    lane_dir = tmp_path_factory.getbasetemp()
    shared = lane_dir.parent if os.environ.get("PYTEST_XDIST_WORKER") else lane_dir
    root = shared / "prepared-corpus"
    with open(shared / "prepared-corpus.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (root / "complete").exists():
            shutil.rmtree(root, ignore_errors=True)  # a lane that failed half-way
            root.mkdir()
            make_project(root, tiny_params())
            for stage in ("ingest", "validate", "filter", "preprocess"):
                lmp(root, "-q", stage)
            (root / "complete").touch()
    return root


def with_prepared_corpus(project: Path, corpus: Path) -> Path:
    """`project` with the outputs of the data stages copied from `corpus` (prepared_corpus)."""
    for rel in CORPUS_OUTPUTS:
        copy_out = shutil.copytree if (corpus / rel).is_dir() else shutil.copy2  # not `copy`: the module
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        copy_out(corpus / rel, project / rel)
    return project


def train_and_register(project: Path, max_steps: int, **register) -> dict:
    """One worker, so in the `lmp train` process: what is tested with these is the registry and
    serving, and Ray's start-up would be most of each run's time. `register` sets register.* for
    this registration only."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(max_steps=max_steps, checkpoint_interval=max_steps, eval_interval=max_steps,
                           num_workers=1)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with_register = params | {"register": params["register"] | register}
    (project / "params-register.yaml").write_text(yaml.safe_dump(with_register, sort_keys=False))
    for stage in ("train", "evaluate"):
        lmp(project, "-q", stage)
    lmp(project, "-q", "--params", "params-register.yaml", "register")
    return json.loads((project / "reports/registry.json").read_text())


@pytest.fixture(scope="session")
def registered_project(tmp_path_factory, prepared_corpus):
    """Three registrations: a champion, a worse model, a better model that must also not forget
    (decisions.json holds the three decisions). Shared by the registry, serving and continuous
    modules, which run on one lane (tests/conftest.py), in that order."""
    root = with_prepared_corpus(make_project(tmp_path_factory.mktemp("registry"), tiny_params()),
                                prepared_corpus)
    decisions = [train_and_register(root, 60), train_and_register(root, 11),  # warmup is 10 steps
                 # the better one also guarded on the corpus's test split (continuous training's guard)
                 train_and_register(root, 200, guard_documents=str(root / "data/filtered/documents.jsonl"))]
    root.joinpath("decisions.json").write_text(json.dumps(decisions))
    return root


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@dataclass(frozen=True)
class TwoNodes:
    address: str
    caches: tuple[Path, Path]  # each node's processed-data cache (LMP_SHARDS_CACHE)
    process_groups: tuple[int, int]  # each node's daemons and workers (its `ray start`'s session)


@contextlib.contextmanager
def two_ray_nodes(env: dict[str, str]) -> Iterator[TwoNodes]:
    """A real Ray cluster of two nodes on this machine, one CPU each, each with its own cache
    folder for processed data, so that nothing but `env`'s services is shared between them.

    Each node starts in a session of its own and is stopped by killing that session's process
    group: `ray stop` would stop every Ray on the machine, the other test lane's included."""
    ray = str(Path(sys.executable).parent / "ray")
    port = str(free_port())
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"} | env
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay short
    caches = (temp_dir / "cache-head", temp_dir / "cache-other")
    nodes = [["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}"],
             [f"--address=127.0.0.1:{port}"]]
    groups = []
    try:
        for args, cache in zip(nodes, caches, strict=True):
            start_ray_node([ray, "start", *args, "--num-cpus=1"], env | {"LMP_SHARDS_CACHE": str(cache)},
                           groups)
        yield TwoNodes(f"127.0.0.1:{port}", caches, tuple(groups))
    finally:
        for group in reversed(groups):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


def start_ray_node(cmd: list[str], env: dict[str, str], groups: list[int]) -> None:
    """`ray start` in a new session, whose process group (its daemons keep it) joins `groups`
    before the start can fail: a `ray start` that fails half-way (a start-up deadline missed
    under load) leaves daemons behind, which took CPU from every later test of the session."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    groups.append(proc.pid)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out


def ray_processes(pattern: str, *process_groups: int) -> list[int]:
    """Pids of the Ray workers whose command line starts with `pattern`, of the raylets in
    `process_groups` (a worker takes a process group of its own; its raylet stays in its node's)."""
    def pgrep(*args: str) -> list[str]:
        return subprocess.run(["pgrep", *args], capture_output=True, text=True).stdout.split()

    raylets = pgrep("-g", ",".join(map(str, process_groups)), "-f", "/raylet/raylet ")
    return [int(pid) for pid in pgrep("-P", ",".join(raylets), "-f", f"^{pattern}")] if raylets else []


@pytest.fixture(scope="module")
def two_node_cluster() -> Iterator[TwoNodes]:
    """One two-node cluster for a module's tests that only run jobs on it."""
    with two_ray_nodes({}) as nodes:
        yield nodes


class Endpoint:
    """An `lmp serve` application as its clients see it: its URL and bearer token."""

    def __init__(self, url: str, token: str, project: Path, log: Path, proc: subprocess.Popen | None = None):
        self.url, self.token, self.project, self.log, self.proc = url, token, project, log, proc

    def stop(self) -> None:
        if self.proc:
            stop(self.proc)

    def client(self, **options):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=self.token, **({"max_retries": 0} | options))

    def post(self, path: str, body: bytes | dict, token: str | None = None) -> tuple[int, dict, dict]:
        """(status, JSON body, headers) of a raw request: what any HTTP client gets."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read()), dict(response.headers)
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read()), dict(err.headers)

    def served(self) -> str:
        return self.client().models.list().data[0].id

    def stats(self) -> dict:
        with urllib.request.urlopen(urllib.request.Request(
                f"{self.url}/stats", headers={"Authorization": f"Bearer {self.token}"}), timeout=30) as r:
            return json.loads(r.read())


def wait_for(condition, timeout: float = 60, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not hold within {timeout} s"
        time.sleep(0.5)


@pytest.fixture(scope="session")
def registry_server(registered_project, tmp_path_factory) -> Iterator[str]:
    """A real MLflow server over the registry's project's store (the tests read the same SQLite
    file), as a team shares one: the endpoint follows the champion through it, and continuous
    training's stages and canary log through it."""
    log = tmp_path_factory.mktemp("registry-server") / "mlflow.log"
    with mlflow_server(f"sqlite:///{registered_project / 'mlflow.db'}", log, "--no-serve-artifacts",
                       "--default-artifact-root", str(registered_project / "mlartifacts"),
                       cwd=registered_project) as url:
        yield url


@pytest.fixture(scope="session")
def endpoint(registered_project, registry_server, tmp_path_factory) -> Iterator[Endpoint]:
    """`lmp serve` on the registry's project, following its champion through the registry server
    (two replicas, a bearer token): one application for the serving and continuous modules, which
    run on the registry's lane in that order (tests/conftest.py); the continuous module stops it."""
    project, port, token = registered_project, free_port(), secrets.token_urlsafe(16)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["mlflow"]["tracking_uri"] = registry_server
    params["serve"] |= {"port": port, "replicas": 2, "cpus_per_replica": 0.5, "max_tokens": 32,
                        "follow_interval_s": 1.0, "log_interval_s": 2.0}
    (project / "serve.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = os.environ | {"LMP_SERVE_TOKEN": token}
    url = f"http://127.0.0.1:{port}"
    with process([str(BIN / "lmp"), "--params", "serve.yaml", "serve"], log, env=env, cwd=project,
                 ready_url=f"{url}/health", timeout=240) as proc:
        server = Endpoint(url, token, project, log, proc)
        wait_for(lambda: len(replica_pids(server)) == 2, 120, "two replicas answering")
        yield server


def replica_pids(endpoint: Endpoint, calls: int = 12) -> set[int]:
    return {endpoint.stats()["pid"] for _ in range(calls)}
