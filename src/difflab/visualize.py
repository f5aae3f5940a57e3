"""Pictures: image grids, trajectory strips and GIFs, with Pillow (no torchvision needed)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from .infra.outputs import write_bytes_atomic


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W) uint8 (first channel)."""
    x = ((images[:, 0].detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return x.to(torch.uint8).numpy()


def grid_array(images: torch.Tensor, nrow: int, pad: int = 2, scale: int = 1) -> np.ndarray:
    """Tile N images into rows of `nrow`, with a dark gap between them."""
    pics = to_uint8(images)
    n, h, w = pics.shape
    rows = (n + nrow - 1) // nrow
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad), 40, dtype=np.uint8)
    for i, pic in enumerate(pics):
        r, c = divmod(i, nrow)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = pic
    if scale > 1:
        canvas = np.kron(canvas, np.ones((scale, scale), dtype=np.uint8))
    return canvas


def image_format(path: Union[str, Path]) -> str:
    """Pillow's format name for a file name's extension ("PNG" for .png); ValueError if it has none."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: not an image file name (use .png)")
    return fmt


def save_grid(images: torch.Tensor, path: Union[str, Path], nrow: int = 8, scale: int = 2) -> Path:
    """Write a PNG grid: one image per cell, `nrow` per row (a row per digit in sample grids).

    The image is encoded in memory and then written whole (write_bytes_atomic): a full disk
    raises an OSError naming `path` and leaves no half PNG under that name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = io.BytesIO()
    Image.fromarray(grid_array(images, nrow, scale=scale)).save(encoded, format=image_format(path))
    return write_bytes_atomic(path, encoded.getvalue())


def frames_of(clips: torch.Tensor) -> torch.Tensor:
    """Clips (N, C, F, H, W) -> their frames (N F, C, H, W) in order: a grid of nrow=F shows a clip per row."""
    return clips.transpose(1, 2).flatten(0, 1)


def clip_gif(clips: torch.Tensor, nrow: int, scale: int = 2, ms: int = 150) -> bytes:
    """An animated GIF of clips (N, C, F, H, W) in [-1, 1]: frame f shows every clip's frame f in a grid."""
    frames = [Image.fromarray(grid_array(clips[:, :, f], nrow, scale=scale)) for f in range(clips.shape[2])]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=ms, loop=0)
    return buf.getvalue()


def trajectory_frames(trajectory: Sequence, n: int = 8, scale: int = 2) -> list[np.ndarray]:
    """One frame per step: the top row shows x_t, the bottom row the predicted x0, for `n` samples."""
    frames = []
    for _, x_t, x0 in trajectory:
        both = torch.cat([x_t[:n], x0[:n]])
        frames.append(grid_array(both, nrow=min(n, len(x_t)), scale=scale))
    return frames
