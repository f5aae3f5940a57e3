"""The judge: a small MNIST classifier, how it is trained, and its cache on disk.

FID (Heusel et al. 2017) is usually computed on the features of Inception-v3; on
MNIST this CNN's 128-d penultimate layer plays that role (evaluation.py computes
the metrics on it), so the numbers are comparable within this project only.

The classifier is trained once on demand (about a minute or two on a laptop CPU)
and cached under the data folder with the SHA-256 of its weights.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from difflab.data import DATASETS, DataError, load_split, resolve_data_dir
from difflab.evaluation import conditional_accuracy
from difflab.convnet import conv_block, random_shift  # noqa: F401  (random_shift: also difflab.classifier's)
from difflab.infra.model_cache import load_or_train, save_cached
from difflab.infra.untrusted import shown

CACHE_FORMAT = 1  # bump when the architecture or the file layout changes
FEATURE_DIM = 128


# --------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------


class MNISTClassifier(nn.Module):
    """Three conv blocks and a 128-d feature layer; features(x) feeds FID.

    Small on purpose: about 100k weights, trained in a minute or two on two CPU
    cores, and still > 99% accurate on the MNIST test set.
    """

    def __init__(self, channels: tuple[int, int, int] = (16, 32, 64), feature_dim: int = FEATURE_DIM):
        super().__init__()
        c1, c2, c3 = channels
        self.convs = nn.Sequential(
            conv_block(1, c1),  # (N, c1, 14, 14)
            conv_block(c1, c2),  # (N, c2, 7, 7)
            conv_block(c2, c3),  # (N, c3, 3, 3)
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


def classifier_paths(data_dir: Optional[Union[str, Path]] = None, dataset: str = "mnist") -> tuple[Path, Path]:
    """(weights file, metadata JSON) of the cached classifier of a dataset (each has its own judge).

    The name becomes part of a file name, and may come from a checkpoint's config: only known ones."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {shown(dataset, 40)}; choose one of {', '.join(DATASETS)}")
    folder = Path(resolve_data_dir(data_dir)) / "classifier"
    return folder / f"{dataset}_cnn.pt", folder / f"{dataset}_cnn.json"


def _save_classifier(model: nn.Module, weights: Path, meta_path: Path, meta: dict) -> None:
    """The weights, then the JSON holding their hash (infra/model_cache.py)."""
    save_cached(model, weights, meta_path, CACHE_FORMAT, meta)


def load_classifier(
    data_dir: Optional[Union[str, Path]] = None,
    device: Union[str, torch.device] = "cpu",
    train_if_missing: bool = True,
    settings: Optional[TrainSettings] = None,
    dataset: str = "mnist",
) -> MNISTClassifier:
    """The cached classifier of `dataset` (eval mode), trained first if missing or tampered with.

    Its `dataset` attribute names the data it judges: evaluation compares samples with that
    dataset's real images and refuses a model trained on another (evaluation.evaluate_pipeline).

    On load the weights' SHA-256 is checked against the JSON beside them; a
    mismatch (or other settings) prints why and retrains, unless
    train_if_missing=False, which raises FileNotFoundError instead. A cache that
    cannot be written (a full disk) costs one printed line, not the trained model.
    """
    settings = settings or TrainSettings()
    weights, _ = classifier_paths(data_dir, dataset)

    def train():
        start = time.time()
        model = train_classifier(load_split("train", dataset=dataset, data_dir=data_dir), settings, device)
        seconds = time.time() - start
        acc, _ = conditional_accuracy(model, *load_split("test", dataset=dataset, data_dir=data_dir))
        print(f"difflab: classifier test accuracy {acc:.4f} after {seconds:.0f} s -> {weights}")
        return model, {"test_accuracy": acc, "train_seconds": round(seconds, 1)}

    model = load_or_train(classifier_paths(data_dir, dataset), CACHE_FORMAT, dataclasses.asdict(settings),
                          f"{dataset} classifier", MNISTClassifier, train, train_if_missing)
    model.dataset = dataset
    return model.to(device).eval()
