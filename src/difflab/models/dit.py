"""DiT: a class-conditional Vision Transformer denoiser (Peebles & Xie 2023).

The image is cut into p x p patches, each patch becomes a token, and a stack of
Transformer blocks processes the tokens. Time and class enter every block
through adaptive LayerNorm with a zero-initialised gate ("adaLN-Zero", Sec. 3.2),
so each block starts as the identity map.

The transformer pieces it is built from (position embedding, modulation, attention,
MLP, patch embedding, unpatchify, final layer) live in `layers.py`, shared with `mmdit.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn

from ..settings import ModelConfig, NetConfig, positive
from .layers import (POS_EMBEDS, QKV, FinalLayer, LabelEmbedder, Modulation, PatchEmbed, TimestepEmbedder,
                     apply_rope, attention, build_hourglass, hourglass_level, init_linears, layer_norm, mlp,
                     register_positions, unpatchify, zero_modulations)


@dataclass
class DiTConfig(NetConfig):
    """model: settings of `architecture: dit` (Peebles & Xie 2023); the MMDiT's extend them (mmdit.py)."""

    hidden_size: int = 192
    depth: int = 6
    num_heads: int = 4
    patch_size: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    qk_norm: bool = False  # RMS-normalise queries and keys (SD3.5)
    pos_embed: str = "sincos"  # sincos (SD3: added to the tokens) | rope (Flux: rotates q and k)
    # HDiT (Crowson et al. 2024): the first and last blocks on the patch grid, the blocks between on a grid
    # of 2x2-merged tokens, a quarter as many (layers.Hourglass)
    hourglass: bool = False

    # Transformers sample fastest in batches of 8 on a CPU; see pipeline.sampling_batch_size for the measurement.
    CPU_SAMPLING_BATCH = 8

    def num_blocks(self) -> int:
        """Transformer blocks in all (the MMDiT adds its single-stream ones)."""
        return self.depth

    def problems(self, model: ModelConfig) -> Iterator[tuple[str, str]]:
        yield from self.transformer_problems()
        if model.reads_sequence():
            yield "conditioning", ("class for the DiT (prompts and image embeddings: the U-Net's cross-attention "
                                   "or the MMDiT's joint attention)")

    def transformer_problems(self) -> Iterator[tuple[str, str]]:
        """The checks the DiT and the MMDiT share."""
        yield from positive(hidden_size=self.hidden_size, depth=self.depth, num_heads=self.num_heads,
                            patch_size=self.patch_size, mlp_ratio=self.mlp_ratio)
        if self.pos_embed not in POS_EMBEDS:
            yield "pos_embed", "one of " + ", ".join(POS_EMBEDS)
        if not 0 <= self.dropout <= 1:
            yield "dropout", "a number in [0, 1]"
        if self.num_heads > 0 and self.hidden_size % self.num_heads:
            yield "hidden_size", f"a multiple of model.num_heads ({self.num_heads})"
        if self.hourglass and isinstance(self.depth, int) and self.num_blocks() < 3:
            yield "hourglass", "false with fewer than 3 blocks (an hourglass has one on the patch grid at each end)"


def check_shapes(d: DiTConfig, image_size: int) -> None:
    """Fail early, with a readable message, on settings the model cannot run."""
    if image_size % d.patch_size:
        raise ValueError(f"image_size {image_size} is not divisible by patch_size {d.patch_size}")
    if d.hidden_size % d.num_heads:
        raise ValueError(f"hidden_size {d.hidden_size} is not a multiple of num_heads {d.num_heads}")
    if d.hourglass and (image_size // d.patch_size) % 2:
        raise ValueError(f"an hourglass merges 2x2 tokens: the {image_size // d.patch_size} x "
                         f"{image_size // d.patch_size} token grid of patch_size {d.patch_size} is odd")


class DiTBlock(nn.Module):
    """Self-attention and MLP, each as adaLN-Zero: x + gate * f(norm(x) * (1 + scale) + shift)."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, qk_norm: bool = False, dropout: float = 0.0
    ):
        super().__init__()
        self.mod = Modulation(dim, sets=2)  # one (shift, scale, gate) for attention, one for the MLP
        self.norm1 = layer_norm(dim)
        self.qkv = QKV(dim, num_heads, qk_norm)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = layer_norm(dim)
        self.mlp = mlp(dim, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: Optional[torch.Tensor] = None,
                keys: Optional[torch.Tensor] = None) -> torch.Tensor:
        """keys: (B, T) False for tokens never attended to (a prompt's padding, in the MMDiT's single blocks)."""
        attn_mod, mlp_mod = self.mod(c)  # each field (B, 1, D)
        q, k, v = self.qkv(attn_mod.apply(self.norm1(x)))  # each (B, H, T, Dh)
        if rope is not None:  # (T, Dh/2) angles: rotate queries and keys by their 2D position
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        x = x + attn_mod.gate * self.proj(attention(q, k, v, keys))  # (B, T, D)
        x = x + mlp_mod.gate * self.mlp(mlp_mod.apply(self.norm2(x)))  # (B, T, D)
        return x


class DiT(nn.Module):
    """Patchify, add sin-cos positions, DiT blocks conditioned on c = t_emb + y_emb, unpatchify."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        patch_size: int,
        hidden_size: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qk_norm: bool = False,
        dropout: float = 0.0,
        pos_embed: str = "sincos",
        hourglass: bool = False,
    ):
        super().__init__()
        self.in_channels, self.patch_size = in_channels, patch_size
        self.grid = image_size // patch_size  # tokens per side
        self.patch_embed = PatchEmbed(in_channels, hidden_size, patch_size)
        register_positions(self, pos_embed, hidden_size, num_heads)
        self.t_embed = TimestepEmbedder(hidden_size)
        self.y_embed = LabelEmbedder(hidden_size)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio, qk_norm, dropout) for _ in range(depth)
        )
        self.hourglass = build_hourglass(hourglass, hidden_size, self.grid, num_heads, pos_embed)
        self.final = FinalLayer(hidden_size, patch_size, in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation (Peebles & Xie 2023, Sec. 3.2 and their released code)."""
        # 1. every Linear: Xavier-uniform weights, zero biases
        init_linears(self.blocks)
        init_linears(self.t_embed)
        if self.hourglass is not None:
            init_linears(self.hourglass)
        # 2. embeddings: small normal, like ViT
        nn.init.normal_(self.y_embed.table.weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        # 3. adaLN-Zero: zero the modulation of every block -> each block is the identity
        zero_modulations(self.blocks)
        # 4. the final layer (modulation and output Linear) was zeroed in FinalLayer.__init__

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W), t: (B,) already scaled to [0, 1000], y: (B,) labels in 0..10."""
        h = self.patch_embed(x)  # (B, T, D)
        if self.pos_embed is not None:
            h = h + self.pos_embed
        c = self.t_embed(t) + self.y_embed(y)  # (B, D)
        skip = None
        for i, block in enumerate(self.blocks):
            h, skip, coarse = hourglass_level(self.hourglass, i, len(self.blocks), h, skip)  # (B, T or T/4, D)
            h = block(h, c, self.hourglass.rope if coarse else self.rope)  # (B, T or T/4, D)
        h = self.final(h, c)  # (B, T, p*p*C)
        return unpatchify(h, self.in_channels, self.patch_size, self.grid, self.grid)  # (B, C, H, W)


def build_dit(cfg: ModelConfig, in_channels: int, image_size: int) -> DiT:
    """DiT from the `model:` section of a config: its settings are the constructor's arguments."""
    check_shapes(cfg.net, image_size)
    return DiT(in_channels=in_channels, image_size=image_size, **dataclasses.asdict(cfg.net))
