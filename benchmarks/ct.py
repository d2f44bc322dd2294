"""Continuous training, timed on the default model: a cycle that finds no drift, and a drift drop
from its arrival to the new champion answering on the endpoint.

    python -m benchmarks.ct        # about 10 minutes on 2 cores

A clone of this checkout in a temporary folder runs the stages with the default params (the default model, its
300 steps) and registers its champion; `lmp serve` follows the champion. Then, each timed from
the start of `lmp ct` (a new process, as cron or the deployed trigger starts it):

ct_no_drift_cycle_seconds: a drop like the corpus (standard-library docstrings the corpus leaves
out): hygiene and the drift score, no training step.
ct_drop_to_served_seconds: a drop from a new domain (the tests' two-domain corpus): hygiene,
drift, the retraining (ct.max_steps from the champion, with a replay of 0.8; the forgetting guard at
0.2 bits per byte, since at its default 0.02 this drop is not promoted), evaluation, registration,
until the endpoint answers with the new version (the canary runs after that, and is not counted).
ct_retrain_cycle_seconds: that cycle to its end, canary included.
Each figure is kept only if the cycle ended as it should (no_drift, then promoted).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from benchmarks.common import save_results
from benchmarks.serve import free_port, server
from tests.unit.continuous.corpora import NATURE, documents, stdlib_docstrings_left_out

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
MODEL = "lm-pipeline"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="lmp-bench-ct-") as tmp:
        project, port = Path(tmp) / "project", free_port()
        champion_project(project, port)
        token = "bench-token"
        env = os.environ | {"LMP_SERVE_TOKEN": token}
        with server([str(BIN / "lmp"), "serve"], project, f"http://127.0.0.1:{port}/health", env):
            drop(project, "a-like-the-corpus", stdlib_docstrings_left_out())
            no_drift, outcome = timed_cycle(project, env, "a-like-the-corpus")
            results = {"ct_no_drift_cycle_seconds": no_drift} if outcome == "no_drift" else {}
            print(f"no-drift drop: {outcome} in {no_drift:.1f} s")
            drop(project, "b-new-domain", documents(NATURE, 300, seed=11))
            served = ServedVersion(f"http://127.0.0.1:{port}/v1/models", token, f"{MODEL}/2")
            retrain, outcome = timed_cycle(project, env, "b-new-domain")
            print(f"new-domain drop: {outcome} in {retrain:.1f} s, served after {served.seconds} s")
            if outcome == "promoted" and served.seconds is not None:
                results |= {"ct_drop_to_served_seconds": served.seconds, "ct_retrain_cycle_seconds": retrain}
    save_results(results)


def champion_project(project: Path, port: int) -> None:
    """A clone of this checkout (its committed state) with the default params, the stages run
    once; the endpoint and continuous training pointed at each other."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(project)], check=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["mlflow"]["tracking_uri"] = f"sqlite:///{project / 'mlflow.db'}"
    params["serve"] |= {"port": port, "replicas": 1, "follow_interval_s": 1.0}
    # What is timed is the path to a served promotion. With the defaults (half replay, 0.02 bits
    # per byte of forgetting) the default model retrained on this drop stays challenger, blocked
    # by the forgetting guard (after 92 s); four fifths replay as in the tests, and a guard of 0.2.
    params["ct"] |= {"watch": "incoming", "endpoint": f"http://127.0.0.1:{port}/v1", "replay_fraction": 0.8,
                     "max_forgetting": 0.2}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("ingest", "validate", "filter", "preprocess", "train", "evaluate", "register"):
        lmp(project, stage)


def lmp(project: Path, *args: str, env: dict | None = None) -> None:
    out = subprocess.run([str(BIN / "lmp"), "-q", *args], cwd=project, capture_output=True, text=True,
                         env=env)
    if out.returncode:
        raise RuntimeError(f"lmp {' '.join(args)} failed:\n{out.stdout[-2000:]}{out.stderr[-3000:]}")


def drop(project: Path, name: str, texts: list[str]) -> None:
    folder = project / "incoming" / name
    folder.mkdir(parents=True)
    (folder / "part-0.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (folder / "_SUCCESS").touch()


def timed_cycle(project: Path, env: dict, name: str) -> tuple[float, str]:
    """`lmp ct` on the one new drop, `name`: its wall time and the drop's outcome (printed with
    its reason)."""
    start = time.monotonic()
    lmp(project, "ct", env=env)
    seconds = time.monotonic() - start
    ledger = json.loads((project / "data/ct/drops.json").read_text())
    entry = next(entry for entry in ledger.values() if entry["name"] == name)
    print(f"{name}: {entry['outcome']} ({entry['reason']})")
    return seconds, entry["outcome"]


class ServedVersion:
    """Seconds from now until the endpoint's /v1/models lists `version` (polled every 0.2 s)."""

    def __init__(self, url: str, token: str, version: str):
        self.url, self.token, self.version, self.seconds = url, token, version, None
        self.start = time.monotonic()
        threading.Thread(target=self.watch, daemon=True).start()

    def watch(self) -> None:
        request = urllib.request.Request(self.url, headers={"Authorization": f"Bearer {self.token}"})
        while time.monotonic() - self.start < 3600:
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    if any(m["id"] == self.version for m in json.loads(response.read())["data"]):
                        self.seconds = round(time.monotonic() - self.start, 1)
                        return
            except OSError:
                pass
            time.sleep(0.2)


if __name__ == "__main__":
    main()
