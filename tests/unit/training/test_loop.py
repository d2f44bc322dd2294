import numpy as np
import pytest
import torch

from lm_pipeline.config import Config
from lm_pipeline.model.transformer import GPT, GPTConfig
from lm_pipeline.training import state as checkpoint_state
from lm_pipeline.training.batches import random_batch
from lm_pipeline.training.loop import guarded_step
from lm_pipeline.training.state import TrainState
from lm_pipeline.training.step import autocast

CFG = Config.model_validate({"model": {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
                             "train": {"batch_size": 4}})
TOKENS = np.random.default_rng(0).integers(0, 50, size=5000)
TOKENS_BATCH = torch.as_tensor(TOKENS[:32]).view(2, 16)


def model_and_optimizer():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16))
    return model, model.configure_optimizer(1e-3, 0.1, (0.9, 0.95))


def test_global_batch_is_split_across_ranks_and_micro_steps():
    one = random_batch(TOKENS, 8, 16, [1, 7], rank=0, world_size=1)
    halves = [random_batch(TOKENS, 4, 16, [1, 7], rank=r, world_size=2) for r in (0, 1)]
    assert torch.equal(one[0], torch.cat([halves[0][0], halves[1][0]]))
    quarters = [random_batch(TOKENS, 2, 16, [1, 7], rank=r, world_size=2, micro=m, accum=2)
                for m in (0, 1) for r in (0, 1)]
    assert torch.equal(one[0], torch.cat([q[0] for q in quarters]))
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


# torch's own notices: inductor still uses torch.jit internally; DCP runs here without a process group.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_compiled_bf16_training_resumes_from_its_checkpoint_exactly(tmp_path):
    """The fast path's settings on CPU: torch.compile and bf16 autocast train, and a compiled
    model's checkpoint (DCP, as every rank writes it) restores into a fresh compiled model."""
    fast = CFG.train.model_copy(update={"precision": "bf16", "compile": True})
    cfg = CFG.model_copy(update={"train": fast})
    cpu = torch.device("cpu")

    def compiled():
        model, optimizer = model_and_optimizer()
        return torch.compile(model), optimizer

    def steps(model, optimizer, start, stop):
        return [guarded_step(model, optimizer, TOKENS, s, 1e-2, cfg, cpu) for s in range(start, stop)]

    model, optimizer = compiled()
    first = steps(model, optimizer, 0, 5)
    checkpoint_state.save(tmp_path, model, optimizer, TrainState(step=5), rank=0, frozen=frozenset())
    straight = steps(model, optimizer, 5, 10)
    # autocast is scoped to the step (asked of the module under the compiled one: a compiled
    # forward outside the step's grad mode and autocast would compile twice more, for nothing)
    eager = model._orig_mod
    assert eager(TOKENS_BATCH)[0].dtype == torch.float32
    with autocast(cpu, "bf16"):
        assert eager(TOKENS_BATCH)[0].dtype == torch.bfloat16
    assert first[-1] < first[0]

    model, optimizer = compiled()
    assert checkpoint_state.load(tmp_path, model, optimizer, rank=0, frozen=frozenset()).step == 5
    assert steps(model, optimizer, 5, 10) == straight  # the same floats
