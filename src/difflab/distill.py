"""Few-step generation: consistency models (Song et al. 2023), trained through the one loop (loop.py).

A consistency model f(x_t, t) maps every point of a probability-flow ODE trajectory to the
trajectory's start, x0, so one network evaluation draws an image (Song et al. 2023, Sec. 3).
Two ways to train it, both here (`distill.method`):

- consistency distillation (Algorithm 2): a trained teacher takes one ODE step from t_{n+1} to
  t_n; the student at t_{n+1} must agree with its target network at the teacher's x_{t_n};
- consistency training (Algorithm 3): no teacher; x_{t_n} = alpha x0 + sigma eps with the same
  eps as x_{t_{n+1}}, an unbiased estimate of that ODE step (Theorem 2).

The boundary condition f(x, 0) = x holds by construction when f is written as
f = c_skip(t) x + c_out(t) F(x, t) with c_skip(0) = 1 and c_out(0) = 0 (Eq. 5). Every objective's
own conversion to x0_hat already has that form: for v-prediction x0_hat = alpha x_t - sigma v
(c_skip = alpha, c_out = -sigma), for the flow velocity x0_hat = x_t - t u, for eps
(x_t - sigma eps) / alpha; at t = 0 (alpha = 1, sigma = 0) each returns x_t. So the student is an
ordinary diffusion model of the teacher's architecture and objective, sampled with
samplers.sample_consistency, and it starts from the teacher's weights.

From Song & Dhariwal 2023 (improved consistency training) we take the pseudo-Huber distance in
place of LPIPS (no downloaded network), d(a, b) = sqrt(||a - b||^2 + c^2) - c, c = 0.00054 sqrt(dims).
Guidance is distilled into the student as in latent consistency models (Luo et al. 2023): the
teacher's step is guided with distill.teacher_cfg_scale; the student then samples unguided.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Optional

import torch

from .checkpoint import load_checkpoint
from .config import Config, ConfigError, config_from_dict
from .distributed import DistInfo
from .models import build_model
from .models.text import null_condition
from .objectives import broadcast
from .training import Trainer

Tensor = torch.Tensor


def pseudo_huber(diff: Tensor, c: float) -> Tensor:
    """sqrt(||diff||^2 + c^2) - c per sample (Song & Dhariwal 2023, Sec. 3.3): L2 near 0, L1 far away."""
    return (diff.flatten(1).pow(2).sum(1) + c * c).sqrt() - c  # (B,)


def load_teacher(cfg: Config, device: torch.device) -> tuple[torch.nn.Module, Config]:
    """The teacher named by distill.teacher: its EMA weights, frozen; a missing file names the command to make it."""
    path = Path(cfg.distill.teacher)
    if not path.is_file():
        how = (f"train the teacher first: python train.py --config {cfg.distill.teacher_config}"
               if cfg.distill.teacher_config else "train the teacher first with train.py")
        raise ConfigError(f"{cfg.name}: distill.teacher: {path} does not exist; {how}")
    state = load_checkpoint(path, map_location=device)
    teacher_cfg = config_from_dict(state["config"], source=str(path))
    for section in ("model", "diffusion"):  # the student starts from the teacher's weights
        if getattr(teacher_cfg, section) != getattr(cfg, section):
            raise ConfigError(f"{cfg.name}: the '{section}' section differs from the teacher's ({path}); "
                              f"a student starts from its teacher's weights, so copy that section")
    teacher = build_model(teacher_cfg.model).to(device)
    teacher.load_state_dict(state.get("ema") or state["model"])
    return teacher.eval().requires_grad_(False), teacher_cfg


class ConsistencyTrainer(Trainer):
    """Trains a consistency model; the diffusion Trainer's data, EMA, pictures and checkpoints, another loss."""

    def __init__(self, cfg: Config, data: Optional[tuple] = None, device: Optional[torch.device] = None,
                 quiet: bool = False, dist: Optional[DistInfo] = None):
        if cfg.data.vae_checkpoint:
            raise ConfigError(f"{cfg.name}: distill: pixel-space models only (data.vae_checkpoint must be null)")
        super().__init__(cfg, data, device, quiet, dist)
        dc = self.cfg.distill
        self.teacher = None
        if dc.method == "consistency_distillation":
            self.teacher, _ = load_teacher(cfg, self.device)
            self.model.load_state_dict(self.teacher.state_dict())  # Song et al. 2023, Sec. 6: start from the teacher
            self.ema.model.load_state_dict(self.teacher.state_dict())
        self.target = copy.deepcopy(self.model).requires_grad_(False)  # theta^-: the network the student chases
        self.huber_c = dc.huber_c or 0.00054 * math.sqrt(self.x[0].numel())

    def after_step(self, step: int) -> None:
        """theta^- <- mu theta^- + (1 - mu) theta (Song et al. 2023, Alg. 2), then the sampling EMA."""
        super().after_step(step)
        with torch.no_grad():
            for target, p in zip(self.target.parameters(), self.model.parameters()):
                target.lerp_(p, 1 - self.cfg.distill.target_ema)

    def consistency(self, model, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """f(x_t, t) = the objective's x0_hat: c_skip(t) x_t + c_out(t) F(x_t, t), equal to x_t at t = 0."""
        a, s = broadcast(self.path.alpha(t), x_t), broadcast(self.path.sigma(t), x_t)
        return self.objective.to_x0_eps(model(x_t, t * 1000, y).float(), x_t, a, s)[0]

    @torch.no_grad()
    def teacher_step(self, x_t: Tensor, t: Tensor, s: Tensor, y: Tensor) -> Tensor:
        """One guided DDIM (Euler) step of the teacher's ODE from t to s (Song et al. 2023, Eq. 7)."""
        a_t, s_t = broadcast(self.path.alpha(t), x_t), broadcast(self.path.sigma(t), x_t)
        w = self.cfg.distill.teacher_cfg_scale
        out = self.teacher(torch.cat([x_t, x_t]), torch.cat([t, t]) * 1000, torch.cat([y, null_condition(y)]))
        cond, uncond = out.float().chunk(2)
        x0, eps = self.objective.to_x0_eps(uncond + w * (cond - uncond), x_t, a_t, s_t)  # guidance, Ho & Salimans 2022
        return broadcast(self.path.alpha(s), x_t) * x0 + broadcast(self.path.sigma(s), x_t) * eps

    def loss(self, x0: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, per-sample distance, t) of one batch: Algorithm 2 (a teacher) or 3 (none)."""
        g, n, N = self.noise_gen, self.global_batch, self.cfg.distill.steps
        mine = slice(self.dist.rank * self.batch_size, (self.dist.rank + 1) * self.batch_size)
        k = torch.randint(0, N, (n,), generator=g, device=self.device)[mine]  # n ~ U{0, ..., N - 1}
        eps = torch.randn((n, *x0.shape[1:]), generator=g, device=self.device)[mine]
        t, s = (k + 1).float() / N, k.float() / N  # neighbours on the grid t_n = n / N
        x_t = broadcast(self.path.alpha(t), x0) * x0 + broadcast(self.path.sigma(t), x0) * eps
        with torch.no_grad():
            if self.teacher is not None:
                x_s = self.teacher_step(x_t, t, s, y)
            else:  # consistency training: the same noise one step earlier on the path
                x_s = broadcast(self.path.alpha(s), x0) * x0 + broadcast(self.path.sigma(s), x0) * eps
            target = self.consistency(self.target, x_s, s, y)
        per_sample = pseudo_huber(self.consistency(self.forward, x_t, t, y) - target, self.huber_c)
        return per_sample.mean(), per_sample.detach(), t

    def extra_state(self) -> dict:
        return {**super().extra_state(), "target": self.target.state_dict()}

    def load_extra_state(self, state: dict, path: Path) -> None:
        if "target" not in state:
            raise ConfigError(f"{path}: not a consistency model's checkpoint (no target network); cannot resume")
        self.target.load_state_dict(state["target"])

