"""Noise paths: endpoints, monotone SNR, and a forward process with the promised moments."""

import math

import pytest
import torch

from difflab.settings import DiffusionConfig
from difflab.schedules import build_path, sample_training_t, shift_time, time_grid

PATHS = {
    "linear": DiffusionConfig(schedule="linear"),
    "scaled_linear": DiffusionConfig(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "cosine": DiffusionConfig(schedule="cosine"),
    "flow": DiffusionConfig(schedule="flow", target="flow"),
    "linear_zero_snr": DiffusionConfig(schedule="linear", zero_terminal_snr=True),
}


@pytest.mark.parametrize("name", PATHS)
def test_endpoints_and_monotone_snr(name):
    path = build_path(PATHS[name])
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    a, s = path.alpha(t), path.sigma(t)
    assert a[0] == pytest.approx(1.0) and s[0] == pytest.approx(0.0, abs=1e-12)
    assert a[-1] < 0.08 and s[-1] > 0.99  # (almost) pure noise at t = 1
    snr = a**2 / s.clamp(min=1e-30) ** 2
    assert (snr[1:] <= snr[:-1]).all(), "SNR must fall as t grows"
    if name != "flow":  # variance preserving
        assert torch.allclose(a**2 + s**2, torch.ones_like(a), atol=1e-6)


def test_zero_terminal_snr_reaches_pure_noise():
    path = build_path(PATHS["linear_zero_snr"])
    assert float(path.alpha(torch.tensor([1.0]))) == 0.0
    plain = build_path(PATHS["linear"])
    assert float(plain.alpha(torch.tensor([1.0]))) > 0.0
    # the start of the schedule is unchanged
    t = torch.tensor([0.001])
    assert float(path.alpha(t)) == pytest.approx(float(plain.alpha(t)), rel=1e-6)


def test_discrete_linear_matches_ddpm_products():
    path = build_path(PATHS["linear"])
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    for k in (1, 10, 500, 1000):
        assert float(path.alpha(torch.tensor([k / 1000], dtype=torch.float64))) ** 2 == pytest.approx(
            float(alpha_bar[k - 1]), rel=1e-9
        )


@pytest.mark.parametrize("name", PATHS)
def test_forward_process_moments(name):
    """x_t = alpha x0 + sigma eps has mean alpha x0 and variance sigma^2 (Ho et al. 2020, Eq. 4)."""
    path = build_path(PATHS[name])
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor(0.7)
    for t in (0.1, 0.5, 0.9):
        tt = torch.tensor([t])
        a, s = path.alpha(tt), path.sigma(tt)
        eps = torch.randn(200_000, generator=g)
        x_t = a * x0 + s * eps
        assert float(x_t.mean()) == pytest.approx(float(a * x0), abs=4 * float(s) / math.sqrt(2e5) + 1e-6)
        assert float(x_t.var()) == pytest.approx(float(s**2), rel=0.02)


def test_training_t_distributions():
    g = torch.Generator().manual_seed(0)
    t = sample_training_t(DiffusionConfig(t_sampling="uniform_discrete"), 10000, g, "cpu")
    assert torch.allclose((t * 1000).round(), t * 1000, atol=1e-3) and t.min() >= 1e-3 and t.max() <= 1
    t = sample_training_t(DiffusionConfig(t_sampling="logit_normal", logit_mean=0.0, logit_std=1.0), 20000, g, "cpu")
    # logit-normal: the logit of t is N(m, s); its median is sigmoid(m) = 0.5
    logit = torch.log(t / (1 - t))
    assert float(logit.mean()) == pytest.approx(0.0, abs=0.05) and float(logit.std()) == pytest.approx(1.0, rel=0.05)
    t = sample_training_t(DiffusionConfig(t_sampling="logit_normal", logit_mean=1.0), 20000, g, "cpu")
    assert float(t.median()) == pytest.approx(1 / (1 + math.exp(-1)), abs=0.02)


def test_time_grids():
    lead = time_grid(50, "leading")
    assert len(lead) == 51 and lead[0] == pytest.approx(0.981) and lead[-1] == 0
    trail = time_grid(50, "trailing")
    assert trail[0] == 1 and trail[-1] == 0 and (trail[1:] < trail[:-1]).all()
    ddpm = time_grid(1000, "leading")
    assert torch.allclose(ddpm[:-1], torch.arange(1000, 0, -1) / 1000)
    shifted = time_grid(10, "trailing", shift=3.0)
    assert shifted[0] == 1 and shifted[-1] == 0 and (shifted[1:-1] > trail[::5][1:-1]).all()
    assert float(shift_time(torch.tensor(0.5), 3.0)) == pytest.approx(0.75)


def test_a_two_step_grid_takes_its_midpoint():
    assert time_grid(2, "trailing").tolist() == [1.0, 0.5, 0.0]
    assert time_grid(2, "trailing", midpoint=0.8).tolist() == pytest.approx([1.0, 0.8, 0.0])
    assert time_grid(4, "trailing", midpoint=0.8).tolist() == time_grid(4, "trailing").tolist()  # 2 steps only
    assert time_grid(2, "trailing", shift=3.0, midpoint=0.3)[1].item() == pytest.approx(0.3)  # the final time
    with pytest.raises(ValueError, match="midpoint"):
        time_grid(2, "leading", midpoint=0.6)  # leading 2 steps start at 0.501: the midpoint must lie below


def test_the_pipeline_samples_two_steps_through_the_configs_midpoint(tmp_path):
    """sampling.midpoint reaches the sampler's grid (config or per call), and changes the images it draws."""
    from conftest import tiny_config
    from difflab.models import build_model
    from difflab.pipeline import Pipeline

    cfg = tiny_config(tmp_path, sampling={"sampler": "ddim", "steps": 2, "spacing": "trailing", "midpoint": 0.7})
    torch.manual_seed(0)
    pipe = Pipeline(build_model(cfg.model).eval(), cfg, torch.device("cpu"))
    seen = []
    result = pipe.generate(torch.tensor([3]), steps=2, cfg_scale=1.0, seed=0,
                           callback=lambda i, t, x_t, x0: seen.append(round(float(t), 6)))
    assert seen == [1.0, 0.7]
    even = pipe.generate(torch.tensor([3]), steps=2, cfg_scale=1.0, seed=0, midpoint=0.5)
    assert not torch.equal(result.images, even.images)
