"""Samplers against an exactly known denoiser.

For data x0 ~ N(mu, diag(v)) the posterior mean is closed-form (a Gaussian conditioned on
x_t = a x0 + s eps): E[x0 | x_t] = mu + a v / (a^2 v + s^2) (x_t - a mu). With that ideal
denoiser every correct sampler must land on N(mu, v), and the ODE samplers' errors can be
measured against a fine-step reference.
"""

import pytest
import torch

from difflab.settings import DiffusionConfig
from difflab.samplers import SAMPLERS
from difflab.schedules import build_path, time_grid

MU = torch.tensor([0.5, -0.3, 0.0, 0.2], dtype=torch.float64)
VAR = torch.tensor([0.09, 0.25, 0.16, 0.36], dtype=torch.float64)
PATHS = {
    "linear": DiffusionConfig(schedule="linear"),
    "cosine": DiffusionConfig(schedule="cosine"),
    "flow": DiffusionConfig(schedule="flow"),
    "zero_snr": DiffusionConfig(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, zero_terminal_snr=True),
}


def gaussian_denoiser(path):
    def denoise(x, t):
        tt = torch.tensor([t], dtype=torch.float64)
        a, s = float(path.alpha(tt)), float(path.sigma(tt))
        x0 = MU + a * VAR / (a**2 * VAR + s**2) * (x - a * MU)
        eps = (x - a * x0) / s if s > 0 else torch.zeros_like(x)
        return x0, eps
    return denoise


def start(path, n, seed=0, t0=1.0):
    """x at t0 drawn from the true marginal N(a mu, a^2 v + s^2)."""
    g = torch.Generator().manual_seed(seed)
    tt = torch.tensor([t0], dtype=torch.float64)
    a, s = float(path.alpha(tt)), float(path.sigma(tt))
    return a * MU + (a**2 * VAR + s**2).sqrt() * torch.randn(n, 4, generator=g, dtype=torch.float64)


DIFFUSION_SAMPLERS = [s for s in SAMPLERS if s != "consistency"]  # consistency: for consistency models (below)


@pytest.mark.parametrize("path_name", PATHS)
@pytest.mark.parametrize("sampler", DIFFUSION_SAMPLERS)
def test_every_sampler_lands_on_the_data_distribution(sampler, path_name):
    path = build_path(PATHS[path_name])
    steps = 1000 if sampler == "ddpm" else 500
    times = time_grid(steps, "trailing").double().tolist()
    x = start(path, 20000)
    out = SAMPLERS[sampler](gaussian_denoiser(path), x, times, path, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out.mean(0), MU, atol=0.02), out.mean(0)
    assert torch.allclose(out.var(0), VAR, rtol=0.05), out.var(0)


def consistency_function(path):
    """The exact consistency function of Gaussian data: the probability-flow ODE's map from x_t to x0,
    which keeps each point's standardised position, x0 = mu + sqrt(v / (a^2 v + s^2)) (x_t - a mu)."""
    def f(x, t):
        tt = torch.tensor([t], dtype=torch.float64)
        a, s = float(path.alpha(tt)), float(path.sigma(tt))
        return MU + (VAR / (a**2 * VAR + s**2)).sqrt() * (x - a * MU), None
    return f


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("path_name", ["linear", "flow"])
def test_consistency_sampling_with_the_exact_consistency_function_lands_on_the_data(steps, path_name):
    """Song et al. 2023, Algorithm 1: one jump, or jumps with fresh noise in between, give data samples;
    the posterior mean instead (a diffusion denoiser) would shrink the variance."""
    path = build_path(PATHS[path_name])
    times = time_grid(steps, "trailing").double().tolist()
    x = start(path, 20000)
    out = SAMPLERS["consistency"](consistency_function(path), x, times, path,
                                  generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out.mean(0), MU, atol=0.02), out.mean(0)
    assert torch.allclose(out.var(0), VAR, rtol=0.05), out.var(0)
    shrunk = SAMPLERS["consistency"](gaussian_denoiser(path), x, times, path,
                                     generator=torch.Generator().manual_seed(1))
    assert (shrunk.var(0) < 0.9 * VAR).all()


def test_ddim_eta_1_is_ddpm_ancestral():
    path = build_path(PATHS["linear"])
    times = time_grid(20, "trailing").double().tolist()
    x = start(path, 500)
    a = SAMPLERS["ddpm"](gaussian_denoiser(path), x, times, path, generator=torch.Generator().manual_seed(7))
    b = SAMPLERS["ddim"](gaussian_denoiser(path), x, times, path, eta=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("sampler", ["ddim", "euler", "heun", "dpm++2m"])
def test_deterministic_samplers_are_deterministic(sampler):
    path = build_path(PATHS["cosine"])
    times = time_grid(10, "trailing").double().tolist()
    x = start(path, 100)
    a = SAMPLERS[sampler](gaussian_denoiser(path), x, times, path, generator=torch.Generator().manual_seed(1))
    b = SAMPLERS[sampler](gaussian_denoiser(path), x, times, path, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def steps_to_reach(sampler, path, tol, x, reference):
    for steps in (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256):
        times = time_grid(steps, "trailing").double().tolist()
        err = (SAMPLERS[sampler](gaussian_denoiser(path), x, times, path) - reference).abs().max()
        if err < tol:
            return steps * (2 if sampler == "heun" else 1)  # model evaluations
    return 10**9


# Smooth paths only: the discrete schedules interpolate alpha_bar between their 1000 grid
# points, and the kinks there cap any method at first order between grid points.
@pytest.mark.parametrize("path_name", ["cosine", "flow"])
def test_second_order_samplers_need_fewer_evaluations_than_euler(path_name):
    path = build_path(PATHS[path_name])
    x = start(path, 200, t0=1.0)
    reference = SAMPLERS["heun"](gaussian_denoiser(path), x, time_grid(2000, "trailing").double().tolist(), path)
    nfe = {s: steps_to_reach(s, path, 2e-3, x, reference) for s in ("euler", "heun", "dpm++2m")}
    assert nfe["heun"] < nfe["euler"] and nfe["dpm++2m"] < nfe["euler"], nfe
