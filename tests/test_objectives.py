"""Objectives: the exact target gives back x0 and eps; the conversion is affine, so CFG agrees everywhere."""

import pytest
import torch

from difflab.settings import DiffusionConfig
from difflab.objectives import OBJECTIVES, broadcast, build_objective
from difflab.schedules import build_path

SCHEDULES = ["linear", "scaled_linear", "cosine", "flow"]


def setup(schedule, seed=0):
    g = torch.Generator().manual_seed(seed)
    path = build_path(DiffusionConfig(schedule=schedule, beta_start=1e-4, beta_end=0.02))
    x0 = torch.rand(6, 1, 4, 4, generator=g) * 2 - 1
    eps = torch.randn(6, 1, 4, 4, generator=g)
    t = torch.tensor([0.02, 0.1, 0.3, 0.5, 0.8, 0.97])
    a, s = broadcast(path.alpha(t), x0), broadcast(path.sigma(t), x0)
    return x0, eps, a, s, a * x0 + s * eps


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", OBJECTIVES)
def test_exact_target_recovers_x0_and_eps(name, schedule):
    obj = build_objective(name)
    x0, eps, a, s, x_t = setup(schedule)
    x0_hat, eps_hat = obj.to_x0_eps(obj.target(x0, eps, a, s), x_t, a, s)
    assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.allclose(eps_hat, eps, atol=1e-4)


def test_targets_by_hand():
    x0, eps = torch.tensor([0.5]), torch.tensor([-1.0])
    a, s = torch.tensor([0.6]), torch.tensor([0.8])
    assert float(build_objective("v").target(x0, eps, a, s)) == pytest.approx(0.6 * -1.0 - 0.8 * 0.5)
    assert float(build_objective("flow").target(x0, eps, a, s)) == pytest.approx(-1.5)
    assert float(build_objective("eps").target(x0, eps, a, s)) == -1.0
    assert float(build_objective("x0").target(x0, eps, a, s)) == 0.5


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", OBJECTIVES)
def test_cfg_in_output_space_equals_cfg_on_eps(name, schedule):
    """Guidance mixes outputs or (x0, eps): the same thing, because to_x0_eps is affine in out."""
    obj = build_objective(name)
    _, _, a, s, x_t = setup(schedule)
    g = torch.Generator().manual_seed(1)
    out_c, out_u = torch.randn(2, *x_t.shape, generator=g)
    w = 4.0
    guided_out = out_u + w * (out_c - out_u)
    x0_a, eps_a = obj.to_x0_eps(guided_out, x_t, a, s)
    (x0_c, eps_c), (x0_u, eps_u) = obj.to_x0_eps(out_c, x_t, a, s), obj.to_x0_eps(out_u, x_t, a, s)
    assert torch.allclose(eps_a, eps_u + w * (eps_c - eps_u), atol=1e-4)
    assert torch.allclose(x0_a, x0_u + w * (x0_c - x0_u), atol=1e-4)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", OBJECTIVES)
def test_x0_error_scale_is_how_an_output_error_moves_x0_hat(name, schedule):
    obj = build_objective(name)
    # float64: eps-prediction divides by alpha ~ 0.006 near t = 1, where float32 rounding alone
    # (about 1e-5 of x_t / alpha ~ 150) would exceed the tolerance for some draws of err
    x0, eps, a, s, x_t = (v.double() for v in setup(schedule))
    out = obj.target(x0, eps, a, s)
    err = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype) * 1e-2
    moved = obj.to_x0_eps(out + err, x_t, a, s)[0] - obj.to_x0_eps(out, x_t, a, s)[0]
    assert torch.allclose(moved, obj.x0_error_scale(a, s) * err, atol=1e-5)


def test_min_snr_weights_are_the_papers_for_eps_and_v():
    from difflab.objectives import min_snr_weight

    path = build_path(DiffusionConfig(schedule="linear", beta_start=1e-4, beta_end=0.02))
    t = torch.tensor([0.005, 0.05, 0.3, 0.9])
    a, s = path.alpha(t), path.sigma(t)
    snr, gamma = a**2 / s**2, 5.0
    assert snr[0] > gamma > snr[-1]  # both sides of the cap are tested
    eps_w = min_snr_weight(build_objective("eps"), a, s, gamma)
    v_w = min_snr_weight(build_objective("v"), a, s, gamma)
    assert torch.allclose(eps_w, snr.clamp(max=gamma) / snr, rtol=1e-4)  # Hang et al. 2023, the eps case
    assert torch.allclose(v_w, snr.clamp(max=gamma) / (snr + 1), rtol=1e-4)
    assert torch.allclose(min_snr_weight(build_objective("x0"), a, s, gamma), snr.clamp(max=gamma), rtol=1e-4)
