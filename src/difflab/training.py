"""One training loop for every config: AdamW, warm-up + cosine decay, EMA, checkpoints, resume.

The loss is the same for every objective (Ho et al. 2020, Algorithm 1, generalised):
draw t, noise x0 into x_t = alpha(t) x0 + sigma(t) eps, and regress the model's
output on the objective's target with a mean squared error.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from .checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from .config import Config, ConfigError, config_from_dict
from .models import NULL_CLASS, build_model, count_parameters
from .objectives import broadcast, build_objective
from .pipeline import Pipeline, select_device
from .schedules import build_path, sample_training_t
from .visualize import save_grid

T_BINS = 10  # the loss is also logged per tenth of [0, 1] in t (minRF's habit)


class NonFiniteLoss(RuntimeError):
    pass


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to zero at the run's last step (Loshchilov & Hutter 2017)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of the weights, used for sampling (Song & Ermon 2020; Ho et al. 2020).

    The decay warms up as min(decay, (1 + n) / (10 + n)) so that short runs are not
    dominated by the random initial weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for p_ema, p in zip(self.model.parameters(), model.parameters()):
            p_ema.lerp_(p.detach(), 1 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


class Trainer:
    """Holds the model, optimiser and data of one run; `fit()` trains it."""

    def __init__(self, cfg: Config, data: Optional[tuple] = None, device: Optional[torch.device] = None, quiet: bool = False):
        self.cfg, self.quiet = cfg, quiet
        self.device = device or select_device(cfg.training.device)
        t = cfg.training
        self.out_dir = Path(t.output_dir) / cfg.name
        # The whole dataset as one tensor on the device; batches are drawn by index.
        self.vae = None
        if data is None:
            from .latent import load_training_data

            data, self.vae = load_training_data(cfg, self.device)
        self.x, self.y = data[0].to(self.device), data[1].to(self.device)
        c, h = self.x.shape[1], self.x.shape[2]
        torch.manual_seed(t.seed)  # the initial weights
        self.model = build_model(cfg.model, in_channels=c, image_size=h).to(self.device)
        self.ema = EMA(self.model, t.ema_decay)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.path, self.objective = build_path(cfg.diffusion), build_objective(cfg.diffusion.target)
        self.batch_size = t.batch_size if isinstance(t.batch_size, int) else t.max_batch_size
        self.steps_per_epoch = max(len(self.x) // self.batch_size, 1)
        total = t.epochs * self.steps_per_epoch
        self.total_steps = min(total, t.max_steps) if t.max_steps else total
        self.step, self.images_seen, self.elapsed = 0, 0, 0.0
        self.noise_gen = torch.Generator(device=self.device).manual_seed(t.seed + 1)
        self.params = count_parameters(self.model)
        self.train_images_per_s = None

    # ------------------------------------------------------------------ one step

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch for a global step: epoch e's permutation comes from seed + e, so a resumed run sees the same data."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(self.cfg.training.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.x), generator=g)
        idx = perm[pos * self.batch_size : (pos + 1) * self.batch_size].to(self.device)
        return self.x[idx], self.y[idx]

    def loss(self, x0: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample MSE between the model's output and the objective's target."""
        g, n = self.noise_gen, x0.shape[0]
        t = sample_training_t(self.cfg.diffusion, n, g, self.device)  # (B,)
        eps = torch.randn(x0.shape, generator=g, device=self.device)
        # Label dropout for classifier-free guidance (Ho & Salimans 2022, Algorithm 1).
        drop = torch.rand(n, generator=g, device=self.device) < self.cfg.training.cfg_dropout_prob
        y = torch.where(drop, torch.full_like(y, NULL_CLASS), y)
        a, s = broadcast(self.path.alpha(t), x0), broadcast(self.path.sigma(t), x0)
        x_t = a * x0 + s * eps  # the forward process, Ho et al. 2020, Eq. 4
        target = self.objective.target(x0, eps, a, s)
        out = self.model(x_t, t * 1000, y)
        per_sample = (out.float() - target).pow(2).flatten(1).mean(1)  # (B,)
        return per_sample.mean(), per_sample.detach(), t

    def train_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tc = self.cfg.training
        for group in self.opt.param_groups:
            group["lr"] = lr_at(step, tc.lr, tc.warmup_steps, self.total_steps)
        x0, y = self.batch(step)
        loss, per_sample, t = self.loss(x0, y)
        if tc.on_nonfinite == "skip" or self.device.type != "cuda":
            # On the CPU this check is free; on a GPU it costs a synchronisation.
            if not torch.isfinite(loss).item():
                if tc.on_nonfinite == "stop":
                    raise NonFiniteLoss(f"loss became {loss.item()} at step {step}; nothing non-finite was saved")
                self.opt.zero_grad(set_to_none=True)
                self.skipped += 1
                return loss.detach(), per_sample, t
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.opt.step()
        self.ema.update(self.model, step)
        return loss.detach(), per_sample, t

    # ------------------------------------------------------------------ the loop

    def fit(self, stop_after: Optional[int] = None) -> dict:
        """Train until total_steps (or `stop_after` steps, for tests and interruptions); return the last log."""
        tc, self.skipped = self.cfg.training, 0
        end = self.total_steps if stop_after is None else min(self.total_steps, stop_after)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.step == 0:  # a fresh run starts a fresh log
            (self.out_dir / "metrics.jsonl").unlink(missing_ok=True)
        (self.out_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
        bar = tqdm(total=self.total_steps, initial=self.step, disable=self.quiet, unit="step", dynamic_ncols=True)
        loss_sum = torch.zeros((), device=self.device)
        bin_sum = torch.zeros(T_BINS, device=self.device)
        bin_cnt = torch.zeros(T_BINS, device=self.device)
        n_since, t_last, last_log = 0, time.perf_counter(), {}
        while self.step < end:
            loss, per_sample, t = self.train_step(self.step)
            self.step += 1
            self.images_seen += per_sample.shape[0]
            loss_sum += loss
            bins = (t * T_BINS).long().clamp(max=T_BINS - 1)
            bin_sum.scatter_add_(0, bins, per_sample)
            bin_cnt.scatter_add_(0, bins, torch.ones_like(per_sample))
            n_since += 1
            bar.update(1)
            epoch_done = self.step % self.steps_per_epoch == 0
            if self.step % tc.log_every == 0 or self.step == end or epoch_done:
                now = time.perf_counter()
                self.elapsed += now - t_last
                ips = n_since * self.batch_size / max(now - t_last, 1e-9)
                self.train_images_per_s = ips
                last_log = self._log(loss_sum.item() / n_since, ips, bin_sum, bin_cnt)
                bar.set_postfix(loss=f"{last_log['loss']:.4f}", img_s=f"{ips:.0f}", epoch=self.step // self.steps_per_epoch)
                loss_sum.zero_(), bin_sum.zero_(), bin_cnt.zero_()
                n_since, t_last = 0, time.perf_counter()
            if tc.sample_every and self.step % tc.sample_every == 0:
                self.save_samples(f"step_{self.step:07d}")
            if epoch_done or self.step == self.total_steps:
                self.end_of_epoch()
                t_last = time.perf_counter()  # sampling and saving are not training time
        bar.close()
        if self.step < self.total_steps:  # stopped early: keep everything needed to resume
            self.save("last.pt")
        return last_log

    def end_of_epoch(self) -> None:
        epoch = math.ceil(self.step / self.steps_per_epoch)
        if not self.cfg.training.sample_every:
            self.save_samples(f"epoch_{epoch:03d}")
        if epoch % self.cfg.training.checkpoint_every == 0 or self.step == self.total_steps:
            self.save(f"model_epoch_{epoch}.pt")
            self._prune()
        self.save("last.pt")

    def _log(self, loss: float, ips: float, bin_sum, bin_cnt) -> dict:
        by_t = (bin_sum / bin_cnt.clamp(min=1)).tolist()
        record = {
            "step": self.step,
            "epoch": round(self.step / self.steps_per_epoch, 4),
            "images_seen": self.images_seen,
            "loss": loss,
            "lr": self.opt.param_groups[0]["lr"],
            "images_per_s": round(ips, 1),
            "seconds": round(self.elapsed, 2),
            "loss_by_t": [round(v, 5) if c > 0 else None for v, c in zip(by_t, bin_cnt.tolist())],
            "skipped_steps": self.skipped,
        }
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        return record

    # ------------------------------------------------------------------ outputs

    def pipeline(self) -> Pipeline:
        """The EMA model as a sampling pipeline."""
        return Pipeline(self.ema.model, self.cfg, self.device, vae=self.vae)

    def save_samples(self, tag: str) -> Path:
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
        }

    def save(self, name: str) -> Path:
        return save_checkpoint(self.state(), self.out_dir / "checkpoints" / name)

    def _prune(self) -> None:
        keep = self.cfg.training.keep_last
        if keep <= 0:
            return
        ckpts = sorted(self.out_dir.glob("checkpoints/model_epoch_*.pt"), key=lambda p: int(p.stem.split("_")[-1]))
        for old in ckpts[:-keep]:
            old.unlink(missing_ok=True)

    def load_state(self, path: Path) -> None:
        """Continue exactly where a checkpoint stopped: weights, optimiser, step and RNG."""
        state = load_checkpoint(path, map_location=self.device)
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
        self.step, self.images_seen = int(state["step"]), int(state["images_seen"])
        self.elapsed = float(state.get("seconds", 0.0))
        self.noise_gen.set_state(state["noise_rng"].cpu())
