"""Backbones. Each maps (x_t, 1000 t, y) -> out of the shape of x_t; none knows the noise schedule.

A new backbone is one file here, holding the network, its settings (a NetConfig dataclass: what a config's
`model:` section may set for it, and the checks on them) and its builder, and one line in ARCHITECTURES.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Optional

from torch import nn

from ..settings import ModelConfig, NetConfig
from ..infra.validation import ConfigError
from .dit import DiTConfig, build_dit
from .layers import NULL_CLASS, NUM_CLASSES, count_parameters
from .mmdit import MMDiTConfig, build_mmdit
from .prior import PriorConfig, build_prior
from .unet import UNetConfig, build_unet
from .vae import VAEConfig
from .video_dit import VideoDiTConfig, build_video_dit


@dataclass(frozen=True)
class Architecture:
    settings: type[NetConfig]  # its own keys of `model:`, their defaults and their checks
    build: Optional[Callable[[ModelConfig, int, int], nn.Module]]  # (cfg, in_channels, image_size); None: no denoiser


# The one registry: model.architecture -> its settings and its builder.
ARCHITECTURES: dict[str, Architecture] = {
    "unet": Architecture(UNetConfig, build_unet),
    "dit": Architecture(DiTConfig, build_dit),
    "mmdit": Architecture(MMDiTConfig, build_mmdit),
    "video_dit": Architecture(VideoDiTConfig, build_video_dit),  # clips of Moving MNIST (issue 49)
    "prior": Architecture(PriorConfig, build_prior),  # DALL-E 2's diffusion prior: CLIP image embeddings (unclip.py)
    # Latent diffusion's autoencoder: trained by its own trainer (vae_training.py), built by models.vae.build_vae.
    "vae": Architecture(VAEConfig, None),
}
MODELS = [name for name, arch in ARCHITECTURES.items() if arch.build]  # the denoisers


def model_keys(architecture: str) -> list[str]:
    """The keys a config's `model:` section may hold for this architecture: every model's, then its own."""
    shared = [f.name for f in fields(ModelConfig) if f.name != "net"]
    return shared + [f.name for f in fields(ARCHITECTURES[architecture].settings)]


def model_config(architecture: str = "unet", **settings) -> ModelConfig:
    """A `model:` section from keywords, as a config file lists them: model_config("dit", patch_size=2).
    Unchecked (config.py checks files); for notebooks and tests that build a network without a file."""
    shared = {key: settings.pop(key) for key in list(settings) if hasattr(ModelConfig, key)}
    return ModelConfig(architecture, ARCHITECTURES[architecture].settings(**settings), **shared)


def build_model(cfg: ModelConfig, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    build = ARCHITECTURES[cfg.architecture].build if cfg.architecture in ARCHITECTURES else None
    if build is None:
        raise ConfigError(f"model.architecture: {cfg.architecture!r} is not a denoiser (known: {', '.join(MODELS)}); "
                          "a VAE is used through a diffusion config's data.vae_checkpoint")
    try:
        return build(cfg, in_channels, image_size)
    except ConfigError:
        raise
    except ValueError as e:  # sizes the architecture cannot take (GroupNorm groups, patch size, levels)
        raise ConfigError(f"model: {str(e).splitlines()[0]}") from None
    except RuntimeError as e:
        if "allocate" not in str(e):
            raise
        raise ConfigError(f"model: too large to build ({str(e).splitlines()[0][:120]})") from None


__all__ = ["ARCHITECTURES", "Architecture", "MODELS", "build_model", "model_config", "model_keys", "count_parameters",
           "NULL_CLASS", "NUM_CLASSES"]
