"""Judging generated digits: a small MNIST classifier and metrics on its features.

- FID (Heusel et al. 2017): Frechet distance between Gaussians fitted to features
  of real and generated images. Inception-v3 is the usual feature extractor; on
  MNIST a small CNN trained here plays that role, so the numbers are comparable
  within this project only.
- Precision / recall (Kynkaanniemi et al. 2019): how much of the generated set
  lies on the real manifold (quality) and how much of the real manifold the
  generated set covers (diversity).
- Conditional accuracy: for a class-conditional model, does the classifier see
  the digit that was asked for?

The classifier is trained once on demand (about a minute or two on a laptop CPU)
and cached under the data folder with the SHA-256 of its weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from difflab.data import load_split, resolve_data_dir
from difflab.metrics import (  # noqa: F401  (re-exported: the maths lives in metrics.py)
    feature_statistics,
    fid_from_features,
    fid_from_statistics,
    precision_recall,
)

ArrayLike = Union[torch.Tensor, np.ndarray]

CACHE_FORMAT = 1  # bump when the architecture or the file layout changes
FEATURE_DIM = 128


# --------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv -> BatchNorm -> ReLU -> 2x2 max-pool (halves the resolution)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class MNISTClassifier(nn.Module):
    """Three conv blocks and a 128-d feature layer; features(x) feeds FID.

    Small on purpose: about 100k weights, trained in a minute or two on two CPU
    cores, and still > 99% accurate on the MNIST test set.
    """

    def __init__(self, channels: tuple[int, int, int] = (16, 32, 64), feature_dim: int = FEATURE_DIM):
        super().__init__()
        c1, c2, c3 = channels
        self.convs = nn.Sequential(
            _conv_block(1, c1),  # (N, c1, 14, 14)
            _conv_block(c1, c2),  # (N, c2, 7, 7)
            _conv_block(c2, c3),  # (N, c3, 3, 3)
        )
        self.fc = nn.Linear(c3 * 3 * 3, feature_dim)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (N, 128), the analogue of Inception's pool3."""
        h = self.convs(x).flatten(1)  # (N, c3 * 9)
        return F.relu(self.fc(h))  # (N, 128)

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) from features (N, 128): the last layer alone."""
        return self.head(self.dropout(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) for images (N, 1, 28, 28) in [-1, 1]."""
        return self.classify(self.features(x))


@dataclass
class TrainSettings:
    """How the classifier is trained; stored next to the weights."""

    seed: int = 0
    epochs: int = 3
    batch_size: int = 128
    lr: float = 3e-3  # peak of the one-cycle schedule (Smith & Topin 2017)
    max_shift: int = 2  # augmentation: random translations of up to +-2 pixels
    train_subset: Optional[int] = None  # None: all 60k training images


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own (dy, dx) in [-max_shift, max_shift], filling with -1."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s), value=-1.0)  # (N, 1, H+2s, W+2s), -1 is background
    dy = torch.randint(0, 2 * s + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, 0, rows, cols][:, None]  # (N, 1, H, W)


def train_classifier(
    train: tuple[torch.Tensor, torch.Tensor],
    settings: TrainSettings,
    device: Union[str, torch.device] = "cpu",
) -> MNISTClassifier:
    """Adam + one-cycle learning rate, batches indexed from one tensor (no DataLoader).

    Deterministic given settings.seed: the weights come from torch.manual_seed, the
    order and the shifts from a separate fixed generator. The caller's global RNG
    state is restored afterwards.
    """
    images, labels = train
    if settings.train_subset is not None:
        images, labels = images[: settings.train_subset], labels[: settings.train_subset]
    images, labels = images.to(device), labels.to(device)
    steps_per_epoch = -(-len(images) // settings.batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        gen = torch.Generator().manual_seed(settings.seed)
        model = MNISTClassifier().to(device)
        opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch
        )
        model.train()
        for epoch in range(settings.epochs):
            order = torch.randperm(len(images), generator=gen).to(device)
            bar = tqdm(range(steps_per_epoch), desc=f"classifier epoch {epoch + 1}/{settings.epochs}")
            for i in bar:
                idx = order[i * settings.batch_size : (i + 1) * settings.batch_size]
                x = random_shift(images[idx], settings.max_shift, gen)
                loss = F.cross_entropy(model(x), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if i % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


# --------------------------------------------------------------------------
# Cache: <data_dir>/classifier/mnist_cnn.pt + mnist_cnn.json
# --------------------------------------------------------------------------


def classifier_paths(data_dir: Optional[Union[str, Path]] = None) -> tuple[Path, Path]:
    """(weights file, metadata JSON) of the cached classifier."""
    folder = Path(resolve_data_dir(data_dir)) / "classifier"
    return folder / "mnist_cnn.pt", folder / "mnist_cnn.json"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write to a temporary sibling, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _cache_problem(weights: Path, meta_path: Path, settings: TrainSettings) -> Optional[str]:
    """Why the cached classifier cannot be used, or None if it can."""
    if not weights.exists() or not meta_path.exists():
        return f"no cached classifier in {weights.parent}"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return f"unreadable {meta_path.name} ({err})"
    if meta.get("format") != CACHE_FORMAT:
        return f"cache format {meta.get('format')} != {CACHE_FORMAT}"
    if meta.get("settings") != dataclasses.asdict(settings):
        return "cached classifier was trained with other settings"
    if meta.get("sha256") != sha256_file(weights):
        return f"SHA-256 of {weights.name} does not match {meta_path.name} (file changed or corrupt)"
    return None


def _save_classifier(model: nn.Module, weights: Path, meta_path: Path, meta: dict) -> None:
    """Save the state dict, then the JSON holding its hash."""
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _atomic_write(weights, lambda p: torch.save(state, p))
    meta = {"format": CACHE_FORMAT, "weights": weights.name, "sha256": sha256_file(weights), **meta}
    _atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))


def load_classifier(
    data_dir: Optional[Union[str, Path]] = None,
    device: Union[str, torch.device] = "cpu",
    train_if_missing: bool = True,
    settings: Optional[TrainSettings] = None,
) -> MNISTClassifier:
    """The cached MNIST classifier (eval mode), trained first if missing or tampered with.

    On load the weights' SHA-256 is checked against the JSON beside them; a
    mismatch (or other settings) prints why and retrains, unless
    train_if_missing=False, which raises FileNotFoundError instead.
    """
    settings = settings or TrainSettings()
    weights, meta_path = classifier_paths(data_dir)
    problem = _cache_problem(weights, meta_path, settings)
    if problem is None:
        model = MNISTClassifier()
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return model.to(device).eval()
    if not train_if_missing:
        raise FileNotFoundError(f"{problem}; call load_classifier(train_if_missing=True)")
    print(f"difflab: {problem}; training the MNIST classifier ({settings})")
    start = time.time()
    model = train_classifier(load_split("train", data_dir=data_dir), settings, device)
    train_seconds = time.time() - start
    acc, _ = conditional_accuracy(model, *load_split("test", data_dir=data_dir))
    print(f"difflab: classifier test accuracy {acc:.4f} after {train_seconds:.0f} s -> {weights}")
    meta = {
        "test_accuracy": acc,
        "train_seconds": round(train_seconds, 1),
        "settings": dataclasses.asdict(settings),
        "torch_version": torch.__version__,
    }
    _save_classifier(model, weights, meta_path, meta)
    return model.to(device).eval()


# --------------------------------------------------------------------------
# Running the classifier
# --------------------------------------------------------------------------


@contextmanager
def _inference(model: nn.Module) -> Iterator[torch.device]:
    """Eval mode (BatchNorm running stats, no dropout) and no_grad; restores the mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield next(model.parameters()).device
    finally:
        model.train(was_training)


def _batched(fn: Callable, classifier: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Apply fn(batch) over images in inference mode; returns a float32 CPU tensor."""
    if images.ndim != 4 or images.shape[1:] != (1, 28, 28):
        raise ValueError(f"expected images of shape (N, 1, 28, 28), got {tuple(images.shape)}")
    with _inference(classifier) as device:
        out = [fn(images[i : i + batch_size].to(device).float()).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out).float()


def features(classifier: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Penultimate-layer features (N, 128) of images (N, 1, 28, 28) in [-1, 1]."""
    return _batched(classifier.features, classifier, images, batch_size)


def conditional_accuracy(
    classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500
) -> tuple[float, dict[int, float]]:
    """Fraction of images classified as the digit they were asked to be.

    Returns (overall accuracy, {digit: accuracy}) for the digits present in labels.
    """
    labels = _check_labels(labels, len(images))
    predictions = _batched(classifier, classifier, images, batch_size).argmax(1)
    return _accuracy(predictions, labels)


def _check_labels(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Labels as a CPU int64 tensor; they must be one digit 0..9 per image."""
    labels = torch.as_tensor(labels).long().cpu()
    if labels.ndim != 1 or len(labels) != n or n == 0:
        raise ValueError(f"need as many labels as images (>0), got {len(labels)} and {n}")
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError("labels must be digits 0..9 (the null class 10 has no digit to check)")
    return labels


def _accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> tuple[float, dict[int, float]]:
    """Overall and per-digit fraction of predictions equal to labels."""
    correct = (predictions.cpu() == labels).double()
    per_digit = {int(d): correct[labels == d].mean().item() for d in labels.unique()}
    return correct.mean().item(), per_digit


# --------------------------------------------------------------------------
# Everything at once, with the reference statistics cached per classifier
# --------------------------------------------------------------------------

# classifier -> {key: cached value}; entries vanish with the classifier.
_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _cached(classifier: nn.Module, key: tuple, compute):
    """compute() once per (classifier, key), kept in memory."""
    store = _CACHE.setdefault(classifier, {})
    if key not in store:
        store[key] = compute()
    return store[key]


def _split_features(classifier: nn.Module, split: str, data_dir, batch_size: int) -> torch.Tensor:
    """Features of a whole MNIST split, computed once per classifier and data folder."""
    key = ("features", split, str(resolve_data_dir(data_dir)))
    return _cached(classifier, key, lambda: features(classifier, load_split(split, data_dir=data_dir)[0], batch_size))


def _split_statistics(classifier: nn.Module, split: str, data_dir, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, Sigma) of a split's features, cached."""
    key = ("stats", split, str(resolve_data_dir(data_dir)))
    return _cached(classifier, key, lambda: feature_statistics(_split_features(classifier, split, data_dir, batch_size)))


def _fixed_subset(feats: torch.Tensor, n: int) -> torch.Tensor:
    """The first n rows of a fixed random permutation (seed 0) of feats."""
    perm = torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))
    return feats[perm[:n]]


def _fid_floor(classifier: nn.Module, reference: str, n: int, data_dir, batch_size: int) -> float:
    """FID of n real images of the other split against the reference split, cached per n."""
    other = "train" if reference == "test" else "test"

    def compute() -> float:
        real_n = _fixed_subset(_split_features(classifier, other, data_dir, batch_size), n)
        return fid_from_statistics(*feature_statistics(real_n), *_split_statistics(classifier, reference, data_dir, batch_size))

    return _cached(classifier, ("floor", reference, str(resolve_data_dir(data_dir)), n), compute)


def evaluate_images(
    images: torch.Tensor,
    labels: Optional[torch.Tensor],
    classifier: nn.Module,
    reference: str = "test",
    data_dir: Optional[Union[str, Path]] = None,
    batch_size: int = 500,
) -> dict:
    """FID, its floor, precision/recall and conditional accuracy of generated images.

    images: (N, 1, 28, 28) in [-1, 1]; labels: (N,) the digits asked for, or None
    for an unconditional model. reference: the real split ("test" or "train").

    fid_floor is the FID of N real images of the *other* split (the first N of a
    fixed permutation, seed 0; at most the whole split) against the reference.
    FID is biased upwards for finite N, so a perfect generator would score about
    fid_floor, not 0: compare models at the same N. Precision/recall use N
    reference images (same subset rule), as the paper compares equal-sized sets.
    The reference features, statistics and floors are cached in memory per
    classifier, so repeated calls only pay for the N generated images.
    """
    if reference not in ("test", "train"):
        raise ValueError(f"reference must be 'test' or 'train', got {reference!r}")
    n = len(images)
    labels = None if labels is None else _check_labels(labels, n)
    fake = features(classifier, images, batch_size)  # (N, 128)
    ref_stats = _split_statistics(classifier, reference, data_dir, batch_size)
    ref_subset = _fixed_subset(_split_features(classifier, reference, data_dir, batch_size), n)
    precision, recall = precision_recall(ref_subset, fake)
    accuracy, per_digit = None, {}
    if labels is not None:  # logits from the features already computed: one pass over the images
        with _inference(classifier) as device:
            predictions = classifier.classify(fake.to(device)).argmax(1)
        accuracy, per_digit = _accuracy(predictions, labels)
    return {
        "fid": fid_from_statistics(*feature_statistics(fake), *ref_stats),
        "fid_floor": _fid_floor(classifier, reference, n, data_dir, batch_size),
        "accuracy": accuracy,
        "per_digit_accuracy": per_digit,
        "precision": precision,
        "recall": recall,
        "n": n,
    }


# --------------------------------------------------------------------------
# Sampling and scoring in one call (evaluate.py, benchmarks/sampler_quality.py)
# --------------------------------------------------------------------------


def balanced_labels(n: int) -> torch.Tensor:
    """n digit labels spread evenly over 0..9 (0, 1, ..., 9, 0, 1, ...): counts differ by at most one."""
    return torch.arange(n) % 10


def evaluate_pipeline(
    pipe,
    classifier: nn.Module,
    n: int,
    *,
    sampler: Optional[str] = None,
    steps: Optional[int] = None,
    cfg_scale: Optional[float] = None,
    seed: int = 0,
    batch_size: Optional[int] = None,
    data_dir: Optional[Union[str, Path]] = None,
    progress: bool = True,
    **options,
) -> dict:
    """Sample n images from a difflab.pipeline.Pipeline and score them with evaluate_images.

    Labels are balanced_labels(n), or all the null class for an unconditional model
    (then accuracy is None). Unset sampler, steps and cfg_scale come from the
    checkpoint's config, as in Pipeline.generate; `options` (spacing, eta, ...) go
    to it too. Adds to evaluate_images' dict: sampler, steps, nfe (model
    evaluations per image; a CFG step counts once, as in the papers), cfg_scale
    (the one used), seconds (sampling only) and device.
    """
    from difflab.models import NULL_CLASS
    from difflab.pipeline import is_unconditional  # imported here: the pipeline imports every model

    s = pipe.cfg.sampling
    sampler, steps = sampler or s.sampler, steps or s.steps
    unconditional = is_unconditional(pipe.cfg)
    cfg_scale = 1.0 if unconditional else (s.cfg_scale if cfg_scale is None else cfg_scale)
    labels = balanced_labels(n)
    if unconditional:
        labels = torch.full_like(labels, NULL_CLASS)
    if batch_size is None:
        from difflab.pipeline import sampling_batch_size

        batch_size = sampling_batch_size(pipe.device)
    batches = -(-n // batch_size)
    # One bar over every batch's steps; the callback fires once per sampler step.
    with tqdm(total=steps * batches, unit="step", desc=f"{sampler} x{steps}", disable=not progress) as bar:
        result = pipe.generate(
            labels, sampler=sampler, steps=steps, cfg_scale=cfg_scale, seed=seed,
            batch_size=batch_size, callback=lambda *_: bar.update(1), **options,
        )  # fmt: skip
    if not torch.isfinite(result.images).all():  # clamp keeps NaN: say so instead of a silent FID
        raise FloatingPointError(f"{sampler} x{steps} produced non-finite pixels")
    scores = evaluate_images(
        result.images, None if unconditional else labels, classifier, data_dir=data_dir, batch_size=batch_size
    )
    return {
        **scores,
        "sampler": sampler,
        "steps": steps,
        "nfe": result.nfe,
        "cfg_scale": cfg_scale,
        "seconds": round(result.seconds, 3),
        "device": str(pipe.device),
    }
