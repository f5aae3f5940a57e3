"""Shared test set-up: the package on sys.path, one thread, tiny configs and data."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from difflab.config import config_from_dict  # noqa: E402
from difflab.models import ARCHITECTURES, model_keys  # noqa: E402

# Two threads fight with everything else on a 2-core CI machine; one stays steady.
torch.set_num_threads(1)


def tiny_config(tmp_path, **sections):
    """A config small enough to train in seconds: an 8-channel U-Net on 28x28."""
    raw = {
        "name": "tiny",
        "model": {"architecture": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                  "attention_levels": [1], "num_heads": 2},
        "diffusion": {"target": "eps", "schedule": "linear"},
        "training": {"epochs": 1, "batch_size": 16, "lr": 2e-3, "warmup_steps": 5, "log_every": 5,
                     "output_dir": str(tmp_path / "experiments"), "seed": 0, "device": "cpu"},
        "sampling": {"sampler": "ddim", "steps": 4, "cfg_scale": 2.0, "n_per_class": 1},
    }
    architecture = sections.get("model", {}).get("architecture", "unet")
    if architecture in ARCHITECTURES:  # another network keeps those of the tiny U-Net's settings it has (num_heads)
        raw["model"] = {k: v for k, v in raw["model"].items() if k in model_keys(architecture)}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


def tiny_data(n: int = 256, seed: int = 0):
    """Synthetic 'digits': a bright square whose position depends on the label, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.full((n, 1, 28, 28), -1.0)
    for i, label in enumerate(y.tolist()):
        r, c = divmod(label, 5)
        x[i, 0, 4 + 10 * r : 12 + 10 * r, 1 + 5 * c : 6 + 5 * c] = 1.0
    x += 0.05 * torch.randn(x.shape, generator=g)
    return x.clamp(-1, 1), y


@pytest.fixture
def tiny(tmp_path):
    return tiny_config(tmp_path)


def synthetic_split(split: str, data_dir=None, dataset: str = "mnist", device: str = "cpu"):
    """Stand-in for data.load_split: 120 synthetic training digits, 80 test digits."""
    return tiny_data(120 if split == "train" else 80, seed=0 if split == "train" else 1)


@pytest.fixture
def fake_mnist(monkeypatch):
    """No real data or trained judge: synthetic splits and a small untrained classifier."""
    from difflab import classifier as clf
    from difflab import evaluation as ev

    torch.manual_seed(0)
    judge = clf.MNISTClassifier().eval()
    monkeypatch.setattr(ev, "load_split", synthetic_split)
    monkeypatch.setattr(clf, "load_classifier", lambda *a, **k: judge)
    return judge
