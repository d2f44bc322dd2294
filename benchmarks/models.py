"""Model backends side by side, in one process, on the same data, batch and optimizer step:

hf_vs_builtin_tokens_per_s_ratio: training tokens/s of a transformers Llama (grouped-query
attention, RoPE, RMSNorm, SwiGLU) over the built-in GPT of the same size (same layers, width,
heads, context and vocabulary; SwiGLU's width set so both MLPs hold the same weights; tied
embeddings in both).

lora_vs_full_step_time_ratio: the step time of LoRA (r=8 on the attention and MLP projections)
over full fine-tuning of the same built-in GPT: the backward pass still runs through every layer,
but only the adapters get gradients and optimizer state.

    python -m benchmarks.models       # also part of `make bench`
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import WARMUP_STEPS, bench_config, prepare_data, save_results


def step_rates(cfg, model) -> float:
    """Median tokens/s of the train stage's own optimizer step, after warm-up."""
    import torch

    from lm_pipeline.data.processed import load_tokens
    from lm_pipeline.training.schedule import get_lr
    from lm_pipeline.training.step import train_step

    torch.set_num_threads(cfg.train.cpus_per_worker)
    optimizer = model.configure_optimizer(cfg.train.lr, cfg.train.weight_decay,
                                          (cfg.train.beta1, cfg.train.beta2))
    tokens = load_tokens(cfg.data.processed_dir, "train")
    tokens_per_step = cfg.train.batch_size * cfg.model.block_size * cfg.train.grad_accum_steps
    rates = []
    for step in range(cfg.train.max_steps):
        t0 = time.perf_counter()
        train_step(model, optimizer, tokens, [cfg.train.seed, step], get_lr(step, cfg.train), cfg, "cpu")
        rates.append(tokens_per_step / (time.perf_counter() - t0))
    return statistics.median(rates[WARMUP_STEPS:])


def same_size_llama(n_layer: int, n_head: int, n_embd: int, block_size: int, vocab_size: int, eot: int):
    """A transformers Llama with the built-in GPT's size: SwiGLU's 3 x d x 8d/3 weights are GPT's
    MLP's 2 x d x 4d, and the embeddings are tied as in GPT."""
    from lm_pipeline.model import hf

    spec = {"model_type": "llama", "hidden_size": n_embd, "num_hidden_layers": n_layer,
            "num_attention_heads": n_head, "intermediate_size": 8 * n_embd // 3, "tie_word_embeddings": True}
    return hf.from_config(hf.config_from(spec, vocab_size, eot, block_size), block_size)


def measure(cfg) -> dict[str, float]:
    import torch

    from lm_pipeline.config import LoraConfig
    from lm_pipeline.data.processed import read_meta
    from lm_pipeline.model.backends import build_model

    meta = read_meta(cfg.data.processed_dir)
    torch.manual_seed(cfg.train.seed)
    gpt = build_model(cfg.model, LoraConfig(), meta.vocab_size, meta.eot_id)
    m = cfg.model
    llama = same_size_llama(m.n_layer, m.n_head, m.n_embd, m.block_size, meta.vocab_size, meta.eot_id)
    lora = build_model(cfg.model, LoraConfig(r=8), meta.vocab_size, meta.eot_id)
    builtin, hf, adapted = step_rates(cfg, gpt), step_rates(cfg, llama), step_rates(cfg, lora)
    return {"hf_vs_builtin_tokens_per_s_ratio": hf / builtin,
            "builtin_gpt_tokens_per_s": builtin, "hf_llama_tokens_per_s": hf,
            "hf_llama_params_vs_builtin": llama.num_params() / sum(p.numel() for p in gpt.parameters()),
            "lora_vs_full_step_time_ratio": builtin / adapted,
            "lora_trainable_share": sum(p.numel() for p in lora.parameters() if p.requires_grad)
            / sum(p.numel() for p in lora.parameters())}


def main() -> None:
    from lm_pipeline import env

    env.apply()
    with tempfile.TemporaryDirectory(prefix="lmp-bench-") as tmp:
        cfg = bench_config(Path(tmp), 60)
        prepare_data(cfg)
        save_results(measure(cfg))


if __name__ == "__main__":
    main()
