"""`lmp run`/`lmp tune` start Prefect's temporary server themselves (lm_pipeline/flows/temporary_server.py):
the flow must really run on it with its logs, the server package must stay out of the flow's
process, the server must be gone afterwards, and a server that fails to start must leave Prefect's
own."""

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from lm_pipeline import env
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration

FLOW = """
import json, sys
from prefect import flow
from prefect.settings import get_current_settings
import lm_pipeline.flows.temporary_server as server
{patch}

@flow(name="hello")
def hello():
    return 42

with server.temporary_server() as url:
    state = hello(return_state=True)
    startup = get_current_settings().server.ephemeral.startup_timeout_seconds
print(json.dumps({{"url": url, "result": state.result(), "completed": state.is_completed(),
                  "startup_timeout_s": startup,
                  "server_package_here": "prefect.server.api.server" in sys.modules}}))
"""
FAILING_SERVER = """
import subprocess
server.start_server = lambda port, env: subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
"""


def run_flow(tmp_path: Path, patch: str = "") -> dict:
    """A one-task flow in a new process with no Prefect API configured and its own Prefect home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(ROOT),
            "PREFECT_LOGGING_LEVEL": "INFO"}  # the suite's WARNING would leave no logs to check
    proc = subprocess.run([sys.executable, "-c", FLOW.format(patch=patch)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def listening(url: str) -> bool:
    host, port = url.removeprefix("http://").removesuffix("/api").split(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) == 0


def test_an_ad_hoc_flow_runs_on_a_server_started_outside_its_process(tmp_path):
    out = run_flow(tmp_path)
    assert out["url"] and out["completed"] and out["result"] == 42
    assert not out["server_package_here"]  # Prefect's own temporary server would import it here
    assert not listening(out["url"])  # stopped with the context
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:  # the run is on record there
        states = db.execute("SELECT state_type FROM flow_run").fetchall()
        logs = [message for (message,) in db.execute("SELECT message FROM log")]
    assert states == [("COMPLETED",)]
    # its last log lines reached the server before it stopped (Prefect's workers send them late)
    assert "Finished in state Completed()" in logs


def test_a_server_that_fails_to_start_leaves_prefects_own(tmp_path):
    out = run_flow(tmp_path, FAILING_SERVER)
    assert out["url"] is None and out["completed"] and out["result"] == 42
    assert out["server_package_here"]  # Prefect started its own, as it does without us
    # given the pipeline's allowance to answer, not Prefect's 20 s (which ran out on a busy CI machine)
    assert out["startup_timeout_s"] == int(env.DEFAULTS["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])
