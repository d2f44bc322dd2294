"""`lmp serve` against `mlflow models serve`, side by side on one machine and one model: 16
concurrent clients, each sending one greedy prompt at a time for a fixed time, to each server in
turn. Tokens are counted the same way for both (the returned text, re-tokenized). Keys:
serve_vs_mlflow_serve_tokens_per_s_ratio_c16 (goal >= 3), serve_p95_ms_c16, serve_batch_mean_c16.

    python -m benchmarks.serve [--seconds 30] [--clients 16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks.common import bench_config, prepare_data, save_results

BIN = Path(sys.executable).parent
PROMPTS = ["The tuple", "A module is", "def f(x):", "Lists are", "The value of", "In Python, a", "Return the",
           "An exception"]
MAX_TOKENS = 32


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="load time per server")
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lmp-bench-serve-") as tmp:
        work = Path(tmp)
        folder, run_id = trained_and_logged(work)
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        ours = measure_lmp_serve(work, folder, args, tokenizer)
        theirs = measure_mlflow_serve(work, run_id, args, tokenizer)
    c = args.clients
    ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
    save_results({f"serve_vs_mlflow_serve_tokens_per_s_ratio_c{c}": ratio,
                  f"serve_tokens_per_s_c{c}": ours["tokens_per_s"],
                  f"mlflow_serve_tokens_per_s_c{c}": theirs["tokens_per_s"],
                  f"serve_p95_ms_c{c}": ours["p95_ms"], f"mlflow_serve_p95_ms_c{c}": theirs["p95_ms"],
                  f"serve_batch_mean_c{c}": ours["batch_mean"]})


def trained_and_logged(work: Path) -> tuple[Path, str]:
    """The default model shape, trained a few steps (speed, not quality, is measured), exported,
    and logged as the registry logs it (the pyfunc `mlflow models serve` loads)."""
    import mlflow

    from lm_pipeline.model.backends import load_model, weights_sha256
    from lm_pipeline.registry.pyfunc import log_pyfunc
    from lm_pipeline.stages import train

    cfg = bench_config(work, steps=20)
    prepare_data(cfg)
    os.chdir(work)
    train.run(cfg)
    model, _ = load_model(cfg.train.model_dir)
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    with mlflow.start_run() as run:
        log_pyfunc(cfg.train.model_dir, weights_sha256(model))
    return Path(cfg.train.model_dir), run.info.run_id


def measure_lmp_serve(work: Path, folder: Path, args, tokenizer) -> dict:
    port = free_port()
    params = {"serve": {"port": port, "replicas": 1, "cpus_per_replica": 2, "max_tokens": MAX_TOKENS,
                        "max_batch_size": args.clients, "max_queued_requests": 4 * args.clients}}
    (work / "serve.yaml").write_text(json.dumps(params))
    url = f"http://127.0.0.1:{port}"
    with server([str(BIN / "lmp"), "--params", "serve.yaml", "serve", "--model", str(folder)], work,
                f"{url}/health"):
        body = lambda p: {"model": folder.name, "prompt": p, "max_tokens": MAX_TOKENS, "temperature": 0}  # noqa: E731
        result = load(f"{url}/v1/completions", body, lambda r: r["choices"][0]["text"], args, tokenizer)
        with urllib.request.urlopen(f"{url}/stats") as response:
            result["batch_mean"] = json.loads(response.read())["batch_mean"]
    return result


def measure_mlflow_serve(work: Path, run_id: str, args, tokenizer) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
                        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # it runs `uvicorn`
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", f"runs:/{run_id}/model", "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    with server(cmd, work, f"{url}/ping", env):
        body = lambda p: {"dataframe_records": [{"prompt": p}], "params": {"max_new_tokens": MAX_TOKENS}}  # noqa: E731
        return load(f"{url}/invocations", body, lambda r: r["predictions"][0], args, tokenizer)


def load(url: str, body, text_of, args, tokenizer) -> dict:
    """`args.clients` threads, each one request at a time, for args.seconds (after a warm-up)."""
    latencies, tokens, stop = [], [], threading.Event()

    def client(i: int) -> None:
        while not stop.is_set():
            started = time.monotonic()
            answer = post(url, body(PROMPTS[i % len(PROMPTS)]))
            if not stop.is_set():
                latencies.append(time.monotonic() - started)
                tokens.append(len(tokenizer.encode(text_of(answer), add_special_tokens=False).ids))

    post(url, body(PROMPTS[0]))  # warm-up: the first forward pass
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    elapsed = time.monotonic() - started
    for t in threads:
        t.join()
    return {"tokens_per_s": sum(tokens) / elapsed, "p95_ms": float(np.percentile(latencies, 95) * 1000)}


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


class server:
    """A server process in its own session, up (ready_url answers) for the block, then stopped."""

    def __init__(self, cmd: list[str], cwd: Path, ready_url: str, env: dict | None = None):
        self.cmd, self.cwd, self.ready_url, self.env = cmd, cwd, ready_url, env

    def __enter__(self):
        self.log = open(self.cwd / f"{Path(self.cmd[0]).name}.log", "ab")
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.ready_url, timeout=5)
                return self
            except OSError:
                if self.proc.poll() is not None:
                    self.log.close()
                    tail = Path(self.log.name).read_text()[-3000:]
                    raise RuntimeError(f"{self.cmd[0]} exited:\n{tail}") from None
                time.sleep(1)
        raise TimeoutError(f"{self.ready_url} did not answer in 300 s")

    def __exit__(self, *exc):
        self.proc.terminate()  # the server alone: `lmp serve` whose Ray got it too waits on Ray
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 9)  # what it left behind
        self.log.close()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    main()
