"""The denoiser wrapper: clipping x0_hat keeps it in the data range and keeps (x0, eps) consistent."""

import pytest
import torch

from difflab.settings import DiffusionConfig
from difflab.guidance import Denoiser
from difflab.objectives import OBJECTIVES, broadcast, build_objective
from difflab.schedules import build_path


class Loud(torch.nn.Module):
    """A 'network' whose output is far too large: x0_hat leaves [-1, 1] for every objective."""

    def forward(self, x, t, y):
        return 5 * torch.ones_like(x) * (1 + (y[:, None, None, None] == 3).float())


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
@pytest.mark.parametrize("name", OBJECTIVES)
def test_clip_x0_bounds_x0_and_keeps_x_t_equal_to_a_x0_plus_s_eps(name, cfg_scale):
    path = build_path(DiffusionConfig(schedule="flow" if name == "flow" else "scaled_linear"))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 1, 6, 6, generator=g), torch.tensor([0, 3, 5, 3])
    t = 0.6
    a = broadcast(path.alpha(torch.full((4,), t)), x)
    s = broadcast(path.sigma(torch.full((4,), t)), x)
    raw = Denoiser(Loud(), build_objective(name), path, y, cfg_scale=cfg_scale)
    clipped = Denoiser(Loud(), build_objective(name), path, y, cfg_scale=cfg_scale, clip_x0=True)
    x0_raw, _ = raw(x, t)
    x0, eps = clipped(x, t)
    assert x0_raw.abs().max() > 1  # the test would prove nothing if nothing needed clipping
    assert x0.abs().max() <= 1
    assert torch.allclose(a * x0 + s * eps, x, atol=1e-4)
    inside = x0_raw.abs() < 1
    assert torch.allclose(x0[inside], x0_raw[inside])  # what was in range is untouched


class Constant(torch.nn.Module):
    """A 'network' that outputs `value` for every condition except the null class, where it outputs NaN: a mix that
    consulted the unconditional branch would show it."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x, t, y):
        from difflab.models import NULL_CLASS

        out = torch.full_like(x, self.value)
        out[y == NULL_CLASS] = float("nan")
        return out


def test_autoguidance_mixes_the_model_with_its_weaker_guide_never_the_unconditional_branch():
    """Karras et al. 2024, Eq. 2: d = d_guide + w (d_model - d_guide), inside the guidance interval only."""
    path = build_path(DiffusionConfig(schedule="flow"))
    x, y = torch.zeros(3, 1, 4, 4), torch.tensor([1, 2, 3])
    den = Denoiser(Constant(0.5), build_objective("flow"), path, y, cfg_scale=3.0, interval=(0.2, 0.8),
                   guide=Constant(0.1))
    # flow objective: out = eps - x0 and x = (1 - t) x0 + t eps, so at x = 0: x0 = -t * out
    x0, _ = den(x, 0.5)
    assert torch.allclose(x0, torch.full_like(x, -0.5 * (0.1 + 3.0 * (0.5 - 0.1))))
    x0, _ = den(x, 0.9)  # outside the interval: the model alone, unguided
    assert torch.allclose(x0, torch.full_like(x, -0.9 * 0.5))
    assert den.calls == 2  # a guided step counts once, as CFG's doubled batch does
    cfg = Denoiser(Constant(0.5), build_objective("flow"), path, y, cfg_scale=3.0)
    assert torch.isnan(cfg(x, 0.5)[0]).all()  # plain CFG does consult the unconditional branch


def test_a_guide_is_loaded_from_an_override_checked_against_the_model_and_never_from_a_stored_config(tmp_path):
    from conftest import tiny_config, tiny_data

    from difflab.config import ConfigError
    from difflab.infra.checkpoint import load_checkpoint, save_checkpoint
    from difflab.pipeline import Pipeline
    from difflab.training import Trainer

    def trained(name, steps, **sections):
        cfg = tiny_config(tmp_path / name, training={"max_steps": steps}, **sections)
        trainer = Trainer(cfg, data=tiny_data(32), quiet=True)
        trainer.fit()
        return trainer.out_dir / "checkpoints" / "last.pt"

    good, weak = trained("good", 4), trained("weak", 1)
    labels = torch.arange(4)
    plain = Pipeline.from_checkpoint(good, "cpu").generate(labels, steps=3, seed=1).images
    auto = Pipeline.from_checkpoint(good, "cpu", sampling=[f"sampling.guide={weak}"])
    assert auto.guide is not None and auto.info["guide"] == str(weak)
    guided = auto.generate(labels, steps=3, seed=1).images
    assert not torch.allclose(plain, guided)  # the guide changed the images
    assert torch.equal(guided, Pipeline.from_checkpoint(good, "cpu", sampling=[f"sampling.guide={weak}"])
                       .generate(labels, steps=3, seed=1).images)  # and the same way every time

    other = trained("flow", 1, diffusion={"target": "flow", "schedule": "flow"})
    with pytest.raises(ConfigError, match="its diffusion section .* differ"):
        Pipeline.from_checkpoint(good, "cpu", sampling=[f"sampling.guide={other}"])
    with pytest.raises(ConfigError, match="sampling.guide"):
        Pipeline.from_checkpoint(good, "cpu", sampling=["sampling.guide=''"])

    state = load_checkpoint(good)  # a checkpoint whose stored config names a guide: the name is not followed
    state["config"]["sampling"]["guide"] = str(tmp_path / "elsewhere.pt")
    state.pop("sha256", None)  # save_checkpoint writes the digest of the contents anew
    stored = save_checkpoint(state, tmp_path / "stored" / "last.pt")
    pipe = Pipeline.from_checkpoint(stored, "cpu")
    assert pipe.guide is None and pipe.cfg.sampling.guide is None
