"""A video DiT on spacetime patches (issue 49): Sora's recipe (Brooks et al. 2024) on Moving MNIST.

Sora's report describes a diffusion transformer whose tokens are *spacetime patches*: the video cut into blocks
of `tubelet` frames x `patch_size` x `patch_size` pixels, each block one token, so a clip is a sequence like any
other and the DiT of Peebles & Xie 2023 applies unchanged (ViViT's tubelet embedding, Arnab et al. 2021):

    (B, C, F, H, W) --Conv3d, stride (tubelet, p, p)--> (B, F/tubelet * H/p * W/p, D) tokens in (t, y, x) order

Positions are factorised: the 2D sine-cosine table of the image DiT for (y, x), plus a 1D one for t. Attention is
the one choice a video model adds (model.attention):

    full        every token attends to every other, across space and time: T^2 pairs, T = frames x positions
    factorised  blocks alternate: spatial attention within each frame, then temporal attention across the frames
                at each position (TimeSformer's divided space-time attention, Bertasius et al. 2021; alternating
                blocks as in Latte, Ma et al. 2024):
                far fewer pairs, the same weights (a block's attention layer is the same size either way)

The condition is the clip's prompt, "a 7 moving left quickly", read as its three words that vary (digit,
direction, speed: difflab.moving_mnist), each embedded, summed and added to the time embedding, adaLN-Zero as in
the DiT; classifier-free guidance drops all three at once.

Image-to-video, Sora's second mode (model.first_frame > 0): the clip's first frame, when given, is a second input
channel beside x_t, in frame 0 of an otherwise empty clip (zeros: grey, which no frame of Moving MNIST is, so "not
given" is unambiguous). This is the concatenation by which image-to-video models read their image (Stable Video
Diffusion, Blattmann et al. 2023) and by which the cascade's super-resolution stage reads its small image
(cascade.py). In training a share model.first_frame of the clips is given its own first frame, so one network
learns both modes; guidance drops the prompt, never the frame.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn

from ..moving_mnist import FRAMES
from ..settings import ModelConfig, NetConfig, positive
from .dit import DiTBlock
from .layers import (NULL_CLASS, NUM_CLASSES, FinalLayer, TimestepEmbedder, attention, init_linears,
                     sincos_pos_embed_2d, zero_modulations)

ATTENTIONS = ("full", "factorised")
DIRECTIONS, SPEEDS = 4, 2  # difflab.moving_mnist.DIRECTIONS, SPEEDS (kept in step by a test)
MOTION_COLUMNS = 3  # a clip's condition (B, 3): digit, direction, speed; the last index of each is its null


@dataclass
class VideoDiTConfig(NetConfig):
    """model: settings of `architecture: video_dit` (issue 49)."""

    frames: int = 8
    hidden_size: int = 128
    depth: int = 6
    num_heads: int = 4
    patch_size: int = 4  # pixels per side of a spacetime patch
    tubelet: int = 2  # frames per spacetime patch
    mlp_ratio: float = 4.0
    attention: str = "factorised"  # full | factorised
    first_frame: float = 0.0  # image-to-video: the share of training clips given their first frame (0: text only)
    qk_norm: bool = False  # RMS-normalise queries and keys (SD3.5): lr 0.008 diverged without it (docs/video.md)

    CPU_SAMPLING_BATCH = 8

    def problems(self, model: ModelConfig) -> Iterator[tuple[str, str]]:
        yield from positive(frames=self.frames, hidden_size=self.hidden_size, depth=self.depth,
                            num_heads=self.num_heads, patch_size=self.patch_size, tubelet=self.tubelet,
                            mlp_ratio=self.mlp_ratio)
        if not 0.0 <= self.first_frame <= 1.0:
            yield "first_frame", "a share of the training clips, in [0, 1]"
        if self.attention not in ATTENTIONS:
            yield "attention", "one of " + ", ".join(ATTENTIONS)
        if self.num_heads > 0 and self.hidden_size % self.num_heads:
            yield "hidden_size", f"a multiple of model.num_heads ({self.num_heads})"
        if self.hidden_size % 4:
            yield "hidden_size", "a multiple of 4 (sine-cosine positions)"
        if self.frames != FRAMES:
            yield "frames", f"{FRAMES}, the frames of a Moving MNIST clip"
        if self.tubelet > 0 and self.frames % self.tubelet:
            yield "frames", f"a multiple of model.tubelet ({self.tubelet})"
        if model.conditioning != "class":
            yield "conditioning", "class for the video DiT (its condition is the clip's digit, direction and speed)"


def sincos_1d(dim: int, length: int) -> torch.Tensor:
    """The 1D sine-cosine embedding of positions 0..length-1 (Vaswani et al. 2017, Sec. 3.5), (length, dim)."""
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


class MotionEmbedder(nn.Module):
    """(B, 3) digit, direction, speed -> (B, D): one table each, summed; each table's last row is its null."""

    def __init__(self, dim: int):
        super().__init__()
        self.digit = nn.Embedding(NUM_CLASSES + 1, dim)
        self.direction = nn.Embedding(DIRECTIONS + 1, dim)
        self.speed = nn.Embedding(SPEEDS + 1, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.digit(y[:, 0]) + self.direction(y[:, 1]) + self.speed(y[:, 2])  # (B, D)


def null_motion(y: torch.Tensor) -> torch.Tensor:
    """The null condition of a clip: no digit, no direction, no speed (classifier-free guidance drops them all)."""
    return torch.tensor([NULL_CLASS, DIRECTIONS, SPEEDS], dtype=y.dtype, device=y.device).expand_as(y)


class VideoDiT(nn.Module):
    """Spacetime patches, factorised positions, DiT blocks with full or factorised attention, unpatchify."""

    def __init__(self, in_channels: int, image_size: int, frames: int, hidden_size: int, depth: int,
                 num_heads: int, patch_size: int, tubelet: int, mlp_ratio: float = 4.0, attention: str = "factorised",
                 first_frame: float = 0.0, qk_norm: bool = False):
        super().__init__()
        self.in_channels, self.patch, self.tubelet, self.attention = in_channels, patch_size, tubelet, attention
        self.grid, self.times = image_size // patch_size, frames // tubelet  # tokens per side, per clip in time
        self.reads_first_frame = first_frame > 0  # image-to-video: x_t and the given first frame, side by side
        kernel = (tubelet, patch_size, patch_size)
        inputs = in_channels * (2 if self.reads_first_frame else 1)
        self.patch_embed = nn.Conv3d(inputs, hidden_size, kernel_size=kernel, stride=kernel)
        space = sincos_pos_embed_2d(hidden_size, self.grid, self.grid)[0]  # (S, D)
        time = sincos_1d(hidden_size, self.times)  # (Ft, D)
        self.register_buffer("pos_embed", (time[:, None] + space[None]).flatten(0, 1)[None], persistent=False)
        self.t_embed = TimestepEmbedder(hidden_size)
        self.y_embed = MotionEmbedder(hidden_size)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio, qk_norm) for _ in range(depth))
        self.final = FinalLayer(hidden_size, 1, in_channels * tubelet * patch_size * patch_size)
        # DiT's initialisation (dit.py): Xavier Linears, small embeddings, every block's modulation zeroed
        nn.init.xavier_uniform_(self.patch_embed.weight.view(hidden_size, -1))
        nn.init.zeros_(self.patch_embed.bias)
        init_linears(self.blocks)
        init_linears(self.t_embed)
        for table in (self.y_embed.digit, self.y_embed.direction, self.y_embed.speed):
            nn.init.normal_(table.weight, std=0.02)
        zero_modulations(self.blocks)

    def attend(self, block: DiTBlock, i: int, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """One DiT block over (B, Ft * S, D) tokens, attention over all of them, or (factorised) within each frame
        at even blocks and across the frames at each position at odd ones; all else is per token either way."""
        if self.attention == "full":
            return block(h, c)
        axis = "space" if i % 2 == 0 else "time"
        attn_mod, mlp_mod = block.mod(c)  # each field (B, 1, D)
        q, k, v = (self.group(a, axis) for a in block.qkv(attn_mod.apply(block.norm1(h))))  # (B', H, T', Dh)
        out = self.ungroup(attention(q, k, v), axis, len(h))  # (B, Ft * S, D)
        h = h + attn_mod.gate * block.proj(out)
        return h + mlp_mod.gate * block.mlp(mlp_mod.apply(block.norm2(h)))

    def group(self, a: torch.Tensor, axis: str) -> torch.Tensor:
        """Queries, keys or values (B, H, Ft * S, Dh) as the sequences one attention sees: each frame's S tokens
        (space: (B Ft, H, S, Dh)) or each position's Ft tokens (time: (B S, H, Ft, Dh))."""
        B, H, _, Dh = a.shape
        a = a.view(B, H, self.times, self.grid * self.grid, Dh)
        if axis == "space":
            return a.transpose(1, 2).reshape(B * self.times, H, -1, Dh)
        return a.permute(0, 3, 1, 2, 4).reshape(-1, H, self.times, Dh)

    def ungroup(self, out: torch.Tensor, axis: str, batch: int) -> torch.Tensor:
        """Attention's output (B', T', D), heads merged, grouped by `axis`: back to tokens (B, Ft * S, D)."""
        D, S = out.shape[-1], self.grid * self.grid
        if axis == "space":  # (B Ft, S, D): already in (t, y, x) order
            return out.reshape(batch, self.times * S, D)
        return out.view(batch, S, self.times, D).transpose(1, 2).reshape(batch, self.times * S, D)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, first: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """x: (B, C, F, H, W), t: (B,) scaled to [0, 1000], y: (B, 3) digit, direction, speed. A model of
        image-to-video also reads `first` (B', C, H, W), each clip's given first frame, zeros where none is given
        (None: none at all); B' = B / 2 when guidance doubled the batch (both halves are given the same frames)."""
        B, C, F, H, W = x.shape
        if self.reads_first_frame:
            given = torch.zeros_like(x)  # (B, C, F, H, W): frame 0 the given frame, every other frame empty
            if first is not None:
                given[:, :, 0] = first.repeat(B // len(first), 1, 1, 1)
            x = torch.cat([x, given], dim=1)  # (B, 2C, F, H, W)
        elif first is not None:
            raise ValueError("this video DiT was not trained to be given a first frame (model.first_frame: 0)")
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, Ft * S, D), (t, y, x) order
        c = self.t_embed(t) + self.y_embed(y)  # (B, D)
        for i, block in enumerate(self.blocks):
            h = self.attend(block, i, h, c)  # (B, Ft * S, D)
        h = self.final(h, c)  # (B, T, C * tubelet * p * p)
        return unpatchify_3d(h, C, self.tubelet, self.patch, self.times, self.grid)  # (B, C, F, H, W)


def given_first_frames(x0: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """Training clips (B, C, F, H, W) -> what a model of image-to-video is given beside x_t (B, C, H, W): each clip's
    own first frame where `given` (B,) is true, zeros (no frame) elsewhere."""
    return torch.where(given.view(-1, 1, 1, 1), x0[:, :, 0], torch.zeros_like(x0[:, :, 0]))


def unpatchify_3d(h: torch.Tensor, channels: int, tubelet: int, patch: int, times: int, grid: int) -> torch.Tensor:
    """(B, Ft * g * g, C * q * p * p) tokens in (t, y, x) order -> (B, C, Ft q, g p, g p): each token's values,
    ordered (C, q, p, p) as a Conv3d's kernel is, back to its block of frames and pixels."""
    B, q, p = h.shape[0], tubelet, patch
    h = h.view(B, times, grid, grid, channels, q, p, p)  # (B, Ft, h, w, C, q, p, p)
    return h.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(B, channels, times * q, grid * p, grid * p)


def build_video_dit(cfg: ModelConfig, in_channels: int, image_size: int) -> VideoDiT:
    """The video DiT from the `model:` section of a config: its settings are the constructor's arguments."""
    net = cfg.net
    if image_size % net.patch_size:
        raise ValueError(f"image_size {image_size} is not divisible by patch_size {net.patch_size}")
    return VideoDiT(in_channels=in_channels, image_size=image_size, **dataclasses.asdict(net))
