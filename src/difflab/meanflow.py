"""MeanFlow (Geng et al. 2025, "Mean flows for one-step generative modeling"): one network, from scratch.

A flow model learns the instantaneous velocity v(z_t, t) of the path z_t = (1 - t) x0 + t eps, and a sampler
integrates it in many small steps. MeanFlow learns the *average* velocity over an interval [r, t],

    u(z_t, r, t) = 1 / (t - r) * integral_r^t v(z_s, s) ds                      (Eq. 3)

so one step z_r = z_t - (t - r) u(z_t, r, t) lands exactly on the trajectory, whatever its length:
r = 0, t = 1 draws an image in one network call. The integral is not known, but differentiating
(t - r) u = integral_r^t v ds by t gives the MeanFlow identity (Eq. 6),

    u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t),
    d/dt u = v . d_z u + d_t u        (the total derivative along the path, r held fixed)

whose right-hand side holds only u itself and v, which a training pair (x0, eps) supplies (v = eps - x0).
So the network regresses the right-hand side, computed from its own output with a Jacobian-vector product
and stop-gradient: no teacher, no second copy of the network, no curriculum. Where r = t the target is
v itself: ordinary flow matching, SD3's loss.

The network is the shortcut model's (model.step_conditioning: true): the MMDiT reads t and the interval
length d = t - r (the paper's best pairing, Table 1c), so sampling is the shortcut model's, one Euler jump of
1 / steps per call (pipeline.py), and d = 0 asks for the instantaneous velocity.

From the paper too: the share of pairs with r != t (JUMP_SHARE), the adaptive loss weight (Table 1e, p = 1), and
guidance trained in (Sec. 4.2): the velocity learnt is the guided omega v + (1 - omega) u(z_t, t, t | null),
the model's own unconditional velocity in place of a teacher's, so a sample costs one call per step.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .infra.distributed import DistInfo
from .loop import Draws
from .models.text import drop_condition
from .objectives import broadcast
from .schedules import sample_training_t
from .settings import Config, DiffusionConfig
from .training import Trainer, logged_by_t

Tensor = torch.Tensor
JUMP_SHARE = 0.25  # pairs with r != t: Geng et al. 2025, Table 1a (the rest learn the flow, r = t)
ADAPTIVE_P, ADAPTIVE_C = 1.0, 1e-3  # w = 1 / (||error||^2 + c)^p: Geng et al. 2025, Sec. 4, Table 1e


@torch.no_grad()
def mean_velocity_target(net: Callable, z: Tensor, t: Tensor, r: Tensor, y: Tensor, v: Tensor) -> Tensor:
    """The right-hand side of the MeanFlow identity (Eq. 6), without gradient: v - (t - r) d/dt u(z_t, r, t).

    net(z, t, y, d): the network's average velocity at time t over an interval of length d (both in [0, 1]).
    v: the velocity the path moves with at (z, t) (the guided one where guidance is trained in).
    The total derivative is one forward-mode product (torch.func.jvp) with tangent (dz, dt, dd) = (v, 1, 1):
    z moves with v, t by one, and d = t - r with it, since r is held fixed. Rows where r = t need none: their
    target is v.
    """
    target = v.float().clone()
    jump = t > r
    if not jump.any():
        return target
    z, t, d, y, v = z[jump], t[jump], (t - r)[jump], y[jump], v[jump]

    def u(z_, t_, d_):
        return net(z_, t_, y, d_).float()

    ones = torch.ones_like(t)
    with sdpa_kernel(SDPBackend.MATH):  # PyTorch's fused CPU attention has no forward-mode derivative
        _, du_dt = torch.func.jvp(u, (z, t, d), (v, ones, ones))
    target[jump] = v.float() - broadcast(d, du_dt) * du_dt
    return target


def meanflow_loss(x0: Tensor, y: Tensor, draws: Draws, *, model: Callable, net: Callable, diffusion: DiffusionConfig,
                  cfg_scale: float, cfg_dropout_prob: float) -> tuple[Tensor, Tensor, Tensor]:
    """One step of MeanFlow training (Geng et al. 2025, Algorithm 1): (loss, per-sample squared error, t).

    model: the network under training, model(z, 1000 t, y, d=1000 d); net: the same weights as a plain function
    net(z, t, y, d) with t and d in [0, 1], for the target (no DDP, no compile: forward-mode AD runs through it).
    """
    a, b = (draws.sliced(partial(sample_training_t, diffusion)) for _ in range(2))  # SD3's logit-normal times
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    r = torch.where(draws.index() < int(draws.n * JUMP_SHARE), r, t)  # the first JUMP_SHARE learn intervals
    eps = draws.randn(*x0.shape[1:])
    drop = draws.rand() < cfg_dropout_prob
    y = drop_condition(y, drop)  # label dropout, so the model also knows p(x) (and guidance has its null)
    z = broadcast(1 - t, x0) * x0 + broadcast(t, x0) * eps  # the flow path, Esser et al. 2024, Eq. 2
    v = eps - x0
    if cfg_scale != 1.0:  # Sec. 4.2: learn the guided field; the dropped rows keep the plain v
        with torch.no_grad():
            v_null = net(z, t, drop_condition(y, torch.ones_like(drop)), torch.zeros_like(t)).float()
        v = torch.where(drop.view(-1, *([1] * (v.ndim - 1))), v, cfg_scale * v + (1 - cfg_scale) * v_null)
    target = mean_velocity_target(net, z, t, r, y, v)
    error = (model(z, t * 1000, y, d=(t - r) * 1000).float() - target).pow(2).flatten(1).sum(1)  # (B,)
    weight = 1.0 / (error.detach() + ADAPTIVE_C) ** ADAPTIVE_P  # adaptive weighting: large errors count less
    return (weight * error).mean(), error.detach() / x0[0].numel(), t


class MeanFlowTrainer(Trainer):
    """MeanFlow (Geng et al. 2025): the shortcut model's network trained on the MeanFlow identity, from scratch.

    fewstep.teacher_cfg_scale is omega, the guidance trained into the model (its own unconditional velocity
    is the teacher), so the model samples with cfg_scale 1 at one call a step."""

    def __init__(self, cfg: Config, data: Optional[tuple] = None, device: Optional[torch.device] = None,
                 quiet: bool = False, dist: Optional[DistInfo] = None):
        super().__init__(cfg, data, device, quiet, dist)

        def net(z, t, y, d):  # the raw module: forward-mode AD runs through it, not through DDP or compile
            return self.model(z, t * 1000, y, d=d * 1000)

        self.loss = logged_by_t(partial(meanflow_loss, model=self.forward, net=net, diffusion=cfg.diffusion,
                                        cfg_scale=cfg.fewstep.teacher_cfg_scale,
                                        cfg_dropout_prob=cfg.training.cfg_dropout_prob))
