"""A tiny text encoder trained from scratch with the denoiser: what CLIP and T5 are to SD1 and SD3.

SD1 reads a prompt as CLIP's 77 token vectors (Rombach et al. 2022, Sec. 3.3), SD3 as CLIP's and
T5's token vectors plus a pooled CLIP vector (Esser et al. 2024, Sec. 5.1); both encoders are
trained elsewhere and frozen. Here the vocabulary is a few dozen words (difflab.prompts), so
a two-layer Transformer encoder learns it alongside the denoiser, counted in its parameters.

    tokens (B, L) -> embeddings + learned positions -> Transformer encoder (padding masked)
                  -> context (B, L, D), mask (B, L), pooled (B, D): the mean over real tokens

The start token is always present, so the empty prompt (the null condition for guidance)
still has one real token to attend to.
"""

from __future__ import annotations

import torch
from torch import nn

from ..prompts import MAX_TOKENS, TOKEN, VOCAB
from .layers import NULL_CLASS
from .video_dit import MOTION_COLUMNS, null_motion

PAD_ID, START_ID = TOKEN["<pad>"], TOKEN["<start>"]
FRAMED_COLUMNS = 4  # a class label with SDXL's micro-conditions: (label, size, top, left) (difflab.microcond)
# prompts (B, MAX_TOKENS), framed labels (B, 4) and clips' motions (B, 3) are told apart by width
assert MAX_TOKENS not in (FRAMED_COLUMNS, MOTION_COLUMNS)


class TextEncoder(nn.Module):
    """Prompt tokens -> per-token context, its mask, and a pooled vector."""

    def __init__(self, dim: int = 64, depth: int = 2, num_heads: int = 4, mlp_ratio: float = 2.0):
        super().__init__()
        self.dim = dim
        self.embed = nn.Embedding(len(VOCAB), dim, padding_idx=PAD_ID)
        self.pos = nn.Parameter(torch.randn(1, MAX_TOKENS, dim) * 0.02)  # learned, as in CLIP's text tower
        layer = nn.TransformerEncoderLayer(dim, num_heads, int(dim * mlp_ratio), dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)  # pre-LN, as in GPT-2 and CLIP
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode(self.embed(tokens), tokens != PAD_ID)

    def encode(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Word vectors (B, L, D) and the mask (B, L) of real words -> context, mask, pooled. A masked language
        model (difflab.encoders) enters here, with some word vectors replaced by its [MASK] vector."""
        h = h + self.pos[:, : h.shape[1]]  # (B, L, D)
        h = self.norm(self.blocks(h, src_key_padding_mask=~mask))  # padding is never attended to
        h = h * mask[..., None]  # padded positions carry nothing
        pooled = h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, D): mean over the real tokens
        return h, mask, pooled


IMAGE_EMBED_DIM = 64  # the tiny CLIP's embedding width (difflab.clip)


class ImageEmbeddingCondition(nn.Module):
    """A CLIP image embedding (B, E) read as a prompt is read: context tokens, their mask, a pooled vector.

    DALL-E 2's decoder (Ramesh et al. 2022, Sec. 2.1) projects the embedding and adds it to the timestep
    embedding (here: the pooled vector, with model.pooled_text) and projects it into four extra tokens of
    context for attention (here: the context the U-Net's cross-attention reads). A zero vector is the null
    condition of guidance (the decoder drops the embedding to zero 10% of the time).
    """

    def __init__(self, dim: int = 64, embed_dim: int = IMAGE_EMBED_DIM, tokens: int = 4):
        super().__init__()
        self.dim, self.tokens = dim, tokens
        self.to_tokens = nn.Linear(embed_dim, tokens * dim)
        self.to_pooled = nn.Linear(embed_dim, dim)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        context = self.to_tokens(y).view(len(y), self.tokens, self.dim)  # (B, 4, D)
        mask = torch.ones(context.shape[:2], dtype=torch.bool, device=y.device)  # every token is real
        return context, mask, self.to_pooled(y)


def null_condition(y: torch.Tensor) -> torch.Tensor:
    """The 'no condition' of classifier-free guidance, shaped like y.

    Class labels (B,): the null class. Prompts (B, L): the empty prompt, the start token alone. Image embeddings
    (B, E), floating point: zeros. Labels with SDXL's micro-conditions (B, 4), (label, size, top, left): the null
    class with the same size and crop, which SDXL does not drop for guidance either. A clip's motion (B, 3), (digit,
    direction, speed) of Moving MNIST: the null of each.
    """
    if y.is_floating_point():
        return torch.zeros_like(y)
    if y.ndim == 2 and y.shape[1] == FRAMED_COLUMNS:
        return torch.cat([torch.full_like(y[:, :1], NULL_CLASS), y[:, 1:]], dim=1)
    if y.ndim == 2 and y.shape[1] == MOTION_COLUMNS:  # a clip's (digit, direction, speed): all three dropped
        return null_motion(y)
    if y.ndim == 1:
        return torch.full_like(y, NULL_CLASS)
    null = torch.full_like(y, PAD_ID)
    null[:, 0] = START_ID
    return null


def drop_condition(y: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """Rows of y where `drop` (B,) is True replaced by the null condition (label dropout for CFG)."""
    keep = ~drop.view(-1, *([1] * (y.ndim - 1)))
    return torch.where(keep, y, null_condition(y))


def is_prompt(y: torch.Tensor) -> bool:
    """A condition of prompt tokens (B, L), rather than class labels (B,) or image embeddings (B, E)."""
    return y.ndim == 2 and not y.is_floating_point()


def build_text_encoder(cfg) -> "TextEncoder | ImageEmbeddingCondition | None":
    """The text encoder a ModelConfig asks for: None for class labels (model.conditioning: class); for a CLIP
    image embedding (clip_image), the module that turns it into tokens as a text encoder turns a prompt.

    A frozen encoder (model.text_encoder: clip or mlm) is built the same, untrained, and marked frozen: its weights
    come from the pretrained encoder when training starts (difflab.encoders.load_frozen_text), from the checkpoint
    when sampling, and the optimiser never sees them.
    """
    if cfg.conditioning == "clip_image":
        return ImageEmbeddingCondition(cfg.text_dim)
    if cfg.conditioning != "prompt":
        return None
    text = TextEncoder(cfg.text_dim, cfg.text_depth, cfg.text_heads)
    if cfg.text_encoder != "joint":
        text.requires_grad_(False)
    return text
