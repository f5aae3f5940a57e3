"""A NaN or infinite loss stops the run naming the step (on_nonfinite: stop) or is skipped and counted
(skip); either way nothing non-finite reaches a checkpoint."""

import json
import math

import pytest
import torch

from difflab.infra.checkpoint import load_checkpoint
from difflab.loop import NonFiniteLoss

from ._support import quick_trainer, record, tiny_data


class _Poison:
    """Wraps the training model: at chosen steps its output gets `value` (NaN or inf) added."""

    def __init__(self, trainer, steps: dict):
        self.trainer, self.model, self.steps = trainer, trainer.train_model, steps

    def __call__(self, *args):
        out = self.model(*args)
        value = self.steps.get(self.trainer.step)
        return out if value is None else out + value


class _NaNGradient(torch.autograd.Function):
    """The identity forward (a finite loss), a NaN gradient backward: the weights go bad, not the loss."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, math.nan)


def _all_finite(value) -> bool:
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def _checkpoints_finite(trainer) -> dict:
    """{name: step} of every checkpoint, asserting each loads and holds only finite numbers."""
    steps = {}
    for path in sorted((trainer.out_dir / "checkpoints").glob("*.pt")):
        state = load_checkpoint(path)
        assert _all_finite(state), f"{path.name} holds a non-finite number"
        steps[path.name] = state["step"]
    return steps


@pytest.mark.parametrize("step, value", [(0, math.nan), (3, math.inf), (5, -math.inf)])
def test_stop_names_the_step_and_saves_nothing_non_finite(tmp_path, step, value):
    trainer = quick_trainer(tmp_path, on_nonfinite="stop")
    trainer.train_model = _Poison(trainer, {step: value})
    with pytest.raises(NonFiniteLoss) as e:
        trainer.fit()
    message = str(e.value)
    steps = _checkpoints_finite(trainer)
    done = step // 2 * 2  # the last epoch end before the bad step (2 steps an epoch)
    ok = f"at step {step}" in message and "\n" not in message and max(steps.values(), default=0) == done
    record("loss becomes NaN/inf, training.on_nonfinite=stop", 1, int(ok),
           "stops with one line naming the step; checkpoints before it finite")
    assert ok, (message, steps)


def test_stop_on_a_nan_image_in_the_data_names_the_step(tmp_path):
    x, y = tiny_data(16)
    x[11] = math.nan  # one corrupt training image
    trainer = quick_trainer(tmp_path, data=(x, y), on_nonfinite="stop")
    first_bad = next(s for s in range(trainer.total_steps) if not torch.isfinite(trainer.batch(s)[0]).all())
    with pytest.raises(NonFiniteLoss) as e:
        trainer.fit()
    steps = _checkpoints_finite(trainer)
    ok = f"at step {first_bad};" in str(e.value) and max(steps.values(), default=0) <= first_bad
    record("a NaN pixel in the training data, on_nonfinite=stop", 1, int(ok),
           f"stops at step {first_bad}, the first batch holding the image")
    assert ok, (str(e.value), steps)


def test_skip_skips_and_counts_the_bad_steps(tmp_path):
    trainer = quick_trainer(tmp_path, on_nonfinite="skip")
    trainer.train_model = _Poison(trainer, {1: math.nan, 4: math.inf})
    trainer.fit()
    logged = json.loads((trainer.out_dir / "metrics.jsonl").read_text().splitlines()[-1])
    steps = _checkpoints_finite(trainer)
    ok = trainer.step == 6 and trainer.skipped == 2 and logged["skipped_steps"] == 2 and steps["last.pt"] == 6
    ok = ok and all(torch.isfinite(p).all() for p in trainer.model.parameters())
    record("loss becomes NaN/inf twice, training.on_nonfinite=skip", 1, int(ok),
           "the run finishes; 2 steps skipped and counted in metrics.jsonl")
    assert ok, (trainer.step, trainer.skipped, logged, steps)


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_nan_gradients_under_a_finite_loss_never_reach_a_checkpoint(tmp_path, mode):
    trainer = quick_trainer(tmp_path, on_nonfinite=mode)
    poisoned = trainer.train_model

    def forward(*args):
        out = poisoned(*args)
        return _NaNGradient.apply(out) if trainer.step == 3 else out

    trainer.train_model = forward
    with pytest.raises(NonFiniteLoss, match="step 4") as e:
        trainer.fit()
    steps = _checkpoints_finite(trainer)
    ok = steps == {"last.pt": 2, "model_epoch_1.pt": 2} and "\n" not in str(e.value)
    record("NaN gradients under a finite loss (weights go bad)", 1, int(ok),
           "stops at the next step or save, naming it; no checkpoint written after")
    assert ok, steps
