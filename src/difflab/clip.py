"""A tiny CLIP: an image encoder and a text encoder trained to agree (Radford et al. 2021).

CLIP learns from (image, caption) pairs alone. Both encoders map into one space of unit vectors;
in a batch of B pairs, the B x B cosine similarities, scaled by a learnt temperature, are logits
and each image must pick out its own caption among the B (and each caption its image):

    logits = exp(t) * normalize(f(images)) @ normalize(g(texts)).T        (B, B)
    loss   = (cross_entropy(logits, targets) + cross_entropy(logits.T, targets)) / 2

the symmetric InfoNCE loss of the paper's Figure 3 (van den Oord et al. 2018). Here the pairs are the
60,000 MNIST training images and prompts written from their measured attributes (difflab.prompts):
"a thick, right-slanted 7". One difference from the paper: its 32,768 web captions per batch are
almost never identical, ours often are ("a 7" many times in a batch of 256), so identical captions
count as right answers for each other (soft targets) instead of as negatives.

What a CLIP gives a diffusion model, and what this module measures of it:
- zero-shot classification (the paper's Section 3.1): the digit whose prompts embed nearest an image,
  averaged over several phrasings ("prompt ensembling", Section 3.1.4);
- attribute retrieval: which of "a thin 7", "a regular 7", "a thick 7" is nearest, against the bins
  difflab.attributes measures;
- CLIP score (Hessel et al. 2021): 100 * max(cos(image, prompt), 0), averaged over samples;
- its text tower's token vectors, which SD1 reads frozen through cross-attention.

Trained once on demand (a few minutes on two CPU cores) and cached in <data>/encoders/ with the
SHA-256 of its weights, as the classifier is (infra/model_cache.py).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import attributes, prompts
from .convnet import conv_block, random_shift
from .data import load_split, resolve_data_dir, tensor_to_uint8
from .infra.model_cache import load_or_train
from .models.text import IMAGE_EMBED_DIM, TextEncoder
from .optim import fit_one_cycle

CACHE_FORMAT = 1  # bump when the architecture or the file layout changes


# --------------------------------------------------------------------------- the two towers


class ImageEncoder(nn.Module):
    """Three conv blocks and a linear projection: (N, 1, 28, 28) -> (N, embed_dim)."""

    def __init__(self, channels: tuple[int, int, int] = (32, 64, 128), embed_dim: int = 64):
        super().__init__()
        c1, c2, c3 = channels
        self.convs = nn.Sequential(conv_block(1, c1), conv_block(c1, c2), conv_block(c2, c3))  # (N, c3, 3, 3)
        self.proj = nn.Linear(c3 * 3 * 3, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(x).flatten(1))  # (N, E)


class TinyCLIP(nn.Module):
    """An image tower, a text tower (models/text.py, as the prompted diffusion models use) and a temperature."""

    def __init__(self, embed_dim: int = IMAGE_EMBED_DIM, text_dim: int = 64, text_depth: int = 2, text_heads: int = 4):
        super().__init__()
        self.image = ImageEncoder(embed_dim=embed_dim)
        self.text = TextEncoder(text_dim, text_depth, text_heads)
        self.text_proj = nn.Linear(text_dim, embed_dim, bias=False)  # pooled text -> the shared space
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # the paper's initial temperature 0.07

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Unit vectors (N, E) for images in [-1, 1]."""
        return F.normalize(self.image(x), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unit vectors (N, E) for prompt tokens (N, L): the text tower's pooled vector, projected."""
        _, _, pooled = self.text(tokens)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (N, N): row i scores image i against every caption of the batch."""
        scale = self.logit_scale.clamp(max=math.log(100)).exp()  # clipped at 100, as in the paper (Sec. 2.5)
        return scale * self.encode_image(x) @ self.encode_text(tokens).T


def contrastive_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The symmetric InfoNCE loss of CLIP (Radford et al. 2021, Fig. 3) with identical captions as shared answers.

    targets[i, j] = 1 / (number of captions equal to caption i) where captions i and j are equal: with every
    caption distinct this is the identity, the paper's `labels = arange(n)`.
    """
    same = (tokens[:, None, :] == tokens[None, :, :]).all(-1).float()  # (N, N), 1 on the diagonal
    targets = same / same.sum(1, keepdim=True)  # symmetric, so one matrix serves both directions
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


# --------------------------------------------------------------------------- training


@dataclass
class CLIPSettings:
    """How the tiny CLIP is trained; stored next to its weights."""

    seed: int = 0
    epochs: int = 6
    batch_size: int = 256
    lr: float = 2e-3  # peak of a one-cycle schedule (AdamW)
    weight_decay: float = 0.1
    max_shift: int = 2  # augmentation: translations of up to +-2 pixels (no attribute the prompts name changes)
    train_subset: Optional[int] = None  # None: all 60,000 training images


def train_clip(images: torch.Tensor, digits: torch.Tensor, settings: CLIPSettings,
               device: Union[str, torch.device] = "cpu") -> TinyCLIP:
    """AdamW and a one-cycle learning rate; a fresh drawing of every image's prompt each epoch.

    The prompts are difflab.prompts' (each attribute named with probability KEEP, one of four phrasings),
    drawn with seed (settings.seed, epoch): over six epochs an image is described six ways. Deterministic given
    the settings; the caller's global RNG state is restored afterwards.
    """
    if settings.train_subset is not None:
        images, digits = images[: settings.train_subset], digits[: settings.train_subset]
    _, bins = prompts.fit_bins(tensor_to_uint8(images), digits.numpy())  # as difflab.prompts bins them
    images = images.to(device)
    steps_per_epoch = len(images) // settings.batch_size  # whole batches: a short last batch has few negatives
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        gen = torch.Generator().manual_seed(settings.seed)
        model = TinyCLIP().to(device)

        def epoch_losses(epoch):  # a fresh prompt for every image, a fresh order, fresh shifts
            tokens = prompts.encode(prompts.random_prompts(digits.numpy(), bins, seed=settings.seed * 1000 + epoch))
            tokens = tokens.to(device)
            order = torch.randperm(len(images), generator=gen).to(device)
            for i in range(steps_per_epoch):
                idx = order[i * settings.batch_size: (i + 1) * settings.batch_size]
                x = random_shift(images[idx], settings.max_shift, gen)
                yield contrastive_loss(model(x, tokens[idx]), tokens[idx])

        fit_one_cycle(model, settings, steps_per_epoch, epoch_losses, "CLIP")
    return model.eval()


def _measured(images: torch.Tensor, digits: torch.Tensor) -> tuple[dict, np.ndarray]:
    """(attribute -> (N,) measurements, digits (N,)) of images in [-1, 1]: what Thresholds.fit and .bin take."""
    return attributes.measure(tensor_to_uint8(images.cpu())), digits.cpu().numpy()


# --------------------------------------------------------------------------- zero-shot


def digit_prompts(digit: int) -> list[str]:
    """Every phrasing of "this is a <digit>" the prompts know: "a 7", "7", "the digit 7", "a seven", ..."""
    return sorted({prompts.write(digit, {}, p, as_word) for p in range(4) for as_word in (False, True)})


def attribute_prompts(digit: int, name: str, b: int) -> list[str]:
    """Every phrasing of a digit with one attribute bin: "a thin 7", "the digit seven, thin", ..."""
    return sorted({prompts.write(digit, {name: b}, p, as_word) for p in range(4) for as_word in (False, True)})


@torch.no_grad()
def ensemble(model: TinyCLIP, texts: Sequence[str]) -> torch.Tensor:
    """One unit vector (E,) for several phrasings of one meaning: their mean, renormalised (Sec. 3.1.4)."""
    device = model.logit_scale.device
    return F.normalize(model.encode_text(prompts.encode(texts).to(device)).mean(0), dim=-1)


@torch.no_grad()
def image_embeddings(model: TinyCLIP, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Unit vectors (N, E) for images in [-1, 1], in batches."""
    device = model.logit_scale.device
    return torch.cat([model.encode_image(images[i: i + batch].to(device)).cpu() for i in range(0, len(images), batch)])


@torch.no_grad()
def zero_shot_digits(model: TinyCLIP, images: torch.Tensor) -> torch.Tensor:
    """The digit (N,) whose ensembled prompts are nearest each image: classification from prompts alone."""
    classes = torch.stack([ensemble(model, digit_prompts(d)) for d in range(10)]).cpu()  # (10, E)
    return (image_embeddings(model, images) @ classes.T).argmax(1)


@torch.no_grad()
def zero_shot_attributes(model: TinyCLIP, images: torch.Tensor, digits: torch.Tensor) -> dict[str, torch.Tensor]:
    """attribute -> (N,) bin whose prompts, with each image's own digit, are nearest the image."""
    emb = image_embeddings(model, images)  # (N, E)
    out = {}
    for name, names in prompts.BINS.items():
        table = torch.stack([torch.stack([ensemble(model, attribute_prompts(d, name, b)) for b in range(len(names))])
                             for d in range(10)]).cpu()  # (10, bins, E)
        out[name] = torch.einsum("ne,nbe->nb", emb, table[digits]).argmax(1)
    return out


@torch.no_grad()
def clip_scores(model: TinyCLIP, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
    """CLIP score of each image with its prompt (Hessel et al. 2021, Eq. 1 with w = 100): 100 * max(cos, 0), (N,)."""
    device = model.logit_scale.device
    text = torch.cat([model.encode_text(prompts.encode(texts[i: i + 1000]).to(device)).cpu()
                      for i in range(0, len(texts), 1000)])
    return 100 * (image_embeddings(model, images) * text).sum(1).clamp(min=0)


def clip_score(model: TinyCLIP, images: torch.Tensor, texts: Sequence[str]) -> float:
    """The CLIP score of a set of images: the mean over images of clip_scores."""
    return float(clip_scores(model, images, texts).mean())


def real_clip_score(model: TinyCLIP, data_dir=None, n: int = 1000) -> float:
    """The CLIP score of n real training images with their own prompts (the ones FID's captions draw): what a
    model that draws exactly what it is asked would score, the ceiling to read a sample's score against."""
    data = prompts.training_prompt_set(data_dir)
    x, _ = load_split("train", data_dir=data_dir)
    pick = np.random.default_rng(prompts.CAPTION_SEED).permutation(len(x))[:n]
    return clip_score(model, x[pick], [data.texts[i] for i in pick])


def measure_clip(model: TinyCLIP, data_dir=None) -> dict:
    """Zero-shot digit accuracy and attribute retrieval on the 10,000 MNIST test images.

    The attribute bins are measured (difflab.attributes) with the training images' thresholds, as the
    prompts were written: chance is 1/3 for each attribute, 1/10 for the digit.
    """
    x, y = load_split("test", data_dir=data_dir)
    thresholds = prompts.training_prompt_set(data_dir).thresholds
    bins = thresholds.bin(*_measured(x, y))
    guessed = zero_shot_attributes(model, x, y)
    return {"zero_shot_digit_accuracy": float((zero_shot_digits(model, x) == y).float().mean()),
            "attribute_accuracy": {name: float((guessed[name].numpy() == bins[name]).mean()) for name in prompts.BINS},
            "n": len(x)}


# --------------------------------------------------------------------------- cache: <data>/encoders/mnist_clip.pt


def clip_paths(data_dir=None) -> tuple[Path, Path]:
    """(weights, metadata JSON) of the cached tiny CLIP."""
    folder = Path(resolve_data_dir(data_dir)) / "encoders"
    return folder / "mnist_clip.pt", folder / "mnist_clip.json"


def load_clip(data_dir=None, device: Union[str, torch.device] = "cpu", train_if_missing: bool = True,
              settings: Optional[CLIPSettings] = None) -> TinyCLIP:
    """The cached tiny CLIP (eval mode), trained first if missing, trained otherwise, or changed since.

    train_if_missing=False raises FileNotFoundError instead of training.
    """
    settings = settings or CLIPSettings()

    def train():
        start = time.time()
        model = train_clip(*load_split("train", data_dir=data_dir), settings, device)
        seconds = time.time() - start
        measured = measure_clip(model, data_dir)
        print(f"difflab: CLIP zero-shot digit accuracy {measured['zero_shot_digit_accuracy']:.4f} after "
              f"{seconds:.0f} s -> {clip_paths(data_dir)[0]}")
        return model, {**measured, "train_seconds": round(seconds, 1),
                       "parameters": sum(p.numel() for p in model.parameters())}

    model = load_or_train(clip_paths(data_dir), CACHE_FORMAT, dataclasses.asdict(settings), "CLIP", TinyCLIP, train,
                          train_if_missing)
    return model.to(device)
