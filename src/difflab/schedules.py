"""Noise paths x_t = alpha(t) x0 + sigma(t) eps, as pure functions of continuous t in [0, 1].

t = 0 is clean data and t = 1 is (almost) pure noise. The discrete 1000-step
schedules of DDPM and Stable Diffusion are the same thing read at t = k / 1000.

| path          | paper                          | alpha(t), sigma(t)                            |
|---------------|--------------------------------|-----------------------------------------------|
| linear        | Ho et al. 2020, Sec. 4         | alpha_bar = prod(1 - beta_k), betas linear    |
| scaled_linear | Rombach et al. 2022 (SD code)  | betas linear in sqrt(beta)                    |
| cosine        | Nichol & Dhariwal 2021, Eq. 17 | alpha_bar = cos^2((t + s) / (1 + s) * pi / 2) |
| flow          | Liu et al. 2022; Esser 2024    | alpha = 1 - t, sigma = t                      |

The first three are variance preserving (alpha^2 + sigma^2 = 1); flow is not.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
from .settings import DiffusionConfig



class NoisePath:
    """alpha(t) and sigma(t); subclasses say how. All methods take and return tensors."""

    name = "path"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class DiscreteVPPath(NoisePath):
    """A DDPM beta schedule over `num_timesteps` steps, read at continuous t.

    alpha_bar_k = prod_{i<=k} (1 - beta_i)  (Ho et al. 2020, Eq. 4), with t = k / T.
    Between grid points log(alpha_bar) is interpolated linearly, which is exact at
    the grid points and smooth enough for continuous-time samplers in between.
    """

    def __init__(self, betas: torch.Tensor, name: str):
        self.name = name
        alpha_bar = torch.cumprod(1 - betas.double(), dim=0)
        # index 0 is t = 0 (clean data): alpha_bar = 1
        self.log_alpha_bar = torch.cat([torch.zeros(1, dtype=torch.float64), alpha_bar.log()])
        self.num_timesteps = len(betas)

    def _alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        table = self.log_alpha_bar.to(t.device)
        pos = t.double().clamp(0, 1) * self.num_timesteps
        near = pos.round()  # k / T in floating point should hit grid point k exactly
        pos = torch.where((pos - near).abs() < 1e-6, near, pos)
        lo = pos.floor().long().clamp(max=self.num_timesteps - 1)
        frac = pos - lo
        lo_val, hi_val = table[lo], table[lo + 1]
        log_ab = lo_val + frac * (hi_val - lo_val)
        # exact grid points (and the -inf of a zero-SNR end) without 0 * inf = nan
        log_ab = torch.where(frac == 0, lo_val, torch.where(frac == 1, hi_val, log_ab))
        return log_ab.exp()

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self._alpha_bar(t).sqrt().to(t.dtype)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return (1 - self._alpha_bar(t)).clamp(min=0).sqrt().to(t.dtype)


class ZeroTerminalSNRPath(DiscreteVPPath):
    """Rescale a schedule so alpha(1) = 0 exactly (Lin et al. 2023, Algorithm 1).

    SD2's schedules leave a little signal at t = 1 (alpha ~ 0.07), so training never
    sees pure noise while sampling starts from it. Shift and scale sqrt(alpha_bar)
    so its last value is 0 and its first is unchanged.
    """

    def __init__(self, betas: torch.Tensor, name: str):
        super().__init__(betas, name + "+zero_snr")
        sqrt_ab = (self.log_alpha_bar[1:] / 2).exp()
        first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
        sqrt_ab = (sqrt_ab - last) * first / (first - last)
        self.sqrt_alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), sqrt_ab])

    def _alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        # Interpolate sqrt(alpha_bar) linearly: it reaches 0 at t = 1, where its log cannot.
        table = self.sqrt_alpha_bar.to(t.device)
        pos = t.double().clamp(0, 1) * self.num_timesteps
        lo = pos.floor().long().clamp(max=self.num_timesteps - 1)
        return (table[lo] + (pos - lo) * (table[lo + 1] - table[lo])) ** 2


class CosinePath(NoisePath):
    """alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t + s) / (1 + s) * pi / 2) (Nichol & Dhariwal 2021, Eq. 17)."""

    name = "cosine"

    def __init__(self, s: float = 0.008, max_beta_clip: float = 0.999):
        self.s = s
        # The paper clips beta at 0.999, i.e. keeps alpha_bar(1) slightly above 0.
        self.min_alpha = math.sqrt(1e-8) if max_beta_clip else 0.0

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        f = torch.cos((t.clamp(0, 1) + self.s) / (1 + self.s) * math.pi / 2)
        f0 = math.cos(self.s / (1 + self.s) * math.pi / 2)
        return (f / f0).clamp(min=self.min_alpha, max=1.0)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return (1 - self.alpha(t) ** 2).clamp(min=0).sqrt()


class FlowPath(NoisePath):
    """Rectified flow's straight line x_t = (1 - t) x0 + t eps (Liu et al. 2022; Esser et al. 2024, Eq. 3)."""

    name = "flow"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1 - t.clamp(0, 1)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return t.clamp(0, 1)


def linear_betas(num: int, start: float, end: float) -> torch.Tensor:
    """DDPM's betas, linear from 1e-4 to 0.02 over 1000 steps (Ho et al. 2020, Sec. 4)."""
    return torch.linspace(start, end, num, dtype=torch.float64)


def scaled_linear_betas(num: int, start: float, end: float) -> torch.Tensor:
    """Stable Diffusion's betas: linear in sqrt(beta), 0.00085 to 0.012 in SD's configs."""
    return torch.linspace(start**0.5, end**0.5, num, dtype=torch.float64) ** 2


def _discrete(make_betas: Callable[[int, float, float], torch.Tensor]) -> Callable[[DiffusionConfig], NoisePath]:
    """A DDPM-style schedule from its betas (rescaled to zero terminal SNR if asked)."""

    def build(cfg: DiffusionConfig) -> NoisePath:
        betas = make_betas(cfg.num_timesteps, cfg.beta_start, cfg.beta_end)
        return (ZeroTerminalSNRPath if cfg.zero_terminal_snr else DiscreteVPPath)(betas, cfg.schedule)

    return build


# diffusion.schedule -> the path it builds
PATHS = {
    "linear": _discrete(linear_betas),  # DDPM (Ho et al. 2020)
    "scaled_linear": _discrete(scaled_linear_betas),  # Stable Diffusion
    "cosine": lambda cfg: CosinePath(max_beta_clip=not cfg.zero_terminal_snr),  # Nichol & Dhariwal 2021
    "flow": lambda cfg: FlowPath(),  # rectified flow (Liu et al. 2022; SD3)
}


def build_path(cfg: DiffusionConfig) -> NoisePath:
    """The config's noise path."""
    return PATHS[cfg.schedule](cfg)


# ---------------------------------------------------------------- training times


def sample_training_t(cfg: DiffusionConfig, n: int, generator: torch.Generator,
                      device: Union[str, torch.device]) -> torch.Tensor:
    """Draw the training times t in (0, 1].

    - uniform_discrete: k / T with k uniform in 1..T (Ho et al. 2020, Algorithm 1)
    - uniform: continuous U(0, 1]
    - logit_normal: t = sigmoid(m + s * n), n ~ N(0, 1) (Esser et al. 2024, Sec. 3.1, Eq. 19),
      which spends more training on the middle of the path where the task is hardest.
    """
    if cfg.t_sampling == "uniform_discrete":
        k = torch.randint(1, cfg.num_timesteps + 1, (n,), generator=generator, device=device)
        return k.float() / cfg.num_timesteps
    if cfg.t_sampling == "uniform":
        u = torch.rand(n, generator=generator, device=device)
        return (1 - u).clamp(min=1e-5)  # (0, 1]
    z = torch.randn(n, generator=generator, device=device)
    return torch.sigmoid(cfg.logit_mean + cfg.logit_std * z).clamp(1e-5, 1.0)


# ---------------------------------------------------------------- sampling grids


def noise_ratio(path: "NoisePath", t: torch.Tensor) -> torch.Tensor:
    """sigma(t) / alpha(t): EDM's sigma (Karras et al. 2022, Sec. 2), the noise level consistency models use."""
    return path.sigma(t) / path.alpha(t).clamp(min=1e-12)


def time_at_ratio(path: "NoisePath", ratio: torch.Tensor, points: int = 4097) -> torch.Tensor:
    """The time t at which the path's noise-to-signal ratio sigma(t) / alpha(t) equals `ratio` (clamped to [0, 1]).

    That ratio is EDM's sigma (Karras et al. 2022, Sec. 2: x_t / alpha = x0 + (sigma / alpha) eps), the noise level
    consistency models are written in; it increases with t on every path, so a table of it inverts by interpolation.
    """
    ts = torch.linspace(0, 1, points, dtype=torch.float64, device=ratio.device)
    table = noise_ratio(path, ts).double()  # increasing; very large at a zero-SNR end
    r = ratio.double().clamp(min=0, max=float(table[-1]))
    hi = torch.searchsorted(table, r).clamp(1, points - 1)
    lo = hi - 1
    frac = ((r - table[lo]) / (table[hi] - table[lo]).clamp(min=1e-30)).clamp(0, 1)
    return (ts[lo] + frac * (ts[hi] - ts[lo])).to(ratio.dtype)


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3/Flux timestep shift: t' = s t / (1 + (s - 1) t) (Esser et al. 2024, Eq. 23).

    s > 1 moves the sampling steps towards the noisy end, which higher resolutions
    (more pixels, so more signal survives a given noise level) need.
    """
    return shift * t / (1 + (shift - 1) * t)


def time_grid(steps: int, spacing: str = "leading", shift: float = 1.0, num_timesteps: int = 1000,
              midpoint: Optional[float] = None) -> torch.Tensor:
    """steps + 1 decreasing times from the start of sampling down to exactly 0.

    - leading (DDIM, SD1/SD2 samplers): t_i = (i * (T // steps) + 1) / T, so the first step
      starts below t = 1 and never sees pure noise (the flaw Lin et al. 2023, Table 2, point out);
    - trailing (Lin et al. 2023, Sec. 3.3): evenly spaced from t = 1 down.
    A shift (SD3) then bends the grid. With steps = T, leading visits every k / T: DDPM.
    With 2 steps, `midpoint` (below the start) replaces the one time between start and end: the grid's
    even split is not the best place for it (tuned per model in docs/fewstep.md; ignored for other step counts).
    """
    if spacing == "leading":
        stride = max(num_timesteps // steps, 1)
        ks = torch.arange(steps - 1, -1, -1, dtype=torch.float64) * stride + 1
        ts = torch.cat([ks / num_timesteps, torch.zeros(1, dtype=torch.float64)])
    else:
        ts = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    if shift != 1.0:
        ts = shift_time(ts, shift)
    if midpoint is not None and steps == 2:
        if not 0 < midpoint < ts[0]:
            raise ValueError(f"midpoint {midpoint}: expected a time between 0 and the grid's start {ts[0].item():g}")
        ts[1] = midpoint
    return ts.float()
