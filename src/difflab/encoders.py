"""Frozen text encoders for a model of prompts: CLIP's text tower (SD1) and a text-only language model (Imagen).

Which text encoder should a diffusion model read? SD1 reads the prompt through CLIP's text tower, trained on
image-caption pairs and frozen (Rombach et al. 2022, Sec. 4.3.1); Imagen through T5-XXL, a language model
trained on text alone and frozen, and found that scaling that text encoder helped more than scaling the
diffusion model (Saharia et al. 2022, Sec. 4.4). Here each has a miniature, with the same architecture as the
encoder trained jointly with the denoiser (models/text.py), so only what it learnt from differs:

    model.text_encoder: joint   trained with the denoiser, from scratch (the default; counted in its parameters)
    model.text_encoder: clip    the tiny CLIP's text tower (difflab.clip), frozen: learnt from images and prompts
    model.text_encoder: mlm     a masked language model on the prompts alone, frozen: never saw an image

The masked language model (BERT, Devlin et al. 2019; T5's span corruption is its sequence-to-sequence
cousin, Raffel et al. 2020) reads prompts with about 15% of their words replaced by a learnt [MASK] vector
and predicts the words that were there: "a thick, [MASK] 7" -> "right-slanted" or "upright" or ... It
learns which words go together and which can stand in for each other ("7" and "seven"), nothing of what
they look like. Trained once on demand (a minute or two on two CPU cores), cached like the judge.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import prompts
from .data import load_split, resolve_data_dir, tensor_to_uint8
from .infra.checkpoint import load_weights
from .infra.model_cache import load_or_train
from .models.text import PAD_ID, START_ID, TextEncoder
from .optim import fit_one_cycle

CACHE_FORMAT = 1  # bump when the architecture or the file layout changes
FROZEN = ("clip", "mlm")  # model.text_encoder values whose weights come from here


class MaskedLM(nn.Module):
    """The text encoder of models/text.py, a learnt [MASK] vector, and a head that names the hidden word."""

    def __init__(self, dim: int = 64, depth: int = 2, num_heads: int = 4):
        super().__init__()
        self.text = TextEncoder(dim, depth, num_heads)
        self.mask_vector = nn.Parameter(torch.randn(dim) * 0.02)  # the [MASK] token, outside the vocabulary
        self.head = nn.Linear(dim, len(prompts.VOCAB))

    def forward(self, tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (B, L, vocabulary) over the word at each position; `hidden` (B, L) marks the masked ones."""
        h = self.text.embed(tokens)  # (B, L, D)
        h = torch.where(hidden[..., None], self.mask_vector, h)  # the model sees [MASK] where a word was hidden
        context, _, _ = self.text.encode(h, tokens != PAD_ID)
        return self.head(context)


def choose_hidden(tokens: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """(B, L) bool: each word (not padding, not the start token) hidden with probability `rate`, at least one
    per prompt that has words, so every prompt teaches something."""
    words = (tokens != PAD_ID) & (tokens != START_ID)
    hidden = (torch.rand(tokens.shape, generator=generator) < rate) & words
    none = ~hidden.any(1) & words.any(1)
    if none.any():  # hide one word chosen at random among each such prompt's words
        score = torch.rand(tokens.shape, generator=generator).masked_fill(~words, -1.0)
        hidden[none, score[none].argmax(1)] = True
    return hidden


def mlm_loss(model: MaskedLM, tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the hidden words only (Devlin et al. 2019, Sec. 3.1, "Task #1: Masked LM")."""
    logits = model(tokens, hidden)  # (B, L, V)
    return F.cross_entropy(logits[hidden], tokens[hidden])


@dataclass
class MLMSettings:
    """How the masked language model is trained; stored next to its weights."""

    seed: int = 0
    epochs: int = 6
    batch_size: int = 256
    lr: float = 2e-3  # peak of a one-cycle schedule (AdamW)
    weight_decay: float = 0.1
    mask_rate: float = 0.15  # BERT's share of hidden words
    train_subset: Optional[int] = None  # None: the prompts of all 60,000 training images


def corpus(digits: np.ndarray, bins: dict[str, np.ndarray], seed: int) -> torch.Tensor:
    """Prompt tokens (N, MAX_TOKENS) for images of these digits and attribute bins (prompts.fit_bins), drawn as the
    diffusion models' prompts are (difflab.prompts) with `seed`: each epoch a fresh drawing of every phrasing."""
    return prompts.encode(prompts.random_prompts(digits, bins, seed=seed))


def bins_of(images: torch.Tensor, digits: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(digits, attribute bins) of images in [-1, 1], thresholds fit on them: what corpus() writes from."""
    return digits.numpy(), prompts.fit_bins(tensor_to_uint8(images), digits.numpy())[1]


def train_mlm(images: torch.Tensor, digits: torch.Tensor, settings: MLMSettings) -> MaskedLM:
    """AdamW, one-cycle learning rate; the text alone (the images only decide which prompts are written)."""
    if settings.train_subset is not None:
        images, digits = images[: settings.train_subset], digits[: settings.train_subset]
    digits, bins = bins_of(images, digits)  # measured once; each epoch writes new prompts from them
    steps_per_epoch = len(digits) // settings.batch_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        gen = torch.Generator().manual_seed(settings.seed)
        model = MaskedLM()

        def epoch_losses(epoch):  # a fresh drawing of every prompt, a fresh order, fresh hidden words
            tokens = corpus(digits, bins, seed=settings.seed * 1000 + epoch)
            order = torch.randperm(len(tokens), generator=gen)
            for i in range(steps_per_epoch):
                batch = tokens[order[i * settings.batch_size: (i + 1) * settings.batch_size]]
                yield mlm_loss(model, batch, choose_hidden(batch, settings.mask_rate, gen))

        fit_one_cycle(model, settings, steps_per_epoch, epoch_losses, "masked LM")
    return model.eval()


@torch.no_grad()
def measure_mlm(model: MaskedLM, data_dir=None, mask_rate: float = 0.15) -> dict:
    """The share of hidden words named right, on the prompts of the 10,000 test images (a fixed drawing), and
    the share that always naming the commonest hidden word would get (the baseline)."""
    x, y = load_split("test", data_dir=data_dir)
    tokens = corpus(*bins_of(x, y), seed=12345)
    hidden = choose_hidden(tokens, mask_rate, torch.Generator().manual_seed(0))
    right = (model(tokens, hidden).argmax(-1) == tokens)[hidden]
    commonest = tokens[hidden].bincount().max().item() / int(hidden.sum())  # always guessing the likeliest word
    return {"masked_word_accuracy": float(right.float().mean()), "commonest_word_share": commonest,
            "n_prompts": len(tokens)}


def mlm_paths(data_dir=None) -> tuple[Path, Path]:
    """(weights, metadata JSON) of the cached masked language model."""
    folder = Path(resolve_data_dir(data_dir)) / "encoders"
    return folder / "mnist_mlm.pt", folder / "mnist_mlm.json"


def load_mlm(data_dir=None, train_if_missing: bool = True, settings: Optional[MLMSettings] = None) -> MaskedLM:
    """The cached masked language model (eval mode, CPU), trained first if missing or changed since."""
    settings = settings or MLMSettings()

    def train():
        start = time.time()
        model = train_mlm(*load_split("train", data_dir=data_dir), settings)
        seconds = time.time() - start
        measured = measure_mlm(model, data_dir, settings.mask_rate)
        print(f"difflab: masked words named right {measured['masked_word_accuracy']:.4f} after {seconds:.0f} s")
        return model, {**measured, "train_seconds": round(seconds, 1),
                       "parameters": sum(p.numel() for p in model.parameters())}

    return load_or_train(mlm_paths(data_dir), CACHE_FORMAT, dataclasses.asdict(settings), "masked language model",
                         MaskedLM, train, train_if_missing)


def load_frozen_text(text: TextEncoder, kind: str, data_dir=None, device: Union[str, torch.device] = "cpu") -> None:
    """Fill a diffusion model's text encoder with the pretrained one `kind` names (FROZEN), in place, and freeze it.

    Called once when training starts; sampling reads the weights from the checkpoint instead.
    """
    if kind == "clip":
        from .clip import load_clip

        source, what = load_clip(data_dir).text, "CLIP text tower"
    elif kind == "mlm":
        source, what = load_mlm(data_dir).text, "masked language model"
    else:
        raise ValueError(f"model.text_encoder: one of joint, {', '.join(FROZEN)}; got {kind!r}")
    load_weights(text, source.state_dict(), f"the cached {what}", what=what)  # the sizes must be the encoder's
    text.to(device).requires_grad_(False)
