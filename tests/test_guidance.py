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
