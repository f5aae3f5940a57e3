"""Training a diffusion model: `Trainer` hands the loop (loop.TrainingLoop) its loss, the loop does the rest.

The loss is the same for every objective (Ho et al. 2020, Algorithm 1, generalised;
`diffusion_batch_loss` below and objectives.diffusion_loss): draw t, noise x0 into
x_t = alpha(t) x0 + sigma(t) eps, and regress the model's output on the objective's target
with a mean squared error.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch

from .cascade import refiner_times, training_condition
from .config import ConfigError
from .settings import Config
from .infra.distributed import DistInfo
from .loop import Draws, Loss, TrainingLoop
from .models import build_model
from .models.text import drop_condition
from .models.video_dit import given_first_frames
from .objectives import build_objective, diffusion_loss
from .pipeline import Pipeline
from .schedules import build_path, sample_training_t
from .infra.speed import choose_batch_size
from .visualize import frames_of, save_grid

T_BINS = 10  # the loss is also logged per tenth of [0, 1] in t (minRF's habit)

Tensor = torch.Tensor


def diffusion_batch_loss(x0: Tensor, y: Tensor, draws: Draws, *, model: Callable, path, objective,
                         cfg: Config) -> tuple[Tensor, Tensor, Tensor]:
    """One step of Ho et al. 2020, Algorithm 1, for any path and objective: (loss, per-sample squared error, t).

    Algorithm 1: x0 ~ q(x0) (the batch), t ~ Uniform({1..T}) (here diffusion.t_sampling), eps ~ N(0, I),
    then a gradient step on the squared error (objectives.diffusion_loss). Labels are dropped at
    training.cfg_dropout_prob so that one network is also the unconditional model of guidance.
    """
    t = draws.sliced(partial(sample_training_t, cfg.diffusion))  # (B,)
    if cfg.cascade.refine_below:  # a refiner (SDXL): an expert of the low noise levels only
        t = refiner_times(t, cfg.cascade.refine_below, cfg.diffusion.num_timesteps,
                          cfg.diffusion.t_sampling == "uniform_discrete")
    eps = draws.randn(*x0.shape[1:])
    if getattr(cfg.model.net, "low_resolution", 0):  # a cascade's super-resolution stage: its low-resolution input
        model = partial(model, **training_condition(x0, draws, cfg, path))
    if getattr(cfg.model.net, "first_frame", 0):  # image-to-video: a share of the clips is given its first frame
        model = partial(model, first=given_first_frames(x0, draws.rand() < cfg.model.net.first_frame))
    # Label dropout for classifier-free guidance (Ho & Salimans 2022, Algorithm 1).
    y = drop_condition(y, draws.rand() < cfg.training.cfg_dropout_prob)  # the null class, or the empty prompt
    loss, per_sample = diffusion_loss(model, path, objective, x0, y, t, eps, cfg.training.min_snr_gamma)
    return loss, per_sample, t


def logged_by_t(batch_loss: Callable[[Tensor, Tensor, Draws], tuple[Tensor, Tensor, Tensor]]) -> Loss:
    """A loss that returns (loss, per-sample loss, t) as the loop's loss: the log keeps the loss and
    the per-sample loss summed per tenth of t, so the log shows which noise levels are hard."""

    def loss(x0: Tensor, y: Tensor, draws: Draws) -> tuple[Tensor, dict]:
        value, per_sample, t = batch_loss(x0, y, draws)
        bins = (t * T_BINS).long().clamp(max=T_BINS - 1)
        zeros = torch.zeros(T_BINS, device=t.device)
        return value, {"loss": value.detach(), "t_sum": zeros.scatter_add(0, bins, per_sample),
                       "t_count": zeros.scatter_add(0, bins, torch.ones_like(per_sample))}

    return loss


class Trainer(TrainingLoop):
    """A diffusion model, its EMA and its data; `fit()` (loop.py) trains it."""

    resume_sections = ("model", "diffusion")
    resume_fields = {"images_seen": int}

    def __init__(self, cfg: Config, data: Optional[tuple] = None, device: Optional[torch.device] = None,
                 quiet: bool = False, dist: Optional[DistInfo] = None):
        super().__init__(cfg, device, quiet, dist)
        tc = cfg.training
        # The whole dataset as one tensor on the device; batches are drawn by index.
        self.vae = None
        if data is None:
            from .latent import load_training_data

            data, self.vae = load_training_data(cfg, self.device)
        elif cfg.data.vae_checkpoint:  # latents handed in (tests): still decode grids through the VAE
            from .latent import load_vae

            self.vae = load_vae(cfg.data.vae_checkpoint, self.device)
        x = data[0]
        torch.manual_seed(tc.seed)  # the initial weights: the same on every rank
        model = build_model(cfg.model, in_channels=x.shape[1], image_size=x.shape[-1]).to(self.device)
        if cfg.model.conditioning == "prompt" and cfg.model.text_encoder != "joint":  # frozen, pretrained
            from .encoders import load_frozen_text

            load_frozen_text(model.text, cfg.model.text_encoder, cfg.data.data_dir, self.device)
        self.path, self.objective = build_path(cfg.diffusion), build_objective(cfg.diffusion.target)
        self.autocast = self._autocast_context()
        if isinstance(tc.batch_size, int):
            batch_size = tc.batch_size
        else:  # training.batch_size: auto (see speed.choose_batch_size)
            batch_size = choose_batch_size(model, x.to(self.device), data[1].to(self.device), self.autocast,
                                           tc.max_batch_size, self.device, verbose=not self.quiet)
        world = self.dist.world
        if batch_size * world > len(x):  # config.py checks data.limit; this, the data actually given, and the ranks
            raise ConfigError(f"training.batch_size: at most the {len(x):,} training images (a batch is drawn from "
                              f"them), got {batch_size}" + (f" x {world} ranks" if world > 1 else ""))
        self.train_model = self.wrap(model)
        loss = partial(diffusion_batch_loss, model=self.forward, path=self.path, objective=self.objective, cfg=cfg)
        self.prepare(model, data, batch_size, logged_by_t(loss), ema=True)

    def _autocast_context(self):
        """bf16 autocast (training.precision): matmuls in bfloat16, weights and loss in fp32."""
        if self.cfg.training.precision == "bf16" and self.device.type in ("cuda", "cpu"):
            return lambda: torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext

    # ------------------------------------------------------------------ the loss

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """The network under training (DDP, compile, autocast as configured); kwargs: a shortcut model's d."""
        with self.autocast():
            return self.train_model(x_t, t, y, **kwargs)

    def summarise(self, sums: dict, n: int) -> dict:
        by_t = [v / c if c > 0 else None for v, c in zip(sums["t_sum"].tolist(), sums["t_count"].tolist())] \
            if n else [None] * T_BINS
        return {"loss": sums["loss"].item() / n if n else None,  # skipped steps are not averaged in as 0
                "loss_by_t": [None if v is None else round(v, 5) for v in by_t]}

    # ------------------------------------------------------------------ outputs

    def what(self) -> str:
        """What is trained, for the line a run starts with: the target, and a few-step method with its teacher."""
        cfg, fs = self.cfg, self.cfg.fewstep
        what = f"target {cfg.diffusion.target}"
        if fs.method != "none":
            what += f", {fs.method.replace('_', ' ')}" + (f" of {fs.teacher}" if fs.teacher else "")
        return what

    def pipeline(self) -> Pipeline:
        """The EMA model as a sampling pipeline; a refiner's with its base, which takes the noisy steps."""
        base = None
        if Pipeline.refines(self.cfg):
            base = Pipeline.base_pipeline(self.cfg, self.out_dir, self.device, use_ema=True)
        return Pipeline(self.ema.model, self.cfg, self.device, vae=self.vae, base=base)

    def save_samples(self, tag: str) -> Optional[Path]:
        if not self.dist.is_main or self.cfg.model.architecture == "prior":  # a prior draws embeddings, not images
            return None
        pipe = self.pipeline()
        path = self.out_dir / self.pictures / f"{tag}.png"
        if self.cfg.model.architecture == "video_dit":  # a clip per digit, each a row of its frames
            result = pipe.generate(pipe.default_labels(range(10), 1), seed=self.cfg.training.seed)
            return save_grid(frames_of(result.images), path, nrow=result.images.shape[2])
        labels = pipe.default_labels(range(10), self.cfg.sampling.n_per_class)
        result = pipe.generate(labels, seed=self.cfg.training.seed)
        return save_grid(result.images, path, nrow=self.cfg.sampling.n_per_class)

    def draw(self, tag: str) -> Optional[Path]:
        return self.save_samples(tag)

    def extra_state(self) -> dict:
        # which VAE the latents came from: its measured scale factor is its fingerprint
        return {"vae_scale_factor": None if self.vae is None else float(self.vae.scale_factor)}
