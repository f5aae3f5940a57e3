"""DALL-E 2 (unCLIP, Ramesh et al. 2022): text -> CLIP image embedding -> image, in two diffusion models.

CLIP (difflab.clip) puts an image and its caption near each other in one space. unCLIP inverts the image
tower: a *decoder* learns to draw an image from its CLIP image embedding, and a *prior* learns to draw a
CLIP image embedding from a caption. Chained, they are a text-to-image model:

    prompt --CLIP text tower--> tokens --prior (diffusion over 64 numbers)--> z_i --decoder (diffusion)--> image

and the decoder alone gives image *variations*: encode a real digit with CLIP's image tower, decode the
embedding several times from different noise; what stays is what CLIP saw (the digit, its slant and weight),
what changes is what it did not.

This module holds what both stages need from CLIP: the embeddings the decoder is trained on and conditioned
by (`model.conditioning: clip_image`, read through models/text.ImageEmbeddingCondition), and real test images'
embeddings, the condition a decoder is scored and shown with.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .data import load_split


def image_embeddings_of(x: torch.Tensor, data_dir=None, device: Optional[torch.device] = None) -> torch.Tensor:
    """CLIP image embeddings (N, 64), unit vectors, of images (N, 1, 28, 28) in [-1, 1]: the tiny CLIP's image
    tower (cached in <data>/encoders/, trained on first use); on `device`."""
    from .clip import image_embeddings, load_clip

    return image_embeddings(load_clip(data_dir), x.cpu()).to(device or x.device)


def test_images_of(digits: Sequence[int], data_dir=None) -> torch.Tensor:
    """Real test images (N, 1, 28, 28), one per entry of `digits`: the k-th time a digit appears, the k-th test
    image of that digit (so a row of sevens is seven different sevens, the same ones every time)."""
    x, y = load_split("test", data_dir=data_dir)
    by_digit = {d: (y == d).nonzero().flatten() for d in range(10)}
    seen: dict = {}
    picks = []
    for d in (int(d) for d in digits):
        k = seen.get(d, 0)
        seen[d] = k + 1
        picks.append(by_digit[d][k % len(by_digit[d])])
    return x[torch.stack(picks)] if picks else x[:0]


def test_embeddings_of(digits: Sequence[int], data_dir=None) -> torch.Tensor:
    """The CLIP image embeddings (N, 64) of test_images_of(digits): what a decoder is asked to draw when it is
    scored (evaluate.py) or shown (the grids of training): images like these, never the same ones it trained on."""
    return image_embeddings_of(test_images_of(digits, data_dir), data_dir, torch.device("cpu"))


# --------------------------------------------------------------------------- the prior's data, and the chain


def prior_data(x: torch.Tensor, data_dir=None, device: Optional[torch.device] = None) -> torch.Tensor:
    """What the prior learns to draw: the images' CLIP embeddings, scaled from unit vectors to entries of about unit
    variance (sqrt(E) z), shaped (N, E, 1, 1) like a batch of E-channel 1x1 images, so the loop, the objectives,
    the noise paths and the samplers run on them unchanged."""
    z = image_embeddings_of(x, data_dir, device)  # (N, E), unit vectors
    return (z * z.shape[1] ** 0.5)[:, :, None, None]


def embeddings_from_prior(samples: torch.Tensor) -> torch.Tensor:
    """A prior's samples (N, E, 1, 1) -> unit CLIP image embeddings (N, E), what the decoder was trained on."""
    return F.normalize(samples.flatten(1), dim=-1)
