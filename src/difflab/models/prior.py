"""DALL-E 2's diffusion prior: a small Transformer that denoises a CLIP image embedding given a prompt.

Ramesh et al. 2022, Sec. 2.2: "a decoder-only Transformer ... on a sequence consisting of, in order: the
encoded text, the CLIP text embedding, an embedding for the diffusion timestep, the noised CLIP image
embedding, and a final embedding whose output from the Transformer is used to predict the unnoised CLIP
image embedding". Here the same sequence, read by a bidirectional encoder (the sequence is short; the
causal mask changes nothing the prior needs), with the prompt read by the tiny CLIP's frozen text tower
(model.text_encoder: clip, difflab.encoders): its token vectors are "the encoded text", their mean the
pooled vector standing in for "the CLIP text embedding".

    x_t (B, E, 1, 1) -> one token; t -> one token; prompt -> L tokens + one pooled token; + a query token
    -> Transformer encoder (padding masked) -> the query's output -> (B, E, 1, 1)

The data are CLIP image embeddings scaled to unit variance per entry (sqrt(E) times a unit vector,
difflab.unclip), so the noise schedules made for pixels in [-1, 1] fit them; the config predicts x0,
the unnoised embedding, as DALL-E 2's prior does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from ..settings import ModelConfig, NetConfig, positive
from .layers import TimestepEmbedder
from .text import TextEncoder, build_text_encoder


@dataclass
class PriorConfig(NetConfig):
    """model: settings of `architecture: prior` (DALL-E 2's diffusion prior)."""

    hidden_size: int = 128
    depth: int = 3
    num_heads: int = 4
    mlp_ratio: float = 2.0

    def problems(self, model: ModelConfig) -> Iterator[tuple[str, str]]:
        yield from positive(hidden_size=self.hidden_size, depth=self.depth, num_heads=self.num_heads,
                            mlp_ratio=self.mlp_ratio)
        if self.num_heads > 0 and self.hidden_size % self.num_heads:
            yield "hidden_size", f"a multiple of num_heads ({self.num_heads})"
        if model.conditioning != "prompt":
            yield "conditioning", "prompt for the prior (it maps a prompt to a CLIP image embedding)"


class DiffusionPrior(nn.Module):
    """(z_t (B, E, 1, 1), 1000 t, prompt tokens (B, L)) -> (B, E, 1, 1): the unnoised embedding, or the
    objective's target."""

    def __init__(self, embed_dim: int, text: TextEncoder, hidden_size: int = 128, depth: int = 3, num_heads: int = 4,
                 mlp_ratio: float = 2.0):
        super().__init__()
        self.text = text
        self.words = nn.Linear(text.dim, hidden_size)  # the encoded text, a token per word
        self.pooled = nn.Linear(text.dim, hidden_size)  # the text embedding
        self.time = TimestepEmbedder(hidden_size)
        self.noised = nn.Linear(embed_dim, hidden_size)  # the noised image embedding
        self.query = nn.Parameter(torch.zeros(1, 1, hidden_size))  # the final token, whose output is the answer
        self.kinds = nn.Parameter(torch.randn(1, 4, hidden_size) * 0.02)  # tells the four single tokens apart
        layer = nn.TransformerEncoderLayer(hidden_size, num_heads, int(hidden_size * mlp_ratio), dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_size)
        self.out = nn.Linear(hidden_size, embed_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b = len(x)
        context, mask, pooled = self.text(y)  # (B, L, text_dim), (B, L), (B, text_dim)
        single = torch.stack([self.pooled(pooled), self.time(t), self.noised(x.flatten(1)),
                              self.query.expand(b, 1, -1)[:, 0]], dim=1) + self.kinds  # (B, 4, W)
        h = torch.cat([self.words(context), single], dim=1)  # (B, L + 4, W)
        keep = torch.cat([mask, torch.ones(b, 4, dtype=torch.bool, device=x.device)], dim=1)
        h = self.norm(self.blocks(h, src_key_padding_mask=~keep))  # padding is never attended to
        return self.out(h[:, -1]).view_as(x)  # the query token's output


def build_prior(cfg: ModelConfig, in_channels: int, image_size: int) -> DiffusionPrior:
    p: PriorConfig = cfg.net
    if image_size != 1:
        raise ValueError(f"the prior denoises embeddings shaped (E, 1, 1), not {image_size}x{image_size} images")
    return DiffusionPrior(in_channels, build_text_encoder(cfg), p.hidden_size, p.depth, p.num_heads, p.mlp_ratio)
