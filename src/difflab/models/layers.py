"""Building blocks shared by the backbones: time and class embeddings (every model), and the
transformer pieces of the DiT and the MMDiT (patches, positions, modulation, attention, MLP)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


POS_EMBEDS = ("sincos", "rope")  # model.pos_embed: SD3's table added once, or Flux's rotary positions
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


class FramingEmbedder(nn.Module):
    """SDXL's micro-conditions -> a vector for the time embedding (Podell et al. 2023, Sec. 2.2): each integer
    (the digit's canvas size, the crop's top and left, difflab.microcond) through the sinusoidal features
    timesteps get, concatenated, then a 2-layer MLP. Offsets are shifted by 32 to be non-negative."""

    def __init__(self, dim: int, freq_dim: int = 64, values: int = 3):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(values * freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, framing: torch.Tensor) -> torch.Tensor:
        feats = [timestep_embedding(v.float() + 32, self.freq_dim) for v in framing.unbind(1)]  # each (B, freq)
        return self.mlp(torch.cat(feats, dim=1))  # (B, dim)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------
# Transformer pieces shared by the DiT and the MMDiT (dit.py, mmdit.py)
# ----------------------------------------------------------------------------


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2D sine-cosine position embedding, shape (1, grid_h * grid_w, dim).

    The 1D embedding of Vaswani et al. 2017 (Sec. 3.5) applied to the row index
    (first half of the channels) and to the column index (second half), as in
    MAE (He et al. 2022) and DiT (Sec. 3.2). Not learned.
    """
    if dim % 4:
        raise ValueError(f"hidden_size must be a multiple of 4 for 2D sin-cos positions, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (D/4,)
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )
    parts = []
    for pos in (rows.flatten(), cols.flatten()):  # token order is row-major, like the patches
        angles = pos[:, None] * omega[None]  # (T, D/4)
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=1).float()[None]  # (1, T, D)


def rope_2d(head_dim: int, grid_h: int, grid_w: int, theta: float = 10000.0) -> torch.Tensor:
    """Angles of 2D rotary position embedding (RoPE, Su et al. 2021), shape (T, head_dim / 2).

    RoPE rotates each pair of channels of a query and a key by an angle proportional to
    the token's position, so q . k depends only on the *difference* of the two positions
    (Su et al. 2021, Eq. 16). In 2D, as in Flux's `EmbedND`, the first half of the pairs
    rotates with the row and the second half with the column, at the frequencies of the
    1D sinusoidal embedding: theta^(-i / (head_dim / 4)).
    """
    if head_dim % 4:
        raise ValueError(f"the head size (hidden_size / num_heads) must be a multiple of 4 for 2D RoPE, got {head_dim}")
    quarter = head_dim // 4  # channel pairs per axis
    freqs = 1.0 / theta ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (Dh/4,)
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )
    angles = [pos.flatten()[:, None] * freqs[None] for pos in (rows, cols)]  # row-major tokens
    return torch.cat(angles, dim=1).float()  # (T, Dh/2)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs (x[i], x[i + Dh/2]) of x (B, H, T, Dh) by angles (T, Dh/2).

    Su et al. pair neighbouring channels (2i, 2i+1); pairing the two halves (GPT-NeoX's
    layout) is the same rotation up to a fixed permutation of channels, which the learned
    projections absorb, and it is 2.5x faster on a CPU (no interleaving copies).
    """
    x1, x2 = x.chunk(2, dim=-1)  # each (B, H, T, Dh/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, H, T, Dh)


def register_positions(model: nn.Module, kind: str, dim: int, num_heads: int) -> None:
    """Give a transformer on a `model.grid` x `model.grid` token grid its position information.

    "sincos": a fixed table added to the tokens once (ViT, DiT, SD3): `model.pos_embed` (1, T, D).
    "rope": rotations of the queries and keys in every attention (Flux): `model.rope` (T, Dh/2).
    The other buffer is None; neither is learned or saved (they are rebuilt from the config).
    """
    if kind not in POS_EMBEDS:
        raise ValueError(f"unknown position embedding {kind!r} (known: {', '.join(POS_EMBEDS)})")
    grid = model.grid
    table = sincos_pos_embed_2d(dim, grid, grid) if kind == "sincos" else None
    angles = rope_2d(dim // num_heads, grid, grid) if kind == "rope" else None
    model.register_buffer("pos_embed", table, persistent=False)
    model.register_buffer("rope", angles, persistent=False)


@dataclass
class ModulationOut:
    """Per-sample shift, scale and gate of one adaLN-modulated sublayer (DiT Sec. 3.2)."""

    shift: torch.Tensor  # (B, 1, D)
    scale: torch.Tensor  # (B, 1, D)
    gate: Optional[torch.Tensor] = None  # (B, 1, D); None where no residual is gated

    def apply(self, h: torch.Tensor) -> torch.Tensor:
        """adaLN: h * (1 + scale) + shift; h is already LayerNorm-ed without affine."""
        return h * (1 + self.scale) + self.shift


class Modulation(nn.Module):
    """c -> SiLU -> Linear -> `sets` ModulationOut; zero-initialised (adaLN-Zero)."""

    def __init__(self, dim: int, sets: int, gated: bool = True):
        super().__init__()
        self.per_set = 3 if gated else 2  # (shift, scale, gate) or (shift, scale)
        self.n_chunks = sets * self.per_set
        self.lin = nn.Linear(dim, self.n_chunks * dim)
        # adaLN-Zero: shift = scale = gate = 0 at init, so a gated block is the identity
        nn.init.zeros_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)

    def forward(self, c: torch.Tensor) -> list[ModulationOut]:
        chunks = self.lin(F.silu(c))[:, None, :].chunk(self.n_chunks, dim=-1)  # each (B, 1, D)
        k = self.per_set
        return [ModulationOut(*chunks[i : i + k]) for i in range(0, self.n_chunks, k)]


class QKV(nn.Module):
    """Tokens -> queries, keys, values split into heads; optional RMS q/k norm (SD3.5)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False, queries: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.queries = queries  # False: keys and values only (MMDiT's last conditioning stream)
        self.proj = nn.Linear(dim, (3 if queries else 2) * dim)
        head_dim = dim // num_heads
        # RMSNorm of each head's q and k keeps attention logits from growing without bound,
        # which destabilises training (Esser et al. 2024, Sec. 5.3.2; on by default in SD3.5)
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm and queries else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
        B, T, D = x.shape
        heads = self.proj(x).view(B, T, -1, self.num_heads, D // self.num_heads)  # (B, T, 3, H, Dh)
        heads = heads.permute(2, 0, 3, 1, 4)  # (3, B, H, T, Dh); 2 instead of 3 without queries
        if self.queries:
            q, k, v = heads
            return self.q_norm(q), self.k_norm(k), v
        k, v = heads
        return None, self.k_norm(k), v


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keys: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(Dh)) v (Vaswani et al. 2017, Eq. 1), heads merged back: (B, T, D).

    keys: optional (B, T_k) boolean, False for keys no query may attend to (a prompt's padding).
    """
    mask = None if keys is None else keys[:, None, None, :]  # (B, 1, 1, T_k), broadcast over heads and queries
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, Dh)
    B, H, T, Dh = out.shape
    return out.transpose(1, 2).reshape(B, T, H * Dh)  # (B, T, D)


def mlp(dim: int, mlp_ratio: float, dropout: float = 0.0) -> nn.Sequential:
    """The Transformer's position-wise feed-forward net, with tanh-approximate GELU as in DiT."""
    hidden = int(dim * mlp_ratio)
    return nn.Sequential(
        nn.Linear(dim, hidden),
        nn.GELU(approximate="tanh"),
        nn.Dropout(dropout),
        nn.Linear(hidden, dim),
    )


def layer_norm(dim: int) -> nn.LayerNorm:
    """LayerNorm without its own affine: adaLN supplies the scale and shift."""
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, T, D) patch tokens, T = (H/p)(W/p), by a stride-p convolution."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        # initialise like a Linear on the flattened patch (DiT's choice)
        nn.init.xavier_uniform_(self.proj.weight.view(dim, -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, T, D)


def unpatchify(
    x: torch.Tensor, channels: int, patch_size: int, grid_h: int, grid_w: int
) -> torch.Tensor:
    """(B, T, C*p*p) tokens in row-major order -> (B, C, H, W); inverse of cutting into patches."""
    B, p = x.shape[0], patch_size
    x = x.view(B, grid_h, grid_w, channels, p, p)  # (B, h, w, C, p, p)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, h, p, w, p)
    return x.reshape(B, channels, grid_h * p, grid_w * p)  # (B, C, H, W)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then Linear to p*p*C values per token; zero-initialised."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = layer_norm(dim)
        self.mod = Modulation(dim, sets=1, gated=False)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        # zero the output so the untrained model predicts 0 (DiT Sec. 3.2)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        (mod,) = self.mod(c)
        return self.linear(mod.apply(self.norm(x)))  # (B, T, p*p*C)


def zero_modulations(module: nn.Module) -> None:
    """adaLN-Zero: zero every `Modulation` inside module, so each gated block starts as the identity."""
    for m in module.modules():
        if isinstance(m, Modulation):
            nn.init.zeros_(m.lin.weight)
            nn.init.zeros_(m.lin.bias)


def init_linears(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every Linear not yet initialised by its owner."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------
# DiT
# ----------------------------------------------------------------------------


class Hourglass(nn.Module):
    """An hourglass transformer's two resolutions (HDiT, Crowson et al. 2024, Sec. 3 and Fig. 3).

    A U-Net spends most of its weights where positions are few; a plain DiT applies every weight to every
    token. The hourglass runs its first and last blocks on the patch grid (grid x grid tokens) and every
    block between them on a grid half as fine: `down` merges each 2x2 group of neighbouring tokens into one
    (their features concatenated, then a Linear: HDiT's token merge, a pixel-unshuffle of tokens), so the
    middle blocks see a quarter of the tokens; `up` splits each token back into four (a Linear, then the
    inverse reshuffle) and mixes them with the fine tokens from before the merge by a learned
    interpolation, as HDiT's skip connections do (lerp with a factor that starts at 0.5).
    `rope`: the rotary angles of the coarse grid (None with a sin-cos table, which is added once at the input).
    """

    def __init__(self, dim: int, grid: int, head_dim: Optional[int]):
        super().__init__()
        self.grid = grid  # even: dit.check_shapes says so before a network is built
        self.merge = nn.Linear(4 * dim, dim)
        self.split = nn.Linear(dim, 4 * dim)
        self.skip_mix = nn.Parameter(torch.tensor(0.5))
        self.register_buffer("rope", None if head_dim is None else rope_2d(head_dim, grid // 2, grid // 2),
                             persistent=False)

    def down(self, x: torch.Tensor) -> torch.Tensor:
        """(B, g*g, D) fine tokens -> (B, g/2 * g/2, D): each 2x2 neighbourhood becomes one token."""
        B, _, D = x.shape
        g = self.grid // 2
        x = x.reshape(B, g, 2, g, 2, D).permute(0, 1, 3, 2, 4, 5)  # (B, g/2, g/2, 2, 2, D)
        return self.merge(x.reshape(B, g * g, 4 * D))  # (B, g/2 * g/2, D)

    def up(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """(B, g/2 * g/2, D) coarse tokens and the (B, g*g, D) fine ones before `down` -> (B, g*g, D)."""
        B, _, D = x.shape
        g = self.grid // 2
        x = self.split(x).reshape(B, g, g, 2, 2, D).permute(0, 1, 3, 2, 4, 5)  # (B, g/2, 2, g/2, 2, D)
        return torch.lerp(skip, x.reshape(B, 4 * g * g, D), self.skip_mix.to(x.dtype))  # (B, g*g, D)


def build_hourglass(enabled: bool, dim: int, grid: int, num_heads: int, pos_embed: str) -> Optional[Hourglass]:
    """The DiT's and the MMDiT's `model.hourglass`: an Hourglass with coarse RoPE angles if the model rotates by
    position, None when it is off."""
    return Hourglass(dim, grid, dim // num_heads if pos_embed == "rope" else None) if enabled else None


def hourglass_changes_level(hourglass: Optional[Hourglass], i: int, n: int) -> bool:
    """Whether the tokens change grid before block i of n: merged after the first block, split before the last."""
    return hourglass is not None and i in (1, n - 1)


def hourglass_level(hourglass: Optional[Hourglass], i: int, n: int, img: torch.Tensor,
                    skip: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor], bool]:
    """Before block i of n: merge after the first block, split before the last (a no-op without an hourglass).
    Returns the image tokens, the fine tokens kept for the skip, and whether block i runs on the coarse grid."""
    if hourglass_changes_level(hourglass, i, n):
        return (hourglass.down(img), img, True) if i == 1 else (hourglass.up(img, skip), None, False)
    return img, skip, hourglass is not None and 0 < i < n - 1
