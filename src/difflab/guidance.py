"""From a model to a denoiser, and classifier-free guidance as a wrapper around it.

A sampler only ever sees `denoiser(x_t, t) -> (x0_hat, eps_hat)`. This module
builds that function from a model (which maps (x_t, 1000 t, y) -> out) and an
objective (which says what `out` means). The guidance mix itself, `cfg_mix`, is
written once, here: the sampler's Denoiser and the consistency-distillation
teacher (fewstep.py) both call it.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .models.text import null_condition
from .objectives import Objective, broadcast
from .schedules import NoisePath
from .settings import SamplingConfig

Tensor = torch.Tensor


def cfg_mix(cond: Tensor, uncond: Tensor, w: float) -> Tensor:
    """Classifier-free guidance: d = d_u + w (d_c - d_u), which is Ho & Salimans 2022, Eq. 6,
    (1 + w') d_c - w' d_u, rewritten with our w = 1 + their w' (their w' = 0 is our w = 1).

    w = 1 is the conditional prediction, w = 0 the unconditional one, w > 1 pushes past the
    conditional one, away from the unconditional. (Validation's cfg_scale_ok: w finite, >= 0.)
    """
    return uncond + w * (cond - uncond)


def both_halves(model: torch.nn.Module, x: Tensor, t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(conditional, unconditional) raw outputs at times t in [0, 1], from one batched forward pass:
    the batch is doubled, its second half given the null condition (the null class, or the empty prompt)."""
    out = model(torch.cat([x, x]), torch.cat([t, t]) * 1000, torch.cat([y, null_condition(y)]))
    cond, uncond = out.float().chunk(2)
    return cond, uncond


class Denoiser:
    """(x_t, t) -> (x0_hat, eps_hat) for fixed labels y, with optional CFG: the samplers' DenoiserFn.

    Classifier-free guidance mixes the conditional and unconditional predictions:
    d = d_u + w (d_c - d_u), Ho & Salimans 2022's Eq. 6 rewritten with our w = 1 + their w
    (see cfg_mix). Because the objective's
    conversion is affine, mixing (x0, eps) equals mixing the raw outputs.
    Options from later work:
    - guidance interval (Kynkäänniemi et al. 2024): guide only for t in [lo, hi];
    - autoguidance (Karras et al. 2024, Eq. 2 with D_0 a weaker model): `guide`, a worse version of the
      same model (an early checkpoint), conditioned like the model, replaces the unconditional branch:
      d = d_guide + w (d_c - d_guide). Its call is counted with the model's, as CFG's doubled batch is;
    - CFG rescale (Lin et al. 2023, Sec. 3.4, Eq. 15-16): scale the guided x0 back to
      the standard deviation of the conditional one, blended by `rescale`;
    - clipping x0_hat to the data range [-1, 1], as DDPM's own sampler does (Ho et al.
      2020, the `clip_denoised` of their code), with eps_hat made consistent with it.
    `calls` counts model evaluations (one batched call per step, with or without CFG).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        objective: Objective,
        path: NoisePath,
        y: Tensor,
        cfg_scale: float = 1.0,
        interval: Sequence[float] = (0.0, 1.0),
        rescale: float = 0.0,
        clip_x0: bool = False,
        guide: Optional[torch.nn.Module] = None,
    ) -> None:
        self.model, self.objective, self.path, self.guide = model, objective, path, guide
        self.y = y
        self.cfg_scale, self.interval, self.rescale = cfg_scale, tuple(interval), rescale
        self.clip_x0 = clip_x0
        self.calls = 0

    def _convert(self, out: Tensor, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        a = broadcast(self.path.alpha(t), x)
        s = broadcast(self.path.sigma(t), x)
        return self.objective.to_x0_eps(out, x, a, s)

    def guided(self, t: float) -> bool:
        lo, hi = self.interval
        return self.cfg_scale != 1.0 and lo <= t <= hi

    def __call__(self, x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        x0, eps = self._predict(x, t)
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = self._consistent_eps(x0, x, t)
        return x0, eps

    def _predict(self, x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        self.calls += 1
        n = x.shape[0]
        tt = torch.full((n,), float(t), device=x.device)
        if not self.guided(t):
            out = self.model(x, tt * 1000, self.y)
            return self._convert(out.float(), x, tt)
        if self.guide is None:
            out_c, out_u = both_halves(self.model, x, tt, self.y)
        else:  # autoguidance: the weaker model, asked the same condition, is what the mix steers away from
            out_c = self.model(x, tt * 1000, self.y).float()
            out_u = self.guide(x, tt * 1000, self.y).float()
        x0_c, eps_c = self._convert(out_c, x, tt)
        x0_u, eps_u = self._convert(out_u, x, tt)
        x0 = cfg_mix(x0_c, x0_u, self.cfg_scale)
        eps = cfg_mix(eps_c, eps_u, self.cfg_scale)
        if self.rescale > 0:
            x0, eps = self._rescale(x0, x0_c, x, tt)
        return x0, eps

    def _rescale(self, x0: Tensor, x0_c: Tensor, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        dims = list(range(1, x.ndim))
        ratio = x0_c.std(dim=dims, keepdim=True) / x0.std(dim=dims, keepdim=True).clamp(min=1e-8)
        x0 = self.rescale * (x0 * ratio) + (1 - self.rescale) * x0
        return x0, self._consistent_eps(x0, x, t)

    def _consistent_eps(self, x0: Tensor, x: Tensor, t: Union[float, Tensor]) -> Tensor:
        """The eps that keeps x_t = a x0 + s eps true for a changed x0."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        a = broadcast(self.path.alpha(t), x)
        s = broadcast(self.path.sigma(t), x).clamp(min=1e-6)
        return (x - a * x0) / s


def make_denoiser(model: torch.nn.Module, objective: Objective, path: NoisePath, y: Tensor,
                  sampling_cfg: SamplingConfig, cfg_scale: float,
                  guide: Optional[torch.nn.Module] = None) -> Denoiser:
    """A Denoiser with the guidance options of a SamplingConfig, at the guidance scale the caller resolved
    (Pipeline.settings: the one asked for, else the config's; 1 for an unconditional model); `guide`: the
    weaker model of autoguidance, loaded from sampling.guide (Pipeline.from_checkpoint)."""
    return Denoiser(
        model,
        objective,
        path,
        y,
        cfg_scale=cfg_scale,
        interval=sampling_cfg.guidance_interval,
        rescale=sampling_cfg.cfg_rescale,
        clip_x0=sampling_cfg.clip_x0,
        guide=guide,
    )
