"""Samplers: pure functions of a denoiser and a list of times.

Every sampler has one signature:

    sampler(denoiser, x, times, path, *, generator=None, callback=None, **options) -> x0

(`generator`: one torch.Generator, or a list with one per image of x.)

- `denoiser(x_t, t) -> (x0_hat, eps_hat)` with t a float in [0, 1]; it hides the model,
  the objective and guidance (see guidance.py);
- `x` is the starting noise at times[0], `times` decreases to 0 (schedules.time_grid);
- `path` gives alpha(t) and sigma(t): a step moves along x_t = alpha x0 + sigma eps;
- `callback(i, t, x_t, x0_hat)` sees every step (for trajectories and progress bars).

Notation per step, from time t to the next, smaller time s:
a_t = alpha(t), s_t = sigma(t), and likewise a_s, s_s.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Callable, Iterator, Optional, Sequence, Union

import torch

from .schedules import NoisePath

Tensor = torch.Tensor
# The one interface a sampler sees (guidance.Denoiser is one): (x_t, t) -> (x0_hat, eps_hat), t a float in [0, 1].
DenoiserFn = Callable[[Tensor, float], tuple[Tensor, Tensor]]
# callback(i, t, x_t, x0_hat), called once a step; None for no callback.
Callback = Optional[Callable[[int, float, Tensor, Tensor], None]]
# schedules.time_grid's 1-D tensor, or any list of floats, decreasing to 0.
Times = Union[Tensor, Sequence[float]]
# One generator for the batch, or one per image (Pipeline.generate); None draws from torch's global stream.
Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def _coeffs(path: NoisePath, t: float) -> tuple[float, float]:
    """alpha(t) and sigma(t) as Python floats."""
    tt = torch.tensor([t], dtype=torch.float64)
    return float(path.alpha(tt)), float(path.sigma(tt))


def _steps(times: Times) -> Iterator[tuple[int, float, float]]:
    """Consecutive (i, t, s) pairs, skipping zero-length steps."""
    times = [float(t) for t in times]
    for i in range(len(times) - 1):
        if times[i] > times[i + 1]:
            yield i, times[i], times[i + 1]


def _posterior(a_t: float, s_t: float, a_s: float, s_s: float) -> tuple[float, float, float]:
    """Coefficients of q(x_s | x_t, x0) = N(c_xt x_t + c_x0 x0, var) for s < t.

    The DDPM posterior (Ho et al. 2020, Eq. 6-7) for any two times of a Gaussian
    path (Kingma et al. 2021, Eq. 32): a_ts = a_t / a_s, s2_ts = s_t^2 - a_ts^2 s_s^2.
    """
    a_ts = a_t / a_s
    s2_ts = max(s_t**2 - a_ts**2 * s_s**2, 0.0)
    c_xt = a_ts * s_s**2 / s_t**2
    c_x0 = a_s * s2_ts / s_t**2
    var = s2_ts * s_s**2 / s_t**2
    return c_xt, c_x0, var


@torch.no_grad()
def sample_ddpm(denoiser: DenoiserFn, x: Tensor, times: Times, path: NoisePath, *,
                generator: Generators = None, callback: Callback = None) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2).

    Each step draws x_s from the posterior q(x_s | x_t, x0 = x0_hat). On the
    1000-step grid with linear betas this is exactly the 2020 sampler.
    """
    for i, t, s in _steps(times):
        x0, eps = denoiser(x, t)
        if callback:
            callback(i, t, x, x0)
        a_t, s_t = _coeffs(path, t)
        a_s, s_s = _coeffs(path, s)
        c_xt, c_x0, var = _posterior(a_t, s_t, a_s, s_s)
        x = c_xt * x + c_x0 * x0
        if var > 0:
            x = x + math.sqrt(var) * _noise_like(x, generator)
    return x


@torch.no_grad()
def sample_ddim(denoiser: DenoiserFn, x: Tensor, times: Times, path: NoisePath, *, eta: float = 0.0,
                generator: Generators = None, callback: Callback = None) -> Tensor:
    """DDIM (Song et al. 2021, Eq. 12): x_s = a_s x0 + sqrt(s_s^2 - c^2) eps + c z.

    c = eta * sqrt(posterior variance) (Eq. 16): eta = 0 is deterministic,
    eta = 1 is DDPM ancestral sampling again.
    """
    for i, t, s in _steps(times):
        x0, eps = denoiser(x, t)
        if callback:
            callback(i, t, x, x0)
        a_t, s_t = _coeffs(path, t)
        a_s, s_s = _coeffs(path, s)
        c = eta * math.sqrt(_posterior(a_t, s_t, a_s, s_s)[2]) if eta > 0 else 0.0
        x = a_s * x0 + math.sqrt(max(s_s**2 - c**2, 0.0)) * eps
        if c > 0:
            x = x + c * _noise_like(x, generator)
    return x


@torch.no_grad()
def sample_euler(denoiser: DenoiserFn, x: Tensor, times: Times, path: NoisePath, *,
                 generator: Generators = None, callback: Callback = None) -> Tensor:
    """Euler on the probability-flow ODE (Karras et al. 2022, Algorithm 1 without the correction).

    In Karras' variables y = x / a and sigma = s / a the ODE is dy / dsigma = eps_hat,
    so an Euler step is y_s = y_t + (sigma_s - sigma_t) eps_hat, i.e.
    x_s = a_s x0_hat + s_s eps_hat: the same update as DDIM with eta = 0. On the flow
    path it is SD3's x_s = x_t + (s - t) u with u = eps_hat - x0_hat.
    """
    return sample_ddim(denoiser, x, times, path, eta=0.0, generator=generator, callback=callback)


@torch.no_grad()
def sample_heun(denoiser: DenoiserFn, x: Tensor, times: Times, path: NoisePath, *,
                generator: Generators = None, callback: Callback = None) -> Tensor:
    """Heun's second-order method on the PF-ODE (Karras et al. 2022, Algorithm 1).

    Take the Euler step, evaluate eps_hat at its end, and step again with the mean
    of the two slopes: x_s = x_euler + (s_s - a_s sigma_t) (eps' - eps_t) / 2.
    Like Karras, the last step (to sigma = 0) is plain Euler; so is a first step
    from alpha = 0, where sigma_t = s_t / a_t is infinite.
    """
    for i, t, s in _steps(times):
        x0, eps = denoiser(x, t)
        if callback:
            callback(i, t, x, x0)
        a_t, s_t = _coeffs(path, t)
        a_s, s_s = _coeffs(path, s)
        x_euler = a_s * x0 + s_s * eps
        if s_s == 0 or a_t == 0:
            x = x_euler
            continue
        _, eps_next = denoiser(x_euler, s)
        x = x_euler + (s_s - a_s * s_t / a_t) * (eps_next - eps) / 2
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser: DenoiserFn, x: Tensor, times: Times, path: NoisePath, *,
                    generator: Generators = None, callback: Callback = None) -> Tensor:
    """DPM-Solver++(2M), multistep second order in log-SNR (Lu et al. 2022, Algorithm 2).

    With lambda = log(a / s) and h = lambda_s - lambda_t:
    x_s = (s_s / s_t) x_t - a_s (exp(-h) - 1) D, where D = x0_hat for a first-order
    step and D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev with r = h_prev / h otherwise.
    """
    x0_prev, h_prev = None, None
    for i, t, s in _steps(times):
        x0, _ = denoiser(x, t)
        if callback:
            callback(i, t, x, x0)
        a_t, s_t = _coeffs(path, t)
        a_s, s_s = _coeffs(path, s)
        lam_t = math.log(a_t / s_t) if a_t > 0 else -math.inf
        lam_s = math.log(a_s / s_s) if s_s > 0 else math.inf
        h = lam_s - lam_t
        exp_neg_h = (a_t * s_s) / (s_t * a_s)  # exp(-h), finite even where h is infinite
        d = x0
        if x0_prev is not None and math.isfinite(h) and h_prev is not None:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = (s_s / s_t) * x + a_s * (1 - exp_neg_h) * d
        x0_prev, h_prev = x0, h
    return x


@torch.no_grad()
def sample_consistency(denoiser: DenoiserFn, x: Tensor, times: Times, path: NoisePath, *,
                       generator: Generators = None, callback: Callback = None) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1).

    A consistency model maps any x_t straight to an estimate of x0; between steps that
    estimate is noised afresh to the next, smaller time: x_s = a_s x0_hat + s_s z with new z.
    One step is a single network evaluation; more steps trade time for quality.
    """
    for i, t, s in _steps(times):
        x0, _ = denoiser(x, t)
        if callback:
            callback(i, t, x, x0)
        a_s, s_s = _coeffs(path, s)
        x = a_s * x0 + s_s * _noise_like(x, generator) if s_s > 0 else x0
    return x


def _noise_like(x: Tensor, generator: Generators) -> Tensor:
    """Fresh noise shaped like x, from one torch.Generator or from a list of them, one per image.

    With one generator per image (Pipeline.generate), what image i draws at each step depends on
    its own stream only, so the batch size cannot change a stochastic sampler's images.
    Drawn on the generator's device: a CPU generator gives the same images on every device.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != len(x):
            raise ValueError(f"{len(generator)} noise generators for a batch of {len(x)}")
        return torch.cat([_noise_like(x[i : i + 1], g) for i, g in enumerate(generator)])
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


SAMPLERS = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "heun": sample_heun,
    "dpm++2m": sample_dpmpp_2m,
    "consistency": sample_consistency,
}


def describe(sampler: str) -> str:
    """A sampler in one line, for --sampler's help: its docstring's first line up to the citation,
    e.g. "DDPM ancestral sampling (Ho et al. 2020, Algorithm 2)"."""
    first = (inspect.getdoc(SAMPLERS[sampler]) or sampler).splitlines()[0]
    cited = re.match(r".*? \(.*?\)", first)  # the method, then " (paper, equation)"
    return cited.group(0) if cited else first.rstrip(".")


def sampler_options(sampler: str) -> list[str]:
    """A sampler's own keyword options beyond the common signature (DDIM: eta); Pipeline fills them
    from the config's sampling section of the same name."""
    common = {"denoiser", "x", "times", "path", "generator", "callback"}
    return [p for p in inspect.signature(SAMPLERS[sampler]).parameters if p not in common]


# Samplers that evaluate the model twice a step (a predictor and a corrector); the last step is plain Euler.
TWO_EVALUATIONS = {"heun"}


def count_nfe(sampler: str, steps: int) -> int:
    """Model evaluations a sampler spends on `steps` steps (Heun's last step is Euler)."""
    return 2 * steps - 1 if sampler in TWO_EVALUATIONS else steps
