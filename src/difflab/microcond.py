"""SDXL's micro-conditioning, the data side: digits at random sizes and crops, and what a model is told of them.

Podell et al. 2023 (SDXL), Sec. 2.2: training on images of every size, upscaled when small and randomly cropped
when large, teaches a model to draw small, blurry or cut-off objects, because the training data has them. SDXL
keeps all the data and *tells* the model what was done to each image, its original size and the crop's
top-left corner, as Fourier features added to the timestep embedding; asked at sampling time for a large
original and the crop (0, 0), it draws the whole object, centred.

MNIST has one framing (each digit scaled into a 20x20 box, centred by its mass in 28x28). This module makes
the problem SDXL had: every training digit is resized by a factor s, log-uniform in [SIZE_MIN, SIZE_MAX], to an
S x S canvas (S = round(28 s)), then cut to 28 x 28 at (top, left):

    S > 28: a window inside the canvas, 0 <= top, left <= S - 28 (part of a big digit may be cut off)
    S < 28: the canvas pasted into a blank 28 x 28 at (-top, -left), -(28 - S) <= top, left <= 0 (a small digit
            anywhere)
    S = 28, (0, 0): MNIST's own framing, "centred, full size"

The condition (S, top, left) is what the model is told; framing() measures, from pixels alone, whether a digit
came out cut off or tiny, so that "asked" and "drawn" can be compared as for the prompts' attributes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .attributes import ink_masks

SIZE = 28  # MNIST's canvas
SIZE_MIN, SIZE_MAX = 0.5, 1.6  # the range of resize factors: from a 10-pixel digit to one cut at the canvas
CENTRED = (SIZE, 0, 0)  # the condition that asks for MNIST's own framing
TINY = 12  # a digit whose ink is fewer rows tall than this is "tiny" (MNIST's digits are 20 rows tall, 86.8%)


def draw_framings(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 3) int64 conditions (S, top, left): a log-uniform resize factor, then a uniform crop or placement."""
    log_s = torch.empty(n).uniform_(math.log(SIZE_MIN), math.log(SIZE_MAX), generator=generator)
    sizes = torch.round(SIZE * log_s.exp()).long()  # (n,) canvas sizes S
    slack = (sizes - SIZE).abs()  # how far the window (or the paste) can move
    u = torch.rand(n, 2, generator=generator)
    offsets = torch.floor(u * (slack[:, None] + 1)).long().clamp(max=slack[:, None])
    offsets = torch.where(sizes[:, None] < SIZE, -offsets, offsets)  # a paste of a small canvas: negative offsets
    return torch.cat([sizes[:, None], offsets], dim=1)


def apply_framings(images: torch.Tensor, framings: torch.Tensor) -> torch.Tensor:
    """Images (N, 1, 28, 28) in [-1, 1], each resized to its S and cut (or pasted) at its (top, left)."""
    out = torch.full_like(images, -1.0)  # the background
    for size in framings[:, 0].unique().tolist():
        rows = (framings[:, 0] == size).nonzero().flatten()
        scaled = F.interpolate(images[rows], size=(size, size), mode="bilinear", antialias=size < SIZE,
                               align_corners=False) if size != SIZE else images[rows]
        for i, r in enumerate(rows.tolist()):
            top, left = framings[r, 1:].tolist()
            if size >= SIZE:  # a 28 x 28 window of the big canvas
                out[r] = scaled[i, :, top: top + SIZE, left: left + SIZE]
            else:  # the small canvas pasted into the blank one
                out[r, :, -top: -top + size, -left: -left + size] = scaled[i]
    return out.clamp(-1, 1)


def framed_training_set(images: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images reframed, their conditions (N, 3)): one framing per training image, drawn once with `seed`, as
    difflab.prompts draws one prompt per image (each image is seen once per epoch either way)."""
    framings = draw_framings(len(images), torch.Generator().manual_seed(seed))
    return apply_framings(images, framings), framings


def framing(images: np.ndarray) -> dict[str, np.ndarray]:
    """What a digit's framing looks like, measured from uint8 images (N, 28, 28): ink rows (its height), the
    centre of its ink box (row, column), and whether it is cut off (ink in the outermost row or column) or tiny
    (fewer than TINY rows of ink). An empty image is neither cut off nor tiny; its height is 0."""
    ink = ink_masks(images)
    rows, cols = ink.any(2), ink.any(1)  # (N, 28) each
    first_r = np.where(rows.any(1), np.argmax(rows, 1), 0)
    last_r = np.where(rows.any(1), SIZE - 1 - np.argmax(rows[:, ::-1], 1), -1)
    first_c = np.where(cols.any(1), np.argmax(cols, 1), 0)
    last_c = np.where(cols.any(1), SIZE - 1 - np.argmax(cols[:, ::-1], 1), -1)
    height = last_r - first_r + 1
    edge = rows[:, [0, -1]].any(1) | cols[:, [0, -1]].any(1)
    return {"height": height, "centre_row": (first_r + last_r) / 2, "centre_col": (first_c + last_c) / 2,
            "cut_off": edge, "tiny": (height > 0) & (height < TINY)}


def framing_shares(images: torch.Tensor) -> dict[str, float]:
    """The shares of images (N, 1, 28, 28) in [-1, 1] whose digit is cut off or tiny (framing())."""
    from .data import tensor_to_uint8

    measured = framing(tensor_to_uint8(images))
    return {"cut_off": float(measured["cut_off"].mean()), "tiny": float(measured["tiny"].mean())}
