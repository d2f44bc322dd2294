import numpy as np
import pytest
import torch

from lm_pipeline.config import Config
from lm_pipeline.model.transformer import GPT, GPTConfig
from lm_pipeline.training.batches import random_batch
from lm_pipeline.training.loop import guarded_step

CFG = Config.model_validate({"model": {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
                             "train": {"batch_size": 4}})
TOKENS = np.random.default_rng(0).integers(0, 50, size=5000)


def model_and_optimizer():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16))
    return model, model.configure_optimizer(1e-3, 0.1, (0.9, 0.95))


def test_global_batch_is_split_across_ranks():
    one = random_batch(TOKENS, 8, 16, [1, 7], rank=0, world_size=1)
    halves = [random_batch(TOKENS, 4, 16, [1, 7], rank=r, world_size=2) for r in (0, 1)]
    assert torch.equal(one[0], torch.cat([halves[0][0], halves[1][0]]))
    assert torch.equal(one[1][:, :-1], one[0][:, 1:])  # targets are the inputs shifted by one


def test_step_lowers_the_loss_on_repeated_data():
    model, optimizer = model_and_optimizer()
    losses = [guarded_step(model, optimizer, TOKENS[:200], 0, 1e-2, CFG, torch.device("cpu"))
              for _ in range(20)]
    assert losses[-1] < losses[0]


@pytest.mark.bad_input
def test_non_finite_loss_names_the_step():
    model, optimizer = model_and_optimizer()
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"train loss is nan at step 42; lower train.lr"):
        guarded_step(model, optimizer, TOKENS, 41, 1e-3, CFG, torch.device("cpu"))
