"""Prefect's temporary server for an ad-hoc flow run, started before the flow's own imports.

With no Prefect API configured, Prefect starts a temporary server when a flow begins: it first
imports its whole server package into the flow's process (about 3 s on 2 cores, 6 s on a slow
one), then starts the server process, which imports it again and migrates the database, while the
flow waits. `temporary_server()` starts that same server process (Prefect's own command and
environment, from `SubprocessASGIServer`) when Prefect's settings say one is needed, without
importing the server package here first. The flow then talks to it as to any configured server;
the stages' processes are not told about it, as they are not told about Prefect's own. If it does
not answer, Prefect's own starts instead.

    with temporary_server():
        pipeline()
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

log = logging.getLogger("lm_pipeline.flows")  # shown at lmp's own log level
# What Prefect sets for its temporary server: no UI, no background services, settings final.
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


@contextmanager
def temporary_server() -> Iterator[str | None]:
    """Yields the temporary server's API URL, or None where a server is configured (or Prefect's
    temporary servers are turned off, so that Prefect gives its own error)."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        yield None
        return
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    url = f"{address}/api"
    log.info("Starting temporary Prefect server on %s", address)
    process = start_server(port, settings.to_environment_variables(exclude_unset=True))
    try:
        if not wait_until_healthy(process, url, settings.server.ephemeral.startup_timeout_seconds):
            yield None  # Prefect starts its own
            return
        with temporary_settings({PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                drain_prefect_workers()  # to this server: its URL is still the setting
    finally:
        stop(process)
        log.info("Stopped temporary Prefect server on %s", address)


def drain_prefect_workers() -> None:
    """Send the flow's last logs and events while the server still listens: Prefect's workers
    otherwise flush them at exit, to a server already gone (Prefect's test harness does this too)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    try:
        APILogWorker.instance().drain()
    except RuntimeError:  # never started: nothing was logged
        pass
    EventsWorker.drain_all()


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, settings_env: dict[str, str]) -> subprocess.Popen:
    import prefect  # already imported by the settings; only its folder is needed

    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parents[1]),
               "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    # Its output goes where Prefect's own goes: to this process's terminal.
    return subprocess.Popen(command, env=os.environ | SERVER_ENV | settings_env)


def wait_until_healthy(process: subprocess.Popen, url: str, seconds: int) -> bool:
    """Prefect's own allowance (env.py gives 120 s: a cold first start migrates a new database)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.warning("the temporary Prefect server exited (%s) before answering (its error is "
                        "above); Prefect starts its own", process.returncode)
            return False
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:  # not listening yet
            pass
        time.sleep(0.1)
    log.warning("the temporary Prefect server did not answer within %d s; Prefect starts its own",
                seconds)
    return False


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
