"""Every trainer, by name: each is the one training loop (loop.py) with its own loss.

A config names its trainer without a field of its own (trainer_name): `fewstep.method` names a
few-step trainer, and latent diffusion's autoencoder is named by its model, `architecture: vae`,
as its configs and checkpoints have always said. Adding a trainer is a loss function, a small
class that hands it to the loop, and one line in TRAINERS.
"""

from __future__ import annotations

from typing import Callable

from .settings import Config
from .fewstep import ConsistencyTrainer, ProgressiveTrainer, ShortcutTrainer
from .loop import TrainingLoop
from .meanflow import MeanFlowTrainer
from .training import Trainer
from .vae_training import VAETrainer

# The one registry of trainers: name -> builder(cfg).
TRAINERS: dict[str, Callable[[Config], TrainingLoop]] = {
    "diffusion": Trainer,  # Ho et al. 2020, Algorithm 1, for every objective (training.py)
    "consistency_distillation": ConsistencyTrainer,  # Song et al. 2023, Algorithm 2 (fewstep.py)
    "consistency_training": ConsistencyTrainer,  # Song et al. 2023, Algorithm 3 (fewstep.py)
    "shortcut": ShortcutTrainer,  # Frans et al. 2024 (fewstep.py)
    "progressive_distillation": ProgressiveTrainer,  # Salimans & Ho 2022, Algorithm 2 (fewstep.py)
    "meanflow": MeanFlowTrainer,  # Geng et al. 2025, Algorithm 1 (meanflow.py)
    "vae": VAETrainer,  # latent diffusion's autoencoder, the negative ELBO (vae_training.py)
}


def trainer_name(cfg: Config) -> str:
    """The TRAINERS key of a config; the one place that reads a config's names to choose a trainer."""
    if cfg.model.architecture == "vae":
        return "vae"
    return "diffusion" if cfg.fewstep.method == "none" else cfg.fewstep.method


def build_trainer(cfg: Config) -> TrainingLoop:
    """The trainer a config names, built (its data loaded, its model made)."""
    return TRAINERS[trainer_name(cfg)](cfg)
