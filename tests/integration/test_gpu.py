"""The GPU fast path: skipped on machines without CUDA (tests/conftest.py)."""

import pytest
import torch

from lm_pipeline.config import Config
from lm_pipeline.model.transformer import GPT, GPTConfig
from lm_pipeline.training.loop import autocast, enable_fast_math, peak_tflops, train_step

pytestmark = pytest.mark.gpu


def test_bf16_step_on_gpu_learns_and_reports_a_known_peak():
    device = torch.device("cuda")
    enable_fast_math(device)
    assert torch.backends.cuda.matmul.allow_tf32
    cfg = Config.model_validate({"train": {"precision": "bf16", "batch_size": 8, "lr": 1e-3},
                                 "model": {"block_size": 64}})
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=64)).to(device)
    optimizer = model.configure_optimizer(1e-3, 0.1, (0.9, 0.95))
    assert optimizer.defaults["fused"]
    tokens = torch.randint(0, 256, (10_000,)).numpy()
    losses = [train_step(model, optimizer, tokens, [0, s], 1e-3, cfg, device) for s in range(30)]
    assert losses[-1] < losses[0]
    with autocast(device, "bf16"):
        logits = model(torch.zeros(1, 8, dtype=torch.long, device=device))[0]
    assert logits.dtype == torch.bfloat16
    if any(name in torch.cuda.get_device_name() for name in ("H100", "H200", "A100")):
        assert peak_tflops(device) > 0
