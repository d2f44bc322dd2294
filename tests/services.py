"""Real servers as processes on loopback for the tests: any command started and waited on until it
answers, and a throwaway PostgreSQL cluster (the production tests' MLflow and Prefect backend); and
torch ranks spawned with a deadline."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


def spawn(fn, args: tuple, nprocs: int, deadline_s: float = 180) -> None:
    """torch's mp.spawn with a deadline: a hung rank fails the test instead of stalling the suite."""
    import pytest
    import torch.multiprocessing as mp

    context = mp.spawn(fn, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + deadline_s
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in context.processes:
                proc.kill()
            pytest.fail(f"{fn.__name__} ranks still running after {deadline_s:.0f} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def process(cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None,
            ready_url: str | None = None, timeout: float = 120) -> Iterator[subprocess.Popen]:
    """Run `cmd` in its own process group until the block ends; wait for `ready_url` to answer."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
    try:
        if ready_url:
            wait_until_up(ready_url, proc, log, timeout)
        yield proc
    finally:
        stop(proc)


@contextlib.contextmanager
def mlflow_server(store: str, log: Path, *artifacts: str, cwd: Path | None = None) -> Iterator[str]:
    """`mlflow server` on the backend `store` and a loopback port, one worker; yields its URL.
    `artifacts`: its artifact options. Its job runner is off, as infra's server has it (MLflow's
    GenAI jobs, which the pipeline never runs: eight more processes, 35 CPU-seconds each start)."""
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", store, *artifacts,
           "-h", "127.0.0.1", "-p", str(port), "--workers", "1"]
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with process(cmd, log, env=env, cwd=cwd, ready_url=f"http://127.0.0.1:{port}/health"):
        yield f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM to the process, as a container runtime sends it, then SIGKILL to its group for what
    it left behind. Not SIGTERM to the group: `lmp serve` whose Ray daemons got it too waits on
    them until killed (20 s a test)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=2)
            return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@dataclass(frozen=True)
class S3Server:
    """An S3 endpoint and the credentials clients find in their environment, as in production."""
    endpoint: str

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
                "AWS_ACCESS_KEY_ID": "lmp-test", "AWS_SECRET_ACCESS_KEY": "lmp-test-secret",
                "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3

        env = self.env()
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=env["AWS_DEFAULT_REGION"],
                            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])

    def keys(self, bucket: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@contextlib.contextmanager
def s3_server(log: Path, buckets: tuple[str, ...]) -> Iterator[S3Server]:
    """moto's standalone S3 server on a free loopback port, with `buckets` made as compose's
    minio-buckets makes them. MinIO's server is not packaged for this machine; moto speaks the same
    S3 API to the same clients (boto3, s3fs, DVC, MLflow)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with process([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log,
                 ready_url=f"{endpoint}/moto-api/"):
        server = S3Server(endpoint)
        for bucket in buckets:
            server.client().create_bucket(Bucket=bucket)
        yield server


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    password: str

    def url(self, database: str, driver: str = "postgresql") -> str:
        user, password = (urllib.parse.quote(s, safe="") for s in (self.user, self.password))
        return f"{driver}://{user}:{password}@{self.host}:{self.port}/{database}"

    def as_role(self, user: str, password: str) -> Postgres:
        """The same cluster, logged in as another role."""
        return dataclasses.replace(self, user=user, password=password)

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self.run_psql(["-c", sql], database).stdout.strip()

    def run_psql(self, args: list[str], database: str = "postgres", env: dict | None = None,
                 check: bool = True) -> subprocess.CompletedProcess:
        """psql with this role's password in its environment, never on its command line."""
        cmd = ["psql", "-qtA", "-X", "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database,
               *args]
        env = os.environ | (env or {}) | {"PGPASSWORD": self.password}
        return subprocess.run(cmd, env=env, check=check, capture_output=True, text=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster with password authentication, on a free loopback port."""
    bindir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
    # PostgreSQL refuses to run as root; its own user must be able to reach the folder.
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="lmp-pg-"))
    if as_owner:
        shutil.chown(root, "postgres")
    db = Postgres("127.0.0.1", free_port(), "lmp", secrets.token_urlsafe(16))
    (root / "pw").write_text(db.password)
    if as_owner:
        shutil.chown(root / "pw", "postgres")
    data, log = root / "data", root / "postgres.log"
    try:
        subprocess.run(as_owner + [str(bindir / "initdb"), "-D", str(data), "-U", db.user,
                                   "--pwfile", str(root / "pw"), "-A", "scram-sha-256"],
                       check=True, capture_output=True)
        subprocess.run(as_owner + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                                   "-o", f"-h {db.host} -p {db.port} -k {root}", "start"],
                       check=True, capture_output=True)
        yield db
    finally:
        subprocess.run(as_owner + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def process_group(pgid: int, of: str = "group") -> list[int]:
    """The live processes of a group, e.g. a server started by `process` and the workers it forked;
    or, `of="session"`, of a session (`start_new_session`), which Ray's workers, in groups of their
    own, stay in."""
    # Fields after the command's closing parenthesis: state, ppid, pgrp, session, ...
    field = {"group": 2, "session": 3}[of]
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(Path(stat).read_text().rsplit(")", 1)[1].split()[field]) == pgid:
                pids.append(int(stat.split("/")[2]))
    return pids
