"""Side-by-side measurements, printed as a Markdown table and saved to benchmarks/results.json.

    make bench        # or: python -m benchmarks.run [--steps 60]

train_vs_bare_loop_ratio: steady-state tokens/s of the real train stage (Ray Train, 1 worker,
MLflow logging, checkpoints) over a bare single-process loop of the same model, batch, optimizer
and threads. Ray's start-up is reported apart as train_startup_seconds.

ddp2_vs_ddp1_throughput_ratio: the train stage with 2 DDP workers over 1 worker, one CPU each and
the same per-worker batch (2.0 would be perfect scaling).

eval_vs_train_forward_ratio: tokens/s of evaluation scoring (inference mode, sliding windows) over
the training forward pass (autograd on) on the same model and batch shape.
kv_cache_generation_speedup: greedy generation with the KV cache over recomputing the whole
window for every new token.

hf_vs_builtin_tokens_per_s_ratio, lora_vs_full_step_time_ratio: see benchmarks/models.py.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import WARMUP_STEPS, bench_config, prepare_data, save_results
from benchmarks.models import measure as measure_backends
from benchmarks.models import step_rates


def train_stage_throughput(cfg) -> dict[str, float]:
    """Median tokens/s of the train stage after warm-up, and the seconds around the steps."""
    import mlflow

    from lm_pipeline.stages import train as train_stage

    start = time.perf_counter()
    result = train_stage.run(cfg)
    wall = time.perf_counter() - start
    history = mlflow.MlflowClient().get_metric_history(result.run_id, "tokens_per_s")
    rates = [m.value for m in sorted(history, key=lambda m: m.step)]
    tokens_per_step = (cfg.train.batch_size * cfg.model.block_size * cfg.train.grad_accum_steps
                       * cfg.train.num_workers)
    step_seconds = sum(tokens_per_step / r for r in rates)
    return {"tokens_per_s": statistics.median(rates[WARMUP_STEPS:]), "overhead_s": wall - step_seconds}


def bare_loop_throughput(cfg) -> float:
    """The same model, batch and optimizer step, in this process, with no Ray and no logging."""
    import torch

    from lm_pipeline.data.processed import read_meta
    from lm_pipeline.model.backends import gpt_config
    from lm_pipeline.model.transformer import GPT

    torch.manual_seed(cfg.train.seed)
    return step_rates(cfg, GPT(gpt_config(cfg.model, read_meta(cfg.data.processed_dir).vocab_size)))


def eval_vs_train_forward(cfg, repeats: int = 5) -> float:
    """Evaluation's scoring path against the training forward pass, same model and shapes."""

    from lm_pipeline.data.processed import load_documents, load_tokens, read_meta
    from lm_pipeline.evaluation.scoring import sequence_nll
    from lm_pipeline.model.backends import gpt_config
    from lm_pipeline.model.transformer import GPT
    from lm_pipeline.training.batches import fixed_batches

    meta = read_meta(cfg.data.processed_dir)
    model = GPT(gpt_config(cfg.model, meta.vocab_size))
    docs = load_documents(cfg.data.processed_dir, "test")
    block, batch = cfg.model.block_size, cfg.train.batch_size
    start = time.perf_counter()
    for _ in range(repeats):
        _, counts = sequence_nll(model.eval(), docs, meta.eot_id, block, block, batch)
    eval_rate = repeats * counts.sum() / (time.perf_counter() - start)
    n_batches = len(counts) // batch + 1
    batches = fixed_batches(load_tokens(cfg.data.processed_dir, "test"), n_batches, batch, block)
    model.train()
    start = time.perf_counter()
    for _ in range(repeats):
        for x, y in batches:
            model(x, y)[1].item()
    train_rate = repeats * len(batches) * batch * block / (time.perf_counter() - start)
    return eval_rate / train_rate


def kv_cache_speedup(cfg, new_tokens: int = 96) -> float:
    import torch

    from lm_pipeline.data.processed import read_meta
    from lm_pipeline.model.backends import gpt_config
    from lm_pipeline.model.generate import generate
    from lm_pipeline.model.transformer import GPT

    model = GPT(gpt_config(cfg.model, read_meta(cfg.data.processed_dir).vocab_size)).eval()
    prompt = torch.zeros(8, 16, dtype=torch.long)
    start = time.perf_counter()
    cached = generate(model, prompt, new_tokens)
    with_cache = time.perf_counter() - start
    start = time.perf_counter()
    idx = prompt
    with torch.inference_mode():
        for _ in range(new_tokens):  # no cache: the whole (cropped) window every step
            logits = model(idx[:, -cfg.model.block_size:])[0]
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    without_cache = time.perf_counter() - start
    assert torch.equal(idx[:, :cfg.model.block_size], cached[:, :cfg.model.block_size])
    return without_cache / with_cache


def main(argv: list[str] | None = None) -> None:
    from lm_pipeline import env

    env.apply()  # an entry point, like `lmp`: Ray and MLflow read these when they start
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per measurement")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lmp-bench-") as tmp:
        cfg = bench_config(Path(tmp), args.steps)
        prepare_data(cfg)
        bare = bare_loop_throughput(cfg)
        eval_ratio = eval_vs_train_forward(cfg)
        kv_speedup = kv_cache_speedup(cfg)
        backends = measure_backends(cfg)
        stage = train_stage_throughput(cfg)
        # Both on Ray Train workers, so only the number of ranks differs (1 worker would run in-process).
        ddp1 = train_stage_throughput(bench_config(Path(tmp), args.steps, cpus_per_worker=1, run_on="ray"))
        ddp2 = train_stage_throughput(bench_config(Path(tmp), args.steps, cpus_per_worker=1,
                                                   num_workers=2, run_on="ray"))
    results = {
        "train_vs_bare_loop_ratio": stage["tokens_per_s"] / bare,
        "train_stage_tokens_per_s": stage["tokens_per_s"],
        "bare_loop_tokens_per_s": bare,
        "train_startup_seconds": stage["overhead_s"],
        "ddp2_vs_ddp1_throughput_ratio": ddp2["tokens_per_s"] / ddp1["tokens_per_s"],
        "ddp1_tokens_per_s": ddp1["tokens_per_s"],
        "ddp2_tokens_per_s": ddp2["tokens_per_s"],
        "eval_vs_train_forward_ratio": eval_ratio,
        "kv_cache_generation_speedup": kv_speedup,
        **backends,
    }
    save_results(results)


if __name__ == "__main__":
    main()
