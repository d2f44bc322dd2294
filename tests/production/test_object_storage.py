"""The project's DVC remote `minio` (.dvc/config) against a real S3 server, used as the README says:
the endpoint and credentials in the environment, `dvc push -r minio`, and `dvc pull -r minio` in a
checkout that has neither the data nor a cache."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.services import BIN

pytestmark = pytest.mark.production

ROOT = Path(__file__).resolve().parents[2]


def dvc(repo: Path, env: dict, *args: str) -> str:
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"dvc {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_dvc_push_and_pull_through_the_projects_s3_remote(tmp_path, s3):
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")  # the remotes as shipped
    data = repo / "data/shard.bin"
    data.parent.mkdir()
    payload = os.urandom(300_000)
    data.write_bytes(payload)
    env = os.environ | s3.env() | {"DVC_NO_ANALYTICS": "1"}

    dvc(repo, env, "add", "data/shard.bin")
    dvc(repo, env, "push", "-r", "minio")
    stored = s3.keys("dvc")
    assert stored and all(key.startswith("lm-pipeline/files/md5/") for key in stored), stored

    data.unlink()
    shutil.rmtree(repo / ".dvc/cache")
    dvc(repo, env, "pull", "-r", "minio")
    assert data.read_bytes() == payload
