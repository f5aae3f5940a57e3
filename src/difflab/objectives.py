"""What the network predicts: eps, x0, v or the flow velocity, in historical order.

Every objective answers the same two questions for a path x_t = a x0 + s eps
(a = alpha(t), s = sigma(t), see schedules.py):

- `target(x0, eps, a, s)`: what the model is trained to output;
- `to_x0_eps(out, x_t, a, s)`: turn a model output back into (x0_hat, eps_hat).

The second map is affine in `out` for every objective, so classifier-free
guidance gives the same result whether it mixes outputs, x0 or eps
(tests/test_objectives.py checks it).
"""

from __future__ import annotations

import torch

from .schedules import NoisePath

Tensor = torch.Tensor
# Where a path reaches alpha = 0 (pure noise) or sigma = 0 (clean data), one of
# the conversions below divides by zero; the floor keeps it finite.
_FLOOR = 1e-6


class Objective:
    name = "objective"

    def target(self, x0: Tensor, eps: Tensor, a: Tensor, s: Tensor) -> Tensor:
        raise NotImplementedError

    def to_x0_eps(self, out: Tensor, x_t: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def x0_error_scale(self, a: Tensor, s: Tensor) -> Tensor:
        """c such that an error e in the output is an error c e in x0_hat (to_x0_eps is affine in out)."""
        raise NotImplementedError


class EpsilonObjective(Objective):
    """Predict the noise (Ho et al. 2020, Eq. 14): loss ||eps - eps_theta(x_t, t)||^2. SD1."""

    name = "eps"

    def target(self, x0: Tensor, eps: Tensor, a: Tensor, s: Tensor) -> Tensor:
        return eps

    def to_x0_eps(self, out: Tensor, x_t: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        x0 = (x_t - s * out) / a.clamp(min=_FLOOR)  # invert x_t = a x0 + s eps
        return x0, out

    def x0_error_scale(self, a: Tensor, s: Tensor) -> Tensor:
        return -s / a.clamp(min=_FLOOR)


class X0Objective(Objective):
    """Predict the clean image directly (Ho et al. 2020, Sec. 3.2 discuss and reject it)."""

    name = "x0"

    def target(self, x0: Tensor, eps: Tensor, a: Tensor, s: Tensor) -> Tensor:
        return x0

    def to_x0_eps(self, out: Tensor, x_t: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        eps = (x_t - a * out) / s.clamp(min=_FLOOR)
        return out, eps

    def x0_error_scale(self, a: Tensor, s: Tensor) -> Tensor:
        return torch.ones_like(a)


class VObjective(Objective):
    """Predict v = a eps - s x0 (Salimans & Ho 2022, Sec. 4, App. D). SD2.

    (x_t, v) is (x0, eps) rotated, so both come back by solving a 2x2 system:
    x0 = (a x_t - s v) / (a^2 + s^2), eps = (s x_t + a v) / (a^2 + s^2);
    the denominator is 1 on variance-preserving paths.
    """

    name = "v"

    def target(self, x0: Tensor, eps: Tensor, a: Tensor, s: Tensor) -> Tensor:
        return a * eps - s * x0

    def to_x0_eps(self, out: Tensor, x_t: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        norm = a**2 + s**2
        return (a * x_t - s * out) / norm, (s * x_t + a * out) / norm

    def x0_error_scale(self, a: Tensor, s: Tensor) -> Tensor:
        return -s / (a**2 + s**2)


class FlowObjective(Objective):
    """Predict the velocity u = eps - x0 of the straight path (Liu et al. 2022, Eq. 1; Esser et al. 2024, Eq. 3-4). SD3.

    On the flow path (a = 1 - t, s = t) u = d x_t / dt. Solving x_t = a x0 + s eps,
    u = eps - x0 gives x0 = (x_t - s u) / (a + s), eps = (x_t + a u) / (a + s).
    """

    name = "flow"

    def target(self, x0: Tensor, eps: Tensor, a: Tensor, s: Tensor) -> Tensor:
        return eps - x0

    def to_x0_eps(self, out: Tensor, x_t: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        norm = a + s
        return (x_t - s * out) / norm, (x_t + a * out) / norm

    def x0_error_scale(self, a: Tensor, s: Tensor) -> Tensor:
        return -s / (a + s)


OBJECTIVES = {
    "eps": EpsilonObjective,
    "x0": X0Objective,
    "v": VObjective,
    "flow": FlowObjective,
}


def build_objective(name: str) -> Objective:
    """The objective diffusion.target names: eps, x0, v or flow."""
    return OBJECTIVES[name]()


def min_snr_weight(objective: Objective, a: Tensor, s: Tensor, gamma: float) -> Tensor:
    """Min-SNR-gamma loss weights, for any objective (Hang et al. 2023,
    *Efficient Diffusion Training via Min-SNR Weighting Strategy*).

    Written as an error in x0, every objective's loss is ||x0_hat - x0||^2 / c^2 with
    c = objective.x0_error_scale(a, s): for eps, c^2 = 1 / SNR, so the plain eps loss
    weights the x0 error by SNR = a^2 / s^2, which is huge for nearly clean x_t. Min-SNR
    caps that weight at gamma: the loss on x0 is weighted by min(SNR, gamma), i.e. the
    objective's own loss by min(SNR, gamma) c^2. For eps this is min(SNR, gamma) / SNR,
    for v min(SNR, gamma) / (SNR + 1). Training then spends less
    effort on the easy, low-noise steps, whose gradients conflict with the rest.
    """
    c2 = objective.x0_error_scale(a, s) ** 2
    snr = a**2 / (s**2).clamp(min=_FLOOR**2)
    return (snr.clamp(max=gamma) * c2).clamp(max=1 / _FLOOR)


def broadcast(v: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1) so per-sample coefficients multiply images."""
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def diffusion_loss(model: torch.nn.Module, path: NoisePath, objective: Objective, x0: Tensor, y: Tensor, t: Tensor,
                   eps: Tensor, min_snr_gamma: float | None = None) -> tuple[Tensor, Tensor]:
    """The training loss of every objective: Ho et al. 2020, Algorithm 1, generalised.

    Algorithm 1 draws x0 ~ q(x0), t ~ Uniform({1..T}), eps ~ N(0, I) and takes a gradient step on
    ||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)||^2. Here the caller draws (x0, y),
    t from the config's distribution (schedules.sample_training_t) and eps; the path gives alpha and
    sigma, and the objective says what the network learns to output in place of eps.
    Returns (the loss to minimise, the plain per-sample squared error (B,) for the log).
    """
    a, s = broadcast(path.alpha(t), x0), broadcast(path.sigma(t), x0)
    x_t = a * x0 + s * eps  # the forward process, Ho et al. 2020, Eq. 4
    target = objective.target(x0, eps, a, s)  # eps, x0, v or eps - x0
    out = model(x_t, t * 1000, y)  # every network sees t scaled to [0, 1000] (docs/00_paths.md)
    per_sample = (out.float() - target).pow(2).flatten(1).mean(1)  # (B,)
    if min_snr_gamma is None:
        return per_sample.mean(), per_sample.detach()
    w = min_snr_weight(objective, a, s, min_snr_gamma).flatten()  # Hang et al. 2023
    return (w * per_sample).mean(), per_sample.detach()  # the log keeps the plain squared error
