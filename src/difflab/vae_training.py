"""Training the VAE of latent diffusion (stage one): `python train.py --config configs/reference/vae_mnist.yaml`.

The loss is the negative ELBO of Kingma & Welling 2014 with a small KL weight, as
in Rombach et al. 2022 (Sec. 3.1, "KL-reg."):

    loss = mean_pixels (x_hat - x)^2  +  kl_weight * mean_latents KL(q(z | x) || N(0, I))

SD adds a perceptual (LPIPS) and an adversarial term for sharper images; on MNIST
the squared error alone is enough. Every checkpoint also stores the latent scale
factor, 1 / std of the training latents (Rombach et al. 2022, Sec. 4.3.2), so the
diffusion stage sees unit-variance inputs.

`VAETrainer` hands `vae_loss` to the same loop as the diffusion models (loop.TrainingLoop).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Optional

import torch

from .config import ConfigError
from .settings import Config
from .data import load_split
from .infra.distributed import DistInfo, init_distributed
from .latent import vae_training_config
from .loop import Draws, TrainingLoop
from .models.vae import VAE, build_vae, kl_divergence
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


def vae_loss(x: torch.Tensor, y: torch.Tensor, draws: Draws, *, model: VAE,
             kl_weight: float) -> tuple[torch.Tensor, dict]:
    """One step of Kingma & Welling 2014, Algorithm 1 (AEVB): the negative ELBO, with a small KL weight
    (Rombach et al. 2022, Sec. 3.1); the log keeps both of its terms."""
    # z = mean + sigma * eps, eps ~ N(0, I): the reparameterisation trick (Eq. 10), inside model.forward.
    # The VAE trains in one process, so the step's generator draws exactly this batch's noise.
    x_hat, mean, logvar = model(x, generator=draws.generator)
    recon = (x_hat - x).pow(2).mean()  # a Gaussian likelihood, up to constants
    kl = kl_divergence(mean, logvar).mean()
    loss = recon + kl_weight * kl
    return loss, {"loss": loss.detach(), "recon": recon.detach(), "kl": kl.detach()}


class VAETrainer(TrainingLoop):
    """The VAE, its optimiser and data; `fit()` (loop.py) trains it. One process: no DDP, no EMA."""

    resume_fields = {"scale_factor": float}
    pictures = "reconstructions"  # originals above their reconstructions (draw())

    def __init__(self, cfg: Config, data: Optional[tuple] = None, test_data: Optional[tuple] = None,
                 device: Optional[torch.device] = None, quiet: bool = False):
        if cfg.data.vae_checkpoint:
            raise ConfigError(f"{cfg.name}: data.vae_checkpoint: a VAE trains on pixels; expected null")
        if init_distributed().enabled:
            raise ConfigError(f"{cfg.name}: the VAE trains in one process; run train.py without torchrun")
        super().__init__(cfg, device, quiet, DistInfo())
        tc = cfg.training
        if data is None:  # MNIST; PSNR and the classifier are judged on the test split
            data = load_split("train", cfg.data.dataset, cfg.data.data_dir, "cpu")
            data = data[0][: cfg.data.limit], data[1][: cfg.data.limit]  # data.limit: the first N images only
            test_data = test_data or load_split("test", cfg.data.dataset, cfg.data.data_dir, "cpu")
        self.x_test, self.y_test = test_data if test_data is not None else data  # given data only: judge on it
        torch.manual_seed(tc.seed)  # the initial weights
        model = build_vae(cfg.model, in_channels=data[0].shape[1], image_size=data[0].shape[2]).to(self.device)
        loss = partial(vae_loss, model=model, kl_weight=cfg.model.net.kl_weight)
        self.prepare(model, data, tc.batch_size if isinstance(tc.batch_size, int) else tc.max_batch_size, loss)
        self.final: dict = {}

    # ------------------------------------------------------------------ the log

    def summarise(self, sums: dict, n: int) -> dict:
        record = super().summarise(sums, n)
        record["psnr"] = round(self.eval_psnr(), 3)  # on the first EVAL_IMAGES test images
        return record

    def postfix(self, record: dict) -> dict:
        if record["recon"] is None:  # every step since the last line was skipped
            return {"recon": "skipped"}
        return {"recon": f"{record['recon']:.4f}", "psnr": f"{record['psnr']:.1f}"}

    def eval_psnr(self) -> float:
        """Mean PSNR on the first EVAL_IMAGES test images (cheap enough for every log line)."""
        self.model.eval()
        return psnr(reconstruct(self.model, self.x_test[:EVAL_IMAGES]), self.x_test[:EVAL_IMAGES]).mean().item()

    # ------------------------------------------------------------------ outputs

    def draw(self, tag: str, n: int = 10) -> Path:
        """Originals (top row) above their reconstructions (bottom row), one of each digit if possible."""
        idx = [int((self.y_test == d).nonzero()[0]) for d in range(10) if (self.y_test == d).any()][:n]
        x = self.x_test[idx]
        self.model.eval()
        pairs = torch.cat([x.cpu(), reconstruct(self.model, x)])  # (2n, 1, 28, 28): originals, then reconstructions
        return save_grid(pairs, self.out_dir / self.pictures / f"{tag}.png", nrow=len(idx))

    def what(self) -> str:
        """What is trained, for the line a run starts with."""
        return "an autoencoder"

    def finish(self) -> None:
        if not self.final:
            self.final = self.evaluate_test_set()
            if not self.quiet:
                print(self.describe_final())

    def evaluate_test_set(self) -> dict:
        """PSNR on every held-out image, and whether the MNIST classifier still reads the digits."""
        self.model.eval()
        recon = reconstruct(self.model, self.x_test)
        result = {"test_images": len(self.x_test), "psnr": psnr(recon, self.x_test).mean().item()}
        try:
            from .classifier import load_classifier
            from .evaluation import conditional_accuracy

            clf = load_classifier(self.cfg.data.data_dir, self.device, train_if_missing=False,
                                  dataset=self.cfg.data.dataset)
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

    def extra_state(self) -> dict:
        """The latent scale factor, measured on the training images now, and the latent shape."""
        self.model.eval()
        g = torch.Generator().manual_seed(self.cfg.training.seed)
        subset = torch.randperm(len(self.x), generator=g)[:SCALE_IMAGES].to(self.device)
        self.model.scale_factor = measure_scale_factor(self.model, self.x[subset])
        return {"scale_factor": self.model.scale_factor,  # read back by difflab.latent.load_vae
                "latent_shape": list(self.model.latent_shape)}

    def load_extra_state(self, state: dict, path: Path) -> None:
        self.model.scale_factor = state["scale_factor"]


def train_vae_first(cfg: Config) -> Path:
    """Latent diffusion's first stage, when its VAE does not exist yet: train it, saying so."""
    vae_cfg = vae_training_config(cfg)
    command = f"python train.py --config {cfg.data.vae_config} training.output_dir={vae_cfg.training.output_dir}"
    print(f"no VAE at {cfg.data.vae_checkpoint} yet: training it first (stage 1 of latent diffusion; "
          f"the same as `{command}`)")
    trainer = VAETrainer(vae_cfg)
    trainer.fit()
    if trainer.interrupted:
        raise KeyboardInterrupt
    print(f"VAE trained: {cfg.data.vae_checkpoint}; now the diffusion model on its latents (stage 2)")
    return Path(cfg.data.vae_checkpoint)
