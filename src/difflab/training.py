"""One training loop for every config: checkpoints, resume (AdamW, the LR schedule and EMA are in optim.py).

The loss is the same for every objective (Ho et al. 2020, Algorithm 1, generalised):
draw t, noise x0 into x_t = alpha(t) x0 + sigma(t) eps, and regress the model's
output on the objective's target with a mean squared error.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from .checkpoint import (RESUME_FIELDS, CheckpointError, check_resume_fields, epoch_checkpoints, load_checkpoint,
                         load_weights, save_checkpoint, set_rng_state)
from .config import Config, ConfigError, config_from_dict
from .distributed import DistInfo, barrier, init_distributed, mean_across_ranks
from .models import build_model, count_parameters
from .models.text import drop_condition
from . import runs
from .objectives import broadcast, build_objective, min_snr_weight
from .optim import EMA, adamw, lr_at, run_length
from .outputs import write_error, writing
from .pipeline import Pipeline, select_device
from .schedules import build_path, sample_training_t
from .speed import choose_batch_size
from .visualize import save_grid

T_BINS = 10  # the loss is also logged per tenth of [0, 1] in t (minRF's habit)
# Every target (eps, x0, v, flow) has about unit variance, so predicting zero scores a loss near 1;
# a loss a hundred times that means the weights have blown up (lr far too high), finite or not.
DIVERGED_LOSS = 100.0
# on_nonfinite=skip skips a bad step; a run that skips more than this share of its steps is broken.
MAX_SKIPPED_SHARE, MIN_SKIPPED = 0.05, 2


class NonFiniteLoss(RuntimeError):
    """The loss or the weights stopped being finite; nothing non-finite is saved."""


class Trainer:
    """Holds the model, optimiser and data of one run; `fit()` trains it."""

    def __init__(self, cfg: Config, data: Optional[tuple] = None, device: Optional[torch.device] = None,
                 quiet: bool = False, dist: Optional[DistInfo] = None):
        self.cfg, t = cfg, cfg.training
        self.dist = dist or init_distributed()
        self.quiet = quiet or not self.dist.is_main
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = device or select_device(t.device, self.dist.local_rank)
        self.out_dir = Path(t.output_dir) / cfg.name
        # The whole dataset as one tensor on the device; batches are drawn by index.
        self.vae = None
        if data is None:
            from .latent import load_training_data

            data, self.vae = load_training_data(cfg, self.device)
        elif cfg.data.vae_checkpoint:  # latents handed in (tests): still decode grids through the VAE
            from .latent import load_vae

            self.vae = load_vae(cfg.data.vae_checkpoint, self.device)
        self.x, self.y = data[0].to(self.device), data[1].to(self.device)
        c, h = self.x.shape[1], self.x.shape[2]
        torch.manual_seed(t.seed)  # the initial weights: the same on every rank
        self.model = build_model(cfg.model, in_channels=c, image_size=h).to(self.device)
        self.params = count_parameters(self.model)
        self.path, self.objective = build_path(cfg.diffusion), build_objective(cfg.diffusion.target)
        self.autocast = self._autocast_context()
        self.batch_size = t.batch_size if isinstance(t.batch_size, int) else self.choose_batch_size()
        self.train_model = self._wrap(self.model)
        self.ema = EMA(self.model, t.ema_decay)
        self.opt = adamw(self.model, t)
        # batch_size is per rank; one step consumes world * batch_size images.
        self.global_batch = self.batch_size * self.dist.world
        self.steps_per_epoch = max(len(self.x) // self.global_batch, 1)
        self.total_steps = run_length(t, self.steps_per_epoch, self.global_batch)
        self.step, self.images_seen, self.elapsed = 0, 0, 0.0
        self.noise_gen = torch.Generator(device=self.device).manual_seed(t.seed + 1)
        self.train_images_per_s = None
        self._perm = None  # (epoch, that epoch's permutation of the dataset)
        self.skipped = 0

    def _autocast_context(self):
        """bf16 autocast (training.precision): matmuls in bfloat16, weights and loss in fp32."""
        if self.cfg.training.precision == "bf16" and self.device.type in ("cuda", "cpu"):
            return lambda: torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """What the training step calls: DDP across ranks, then torch.compile if asked for."""
        if self.device.type == "cuda":  # TF32 matmuls on Ampere and newer: ~fp32 accuracy, far faster
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        compile_ = self.cfg.training.compile
        if compile_ is None:
            compile_ = self.device.type == "cuda"  # measured: on the CPU compile does not pay off here
        return torch.compile(model) if compile_ else model

    def choose_batch_size(self) -> int:
        """training.batch_size: auto (see speed.choose_batch_size)."""
        return choose_batch_size(self.model, self.x, self.y, self.autocast, self.cfg.training.max_batch_size,
                                 self.device, verbose=not self.quiet)

    # ------------------------------------------------------------------ one step

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch for a global step: epoch e's permutation comes from seed + e, so a resumed run sees the same data."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.cfg.training.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.x), generator=g).to(self.device))
        # This rank's slice of the global batch: ranks see disjoint images.
        start = pos * self.global_batch + self.dist.rank * self.batch_size
        idx = self._perm[1][start : start + self.batch_size]
        return self.x[idx], self.y[idx]

    def loss(self, x0: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample MSE between the model's output and the objective's target."""
        # Every rank draws the randomness of the whole global batch and keeps its slice, so the
        # run is the same for any number of ranks (and the generators stay in step for resume).
        g, n = self.noise_gen, self.global_batch
        mine = slice(self.dist.rank * self.batch_size, (self.dist.rank + 1) * self.batch_size)
        t = sample_training_t(self.cfg.diffusion, n, g, self.device)[mine]  # (B,)
        eps = torch.randn((n, *x0.shape[1:]), generator=g, device=self.device)[mine]
        # Label dropout for classifier-free guidance (Ho & Salimans 2022, Algorithm 1).
        drop = (torch.rand(n, generator=g, device=self.device) < self.cfg.training.cfg_dropout_prob)[mine]
        y = drop_condition(y, drop)  # the null class, or the empty prompt
        a, s = broadcast(self.path.alpha(t), x0), broadcast(self.path.sigma(t), x0)
        x_t = a * x0 + s * eps  # the forward process, Ho et al. 2020, Eq. 4
        target = self.objective.target(x0, eps, a, s)
        with self.autocast():
            out = self.train_model(x_t, t * 1000, y)
        per_sample = (out.float() - target).pow(2).flatten(1).mean(1)  # (B,)
        if self.cfg.training.min_snr_gamma is not None:
            w = min_snr_weight(self.objective, a, s, self.cfg.training.min_snr_gamma).flatten()
            return (w * per_sample).mean(), per_sample.detach(), t  # the log keeps the plain MSE
        return per_sample.mean(), per_sample.detach(), t

    def train_step(self, step: int) -> Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One AdamW step; (loss, per-sample loss, t), or None for a non-finite step that was skipped."""
        tc = self.cfg.training
        for group in self.opt.param_groups:
            group["lr"] = lr_at(step, tc.lr, tc.warmup_steps, self.total_steps)
        x0, y = self.batch(step)
        loss, per_sample, t = self.loss(x0, y)
        if tc.on_nonfinite == "skip" or self.device.type != "cuda":
            # On the CPU this check is free; on a GPU it costs a synchronisation, so there it
            # happens only in "skip" mode (and in "stop" mode at each log step, in fit()).
            finite = 1.0 - mean_across_ranks(torch.isfinite(loss).float().reshape(1), self.dist).item()
            if finite > 0:  # any rank's loss was not finite: every rank agrees to skip or stop
                if tc.on_nonfinite == "stop":
                    raise NonFiniteLoss(f"the loss became {loss.item()} at step {step}; stopping "
                                        f"(training.on_nonfinite=skip skips such steps instead)")
                self.opt.zero_grad(set_to_none=True)
                self.count_skipped(step)
                return None
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # under DDP this also averages the gradients across ranks
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.opt.step()
        self.ema.update(self.model, step)
        return loss.detach(), per_sample, t

    def count_skipped(self, step: int) -> None:
        """training.on_nonfinite=skip: a few bad steps are skipped; more than a small share stops the run."""
        self.skipped += 1
        if self.skipped > max(MIN_SKIPPED, MAX_SKIPPED_SHARE * (step + 1)):
            raise NonFiniteLoss(f"{self.skipped} of the first {step + 1} steps had a non-finite loss and were skipped "
                                f"(more than {MAX_SKIPPED_SHARE:.0%}); stopping (lower training.lr, or check the data)")

    # ------------------------------------------------------------------ the loop

    def progress(self) -> tqdm:
        """The progress bar of fit(); as a context manager it ends its line even when the run fails."""
        return tqdm(total=self.total_steps, initial=self.step, disable=self.quiet, unit="step", dynamic_ncols=True)

    def fit(self, stop_after: Optional[int] = None, overwrite: bool = False) -> dict:
        """Train until total_steps (or `stop_after` steps); return the last log record.

        A fresh run refuses a folder that holds another run's results unless `overwrite`, and
        a second live run in the same folder is refused (runs.claim). Ctrl-C (SIGINT) finishes
        the current step, saves last.pt and returns with `self.interrupted` set, so nothing is
        lost and --resume continues.
        """
        tc, self.interrupted = self.cfg.training, False
        end = self.total_steps if stop_after is None else min(self.total_steps, stop_after)
        folder = runs.claim(self.out_dir, fresh=self.step == 0, overwrite=overwrite) if self.dist.is_main else nullcontext()
        sums = torch.zeros(1 + 2 * T_BINS, device=self.device)  # loss, then loss and count per t bin
        n_since, n_good, t_last, last_log = 0, 0, time.perf_counter(), {}
        kept = f"checkpoints already in {self.out_dir / 'checkpoints'} are intact"
        with folder, runs.sigint_sets_flag(self), writing(self.out_dir, kept), self.progress() as bar:  # the bar starts once the folder is ours
            if self.dist.is_main:
                (self.out_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
            while self.step < end and not self.interrupted:
                out = self.train_step(self.step)  # None: a non-finite step that was skipped
                self.step += 1
                self.images_seen += self.global_batch
                if out is not None:
                    loss, per_sample, t = out
                    bins = (t * T_BINS).long().clamp(max=T_BINS - 1)
                    sums[0] += loss
                    sums[1:].view(2, T_BINS)[0].scatter_add_(0, bins, per_sample)
                    sums[1:].view(2, T_BINS)[1].scatter_add_(0, bins, torch.ones_like(per_sample))
                    n_good += 1
                n_since += 1
                bar.update(1)
                epoch_done = self.step % self.steps_per_epoch == 0
                if self.step % tc.log_every == 0 or self.step == end or epoch_done:
                    # The only host-device synchronisation: once every log_every steps.
                    now = time.perf_counter()
                    self.elapsed += now - t_last
                    ips = n_since * self.global_batch / max(now - t_last, 1e-9)
                    self.train_images_per_s = ips
                    totals = mean_across_ranks(sums, self.dist).tolist()
                    loss = totals[0] / n_good if n_good else None  # skipped steps are not averaged in as 0
                    last_log = self._log(loss, ips, totals[1 : 1 + T_BINS], totals[1 + T_BINS :])
                    self.check_loss(loss)
                    bar.set_postfix(loss="skipped" if loss is None else f"{loss:.4f}", img_s=f"{ips:.0f}",
                                    epoch=self.step // self.steps_per_epoch)
                    sums.zero_()
                    n_since, n_good, t_last = 0, 0, time.perf_counter()
                if tc.sample_every and self.step % tc.sample_every == 0:
                    self.save_samples(f"step_{self.step:07d}")
                if epoch_done or self.step == self.total_steps:
                    self.end_of_epoch()
                    t_last = time.perf_counter()  # sampling and saving are not training time
            if self.step < self.total_steps:  # stopped early: keep everything needed to resume
                self.save("last.pt")
        barrier(self.dist)
        return last_log

    def check_loss(self, loss: Optional[float]) -> None:
        """Stop a run whose logged loss is not finite, or so large that training has diverged."""
        if loss is None:
            return
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"the loss became {loss} by step {self.step}; stopping")
        if loss > DIVERGED_LOSS:
            raise NonFiniteLoss(f"the loss reached {loss:.3g} by step {self.step} (predicting zero scores about 1): "
                                f"training diverged; stopping (lower training.lr, now {self.cfg.training.lr:g})")

    def end_of_epoch(self) -> None:
        epoch = math.ceil(self.step / self.steps_per_epoch)
        # Weights first: a sample grid that fails or is interrupted must not cost the epoch.
        if epoch % self.cfg.training.checkpoint_every == 0 or self.step == self.total_steps:
            self.save(f"model_epoch_{epoch}.pt")
            self._prune()
        self.save("last.pt")
        if not self.cfg.training.sample_every:
            self.save_samples(f"epoch_{epoch:03d}")

    def _log(self, loss: Optional[float], ips: float, bin_sum: list, bin_cnt: list) -> dict:
        by_t = [v / c if c > 0 else None for v, c in zip(bin_sum, bin_cnt)]
        record = {
            "step": self.step,
            "epoch": round(self.step / self.steps_per_epoch, 4),
            "images_seen": self.images_seen,
            "loss": loss,
            "lr": self.opt.param_groups[0]["lr"],
            "images_per_s": round(ips, 1),
            "seconds": round(self.elapsed, 2),
            "loss_by_t": [None if v is None else round(v, 5) for v in by_t],
            "skipped_steps": self.skipped,
        }
        if self.dist.is_main:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        return record

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

    def state(self) -> dict:
        for p in self.ema.model.parameters():
            if not torch.isfinite(p).all():
                raise NonFiniteLoss(f"non-finite weights at step {self.step}; not writing a checkpoint")
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "images_seen": self.images_seen,
            "seconds": self.elapsed,
            "noise_rng": self.noise_gen.get_state(),
            "params": self.params,
            "train_images_per_s": self.train_images_per_s,
            "device": str(self.device),
            "torch": str(torch.__version__),
            # which VAE the latents came from: its measured scale factor is its fingerprint
            "vae_scale_factor": None if self.vae is None else float(self.vae.scale_factor),
        }

    def save(self, name: str) -> Optional[Path]:
        """Write a checkpoint atomically (rank 0 only); a failed write leaves the old file intact."""
        if not self.dist.is_main:
            return None
        path = self.out_dir / "checkpoints" / name
        try:
            return save_checkpoint(self.state(), path)
        except OSError as e:
            raise write_error(path, e, f"earlier checkpoints in {path.parent} are intact") from None

    def _prune(self) -> None:
        keep = self.cfg.training.keep_last
        if keep <= 0:
            return
        ckpts = epoch_checkpoints(self.out_dir / "checkpoints")
        for old in ckpts[:-keep]:
            old.unlink(missing_ok=True)

    def load_state(self, path: Path) -> None:
        """Continue exactly where a checkpoint stopped: weights, optimiser, step and RNG."""
        state = load_checkpoint(path, map_location=self.device)
        check_resume_fields(state, path, {**RESUME_FIELDS, "ema": dict, "images_seen": int})
        saved = config_from_dict(state["config"], source=str(path))
        for section in ("model", "diffusion"):
            if getattr(saved, section) != getattr(self.cfg, section):
                raise ConfigError(f"{path}: the checkpoint's '{section}' section differs from the config; cannot resume")
        load_weights(self.model, state["model"], path)
        load_weights(self.ema.model, state["ema"], path, what="EMA")
        try:
            self.opt.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: optimizer state does not match ({e})") from None
        self.step, self.images_seen = state["step"], state["images_seen"]
        self.elapsed = float(state.get("seconds") or 0.0)
        set_rng_state(self.noise_gen, state["noise_rng"], path)
