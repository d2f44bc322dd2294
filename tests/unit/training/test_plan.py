"""`lmp plan`: what a run takes per rank, counted on the model as built, and refused when it cannot fit."""

import pytest
import torch

from lm_pipeline.config import Config
from lm_pipeline.model.backends import build_model
from lm_pipeline.model.sharded import meta_model
from lm_pipeline.training.plan import (
    GiB,
    PlanError,
    check_fits,
    make_plan,
    shape_of,
    training_flops_per_token,
    warm_up,
)

MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16}
VOCAB = 300


def config(**train) -> Config:
    lora = train.pop("lora", {})
    return Config.model_validate({"model": MODEL, "lora": lora,
                                  "train": {**train, **({"init_from": "parent"} if lora else {})}})


@pytest.mark.parametrize("lora", [{}, {"r": 4}], ids=["full", "lora"])
def test_the_plan_counts_the_model_as_built_on_the_meta_device(lora):
    cfg = config(lora=lora)
    real = build_model(cfg.model, cfg.lora, VOCAB, 0)
    planned = shape_of(meta_model(cfg.model, cfg.lora, VOCAB, 0))
    assert planned == shape_of(real)
    assert planned.trainable == sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert next(meta_model(cfg.model, cfg.lora, VOCAB, 0).parameters()).device == torch.device("meta")


def test_lora_costs_the_frozen_weights_no_weight_gradients():
    full, lora = (shape_of(meta_model(c.model, c.lora, VOCAB, 0)) for c in (config(), config(lora={"r": 4})))
    attention = 12 * 2 * 32 * 16
    assert training_flops_per_token(full, 16) == 6 * full.params + attention  # PaLM's 6N
    assert training_flops_per_token(lora, 16) == 4 * lora.params + 2 * lora.trainable + attention
    assert training_flops_per_token(lora, 16) < training_flops_per_token(full, 16)


def test_fsdp_shards_the_state_over_the_ranks_and_ddp_keeps_a_bucket_copy_of_the_gradients():
    shape = shape_of(meta_model(config().model, config().lora, VOCAB, 0))
    one = make_plan(config(), shape, None).memory
    ddp = make_plan(config(num_workers=2), shape, None).memory
    fsdp = make_plan(config(num_workers=2, strategy="fsdp"), shape, None).memory
    assert ddp["gradients"] == 2 * one["gradients"] and ddp["optimizer"] == one["optimizer"]
    root = shape.params - shape.n_layer * shape.layer_params  # embeddings and final norm stay whole
    assert fsdp["optimizer"] == one["optimizer"] / 2
    assert fsdp["gradients"] == one["gradients"] / 2 + 4 * (shape.layer_params + root)
    assert fsdp["weights"] == one["weights"] / 2 + 4 * (2 * shape.layer_params + root)  # two layers whole
    checkpointed = make_plan(config(activation_checkpointing=True), shape, None).memory
    assert checkpointed["activations"] < one["activations"]


def test_a_run_that_cannot_fit_is_refused_naming_the_settings_to_change():
    cfg = config(batch_size=64)
    plan = make_plan(cfg, shape_of(meta_model(cfg.model, cfg.lora, VOCAB, 0)), budget=0.01 * GiB)
    assert not plan.fits and "DOES NOT FIT" in "\n".join(plan.lines())
    with pytest.raises(PlanError, match=r"train.activation_checkpointing: true; or a smaller "
                                        r"train.batch_size \(now 64.*train.strategy: fsdp"):
        check_fits(plan)
    check_fits(make_plan(cfg, plan.shape, budget=64 * GiB))  # the same run on a larger worker


def test_smoke_the_warm_up_times_the_loops_own_step_with_the_runs_settings():
    """`lmp plan --warmup-steps N` runs the training loop's step (accumulation, bf16 autocast, label
    smoothing, clipping as configured); what it measures is the benchmarks' (benchmarks/plan.py)."""
    cfg = config(grad_accum_steps=2, precision="bf16", label_smoothing=0.1, batch_size=4)
    threads = torch.get_num_threads()
    try:
        seconds, peak = warm_up(cfg, VOCAB, 0, None, steps=2)
    finally:
        torch.set_num_threads(threads)  # warm_up takes the worker's threads, as a run does
    assert seconds > 0 and (peak is None or peak > 0)
