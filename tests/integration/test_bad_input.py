"""Broken input through the project's own commands: nothing downstream runs, nothing half-written
survives a kill, and the next run rebuilds cleanly."""

import codecs
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import make_project, tiny_params

pytestmark = [pytest.mark.bad_input, pytest.mark.integration]

BIN = Path(sys.executable).parent


def test_dvc_repro_stops_at_ingest_naming_the_file_and_runs_nothing_after(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text("A fine document. " * 50)
    (corpus / "notes.txt").write_bytes(codecs.BOM_UTF16_LE + "exported from Word".encode("utf-16-le"))
    project = make_project(tmp_path / "project", tiny_params({"data": {"source": str(corpus)}}))
    proc = subprocess.run([str(BIN / "dvc"), "repro"], cwd=project, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "notes.txt: UTF-16 text (byte-order mark); convert it to UTF-8" in proc.stdout + proc.stderr
    for output in ("data/raw/documents.jsonl", "data/processed", "reports/validation", "models", "mlflow.db"):
        assert not (project / output).exists(), output


def generated_corpus(path: Path, documents: int) -> Path:
    """Word soup from a fixed vocabulary: enough text that preprocessing takes a few seconds."""
    import numpy as np

    rng = np.random.default_rng(0)
    letters = [("".join(chr(97 + i // 26 ** k % 26) for k in range(3))) for i in range(5000)]
    words = np.array(letters + ["the", "of", "and", "a", "to"] * 400)
    with open(path, "w") as f:
        for _ in range(documents):
            f.write(json.dumps({"text": " ".join(rng.choice(words, size=400))}) + "\n")
    return path


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.fault_tolerance
def test_preprocess_killed_mid_write_leaves_nothing_that_looks_complete(tmp_path):
    corpus = generated_corpus(tmp_path / "c.jsonl", 3_000)
    params = tiny_params({"data": {"source": str(corpus), "shard_tokens": 65536},  # ~30 shards
                          "tokenizer": {"vocab_size": 2048},
                          "filter": {"steps": []}})  # word soup: the language step would take it all
    project = make_project(tmp_path / "project", params)
    for stage in ("ingest", "validate", "filter"):
        subprocess.run([str(BIN / "lmp"), "-q", stage], cwd=project, check=True, capture_output=True)
    proc = subprocess.Popen([str(BIN / "lmp"), "-q", "preprocess"], cwd=project)
    started = wait_for(lambda: list((project / "data").glob(".processed.*/processed/train/00001.bin")))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert started, "preprocess never reached its write phase"
    assert not (project / "data/processed").exists()  # only a hidden temporary, never the output

    subprocess.run([str(BIN / "lmp"), "-q", "preprocess"], cwd=project, check=True, capture_output=True)
    assert not list((project / "data").glob(".processed.*"))  # the leftover is gone
    rebuilt = tree_digest(project / "data/processed")
    subprocess.run([str(BIN / "lmp"), "-q", "preprocess"], cwd=project, check=True, capture_output=True)
    assert tree_digest(project / "data/processed") == rebuilt  # same as an uninterrupted build
    assert len([f for f in rebuilt if f.startswith("train/")]) > 10


def wait_for(condition, timeout: float = 120.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(interval)
    return None
