"""The U-Net of DDPM and Stable Diffusion, sized for 28x28 digits.

Ronneberger et al. 2015 for the shape; Ho et al. 2020 (App. B) for the diffusion
version: residual blocks that receive the time embedding, self-attention at the
lowest resolution, skip connections from every down block to the up path.
A class label is added to the time embedding (Dhariwal & Nichol 2021, Sec. 4), with a null
class for guidance; with `model.conditioning: prompt` the U-Net reads a prompt through
cross-attention at `model.cross_attention_levels`, as SD1 and SD2 read CLIP's tokens.

Shapes for the default config (channels 16, channel_mult [1, 4, 6]):
28x28x16 -> 14x14x64 -> 7x7x96 (+ attention) -> back up to 28x28x16 -> 28x28x1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..cascade import upsample
from ..settings import ModelConfig, NetConfig, level_indices, positive
from .layers import FramingEmbedder, LabelEmbedder, TimestepEmbedder
from .text import TextEncoder, build_text_encoder


@dataclass
class UNetConfig(NetConfig):
    """model: settings of `architecture: unet` (Ronneberger et al. 2015; as used by Ho et al. 2020 and SD)."""

    channels: int = 16
    channel_mult: list = field(default_factory=lambda: [1, 4, 6])  # width of each level, times channels
    num_res_blocks: int = 1
    attention_levels: list = field(default_factory=lambda: [2])  # indices into channel_mult
    dropout: float = 0.0
    num_heads: int = 4
    cross_attention_levels: list = field(default_factory=lambda: [2])  # levels that read the prompt
    pooled_text: bool = False  # also add the pooled prompt to the time embedding (SDXL; SD1 did not)
    # SDXL's micro-conditioning (Podell et al. 2023, Sec. 2.2): the digit's size and crop (data.reframe), told
    # through Fourier features added to the time embedding; the condition is then (label, size, top, left)
    micro_conditioning: bool = False
    # A cascade's super-resolution stage (difflab.cascade; Ho et al. 2021): also read a low_resolution x
    # low_resolution image, upsampled and concatenated to x_t as extra input channels, and its augmentation level
    # s through a second timestep embedding (0: an ordinary U-Net)
    low_resolution: int = 0

    def problems(self, model: ModelConfig) -> Iterator[tuple[str, str]]:
        yield from positive(channels=self.channels, num_heads=self.num_heads)
        mult = self.channel_mult
        if not mult or not all(isinstance(c, int) and c > 0 for c in mult):
            yield "channel_mult", "a non-empty list of positive integers"
            return
        if not level_indices(self.attention_levels, mult):
            yield "attention_levels", f"indices in 0..{len(mult) - 1}"
        if self.num_res_blocks < 1:
            yield "num_res_blocks", "an integer >= 1"
        if not 0 <= self.dropout <= 1:
            yield "dropout", "a number in [0, 1]"
        read = model.reads_sequence()
        if read and not (self.cross_attention_levels and level_indices(self.cross_attention_levels, mult)):
            yield "cross_attention_levels", f"a non-empty list of indices in 0..{len(mult) - 1}"
            return
        # Attention splits each attended width (the middle's included) into heads; so does cross-attention.
        attended = {self.channels * mult[a] for a in [*self.attention_levels, -1]}
        for width in sorted(attended):
            if self.num_heads > 0 and width % self.num_heads:
                yield "num_heads", f"a divisor of every attended U-Net width (here {width})"
        for width in sorted({self.channels * mult[a] for a in self.cross_attention_levels} if read else ()):
            if self.num_heads > 0 and width % self.num_heads:
                yield "num_heads", f"a divisor of every U-Net width that reads the prompt (here {width})"


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 8 groups (32 in SD; our channel counts are small)."""
    return nn.GroupNorm(min(8, channels), channels)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero the last layer of a residual branch so each block starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Two 3x3 convolutions with the (time + class) embedding added in between."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2, self.dropout = norm(out_ch), nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        h = h + self.emb(F.silu(emb))[:, :, None, None]  # broadcast over H, W
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions (Vaswani et al. 2017)."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, c / heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, c / heads)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class CrossAttention(nn.Module):
    """Image positions attend to the prompt's tokens: SD1's cross-attention (Rombach et al. 2022, Eq. 3).

    Q = W_Q norm(h) from the image, K = W_K c and V = W_V c from the text encoder's tokens c;
    padded tokens are masked out. Zero-initialised output: the block starts as the identity.
    """

    def __init__(self, channels: int, context_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        heads, L = self.num_heads, context.shape[1]
        q = self.q(self.norm(x)).reshape(b, heads, c // heads, h * w).transpose(-1, -2)  # (B, heads, HW, c/heads)
        # each (B, heads, L, c/heads)
        k, v = self.kv(context).reshape(b, L, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # words only, no padding
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Halve H and W with a strided convolution (28 -> 14 -> 7)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W (nearest neighbour), then a 3x3 convolution."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """(x_t, 1000 t, y) -> output of the same shape as x_t."""

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 32,
        channel_mult: tuple = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: tuple = (2,),
        dropout: float = 0.0,
        num_heads: int = 4,
        text: Optional[TextEncoder] = None,
        cross_attention_levels: tuple = (),
        pooled_text: bool = False,
        micro_conditioning: bool = False,
        low_resolution: int = 0,
    ):
        super().__init__()
        emb_dim = 4 * channels
        self.time_embed = TimestepEmbedder(emb_dim, freq_dim=channels)
        # A class label is added to the time embedding (Dhariwal & Nichol 2021); a prompt is read
        # through cross-attention instead, as SD1 and SD2 do, by the text encoder trained with the model.
        self.text = text
        self.label_embed = LabelEmbedder(emb_dim) if text is None else None
        # SDXL's addition (Podell et al. 2023, Sec. 2.1): the pooled prompt also joins the time embedding,
        # so every ResBlock hears the prompt, as every ResBlock hears a class label
        self.pooled_embed = nn.Linear(text.dim, emb_dim) if text is not None and pooled_text else None
        self.framing_embed = FramingEmbedder(emb_dim) if micro_conditioning else None
        # A super-resolution stage (CDM, Ho et al. 2021; SR3): the upsampled low-resolution image enters beside
        # x_t as more input channels, and its noise augmentation level s joins the time embedding
        self.low_resolution = low_resolution
        self.aug_embed = TimestepEmbedder(emb_dim, freq_dim=channels) if low_resolution else None

        def reads_prompt(level, ch):  # a cross-attention layer where this level reads the prompt
            return ([CrossAttention(ch, text.dim, num_heads)] if text is not None and level in cross_attention_levels
                    else [])

        def level_block(c_in, c_out, level):  # a ResBlock, then the attention this level has (made in this order)
            block = nn.ModuleList([ResBlock(c_in, c_out, emb_dim, dropout)])
            block.extend([SelfAttention(c_out, num_heads)] if level in attention_levels else [])
            return block.extend(reads_prompt(level, c_out))

        self.conv_in = nn.Conv2d(in_channels * (2 if low_resolution else 1), channels, 3, padding=1)

        # Down path: remember every block's output channels for the skips.
        self.down = nn.ModuleList()
        skip_chs, ch = [channels], channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(level_block(ch, channels * mult, level))
                ch = channels * mult
                skip_chs.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skip_chs.append(ch)

        self.mid = nn.ModuleList(
            [ResBlock(ch, ch, emb_dim, dropout), SelfAttention(ch, num_heads),
             *reads_prompt(len(channel_mult) - 1, ch), ResBlock(ch, ch, emb_dim, dropout)]
        )

        # Up path: one more block per level than on the way down, each eating a skip.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                block = level_block(ch + skip_chs.pop(), channels * mult, level)
                ch = channels * mult
                if level != 0 and i == num_res_blocks:
                    block.append(Upsample(ch))
                self.up.append(block)

        self.out = nn.Sequential(norm(ch), nn.SiLU(), zero_init(nn.Conv2d(ch, in_channels, 3, padding=1)))

    @staticmethod
    def _run(block: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, prompt: tuple) -> torch.Tensor:
        for layer in block:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, CrossAttention):
                h = layer(h, *prompt)  # (context, mask)
            else:
                h = layer(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, low: Optional[torch.Tensor] = None,
                aug: Optional[torch.Tensor] = None) -> torch.Tensor:
        """y: class labels (B,), or prompt tokens (B, L) for a model with a text encoder. A super-resolution stage
        also reads `low` (B', C, h, w), the low-resolution image, and `aug` (B',), its augmentation level x 1000;
        B' = B / 2 when guidance doubled the batch (both halves enlarge the same images)."""
        emb = self.time_embed(t)  # (B, 4 * channels)
        if self.aug_embed is not None:
            if low is None or aug is None:
                raise ValueError("a super-resolution U-Net (model.low_resolution) needs the low-resolution image")
            repeat = len(x) // len(low)  # 2 under classifier-free guidance: [conditional, unconditional]
            low, aug = low.repeat(repeat, 1, 1, 1), aug.repeat(repeat)
            emb = emb + self.aug_embed(aug)
            x = torch.cat([x, upsample(low, x.shape[-1])], dim=1)  # (B, 2C, 28, 28)
        prompt = ()
        if self.framing_embed is not None:  # (label, size, top, left): SDXL's micro-conditioning
            emb = emb + self.framing_embed(y[:, 1:])
            y = y[:, 0]
        if self.text is None:
            emb = emb + self.label_embed(y)
        else:
            context, mask, pooled = self.text(y)  # (B, L, text_dim), (B, L), (B, text_dim)
            prompt = (context, mask)
            if self.pooled_embed is not None:
                emb = emb + self.pooled_embed(pooled)
        h = self.conv_in(x)  # (B, channels, 28, 28)
        skips = [h]
        for block in self.down:
            h = self._run(block, h, emb, prompt)
            skips.append(h)
        h = self._run(self.mid, h, emb, prompt)  # (B, C_max, 7, 7)
        for block in self.up:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb, prompt)
        return self.out(h)  # (B, in_channels, 28, 28)


def build_unet(cfg: ModelConfig, in_channels: int, image_size: int) -> UNet:
    u: UNetConfig = cfg.net
    levels = len(u.channel_mult)
    if image_size % (2 ** (levels - 1)):
        raise ValueError(f"image size {image_size} is not divisible by 2^{levels - 1} for {levels} U-Net levels")
    return UNet(
        in_channels=in_channels,
        channels=u.channels,
        channel_mult=tuple(u.channel_mult),
        num_res_blocks=u.num_res_blocks,
        attention_levels=tuple(u.attention_levels),
        dropout=u.dropout,
        num_heads=u.num_heads,
        text=build_text_encoder(cfg),
        cross_attention_levels=tuple(u.cross_attention_levels),
        pooled_text=u.pooled_text,
        micro_conditioning=u.micro_conditioning,
        low_resolution=u.low_resolution,
    )
