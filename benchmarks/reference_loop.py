"""The yardstick for the train stage: a minimal single-file CPU training loop, written the way a
careful engineer writes one (nanoGPT's train.py, without its extras). No Ray, no MLflow, no
Prefect: the same model class, AdamW with the same parameter groups, the same warmup-cosine
schedule, random windows of the memory-mapped training tokens, validation on the same fixed
windows every eval_interval steps, and the weights saved once at the end.

    python -m benchmarks.reference_loop --params bench.yaml [--out times.json]

It reads the project's params (model, train.*) and data/processed, so it trains exactly what
`lmp --params bench.yaml train` trains. Prints the loss every eval_interval steps; with --out,
writes its own wall time, step times and validation time as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

START = time.perf_counter()  # before torch's import: the reference pays for its start-up too

import numpy as np  # noqa: E402
import torch  # noqa: E402


def get_batch(tokens, batch_size: int, block_size: int, rng: np.random.Generator):
    starts = rng.integers(0, len(tokens) - block_size, size=batch_size)
    rows = [np.asarray(tokens[s:s + block_size + 1], dtype=np.int64) for s in starts]
    chunk = torch.from_numpy(np.stack(rows))
    return chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def estimate_val_loss(model, batches) -> float:
    model.eval()
    losses = [model(x, y)[1].item() for x, y in batches]
    model.train()
    return float(np.mean(losses))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from lm_pipeline.config import load_config
    from lm_pipeline.data.processed import load_tokens, read_meta
    from lm_pipeline.model.backends import gpt_config
    from lm_pipeline.model.transformer import GPT
    from lm_pipeline.training.batches import fixed_batches
    from lm_pipeline.training.schedule import get_lr

    cfg = load_config(args.params)
    t = cfg.train
    torch.set_num_threads(t.cpus_per_worker)
    torch.manual_seed(t.seed)
    meta = read_meta(cfg.data.processed_dir)
    train_tokens, val_tokens = (load_tokens(cfg.data.processed_dir, s) for s in ("train", "val"))
    model = GPT(gpt_config(cfg.model, meta.vocab_size))
    optimizer = model.configure_optimizer(t.lr, t.weight_decay, (t.beta1, t.beta2))
    val_batches = fixed_batches(val_tokens, t.eval_batches, t.batch_size, cfg.model.block_size)
    rng = np.random.default_rng(t.seed)

    step_times, validation = [], 0.0
    first_step = time.perf_counter()
    for step in range(t.max_steps):
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step, t)
        x, y = get_batch(train_tokens, t.batch_size, cfg.model.block_size, rng)
        _, loss, _ = model(x, y)
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        train_loss = loss.item()
        step_times.append(time.perf_counter() - t0)
        if (step + 1) % t.eval_interval == 0 or step + 1 == t.max_steps:
            v0 = time.perf_counter()
            val_loss = estimate_val_loss(model, val_batches)
            validation += time.perf_counter() - v0
            print(f"step {step + 1}: train_loss {train_loss:.4f} val_loss {val_loss:.4f}", flush=True)
    save_start = time.perf_counter()
    out_dir = Path(cfg.train.model_dir).with_name("reference-model")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / "model.pt")
    end = time.perf_counter()
    times = {"wall_s": end - START, "setup_s": first_step - START, "steps_s": sum(step_times),
             "validation_s": validation, "save_s": end - save_start,
             "step_median_s": statistics.median(step_times[10:] or step_times),
             "final_val_loss": val_loss}
    if args.out:
        args.out.write_text(json.dumps(times, indent=2))
    return times


if __name__ == "__main__":
    main()
