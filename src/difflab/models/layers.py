"""Building blocks shared by every backbone: time and class embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn

NUM_CLASSES = 10  # digits 0..9; label 10 is the null class used for guidance
NULL_CLASS = NUM_CLASSES


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t (Vaswani et al. 2017, Sec. 3.5; Ho et al. 2020, App. B).

    t: (B,) float, the model sees t * 1000 so every architecture is driven alike.
    Returns (B, dim): [cos(t * f_i), sin(t * f_i)] with f_i = max_period^(-i / half).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """t -> sinusoidal features -> 2-layer MLP, as in DDPM and DiT."""

    def __init__(self, dim: int, freq_dim: int = 64):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim))  # (B, dim)


class LabelEmbedder(nn.Module):
    """Class label -> vector; row NULL_CLASS is the learned 'no label' for guidance.

    Label dropout for classifier-free guidance (Ho & Salimans 2022) happens in the
    training loop, which replaces labels by NULL_CLASS, so the model stays a pure
    function of (x_t, t, y).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.table = nn.Embedding(NUM_CLASSES + 1, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.table(y)  # (B, dim)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
