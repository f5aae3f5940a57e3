"""Speed helpers for the training loop: choosing a batch size by measuring it."""

from __future__ import annotations

import copy
import time
from typing import Callable

import torch

from .validation import ConfigError


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe_speed(model, opt, x, y, size: int, autocast: Callable, device: torch.device, steps: int = 3) -> float:
    """Images/s of `steps` training steps at batch `size` (after one warm-up step)."""
    x, y = x[:size], y[:size]
    for i in range(steps + 1):
        if i == 1:
            _sync(device)
            start = time.perf_counter()
        with autocast():
            out = model(x, torch.full((size,), 500.0, device=device), y)
        loss = (out.float() - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return steps * size / (time.perf_counter() - start)


def choose_batch_size(model, x, y, autocast: Callable, limit: int, device: torch.device, verbose: bool = True) -> int:
    """Time a few steps at 32, 64, ... up to `limit` on a copy of the model and keep the
    smallest batch within 5% of the best images/s: small batches learn more per image,
    so a larger one must pay for itself in speed. A size that runs out of memory ends the search."""
    probe = copy.deepcopy(model)
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-9)
    results, size = {}, 32
    while size <= min(limit, len(x)):
        try:
            results[size] = probe_speed(probe, opt, x, y, size, autocast, device)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            if "out of memory" not in str(e).lower():
                raise
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        size *= 2
    if not results:
        raise ConfigError("training.batch_size: auto found no batch size that fits in memory; set one")
    best = max(results.values())
    chosen = min(b for b, ips in results.items() if ips >= 0.95 * best)
    if verbose:
        table = ", ".join(f"{b}: {ips:.0f} img/s" for b, ips in results.items())
        print(f"batch_size auto: {table} -> {chosen} (smallest within 5% of the best {best:.0f} img/s)")
    return chosen
