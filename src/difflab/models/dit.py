"""DiT: a class-conditional Vision Transformer denoiser (Peebles & Xie 2023).

The image is cut into p x p patches, each patch becomes a token, and a stack of
Transformer blocks processes the tokens. Time and class enter every block
through adaptive LayerNorm with a zero-initialised gate ("adaLN-Zero", Sec. 3.2),
so each block starts as the identity map.

The helpers at the top (position embedding, modulation, attention, MLP, patch
embedding, unpatchify, final layer) are reused by `mmdit.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import POS_EMBEDS, ModelConfig
from .layers import LabelEmbedder, TimestepEmbedder

# ----------------------------------------------------------------------------
# Shared helpers (also used by mmdit.py)
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


def check_shapes(cfg: ModelConfig, image_size: int) -> None:
    """Fail early, with a readable message, on settings the model cannot run."""
    if image_size % cfg.patch_size:
        raise ValueError(f"image_size {image_size} is not divisible by patch_size {cfg.patch_size}")
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(
            f"hidden_size {cfg.hidden_size} is not a multiple of num_heads {cfg.num_heads}"
        )


# ----------------------------------------------------------------------------
# DiT
# ----------------------------------------------------------------------------


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
        self.final = FinalLayer(hidden_size, patch_size, in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation (Peebles & Xie 2023, Sec. 3.2 and their released code)."""
        # 1. every Linear: Xavier-uniform weights, zero biases
        init_linears(self.blocks)
        init_linears(self.t_embed)
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
        for block in self.blocks:
            h = block(h, c, self.rope)  # (B, T, D)
        h = self.final(h, c)  # (B, T, p*p*C)
        return unpatchify(h, self.in_channels, self.patch_size, self.grid, self.grid)  # (B, C, H, W)


def build_dit(cfg: ModelConfig, in_channels: int, image_size: int) -> DiT:
    """DiT from the `model:` section of a config."""
    check_shapes(cfg, image_size)
    return DiT(
        in_channels=in_channels,
        image_size=image_size,
        patch_size=cfg.patch_size,
        hidden_size=cfg.hidden_size,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qk_norm=cfg.qk_norm,
        dropout=cfg.dropout,
        pos_embed=cfg.pos_embed,
    )
