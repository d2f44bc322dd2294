"""What is exported after training: the choice of the best checkpoint."""

import math

import pytest

from lm_pipeline.training.checkpoints import StoredCheckpoint
from lm_pipeline.training.export import best_checkpoint

NAN = math.nan


def kept(val_losses: dict[int, float]) -> list[tuple[StoredCheckpoint, dict]]:
    """The kept checkpoints as the runners give them: (checkpoint, the metrics reported with it)."""
    return [(StoredCheckpoint(f"run/checkpoint-{step}"), {"step": step, "val_loss": loss})
            for step, loss in val_losses.items()]


@pytest.mark.metrics
@pytest.mark.parametrize("val_losses", [{10: NAN, 20: 2.5, 30: 2.0},  # min() kept the NaN it started with
                                        {10: 2.5, 20: NAN, 30: 2.0},
                                        {10: 2.0, 20: NAN, 30: 2.5}],
                         ids=["nan-first", "nan-middle", "best-first"])
def test_the_best_checkpoint_is_the_lowest_finite_val_loss(val_losses):
    checkpoint, metrics = best_checkpoint(kept(val_losses))
    best_step = min((s for s, loss in val_losses.items() if math.isfinite(loss)), key=val_losses.get)
    assert metrics == {"step": best_step, "val_loss": val_losses[best_step]}
    assert checkpoint == StoredCheckpoint(f"run/checkpoint-{best_step}")


@pytest.mark.metrics
def test_no_checkpoint_with_a_finite_val_loss_is_refused_naming_the_steps():
    with pytest.raises(ValueError, match=r"no checkpoint has a finite val_loss.*step 10: nan, step 20: inf"):
        best_checkpoint(kept({10: NAN, 20: math.inf}))
    with pytest.raises(ValueError, match="no checkpoint"):
        best_checkpoint([])
