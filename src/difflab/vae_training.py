"""Training the VAE of latent diffusion (stage one): `python train.py --config configs/reference/vae_mnist.yaml`.

The loss is the negative ELBO of Kingma & Welling 2014 with a small KL weight, as
in Rombach et al. 2022 (Sec. 3.1, "KL-reg."):

    loss = mean_pixels (x_hat - x)^2  +  kl_weight * mean_latents KL(q(z | x) || N(0, I))

SD adds a perceptual (LPIPS) and an adversarial term for sharper images; on MNIST
the squared error alone is enough. Every checkpoint also stores the latent scale
factor, 1 / std of the training latents (Rombach et al. 2022, Sec. 4.3.2), so the
diffusion stage sees unit-variance inputs.

`VAETrainer` has the public surface of `training.Trainer` that train.py uses.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from . import runs
from .checkpoint import (RESUME_FIELDS, CheckpointError, check_resume_fields, load_checkpoint, load_weights,
                         save_checkpoint, set_rng_state)
from .config import Config, ConfigError, config_from_dict
from .data import load_split
from .distributed import DistInfo, init_distributed
from .models import count_parameters
from .models.vae import VAE, build_vae, kl_divergence
from .pipeline import select_device
from .optim import adamw, lr_at, run_length
from .outputs import write_error, writing
from .training import NonFiniteLoss
from .visualize import save_grid

SCALE_IMAGES = 10_000  # training images whose latents set the scale factor
EVAL_IMAGES = 1_000  # test images for the PSNR logged each epoch (the whole test set at the end)


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB, for images in [-1, 1] (peak-to-peak 2)."""
    mse = (x_hat.clamp(-1, 1) - x).pow(2).flatten(1).mean(1)  # (B,)
    return 10 * torch.log10(4.0 / mse.clamp(min=1e-10))


@torch.no_grad()
def reconstruct(vae: VAE, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """x -> decode(encode(x)) through the scaled latents diffusion uses (the posterior mean)."""
    dev = next(vae.parameters()).device
    batches = (x[i : i + batch_size].to(dev) for i in range(0, len(x), batch_size))
    return torch.cat([vae.decode_latents(vae.encode_latents(b)).cpu() for b in batches])


@torch.no_grad()
def measure_scale_factor(vae: VAE, x: torch.Tensor, batch_size: int = 500) -> float:
    """1 / std of the unscaled latents of `x`: multiplying by it gives unit variance."""
    dev = next(vae.parameters()).device
    means = [vae.encode(x[i : i + batch_size].to(dev))[0].cpu() for i in range(0, len(x), batch_size)]
    return 1.0 / torch.cat(means).double().std().item()


class VAETrainer:
    """Holds the VAE, its optimiser and data; `fit()` trains it."""

    def __init__(self, cfg: Config, data: Optional[tuple] = None, test_data: Optional[tuple] = None,
                 device: Optional[torch.device] = None, quiet: bool = False):
        if cfg.data.vae_checkpoint:
            raise ConfigError(f"{cfg.name}: data.vae_checkpoint: a VAE trains on pixels; expected null")
        self.cfg, self.quiet, t = cfg, quiet, cfg.training
        if init_distributed().enabled:
            raise ConfigError(f"{cfg.name}: the VAE trains in one process; run train.py without torchrun")
        self.dist, self.interrupted = DistInfo(), False  # what train.py asks of every trainer
        if getattr(t, "threads", None):
            torch.set_num_threads(t.threads)
        self.device = device or select_device(t.device)
        self.out_dir = Path(t.output_dir) / cfg.name
        if data is None:  # MNIST; PSNR and the classifier are judged on the test split
            data = load_split("train", cfg.data.dataset, cfg.data.data_dir, "cpu")
            data = data[0][: cfg.data.limit], data[1][: cfg.data.limit]  # data.limit: the first N images only
            test_data = test_data or load_split("test", cfg.data.dataset, cfg.data.data_dir, "cpu")
        self.x, self.y = data[0].to(self.device), data[1]
        self.x_test, self.y_test = test_data if test_data is not None else data  # given data only: judge on it
        torch.manual_seed(t.seed)  # the initial weights
        self.model = build_vae(cfg.model, in_channels=self.x.shape[1], image_size=self.x.shape[2]).to(self.device)
        self.opt = adamw(self.model, t)
        self.batch_size = t.batch_size if isinstance(t.batch_size, int) else t.max_batch_size
        self.steps_per_epoch = max(len(self.x) // self.batch_size, 1)
        self.total_steps = run_length(t, self.steps_per_epoch, self.batch_size)
        self.step, self.elapsed = 0, 0.0
        self.noise_gen = torch.Generator(device=self.device).manual_seed(t.seed + 1)
        self.params = count_parameters(self.model)
        self.final: dict = {}

    # ------------------------------------------------------------------ one step

    def batch(self, step: int) -> torch.Tensor:
        """The batch of a global step: epoch e's permutation comes from seed + e (as in Trainer)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(self.cfg.training.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.x), generator=g)
        return self.x[perm[pos * self.batch_size : (pos + 1) * self.batch_size].to(self.device)]

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, reconstruction MSE, KL per latent element), each a scalar."""
        x_hat, mean, logvar = self.model(x, generator=self.noise_gen)
        recon = (x_hat - x).pow(2).mean()  # a Gaussian likelihood, up to constants
        kl = kl_divergence(mean, logvar).mean()
        return recon + self.cfg.model.kl_weight * kl, recon.detach(), kl.detach()

    def train_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tc = self.cfg.training
        for group in self.opt.param_groups:
            group["lr"] = lr_at(step, tc.lr, tc.warmup_steps, self.total_steps)
        loss, recon, kl = self.loss(self.batch(step))
        if not torch.isfinite(loss).item():
            raise NonFiniteLoss(f"VAE loss became {loss.item()} at step {step}; try a lower training.lr")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.opt.step()
        return loss.detach(), recon, kl

    # ------------------------------------------------------------------ the loop

    def progress(self) -> tqdm:
        """The progress bar of fit(); as a context manager it ends its line even when the run fails."""
        return tqdm(total=self.total_steps, initial=self.step, disable=self.quiet, unit="step", dynamic_ncols=True)

    def fit(self, stop_after: Optional[int] = None, overwrite: bool = False) -> dict:
        """Train until total_steps (or `stop_after` steps); return the last log record.

        The output folder is claimed as in Trainer.fit (runs.claim): locked, and a fresh run
        refuses another run's results unless `overwrite`.
        """
        tc = self.cfg.training
        end = self.total_steps if stop_after is None else min(self.total_steps, stop_after)
        sums, n_since, t_last, last = torch.zeros(3, device=self.device), 0, time.perf_counter(), {}
        self.interrupted = False
        kept = f"checkpoints already in {self.out_dir / 'checkpoints'} are intact"
        with runs.claim(self.out_dir, fresh=self.step == 0, overwrite=overwrite), runs.sigint_sets_flag(self), \
                writing(self.out_dir, kept), self.progress() as bar:  # the bar starts once the folder is ours
            (self.out_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
            while self.step < end and not self.interrupted:
                self.model.train()
                sums += torch.stack(self.train_step(self.step))
                self.step, n_since = self.step + 1, n_since + 1
                bar.update(1)
                epoch_done = self.step % self.steps_per_epoch == 0
                if self.step % tc.log_every == 0 or self.step == end or epoch_done:
                    now = time.perf_counter()
                    self.elapsed += now - t_last
                    ips = n_since * self.batch_size / max(now - t_last, 1e-9)
                    last = self._log((sums / n_since).tolist(), ips)
                    bar.set_postfix(recon=f"{last['recon']:.4f}", psnr=f"{last['psnr']:.1f}", img_s=f"{ips:.0f}")
                    sums.zero_()
                    n_since, t_last = 0, time.perf_counter()
                if epoch_done or self.step == self.total_steps:
                    self.end_of_epoch()
                    t_last = time.perf_counter()  # evaluation and saving are not training time
            if self.step < self.total_steps:
                self.save("last.pt")
            elif not self.final:
                self.final = self.evaluate_test_set()
                if not self.quiet:
                    print(self.describe_final())
        return last

    def _log(self, means: list, ips: float) -> dict:
        loss, recon, kl = means
        record = {
            "step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4),
            "loss": loss, "recon": recon, "kl": kl,
            "psnr": round(self.eval_psnr(), 3),  # on the first EVAL_IMAGES test images
            "lr": self.opt.param_groups[0]["lr"], "images_per_s": round(ips, 1), "seconds": round(self.elapsed, 2),
        }
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        return record

    def eval_psnr(self) -> float:
        """Mean PSNR on the first EVAL_IMAGES test images (cheap enough for every log line)."""
        self.model.eval()
        return psnr(reconstruct(self.model, self.x_test[:EVAL_IMAGES]), self.x_test[:EVAL_IMAGES]).mean().item()

    def end_of_epoch(self) -> None:
        epoch = math.ceil(self.step / self.steps_per_epoch)
        self.save_reconstructions(f"epoch_{epoch:03d}")
        if epoch % self.cfg.training.checkpoint_every == 0 or self.step == self.total_steps:
            self.save(f"model_epoch_{epoch}.pt")
        self.save("last.pt")

    # ------------------------------------------------------------------ outputs

    def save_reconstructions(self, tag: str, n: int = 10) -> Path:
        """Originals (top row) above their reconstructions (bottom row), one of each digit if possible."""
        idx = [int((self.y_test == d).nonzero()[0]) for d in range(10) if (self.y_test == d).any()][:n]
        x = self.x_test[idx]
        self.model.eval()
        pairs = torch.cat([x.cpu(), reconstruct(self.model, x)])  # (2n, 1, 28, 28): originals, then reconstructions
        return save_grid(pairs, self.out_dir / "reconstructions" / f"{tag}.png", nrow=len(idx))

    def evaluate_test_set(self) -> dict:
        """PSNR on every held-out image, and whether the MNIST classifier still reads the digits."""
        self.model.eval()
        recon = reconstruct(self.model, self.x_test)
        result = {"test_images": len(self.x_test), "psnr": psnr(recon, self.x_test).mean().item()}
        try:
            from .classifier import load_classifier
            from .evaluation import conditional_accuracy

            clf = load_classifier(self.cfg.data.data_dir, self.device, train_if_missing=False)
            result["classifier_accuracy_reconstructions"] = conditional_accuracy(clf, recon, self.y_test)[0]
            result["classifier_accuracy_originals"] = conditional_accuracy(clf, self.x_test, self.y_test)[0]
        except FileNotFoundError:
            pass  # no cached classifier: `python evaluate.py` trains one
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, "test": result}) + "\n")
        return result

    def describe_final(self) -> str:
        """The final evaluation as the one line train.py leaves on the screen."""
        r = self.final
        text = f"test set ({r['test_images']} images): reconstruction PSNR {r['psnr']:.2f} dB"
        if "classifier_accuracy_reconstructions" in r:
            text += (f"; classifier accuracy {r['classifier_accuracy_reconstructions']:.4f} on reconstructions, "
                     f"{r['classifier_accuracy_originals']:.4f} on the originals")
        return text + f"; latent scale factor {self.model.scale_factor:.5f}"

    def state(self) -> dict:
        """Everything to rebuild the VAE (config, weights, scale factor) and to resume its training."""
        self.model.eval()
        g = torch.Generator().manual_seed(self.cfg.training.seed)
        subset = torch.randperm(len(self.x), generator=g)[:SCALE_IMAGES].to(self.device)
        self.model.scale_factor = measure_scale_factor(self.model, self.x[subset])
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "scale_factor": self.model.scale_factor,  # read back by difflab.latent.load_vae
            "latent_shape": list(self.model.latent_shape),
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "images_seen": self.step * self.batch_size,  # full batches only (steps_per_epoch)
            "epoch": self.step / self.steps_per_epoch,
            "seconds": self.elapsed,
            "noise_rng": self.noise_gen.get_state(),
            "params": self.params,
            "torch": str(torch.__version__),
        }

    def save(self, name: str) -> Path:
        """Write a checkpoint atomically; a failed write leaves the old file intact."""
        path = self.out_dir / "checkpoints" / name
        try:
            return save_checkpoint(self.state(), path)
        except OSError as e:
            raise write_error(path, e, f"earlier checkpoints in {path.parent} are intact") from None

    def load_state(self, path: Path) -> None:
        """Continue where a checkpoint stopped: weights, optimiser, step and RNG."""
        state = load_checkpoint(path, map_location=self.device)
        check_resume_fields(state, path, {**RESUME_FIELDS, "scale_factor": float})
        saved = config_from_dict(state["config"], source=str(path))
        if saved.model != self.cfg.model:
            raise ConfigError(f"{path}: the checkpoint's 'model' section differs from the config; cannot resume")
        load_weights(self.model, state["model"], path)
        try:
            self.opt.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: optimizer state does not match ({e})") from None
        self.step, self.elapsed = state["step"], float(state.get("seconds") or 0.0)
        self.model.scale_factor = state["scale_factor"]
        set_rng_state(self.noise_gen, state["noise_rng"], path)
