"""Backbones. Each maps (x_t, 1000 t, y) -> out of the shape of x_t; none knows the noise schedule."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
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
    return MODELS[cfg.architecture](cfg, in_channels, image_size)


__all__ = ["MODELS", "build_model", "count_parameters", "NULL_CLASS", "NUM_CLASSES"]
