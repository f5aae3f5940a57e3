"""Speed helpers: choosing the training loop's batch size by measuring it, and counting a network's FLOPs."""

from __future__ import annotations

import copy
import time
from typing import Callable

import torch

from .validation import ConfigError


def _sdpa_forward_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)  # the shapes: FlopCounterMode passes shapes to a formula


def _sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return 2 * _sdpa_forward_flops(query, key, value)


def flop_counter():
    """torch's FlopCounterMode, told what attention costs on a CPU.

    On a CPU, F.scaled_dot_product_attention runs a kernel (_scaled_dot_product_flash_attention_for_cpu) that
    torch's counter has no formula for, so it counted the products q k^T and (softmax) v as 0 FLOPs: a
    transformer's FLOPs came out about a quarter short (the SD3 MMDiT's 1.18 GFLOP per training image as 0.91).
    This counter gives that kernel torch's own formula for attention (2 products, 2 FLOPs per multiply-add) and its
    backward twice that, as for any matrix product: model FLOPs, the work the maths needs, as the scaling-law
    papers count it (Kaplan et al. 2020, Sec. 2.1), not the kernel's recomputation of the scores."""
    from torch.utils.flop_counter import FlopCounterMode  # measuring only: not on the training loop's start-up

    aten = torch.ops.aten
    return FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_forward_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flops})


def training_flops(model, x: torch.Tensor, t: torch.Tensor, y) -> int:
    """FLOPs of one training step's forward and backward through `model` (multiply-add = 2 FLOPs), the batch as
    given, attention included (flop_counter)."""
    with flop_counter() as counter:
        model(x, t, y).float().pow(2).mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


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
