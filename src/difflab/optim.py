"""What the optimiser sees, for every trainer (diffusion models and the VAE alike):
the optimiser itself, the learning rate at each step, how many steps a run has, and the EMA of the weights.
"""

from __future__ import annotations

import copy
import math

import torch

from .settings import TrainingConfig


def adamw(model: torch.nn.Module, tc: TrainingConfig) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019) with the `training:` section's lr, beta2 and weight decay.

    A model of prompts may train its text encoder at a share of that lr (`training.text_lr_scale`):
    each parameter group carries its `lr_scale`, which the schedule (lr_at) multiplies in.
    """
    text = getattr(model, "text", None)
    text_ids = {id(p) for p in text.parameters()} if text is not None else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in text_ids], "lr_scale": 1.0}]
    if text_ids:
        groups.append({"params": list(text.parameters()), "lr_scale": tc.text_lr_scale})
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(0.9, tc.adam_beta2), weight_decay=tc.weight_decay)


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to zero at the run's last step (Loshchilov & Hutter 2017)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))


def run_length(tc: TrainingConfig, steps_per_epoch: int, images_per_step: int) -> int:
    """Optimiser steps of a run: its epochs, cut by training.max_steps and by training.max_images
    (a budget in images: the same for every batch size and world size)."""
    total = tc.epochs * steps_per_epoch
    if tc.max_steps:
        total = min(total, tc.max_steps)
    if tc.max_images:
        total = min(total, max(tc.max_images // images_per_step, 1))
    return total


class EMA:
    """Exponential moving average of the weights, used for sampling (Song & Ermon 2020; Ho et al. 2020).

    The decay warms up as min(decay, (1 + n) / (10 + n)) so that short runs are not
    dominated by the random initial weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for p_ema, p in zip(self.model.parameters(), model.parameters()):
            p_ema.lerp_(p.detach(), 1 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


def fit_one_cycle(model: torch.nn.Module, settings, steps_per_epoch: int, epoch_losses, desc: str) -> None:
    """Train a small network once: AdamW, a one-cycle learning rate (Smith & Topin 2017) peaking at settings.lr,
    settings.epochs epochs of steps_per_epoch steps. The pretrained encoders (the tiny CLIP, the masked language
    model) train this way; `epoch_losses(epoch)` yields each step's loss, computed when the step asks for it."""
    from tqdm import tqdm

    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, settings.lr, total_steps=settings.epochs * steps_per_epoch)
    model.train()
    for epoch in range(settings.epochs):
        bar = tqdm(epoch_losses(epoch), total=steps_per_epoch, desc=f"{desc} epoch {epoch + 1}/{settings.epochs}")
        for i, loss in enumerate(bar):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
