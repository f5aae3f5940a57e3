"""A small KL-regularised convolutional VAE: the first stage of latent diffusion.

Rombach et al. 2022 ("High-Resolution Image Synthesis with Latent Diffusion
Models", Sec. 3.1) train an autoencoder once, then run diffusion on its latents.
This is their `AutoencoderKL` cut down to MNIST size:

    encoder: 28x28x1 -> 28x28xC -> 14x14x2C -> 7x7x2C -> (mean, log-variance), each 7x7xL
    decoder: 7x7xL -> 7x7x2C -> 14x14x2C -> 28x28xC -> 28x28x1

(shapes for channel_mult [1, 2, 2]; the downsampling factor is 2^(levels - 1)).
The encoder outputs a diagonal Gaussian q(z | x) (Kingma & Welling 2014); the
training loss is reconstruction + a small KL(q(z | x) || N(0, I)), which keeps the
latent space smooth and bounded without forcing the codes towards noise.

Diffusion sees *scaled* latents, z * scale_factor, with the scale measured on the
training set so they have unit variance (SD's 0.18215, Rombach et al. 2022, Sec. 4.3.2
and App. G). `encode_latents` and `decode_latents` are the one place where the
scale is applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..settings import ModelConfig, NetConfig, positive
from ..infra.validation import ConfigError
from .unet import Downsample, Upsample, norm, zero_init


@dataclass
class VAEConfig(NetConfig):
    """model: settings of `architecture: vae`, latent diffusion's first stage (trained by vae_training.py)."""

    channels: int = 16
    channel_mult: list = field(default_factory=lambda: [1, 4, 6])  # width of each level, times channels
    num_res_blocks: int = 1
    latent_channels: int = 4
    kl_weight: float = 1e-4  # weight of the per-element KL term against the per-pixel MSE

    def problems(self, model: ModelConfig) -> Iterator[tuple[str, str]]:
        yield from positive(channels=self.channels, latent_channels=self.latent_channels)
        if not self.channel_mult or not all(isinstance(c, int) and c > 0 for c in self.channel_mult):
            yield "channel_mult", "a non-empty list of positive integers"
        if self.num_res_blocks < 1:
            yield "num_res_blocks", "an integer >= 1"
        if self.kl_weight < 0:
            yield "kl_weight", "a number >= 0"


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (the U-Net's block, without time input)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm1, self.conv1 = norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2, self.conv2 = norm(out_ch), zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    """Image -> the mean and log-variance of q(z | x)."""

    def __init__(self, in_channels: int, channels: int, channel_mult: tuple, num_res_blocks: int, latent_channels: int):
        super().__init__()
        layers, ch = [nn.Conv2d(in_channels, channels, 3, padding=1)], channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(ch, channels * mult))
                ch = channels * mult
            if level != len(channel_mult) - 1:
                layers.append(Downsample(ch))  # halve H and W
        layers += [ResBlock(ch, ch), norm(ch), nn.SiLU(), nn.Conv2d(ch, 2 * latent_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.net(x).chunk(2, dim=1)  # each (B, L, H / f, W / f)
        return mean, logvar.clamp(-30.0, 20.0)  # as SD: keeps exp(logvar) finite


class Decoder(nn.Module):
    """Latent z (unscaled) -> image; the mirror of the encoder, with nearest-neighbour upsampling."""

    def __init__(self, out_channels: int, channels: int, channel_mult: tuple, num_res_blocks: int,
                 latent_channels: int):
        super().__init__()
        ch = channels * channel_mult[-1]
        layers = [nn.Conv2d(latent_channels, ch, 3, padding=1), ResBlock(ch, ch)]
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(ch, channels * mult))
                ch = channels * mult
            if level != 0:
                layers.append(Upsample(ch))  # double H and W
        layers += [norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # (B, 1, H, W), unbounded; the loss pulls it into [-1, 1]


class VAE(nn.Module):
    """x (B, 1, 28, 28) in [-1, 1] <-> z (B, L, 28 / f, 28 / f)."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, channels: int = 16,
                 channel_mult: tuple = (1, 2, 2), num_res_blocks: int = 1, latent_channels: int = 4):
        super().__init__()
        self.encoder = Encoder(in_channels, channels, channel_mult, num_res_blocks, latent_channels)
        self.decoder = Decoder(in_channels, channels, channel_mult, num_res_blocks, latent_channels)
        self.downsample_factor = 2 ** (len(channel_mult) - 1)
        side = image_size // self.downsample_factor
        self.latent_shape = (latent_channels, side, side)  # (C, H, W) of what diffusion runs on
        # 1 / std of the training latents, measured after training and stored in the
        # checkpoint (not a weight: it is set by difflab.latent.load_vae).
        self.scale_factor = 1.0

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator = None):
        """One training pass: sample z ~ q(z | x) by reparameterisation, decode it."""
        mean, logvar = self.encode(x)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device)
        z = mean + torch.exp(0.5 * logvar) * eps  # Kingma & Welling 2014, Eq. 10
        return self.decode(z), mean, logvar

    # ------------------------------------------------------------------ what diffusion uses

    @torch.no_grad()
    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> scaled latents for diffusion: the posterior mean times the scale factor."""
        mean, _ = self.encode(x)
        return mean * self.scale_factor  # (B, L, H / f, W / f), about unit variance

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (from a sampler) -> images in [-1, 1]."""
        return self.decode(z / self.scale_factor).clamp(-1.0, 1.0)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) per element (Kingma & Welling 2014, App. B)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


def build_vae(cfg: ModelConfig, in_channels: int = 1, image_size: int = 28) -> VAE:
    """The VAE of a `model:` section with `architecture: vae`."""
    v: VAEConfig = cfg.net
    factor = 2 ** (len(v.channel_mult) - 1)
    if image_size % factor:
        raise ConfigError(
            f"model.channel_mult: {len(v.channel_mult)} levels downsample by {factor}, "
            f"which does not divide the image size {image_size}; use at most 3 levels for 28x28"
        )
    for width in (v.channels * m for m in v.channel_mult):
        if width % min(8, width):
            raise ConfigError(f"model.channels: {v.channels} x channel_mult must give multiples of 8 (GroupNorm)")
    return VAE(in_channels, image_size, v.channels, tuple(v.channel_mult), v.num_res_blocks, v.latent_channels)
