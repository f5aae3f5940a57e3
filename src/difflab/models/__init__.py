"""Backbones. Each maps (x_t, 1000 t, y) -> out of the shape of x_t; none knows the noise schedule."""

from __future__ import annotations


from torch import nn

from ..settings import ModelConfig
from ..infra.validation import ConfigError
from .layers import NULL_CLASS, NUM_CLASSES, count_parameters
from .unet import build_unet


def _build_dit(cfg, in_channels, image_size):
    from .dit import build_dit

    return build_dit(cfg, in_channels, image_size)


def _build_mmdit(cfg, in_channels, image_size):
    from .mmdit import build_mmdit

    return build_mmdit(cfg, in_channels, image_size)


# The one registry: architecture name -> builder(cfg, in_channels, image_size).
MODELS = {
    "unet": build_unet,
    "dit": _build_dit,
    "mmdit": _build_mmdit,
}


def build_model(cfg: ModelConfig, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    if cfg.architecture not in MODELS:  # "vae": latent diffusion's autoencoder (models/vae.py), not a denoiser
        raise ConfigError(f"model.architecture: {cfg.architecture!r} is not a denoiser (known: {', '.join(MODELS)}); "
                          "a VAE is used through a diffusion config's data.vae_checkpoint")
    try:
        return MODELS[cfg.architecture](cfg, in_channels, image_size)
    except ConfigError:
        raise
    except ValueError as e:  # sizes the architecture cannot take (GroupNorm groups, patch size, levels)
        raise ConfigError(f"model: {str(e).splitlines()[0]}") from None
    except RuntimeError as e:
        if "allocate" not in str(e):
            raise
        raise ConfigError(f"model: too large to build ({str(e).splitlines()[0][:120]})") from None


__all__ = ["MODELS", "build_model", "count_parameters", "NULL_CLASS", "NUM_CLASSES"]
