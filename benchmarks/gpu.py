"""GPU fast path: tokens/s and MFU of a GPT-2-small-sized model (124M parameters, context 1024),
the built-in GPT (gpu_124m_*) and a transformers Llama of the same size (gpu_llama_124m_*).

    python -m benchmarks.gpu                  # on a CUDA machine: bf16, TF32, fused AdamW, compile
    python -m benchmarks.gpu --device cpu --tiny   # a smoke run of the same code on a CPU

Runs the train stage's own `train_step` in one process (the Ray overhead is measured apart by
benchmarks.run) and merges gpu_124m_* keys into benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from benchmarks.common import RESULTS, markdown_table
from benchmarks.models import same_size_llama
from lm_pipeline.config import Config
from lm_pipeline.model.transformer import GPT, GPTConfig
from lm_pipeline.training.plan import peak_tflops, shape_of, training_flops_per_token
from lm_pipeline.training.step import enable_fast_math, train_step

GPT2_SMALL = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024}
TINY = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64}
VOCAB = 50304  # GPT-2's 50257 rounded up to a multiple of 64


def build(family: str, shape: dict):
    if family == "gpt":
        return GPT(GPTConfig(vocab_size=VOCAB, **shape))
    return same_size_llama(**shape, vocab_size=VOCAB, eot=0)


def measure(device: torch.device, shape: dict, batch_size: int, steps: int, compile_model: bool,
            family: str = "gpt") -> dict:
    cfg = Config.model_validate({"model": shape, "train": {
        "batch_size": batch_size, "precision": "bf16" if device.type == "cuda" else "fp32"}})
    enable_fast_math(device)
    torch.manual_seed(0)
    model = build(family, shape).to(device)
    optimizer = model.configure_optimizer(6e-4, 0.1, (0.9, 0.95))
    flops_per_token = training_flops_per_token(shape_of(model), shape["block_size"])
    if compile_model:
        model = torch.compile(model)
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=2_000_000)
    rates = []
    for step in range(steps):
        t0 = time.perf_counter()
        train_step(model, optimizer, tokens, [0, step], 6e-4, cfg, device)  # .item() syncs the GPU
        rates.append(batch_size * shape["block_size"] / (time.perf_counter() - t0))
    tokens_per_s = statistics.median(rates[steps // 2:])  # after compilation and warm-up
    peak = peak_tflops(device, cfg.train.precision) * 1e12
    prefix = "gpu_124m" if family == "gpt" else f"gpu_{family}_124m"
    return {f"{prefix}_tokens_per_s": tokens_per_s,
            f"{prefix}_mfu": flops_per_token * tokens_per_s / peak if peak else 0.0,
            f"{prefix}_params_millions": sum(p.numel() for p in model.parameters()) / 1e6}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a small model, for a smoke run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shape, compile_model = TINY if args.tiny else GPT2_SMALL, not args.no_compile and device.type == "cuda"
    results = {}
    for family in ("gpt", "llama"):
        results |= measure(device, shape, args.batch_size, args.steps, compile_model, family)
    print(markdown_table(results))
    if not args.tiny:
        previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        RESULTS.write_text(json.dumps(previous | results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
