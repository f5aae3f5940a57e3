"""MMDiT: the two-stream, joint-attention Transformer of SD3 (Esser et al. 2024, Sec. 4).

Two sequences of tokens travel side by side, each with its own weights:
the image patch tokens and the conditioning tokens. In SD3 the conditioning
tokens are text-encoder outputs; on MNIST they are `cond_tokens` learned
vectors per class (the null class, label 10, has its own), or, with
`model.conditioning: prompt`, the tokens of a prompt from a tiny text encoder (models/text.py). In every block
both streams project to queries, keys and values, are concatenated along the
token axis into ONE attention, and are split back ("joint attention", Fig. 2b).
So image tokens read the class tokens and the class tokens read the image.

A second, pooled route drives adaLN-Zero modulation in every block:
c = t_emb + pooled(y), as SD3 adds its pooled CLIP vector to the timestep embedding.

Flux (Black Forest Labs 2024) keeps these joint blocks for its first layers and then joins
the two streams: `single_depth` more blocks run on the one sequence [cond; image] with ONE
set of weights (`model.single_depth`; 0 = SD3, no single-stream blocks).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn

from ..settings import ModelConfig, positive
from .dit import DiTBlock, DiTConfig, check_shapes
from .layers import (
    NUM_CLASSES,
    QKV,
    FinalLayer,
    LabelEmbedder,
    Modulation,
    ModulationOut,
    PatchEmbed,
    TimestepEmbedder,
    apply_rope,
    attention,
    build_hourglass,
    hourglass_changes_level,
    hourglass_level,
    init_linears,
    layer_norm,
    mlp,
    register_positions,
    unpatchify,
    zero_modulations,
)
from .text import TextEncoder, build_text_encoder


@dataclass
class MMDiTConfig(DiTConfig):
    """model: settings of `architecture: mmdit`: the DiT's (dit.py), and these."""

    cond_tokens: int = 4  # learned conditioning tokens per class
    single_depth: int = 0  # Flux's single-stream blocks after the `depth` joint blocks
    step_conditioning: bool = False  # also read the jump size d (shortcut models, Frans et al. 2024)

    def problems(self, model: ModelConfig) -> Iterator[tuple[str, str]]:
        yield from self.transformer_problems()  # and prompts are welcome: they are the text stream
        yield from positive(cond_tokens=self.cond_tokens)
        if not (isinstance(self.single_depth, int) and self.single_depth >= 0):
            yield "single_depth", "an integer >= 0"

    def num_blocks(self) -> int:
        return self.depth + (self.single_depth if isinstance(self.single_depth, int) else 0)

    def reads_jump_size(self) -> bool:
        return self.step_conditioning


class Stream(nn.Module):
    """One stream's own weights in a joint block: modulation, norms, QKV, output projection, MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qk_norm: bool = False,
        dropout: float = 0.0,
        pre_only: bool = False,
    ):
        super().__init__()
        # pre_only: in the last block the conditioning stream only lends keys and values;
        # its own output would never be read, so SD3 drops its queries, projection and MLP.
        self.pre_only = pre_only
        self.mod = Modulation(dim, sets=1, gated=False) if pre_only else Modulation(dim, sets=2)
        self.norm1 = layer_norm(dim)
        self.qkv = QKV(dim, num_heads, qk_norm, queries=not pre_only)
        if not pre_only:
            self.proj = nn.Linear(dim, dim)
            self.norm2 = layer_norm(dim)
            self.mlp = mlp(dim, mlp_ratio, dropout)

    def prepare(
        self, x: torch.Tensor, attn_mod: ModulationOut
    ) -> tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Tokens -> modulated LayerNorm -> (q, k, v), each (B, H, T, Dh); q is None if pre_only."""
        return self.qkv(attn_mod.apply(self.norm1(x)))

    def residual(
        self, x: torch.Tensor, attn_out: torch.Tensor, attn_mod: ModulationOut, mlp_mod: ModulationOut
    ) -> torch.Tensor:
        """The two gated residual updates of adaLN-Zero: attention output, then the MLP."""
        x = x + attn_mod.gate * self.proj(attn_out)  # (B, T, D)
        return x + mlp_mod.gate * self.mlp(mlp_mod.apply(self.norm2(x)))  # (B, T, D)


class MMDiTBlock(nn.Module):
    """Joint-attention block: separate weights per stream, one attention over both (SD3 Fig. 2b)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qk_norm: bool = False,
        dropout: float = 0.0,
        last: bool = False,
    ):
        super().__init__()
        self.img = Stream(dim, num_heads, mlp_ratio, qk_norm, dropout)
        self.cond = Stream(dim, num_heads, mlp_ratio, qk_norm, dropout, pre_only=last)

    def forward(
        self, x: torch.Tensor, ctx: torch.Tensor, c: torch.Tensor, rope: Optional[torch.Tensor] = None,
        keys: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x: (B, N, D) image tokens, ctx: (B, M, D) conditioning tokens, c: (B, D); rope: (N, Dh/2) angles;
        keys: (B, M + N) False for a prompt's padding tokens, which no query attends to."""
        N = x.shape[1]
        # 1. modulate: each stream computes its own (shift, scale, gate) from c = t_emb + pooled
        img_attn, img_mlp = self.img.mod(c)  # fields (B, 1, D)
        cond_mods = self.cond.mod(c)  # [attn, mlp]; only [attn] (no gate) in the last block

        # 2. prepare image tokens for attention
        img_q, img_k, img_v = self.img.prepare(x, img_attn)  # each (B, H, N, Dh)
        if rope is not None:  # Flux: rotate image queries and keys by their 2D position
            img_q, img_k = apply_rope(img_q, rope), apply_rope(img_k, rope)

        # 3. prepare conditioning tokens for attention, with the conditioning stream's weights
        # (in the last block there are no conditioning queries: cond_q is None). With RoPE they sit
        # at position (0, 0), a rotation by zero, as Flux gives its text tokens position ids of 0.
        cond_q, cond_k, cond_v = self.cond.prepare(ctx, cond_mods[0])  # each (B, H, M, Dh)

        # 4. joint attention: one sequence [cond; image], every query sees the keys of both streams
        k = torch.cat([cond_k, img_k], dim=2)  # (B, H, M+N, Dh)
        v = torch.cat([cond_v, img_v], dim=2)  # (B, H, M+N, Dh)
        q = img_q if cond_q is None else torch.cat([cond_q, img_q], dim=2)  # (B, H, M+N, Dh)
        out = attention(q, k, v, keys)  # (B, M+N, D) or (B, N, D)

        # 5. split back into the two streams (cond_out is empty in the last block)
        cond_out, img_out = out[:, :-N], out[:, -N:]  # (B, M, D), (B, N, D)

        # 6. gated residuals and MLPs, each stream with its own weights
        x = self.img.residual(x, img_out, img_attn, img_mlp)  # (B, N, D)
        if self.cond.pre_only:
            return x, None
        ctx = self.cond.residual(ctx, cond_out, *cond_mods)  # (B, M, D)
        return x, ctx


class MMDiT(nn.Module):
    """Patch tokens and per-class tokens -> MMDiT blocks -> final layer on the image tokens."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        patch_size: int,
        hidden_size: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        cond_tokens: int = 4,
        qk_norm: bool = False,
        dropout: float = 0.0,
        pos_embed: str = "sincos",
        single_depth: int = 0,
        text: Optional[TextEncoder] = None,
        step_conditioning: bool = False,
        hourglass: bool = False,
    ):
        super().__init__()
        self.in_channels, self.patch_size = in_channels, patch_size
        self.hidden_size, self.cond_tokens = hidden_size, cond_tokens
        self.grid = image_size // patch_size  # tokens per side
        self.patch_embed = PatchEmbed(in_channels, hidden_size, patch_size)
        # Where a token is: SD3 adds a fixed 2D sin-cos table to the tokens once ("sincos");
        # Flux instead rotates queries and keys in every attention by the position ("rope").
        register_positions(self, pos_embed, hidden_size, num_heads)
        self.t_embed = TimestepEmbedder(hidden_size)
        # Shortcut models (Frans et al. 2024, Sec. 3): the jump size d, embedded like t and added to c
        self.d_embed = TimestepEmbedder(hidden_size) if step_conditioning else None
        self.text = text
        if text is None:
            # the pooled route, like SD3's pooled CLIP embedding: one vector per class, added to t_emb
            self.pooled_embed = LabelEmbedder(hidden_size)
            # the token route, standing where SD3 has text-encoder tokens: cond_tokens vectors per class
            self.cond_embed = nn.Embedding(NUM_CLASSES + 1, cond_tokens * hidden_size)
        else:
            # a prompt, as in SD3 (Esser et al. 2024, Sec. 5.1): the text encoder's pooled vector
            # through an MLP into c, and its tokens, projected to the width, as the conditioning stream
            self.pooled_embed = nn.Sequential(nn.Linear(text.dim, hidden_size), nn.SiLU(),
                                              nn.Linear(hidden_size, hidden_size))
            self.cond_embed = nn.Linear(text.dim, hidden_size)
        # the last joint block drops the conditioning stream's output unless single blocks read it
        self.blocks = nn.ModuleList(
            MMDiTBlock(
                hidden_size, num_heads, mlp_ratio, qk_norm, dropout,
                last=(i == depth - 1 and single_depth == 0),
            )
            for i in range(depth)
        )
        # Flux's single-stream blocks: one DiT block's weights shared by both kinds of token.
        # (Flux computes attention and MLP in parallel from one modulation; we keep DiT's
        # sequential block, which the reader already knows.)
        self.single_blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio, qk_norm, dropout) for _ in range(single_depth)
        )
        # HDiT's hourglass (layers.Hourglass): only the image tokens are merged; the conditioning tokens stay
        self.hourglass = build_hourglass(hourglass, hidden_size, self.grid, num_heads, pos_embed)
        self.final = FinalLayer(hidden_size, patch_size, in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation applied to both streams."""
        # 1. every Linear: Xavier-uniform weights, zero biases
        init_linears(self.blocks)
        init_linears(self.single_blocks)
        if self.hourglass is not None:
            init_linears(self.hourglass)
        init_linears(self.t_embed)
        # 2. embeddings: small normal, like ViT (for a prompt: Xavier, like every Linear)
        if self.text is None:
            nn.init.normal_(self.pooled_embed.table.weight, std=0.02)
            nn.init.normal_(self.cond_embed.weight, std=0.02)
        else:
            init_linears(self.pooled_embed)
            init_linears(self.cond_embed)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        if self.d_embed is not None:  # zero output: at first the jump size changes nothing
            init_linears(self.d_embed)
            nn.init.zeros_(self.d_embed.mlp[2].weight)
        # 3. adaLN-Zero: zero every modulation -> each joint block is the identity on both streams,
        #    and each single-stream block on the joined sequence
        zero_modulations(self.blocks)
        zero_modulations(self.single_blocks)
        # 4. the final layer (modulation and output Linear) was zeroed in FinalLayer.__init__

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, d=None) -> torch.Tensor:
        """x: (B, C, H, W), t: (B,) already scaled to [0, 1000], y: (B,) labels in 0..10 or (B, L) prompt tokens.

        d: a shortcut model's jump size, scaled like t ((B,) or one number; None = 0, the flow itself).
        """
        B = x.shape[0]
        img = self.patch_embed(x)  # (B, N, D)
        if self.pos_embed is not None:
            img = img + self.pos_embed
        mask = None  # every token may be attended to, except a prompt's padding
        if self.text is None:
            ctx = self.cond_embed(y).view(B, self.cond_tokens, self.hidden_size)  # (B, M, D)
            c = self.t_embed(t) + self.pooled_embed(y)  # (B, D)
        else:
            words, mask, pooled = self.text(y)  # (B, M, text_dim), (B, M), (B, text_dim)
            ctx = self.cond_embed(words)  # (B, M, D)
            c = self.t_embed(t) + self.pooled_embed(pooled)  # (B, D)
        if self.d_embed is not None:
            c = c + self.d_embed(torch.zeros_like(t) + (0.0 if d is None else d))  # (B, D)
        blocks, M = [*self.blocks, *self.single_blocks], ctx.shape[1]
        levels: dict = {}  # per grid (fine, coarse): what its blocks are told of positions and padding
        skip, h = None, None  # h: the single-stream blocks' one sequence [cond; image]
        for i, block in enumerate(blocks):
            if h is not None and hourglass_changes_level(self.hourglass, i, len(blocks)):
                ctx, img, h = h[:, :M], h[:, M:], None  # only the image tokens change grid
            img, skip, coarse = hourglass_level(self.hourglass, i, len(blocks), img, skip)  # (B, N or N/4, D)
            if coarse not in levels:
                levels[coarse] = self.level_inputs(self.hourglass.rope if coarse else self.rope, M, img.shape[1], mask)
            rope, joined_rope, keys = levels[coarse]
            if i < len(self.blocks):  # joint: (B, N, D), (B, M, D); ctx is None after the last joint block
                img, ctx = block(img, ctx, c, rope, keys)
            else:  # single stream: one sequence [cond; image] and one set of weights
                h = block(torch.cat([ctx, img], dim=1) if h is None else h, c, joined_rope, keys)  # (B, M+N, D)
        if h is not None:
            img = h[:, M:]  # (B, N, D): only the image tokens are decoded
        out = self.final(img, c)  # image stream only: (B, N, p*p*C)
        return unpatchify(out, self.in_channels, self.patch_size, self.grid, self.grid)  # (B, C, H, W)


    @staticmethod
    def level_inputs(rope: Optional[torch.Tensor], M: int, N: int, mask: Optional[torch.Tensor]) -> tuple:
        """For the blocks on one grid of N image tokens: the image tokens' RoPE angles, those of the single-stream
        sequence [cond; image] (the conditioning tokens keep position (0, 0): a rotation by zero), and the keys
        (B, M+N) over [prompt; image], False for a prompt's padding, which is never attended to (None: no prompt)."""
        joined = None if rope is None else torch.cat([rope.new_zeros(M, rope.shape[1]), rope])
        keys = None if mask is None else torch.cat([mask, mask.new_ones(mask.shape[0], N)], dim=1)
        return rope, joined, keys


def build_mmdit(cfg: ModelConfig, in_channels: int, image_size: int) -> MMDiT:
    """MMDiT from the `model:` section of a config: its settings, and the text encoder, are the constructor's."""
    check_shapes(cfg.net, image_size)
    return MMDiT(in_channels=in_channels, image_size=image_size, text=build_text_encoder(cfg),
                 **dataclasses.asdict(cfg.net))
