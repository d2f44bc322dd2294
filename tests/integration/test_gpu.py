"""The GPU fast path: skipped on machines without CUDA (tests/conftest.py)."""

import json
import subprocess

import mlflow
import pytest
import torch

from lm_pipeline.config import Config
from lm_pipeline.model.transformer import GPT, GPTConfig
from lm_pipeline.training.plan import peak_tflops
from lm_pipeline.training.step import autocast, enable_fast_math, train_step
from tests.integration.conftest import UNVALIDATED, make_project, tiny_params
from tests.services import BIN

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
        assert peak_tflops(device, "bf16") > peak_tflops(device, "fp32") > 0


# The train stage's GPU path end to end: one GPU worker, bf16, torch.compile, FSDP2.
GPU_TRAIN = {"train": {"num_workers": 1, "device": "cuda", "precision": "bf16", "compile": True,
                       "strategy": "fsdp", "max_steps": 60, "eval_interval": 30, "checkpoint_interval": 30}}


HF_LLAMA = {"model": {"backend": "hf", "hf_config": {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2}}}


@pytest.mark.integration
@pytest.mark.parametrize("backend", [{}, HF_LLAMA], ids=["gpt", "hf-llama"])
def test_train_stage_on_one_gpu_with_bf16_compile_and_fsdp(tmp_path, backend):
    project = make_project(tmp_path, tiny_params(GPU_TRAIN, backend, UNVALIDATED))
    lmp = str(BIN / "lmp")
    for stage in ("ingest", "filter", "preprocess"):
        subprocess.run([lmp, "-q", stage], cwd=project, check=True)
    proc = subprocess.run([lmp, "train"], cwd=project, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "device cuda" in out and "strategy fsdp precision bf16" in out

    run_id = json.loads((project / "models/model/run.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    losses = [m.value for m in sorted(client.get_metric_history(run_id, "train_loss"), key=lambda m: m.step)]
    assert len(losses) == 60 and losses[-1] < losses[0] - 0.5
    if peak_tflops(torch.device("cuda"), "bf16"):  # a GPU whose peak we know: MFU is logged every step
        mfu = client.get_metric_history(run_id, "mfu")
        assert len(mfu) == 60 and all(0 < m.value < 1 for m in mfu)
