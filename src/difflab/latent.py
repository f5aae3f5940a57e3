"""Where the training data comes from: MNIST pixels, or a VAE's latents (latent diffusion)."""

from __future__ import annotations

import torch

from .config import Config
from .data import load_split


def load_training_data(cfg: Config, device: torch.device):
    """(x, y) tensors on `device`, plus the VAE when the config asks for latent diffusion."""
    x, y = load_split("train", dataset=cfg.data.dataset, data_dir=cfg.data.data_dir, device=device)
    return (x, y), None


def load_vae(path, device):
    raise NotImplementedError("latent diffusion arrives with the VAE")
