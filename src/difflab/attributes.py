"""What a prompt can ask for: simple, measurable properties of a digit's image (Morpho-MNIST style).

Castro et al. (2019), "Morpho-MNIST: Quantitative Assessment and Disentanglement in Deep Generative
Models", measure MNIST digits by their stroke thickness, slant, width and height. This module
measures cheaper versions of three of them from the binarised image (ink = pixel >= 128):

- thickness: 2 * ink area / boundary length. A stroke of width w and length L covers about
  w * L pixels and has about 2 * L boundary pixels, so this is about w (at least 2: a one-pixel
  line is all boundary). Morpho-MNIST uses twice the mean distance to the skeleton instead.
- slant: the shear that makes the ink's second moments upright, -mu11 / mu02 with x to the right
  and y downwards (Morpho-MNIST's slant, from image moments); positive leans right. In degrees.
- width: the ink's extent along x after removing that shear, in pixels.

Height is left out: MNIST's digits were scaled to fit a 20x20 box, so 86.8% of the training
digits are exactly 20 pixels tall and none is taller (`height` below measures it). The same functions measure
training images (for the prompts) and generated images (for evaluate.py's adherence), so
"asked" and "measured" mean the same thing.
"""

from __future__ import annotations

import numpy as np

NAMES = ("thickness", "slant", "width")
INK = 128  # binarisation threshold on uint8 pixels


def ink_masks(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> boolean ink masks."""
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W) uint8 images, got {images.dtype} {images.shape}")
    return images >= INK


def thickness(ink: np.ndarray) -> np.ndarray:
    """2 * area / boundary pixels: about the stroke width in pixels (see the module docstring)."""
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    inside = (padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:])
    boundary = (ink & ~inside).sum((1, 2))  # ink pixels with a 4-neighbour outside the ink
    return 2 * ink.sum((1, 2)) / np.maximum(boundary, 1)


def moments(ink: np.ndarray) -> tuple[np.ndarray, ...]:
    """Centre (x, y) and central second moments mu11 = cov(x, y), mu02 = var(y) of the ink."""
    n, h, w = ink.shape
    ys, xs = np.mgrid[:h, :w]
    area = np.maximum(ink.sum((1, 2)), 1)
    cx, cy = (ink * xs).sum((1, 2)) / area, (ink * ys).sum((1, 2)) / area
    dx, dy = xs[None] - cx[:, None, None], ys[None] - cy[:, None, None]
    mu11 = (ink * dx * dy).sum((1, 2)) / area
    mu02 = (ink * dy * dy).sum((1, 2)) / area
    return cx, cy, mu11, mu02


def shear(ink: np.ndarray) -> np.ndarray:
    """-mu11 / mu02: how far x moves right per pixel up; positive means leaning right."""
    _, _, mu11, mu02 = moments(ink)
    return -mu11 / np.maximum(mu02, 1e-6)


def slant(ink: np.ndarray) -> np.ndarray:
    """The shear as an angle from upright, in degrees (positive: leaning right)."""
    return np.degrees(np.arctan(shear(ink)))


def width(ink: np.ndarray) -> np.ndarray:
    """Extent of the ink along x once the slant is removed (x' = x - shear * (cy - y)), in pixels."""
    _, cy, _, _ = moments(ink)
    s = shear(ink)
    n, h, w = ink.shape
    ys, xs = np.mgrid[:h, :w]
    upright_x = xs[None] - s[:, None, None] * (cy[:, None, None] - ys[None])
    lo = np.where(ink, upright_x, np.inf).min((1, 2))
    hi = np.where(ink, upright_x, -np.inf).max((1, 2))
    return np.where(ink.any((1, 2)), hi - lo + 1, 0.0)


def height(ink: np.ndarray) -> np.ndarray:
    """Rows between the first and the last row with ink (measured only to show it barely varies)."""
    rows = ink.any(2)
    first, last = rows.argmax(1), rows.shape[1] - 1 - rows[:, ::-1].argmax(1)
    return np.where(rows.any(1), last - first + 1, 0)


def measure(images: np.ndarray, chunk: int = 10_000) -> dict[str, np.ndarray]:
    """name -> (N,) float32 for each of NAMES; in chunks, so 60,000 images take a few seconds."""
    out = {name: [] for name in NAMES}
    for lo in range(0, len(images), chunk):
        ink = ink_masks(images[lo : lo + chunk])
        for name, fn in (("thickness", thickness), ("slant", slant), ("width", width)):
            out[name].append(fn(ink).astype(np.float32))
    return {name: np.concatenate(v) if v else np.zeros(0, np.float32) for name, v in out.items()}
