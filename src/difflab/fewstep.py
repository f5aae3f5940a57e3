"""Few-step generation: consistency models (Song et al. 2023), trained through the one loop (loop.py).

A consistency model f(x_t, t) maps every point of a probability-flow ODE trajectory to the
trajectory's start, x0, so one network evaluation draws an image (Song et al. 2023, Sec. 3).
Two ways to train it, both here (`fewstep.method`):

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

On SD3's path, shortcut models (Frans et al. 2024, `fewstep.method: shortcut`, ShortcutTrainer below)
teach one flow model to take jumps of any size, from scratch and with no teacher; see that class.

From Song & Dhariwal 2023 (improved consistency training) we take the pseudo-Huber distance in
place of LPIPS (no downloaded network), d(a, b) = sqrt(||a - b||^2 + c^2) - c, c = 0.00054 sqrt(dims).
From ECT (Geng et al. 2024, "Consistency models made easy"; `fewstep.schedule: ect`) the pairs (t, r) the loss
compares: t drawn from a lognormal over the noise-to-signal ratio, and r = t less a gap that at first reaches the
data at low noise (ordinary diffusion training) and halves stage by stage, with both calls under one dropout mask
and the loss weighted by SNR(t) + k (`fewstep.weighting: snr`); a student named with a teacher starts from its
weights in either method, which is what makes consistency *tuning* cheap.
Guidance is distilled into the student as in latent consistency models (Luo et al. 2023): the
teacher's step is guided with fewstep.teacher_cfg_scale; the student then samples unguided.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch

from .infra.checkpoint import load_checkpoint, load_weights
from .config import ConfigError, config_from_dict
from .infra.distributed import DistInfo
from .guidance import both_halves, cfg_mix
from .models import build_model
from .models.text import drop_condition
from .objectives import broadcast
from .loop import Draws
from .infra.weights import checkpoint_path
from .schedules import noise_ratio, sample_training_t, time_at_ratio
from .settings import Config, DiffusionConfig
from .training import Trainer, logged_by_t

Tensor = torch.Tensor
SELF_CONSISTENT_SHARE = 0.25  # shortcut models: Frans et al. 2024, Sec. 4: k = 1/4 of each batch
SIGMA_DATA = 0.5  # the data's standard deviation EDM and ECT assume for images in [-1, 1]


def pseudo_huber(diff: Tensor, c: float) -> Tensor:
    """sqrt(||diff||^2 + c^2) - c per sample (Song & Dhariwal 2023, Sec. 3.3): L2 near 0, L1 far away."""
    return (diff.flatten(1).pow(2).sum(1) + c * c).sqrt() - c  # (B,)


def load_teacher(cfg: Config, device: torch.device) -> tuple[torch.nn.Module, Config]:
    """The teacher named by fewstep.teacher (a checkpoint, or a shipped model: sd1, sd2, sd3): its EMA weights,
    frozen; a missing file names the command to make it."""
    path = checkpoint_path(cfg.fewstep.teacher)
    if not path.is_file():
        how = (f"train the teacher first: python train.py --config {cfg.fewstep.teacher_config}"
               if cfg.fewstep.teacher_config else "train the teacher first with train.py")
        raise ConfigError(f"{cfg.name}: fewstep.teacher: {path} does not exist; {how}")
    state = load_checkpoint(path, map_location=device)
    teacher_cfg = config_from_dict(state["config"], source=str(path), stored=True)
    for section in ("model", "diffusion"):  # the student starts from the teacher's weights
        if _without_dropout(getattr(teacher_cfg, section)) != _without_dropout(getattr(cfg, section)):
            raise ConfigError(f"{cfg.name}: the '{section}' section differs from the teacher's ({path}); "
                              f"a student starts from its teacher's weights, so copy that section")
    teacher = build_model(teacher_cfg.model).to(device)
    load_weights(teacher, state.get("ema") or state["model"], path, "teacher")  # shapes and dtypes checked
    return teacher.eval().requires_grad_(False), teacher_cfg


def _without_dropout(section):
    """A model section with its dropout left out: a student may train with dropout its teacher did not (iCT, ECT)."""
    return dataclasses.replace(section, net=dataclasses.replace(section.net, dropout=0.0)) if (
        getattr(getattr(section, "net", None), "dropout", None) is not None) else section


def grid_pairs(draws: Draws, steps: int) -> tuple[Tensor, Tensor]:
    """Neighbours on the grid t_n = n / N (Song et al. 2023, Algorithms 2-3): n ~ U{0, ..., N - 1}, (t, r) =
    ((n + 1) / N, n / N)."""
    n = draws.randint(steps)
    return (n + 1).float() / steps, n.float() / steps


def ect_pairs(draws: Draws, path, progress: float, *, stages: int, noise_mean: float, noise_std: float,
              q: float = 2.0, k: float = 8.0, b: float = 1.0) -> tuple[Tensor, Tensor]:
    """ECT's pairs (Geng et al. 2024, Sec. 3), in the noise-to-signal ratio rho = sigma / alpha (EDM's sigma):

    rho_t = exp(noise_mean + noise_std z), z ~ N(0, 1)   (EDM's lognormal, Karras et al. 2022, Sec. 5)
    rho_r = max(rho_t (1 - n(rho_t) / q^(a + 1)), 0),   n(rho) = 1 + k sigmoid(-b rho)   (the "mapping function")
    where a (0 ... stages - 1) is the stage of the run `progress` (0 ... 1) is in, and q = 2: each stage halves
    the gap towards the continuous-time consistency condition. n(rho) widens the gap at low noise, where at first
    it reaches past 0: r = 0, the target is the data itself, diffusion training, where the student (the teacher's
    weights) already is. Both returned as times of this path (schedules.time_at_ratio).
    """
    rho_t = torch.exp(noise_mean + noise_std * draws.randn())
    a = min(int(progress * stages), stages - 1)
    rho_r = (rho_t * (1 - (1 + k * torch.sigmoid(-b * rho_t)) / q ** (a + 1))).clamp(min=0)
    return time_at_ratio(path, rho_t), time_at_ratio(path, rho_r)


@contextlib.contextmanager
def same_dropout(x: Tensor):
    """Run the block, then put the random state back: the next network call draws the same dropout masks
    (ECT compares f(x_t) and f(x_r) under one mask, Geng et al. 2024, Sec. 4). A model without dropout draws
    nothing here, so nothing changes for it."""
    cuda = x.is_cuda
    state = torch.cuda.get_rng_state(x.device) if cuda else torch.get_rng_state()
    yield
    if cuda:
        torch.cuda.set_rng_state(state, x.device)
    else:
        torch.set_rng_state(state)


def consistency_loss(x0: Tensor, y: Tensor, draws: Draws, *, f: Callable, f_target: Callable,
                     teacher_step: Optional[Callable], path, pairs: Callable[[Draws], tuple[Tensor, Tensor]],
                     huber_c: float, weighting: str = "uniform") -> tuple[Tensor, Tensor, Tensor]:
    """One step of Song et al. 2023, Algorithm 2 (a teacher) or 3 (none): (loss, per-sample distance, t).

    f and f_target are the consistency functions (x, t, y) -> x0 of the student (theta) and of its
    target network (theta^-); teacher_step(x_t, t, s, y) is one ODE step of the teacher (Algorithm 2),
    or None for consistency training (Algorithm 3). pairs(draws) -> (t, s), the two times compared:
    grid_pairs or ect_pairs. weighting "snr" weighs each sample by SNR(t) + k = 1 / rho(t)^2 + 1 / sigma_data^2
    (Geng et al. 2024's weighting, with sigma_data = 0.5 as theirs; EDM's loss weight, Karras et al. 2022,
    Table 1), divided by the batch's mean weight so the loss keeps its scale (Adam would rescale it anyway).
    """
    t, s = pairs(draws)  # drawn first, as before ECT: the grid's draws are unchanged
    eps = draws.randn(*x0.shape[1:])  # z ~ N(0, I)
    x_t = broadcast(path.alpha(t), x0) * x0 + broadcast(path.sigma(t), x0) * eps
    with torch.no_grad(), same_dropout(x0):
        if teacher_step is not None:  # Algorithm 2: the teacher's ODE step from t_{n+1} to t_n
            x_s = teacher_step(x_t, t, s, y)
        else:  # Algorithm 3: the same noise one step earlier on the path (Theorem 2)
            x_s = broadcast(path.alpha(s), x0) * x0 + broadcast(path.sigma(s), x0) * eps
        target = f_target(x_s, s, y)
    per_sample = pseudo_huber(f(x_t, t, y) - target, huber_c)  # d(f_theta(x_{t_{n+1}}), f_theta^-(x_{t_n}))
    if weighting == "snr":
        w = 1 / noise_ratio(path, t).clamp(min=1e-6) ** 2 + 1 / SIGMA_DATA ** 2
        return (per_sample * w / w.mean()).mean(), per_sample.detach(), t
    return per_sample.mean(), per_sample.detach(), t


class ConsistencyTrainer(Trainer):
    """Trains a consistency model; the diffusion Trainer's data, EMA, pictures and checkpoints, another loss."""

    def __init__(self, cfg: Config, data: Optional[tuple] = None, device: Optional[torch.device] = None,
                 quiet: bool = False, dist: Optional[DistInfo] = None):
        if cfg.data.vae_checkpoint:
            raise ConfigError(f"{cfg.name}: fewstep: pixel-space models only (data.vae_checkpoint must be null)")
        super().__init__(cfg, data, device, quiet, dist)
        dc = self.cfg.fewstep
        self.teacher = None
        if dc.teacher:  # a student starts from its teacher (Song et al. 2023, Sec. 6; ECT); a resume then loads its own
            teacher, _ = load_teacher(cfg, self.device)
            self.model.load_state_dict(teacher.state_dict())
            self.ema.model.load_state_dict(teacher.state_dict())
            self.teacher = teacher if dc.method == "consistency_distillation" else None  # only distillation asks it
        self.target = copy.deepcopy(self.model).requires_grad_(False)  # theta^-: the network the student chases
        self.huber_c = dc.huber_c or 0.00054 * math.sqrt(self.x[0].numel())
        # The loop's loss: Algorithm 2 or 3 in place of diffusion's Algorithm 1.
        f, f_target = partial(self.consistency, self.forward), partial(self.consistency, self.target)
        teacher_step = self.teacher_step if self.teacher is not None else None
        if dc.schedule == "ect":
            pairs = lambda draws: ect_pairs(draws, self.path, self.step / self.total_steps,  # noqa: E731
                                            stages=dc.stages, noise_mean=dc.noise_mean, noise_std=dc.noise_std)
        else:
            pairs = partial(grid_pairs, steps=dc.steps)
        self.loss = logged_by_t(partial(consistency_loss, f=f, f_target=f_target, teacher_step=teacher_step,
                                        path=self.path, pairs=pairs, huber_c=self.huber_c, weighting=dc.weighting))

    def after_step(self, step: int) -> None:
        """theta^- <- mu theta^- + (1 - mu) theta (Song et al. 2023, Alg. 2), then the sampling EMA."""
        super().after_step(step)
        with torch.no_grad():
            for target, p in zip(self.target.parameters(), self.model.parameters()):
                target.lerp_(p, 1 - self.cfg.fewstep.target_ema)

    def consistency(self, model, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """f(x_t, t) = the objective's x0_hat: c_skip(t) x_t + c_out(t) F(x_t, t), equal to x_t at t = 0."""
        a, s = broadcast(self.path.alpha(t), x_t), broadcast(self.path.sigma(t), x_t)
        return self.objective.to_x0_eps(model(x_t, t * 1000, y).float(), x_t, a, s)[0]

    def teacher_step(self, x_t: Tensor, t: Tensor, s: Tensor, y: Tensor) -> Tensor:
        """One guided DDIM (Euler) step of the teacher's ODE from t to s (Song et al. 2023, Eq. 7)."""
        return guided_ddim_step(self.teacher, self.objective, self.path, self.cfg.fewstep.teacher_cfg_scale,
                                x_t, t, s, y)

    def extra_state(self) -> dict:
        return {**super().extra_state(), "target": self.target.state_dict()}

    def load_extra_state(self, state: dict, path: Path) -> None:
        if "target" not in state:
            raise ConfigError(f"{path}: not a consistency model's checkpoint (no target network); cannot resume")
        self.target.load_state_dict(state["target"])



@torch.no_grad()
def guided_ddim_step(teacher, objective, path, cfg_scale: float, x_t: Tensor, t: Tensor, s: Tensor,
                     y: Tensor) -> Tensor:
    """One deterministic DDIM step of a teacher from t to s (Song, Meng & Ermon 2021, Eq. 12 with eta = 0; on the
    flow path, an Euler step), guided with cfg_scale by the sampler's own mix (guidance.cfg_mix)."""
    a_t, s_t = broadcast(path.alpha(t), x_t), broadcast(path.sigma(t), x_t)
    # Guidance (Ho & Salimans 2022) on the raw outputs: the conversion is affine, so this mixes x0 and eps
    out = cfg_mix(*both_halves(teacher, x_t, t, y), cfg_scale)
    x0, eps = objective.to_x0_eps(out, x_t, a_t, s_t)
    return broadcast(path.alpha(s), x_t) * x0 + broadcast(path.sigma(s), x_t) * eps


def two_step_target(x_t: Tensor, x_end: Tensor, t: Tensor, end: Tensor, path) -> tuple[Tensor, Tensor]:
    """The (x0, eps) with which ONE DDIM step from x_t at t lands exactly on x_end at `end`
    (Salimans & Ho 2022, Algorithm 2: x0~ = (x_end - (s_end / s_t) x_t) / (a_end - (s_end / s_t) a_t))."""
    a_t, s_t = broadcast(path.alpha(t), x_t), broadcast(path.sigma(t), x_t)
    a_e, s_e = broadcast(path.alpha(end), x_t), broadcast(path.sigma(end), x_t)
    ratio = s_e / s_t
    x0 = (x_end - ratio * x_t) / (a_e - ratio * a_t)
    return x0, (x_t - a_t * x0) / s_t


def progressive_loss(x0: Tensor, y: Tensor, draws: Draws, *, model: Callable, teacher_step: Callable, path,
                     objective, steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """One step of progressive distillation (Salimans & Ho 2022, Algorithm 2): (loss, per-sample error, t).

    The student takes `steps` steps where its teacher takes 2 x steps: from t = i / steps (i ~ U{1, ..., steps})
    the teacher takes two DDIM steps, to t - 1 / (2 steps) and to t - 1 / steps; the student learns the (x0, eps)
    with which one step lands where those two did (two_step_target), in its own objective's output (eps, v or the
    flow's velocity), with a squared error, as in diffusion training. A guided teacher bakes its guidance in.
    """
    i = draws.randint(steps) + 1
    eps = draws.randn(*x0.shape[1:])
    t = i.float() / steps
    mid, end = t - 0.5 / steps, t - 1.0 / steps
    a_t, s_t = broadcast(path.alpha(t), x0), broadcast(path.sigma(t), x0)
    x_t = a_t * x0 + s_t * eps  # the forward process: at t = 1 on the flow path, pure noise
    x_end = teacher_step(teacher_step(x_t, t, mid, y), mid, end, y)
    x0_target, eps_target = two_step_target(x_t, x_end, t, end, path)
    target = objective.target(x0_target, eps_target, a_t, s_t)
    per_sample = (model(x_t, t * 1000, y).float() - target).pow(2).flatten(1).mean(1)
    return per_sample.mean(), per_sample.detach(), t


class ProgressiveTrainer(Trainer):
    """Progressive distillation (Salimans & Ho 2022): a student that samples in fewstep.steps steps what its
    teacher samples in twice as many; run again with the student as the teacher to halve once more (8 -> 4 ->
    2 -> 1). It starts from the teacher's weights (Algorithm 2). With fewstep.teacher_cfg_scale above 1 the
    first round's teacher is guided, so the student draws guided images at one network call a step."""

    def __init__(self, cfg: Config, data: Optional[tuple] = None, device: Optional[torch.device] = None,
                 quiet: bool = False, dist: Optional[DistInfo] = None):
        if cfg.data.vae_checkpoint:
            raise ConfigError(f"{cfg.name}: fewstep: pixel-space models only (data.vae_checkpoint must be null)")
        super().__init__(cfg, data, device, quiet, dist)
        self.teacher, _ = load_teacher(cfg, self.device)
        self.model.load_state_dict(self.teacher.state_dict())
        self.ema.model.load_state_dict(self.teacher.state_dict())
        step = partial(guided_ddim_step, self.teacher, self.objective, self.path, cfg.fewstep.teacher_cfg_scale)
        self.loss = logged_by_t(partial(progressive_loss, model=self.forward, teacher_step=step, path=self.path,
                                        objective=self.objective, steps=cfg.fewstep.steps))


class ShortcutTrainer(Trainer):
    """Shortcut models (Frans et al. 2024): one flow network that also knows how far it will jump.

    The network reads the jump size d beside t (model.step_conditioning) and predicts the average
    velocity s(x_t, t, d) of a jump from t to t - d, so one Euler step x_{t-d} = x_t - d s lands on
    the path. Training mixes two losses in one batch (Sec. 3, Eq. 5):

    - flow matching at d = 0 (three quarters of the batch): s(x_t, t, 0) regresses eps - x0, as
      SD3 does, with label dropout so guidance still works;
    - self-consistency (one quarter): one jump of 2d must equal two jumps of d,
      s(x_t, t, 2d) = stopgrad(s(x_t, t, d) + s(x_{t-d}, t - d, d)) / 2 with x_{t-d} = x_t - d s(x_t, t, d),
      for d in 1/N, 2/N, ..., 1/2 (the smallest jump asks the flow itself, d = 0, as in the paper).
    """

    def __init__(self, cfg: Config, data: Optional[tuple] = None, device: Optional[torch.device] = None,
                 quiet: bool = False, dist: Optional[DistInfo] = None):
        super().__init__(cfg, data, device, quiet, dist)
        self.loss = logged_by_t(partial(shortcut_loss, model=self.forward, diffusion=cfg.diffusion,
                                        steps=cfg.fewstep.steps, cfg_dropout_prob=cfg.training.cfg_dropout_prob))


def shortcut_loss(x0: Tensor, y: Tensor, draws: Draws, *, model: Callable, diffusion: DiffusionConfig, steps: int,
                  cfg_dropout_prob: float) -> tuple[Tensor, Tensor, Tensor]:
    """One step of shortcut training (Frans et al. 2024, Sec. 3, Eq. 5): (loss, per-sample squared error, t).

    The first SELF_CONSISTENT_SHARE of the global batch learn self-consistency, the rest flow matching;
    model(x_t, 1000 t, y, d=1000 d) is the network that also reads its jump size d.
    """
    N = steps
    m = int(draws.n * SELF_CONSISTENT_SHARE)  # the first m of the global batch learn shortcuts
    t = draws.sliced(partial(sample_training_t, diffusion))  # (B,) for the flow-matching part
    # self-consistency: a jump 2d = 2^(k+1) / N from a t on the grid of 2d (so t - 2d >= 0)
    k = draws.randint(int(math.log2(N)))
    d = (2.0 ** k) / N  # (B,) the half jump
    t_sc = 2 * d * torch.ceil(draws.rand() * (0.5 / d)).clamp(min=1)
    eps = draws.randn(*x0.shape[1:])
    drop = draws.rand() < cfg_dropout_prob
    shortcut = draws.index() < m
    t = torch.where(shortcut, t_sc, t)
    y = drop_condition(y, drop & ~shortcut)  # dropout on the flow-matching part only
    x_t = broadcast(1 - t, x0) * x0 + broadcast(t, x0) * eps  # the flow path, Esser et al. 2024, Eq. 2
    target = eps - x0  # d = 0: the flow's velocity
    if shortcut.any():
        target = target.clone()
        target[shortcut] = two_jumps(model, x_t[shortcut], t[shortcut], y[shortcut], d[shortcut], N)
    jump = torch.where(shortcut, 2 * d, torch.zeros_like(d))
    out = model(x_t, t * 1000, y, d=jump * 1000)
    per_sample = (out.float() - target).pow(2).flatten(1).mean(1)  # (B,)
    return per_sample.mean(), per_sample.detach(), t


@torch.no_grad()
def two_jumps(model: Callable, x_t: Tensor, t: Tensor, y: Tensor, d: Tensor, steps: int) -> Tensor:
    """The self-consistency target: the mean velocity of two jumps of d (the smallest, 1 / steps: the flow, d = 0)."""
    asked = torch.where(d <= 1.0 / steps, torch.zeros_like(d), d) * 1000
    s1 = model(x_t, t * 1000, y, d=asked).float()
    x_mid = x_t - broadcast(d, x_t) * s1  # one Euler jump of d (t decreases towards the data)
    s2 = model(x_mid, (t - d) * 1000, y, d=asked).float()
    return (s1 + s2) / 2
