"""Training a diffusion model: `Trainer` supplies the loss, loop.TrainingLoop does the rest.

The loss is the same for every objective (Ho et al. 2020, Algorithm 1, generalised;
objectives.diffusion_loss): draw t, noise x0 into x_t = alpha(t) x0 + sigma(t) eps, and
regress the model's output on the objective's target with a mean squared error.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch

from .config import Config, ConfigError
from .distributed import DistInfo
from .loop import DIVERGED_LOSS, NonFiniteLoss, TrainingLoop  # noqa: F401 (the names tests and callers use)
from .models import build_model
from .models.text import drop_condition
from .objectives import build_objective, diffusion_loss
from .pipeline import Pipeline
from .schedules import build_path, sample_training_t
from .speed import choose_batch_size
from .visualize import save_grid

T_BINS = 10  # the loss is also logged per tenth of [0, 1] in t (minRF's habit)


class Trainer(TrainingLoop):
    """A diffusion model, its EMA and its data; `fit()` (loop.py) trains it."""

    resume_sections = ("model", "diffusion")
    resume_fields = {"images_seen": int}

    def __init__(self, cfg: Config, data: Optional[tuple] = None, device: Optional[torch.device] = None,
                 quiet: bool = False, dist: Optional[DistInfo] = None):
        super().__init__(cfg, device, quiet, dist)
        t = cfg.training
        # The whole dataset as one tensor on the device; batches are drawn by index.
        self.vae = None
        if data is None:
            from .latent import load_training_data

            data, self.vae = load_training_data(cfg, self.device)
        elif cfg.data.vae_checkpoint:  # latents handed in (tests): still decode grids through the VAE
            from .latent import load_vae

            self.vae = load_vae(cfg.data.vae_checkpoint, self.device)
        x = data[0]
        torch.manual_seed(t.seed)  # the initial weights: the same on every rank
        model = build_model(cfg.model, in_channels=x.shape[1], image_size=x.shape[2]).to(self.device)
        self.path, self.objective = build_path(cfg.diffusion), build_objective(cfg.diffusion.target)
        self.autocast = self._autocast_context()
        if isinstance(t.batch_size, int):
            batch_size = t.batch_size
        else:  # training.batch_size: auto (see speed.choose_batch_size)
            batch_size = choose_batch_size(model, x.to(self.device), data[1].to(self.device), self.autocast,
                                           t.max_batch_size, self.device, verbose=not self.quiet)
        world = self.dist.world
        if batch_size * world > len(x):  # config.py checks data.limit; this, the data actually given, and the ranks
            raise ConfigError(f"training.batch_size: at most the {len(x):,} training images (a batch is drawn from "
                              f"them), got {batch_size}" + (f" x {world} ranks" if world > 1 else ""))
        self.train_model = self.wrap(model)
        self.prepare(model, data, batch_size, ema=True)

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

    def loss(self, x0: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, per-sample squared error, t) of one batch."""
        # Every rank draws the randomness of the whole global batch and keeps its slice, so the
        # run is the same for any number of ranks (and the generators stay in step for resume).
        g, n = self.noise_gen, self.global_batch
        mine = slice(self.dist.rank * self.batch_size, (self.dist.rank + 1) * self.batch_size)
        t = sample_training_t(self.cfg.diffusion, n, g, self.device)[mine]  # (B,)
        eps = torch.randn((n, *x0.shape[1:]), generator=g, device=self.device)[mine]
        # Label dropout for classifier-free guidance (Ho & Salimans 2022, Algorithm 1).
        drop = (torch.rand(n, generator=g, device=self.device) < self.cfg.training.cfg_dropout_prob)[mine]
        y = drop_condition(y, drop)  # the null class, or the empty prompt
        loss, per_sample = diffusion_loss(self.forward, self.path, self.objective, x0, y, t, eps,
                                          self.cfg.training.min_snr_gamma)
        return loss, per_sample, t

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        loss, per_sample, t = self.loss(x, y)
        return loss, self.logged(loss, per_sample, t)

    def logged(self, loss: torch.Tensor, per_sample: torch.Tensor, t: torch.Tensor) -> dict:
        """What a step adds to the log: the loss, and the per-sample loss summed per tenth of t."""
        bins = (t * T_BINS).long().clamp(max=T_BINS - 1)
        zeros = torch.zeros(T_BINS, device=self.device)
        return {"loss": loss.detach(), "t_sum": zeros.scatter_add(0, bins, per_sample),
                "t_count": zeros.scatter_add(0, bins, torch.ones_like(per_sample))}

    def summarise(self, sums: dict, n: int) -> dict:
        by_t = [v / c if c > 0 else None for v, c in zip(sums["t_sum"].tolist(), sums["t_count"].tolist())] \
            if n else [None] * T_BINS
        return {"loss": sums["loss"].item() / n if n else None,  # skipped steps are not averaged in as 0
                "loss_by_t": [None if v is None else round(v, 5) for v in by_t]}

    # ------------------------------------------------------------------ outputs

    def pipeline(self) -> Pipeline:
        """The EMA model as a sampling pipeline."""
        return Pipeline(self.ema.model, self.cfg, self.device, vae=self.vae)

    def save_samples(self, tag: str) -> Optional[Path]:
        if not self.dist.is_main:
            return None
        pipe = self.pipeline()
        labels = pipe.default_labels(range(10), self.cfg.sampling.n_per_class)
        result = pipe.generate(labels, seed=self.cfg.training.seed)
        return save_grid(result.images, self.out_dir / "samples" / f"{tag}.png", nrow=self.cfg.sampling.n_per_class)

    def draw(self, tag: str) -> Optional[Path]:
        return self.save_samples(tag)

    def extra_state(self) -> dict:
        # which VAE the latents came from: its measured scale factor is its fingerprint
        return {"vae_scale_factor": None if self.vae is None else float(self.vae.scale_factor)}
