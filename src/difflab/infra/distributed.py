"""Several processes, one training run: `torchrun --nproc_per_node=N train.py --config ...`.

torchrun starts N copies of train.py and sets RANK, LOCAL_RANK and WORLD_SIZE in each.
Every rank holds the whole model; DistributedDataParallel averages the gradients
after each backward pass (Li et al. 2020, "PyTorch Distributed"), so N ranks with
batch B take the same step as one process with batch N * B. Only rank 0 writes files.
Without torchrun, WORLD_SIZE is unset and everything below is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .validation import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed() -> DistInfo:
    """Join the process group torchrun describes (gloo on CPUs, NCCL on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend)
    return info


def mean_across_ranks(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The average of a tensor over all ranks (for logging the global loss)."""
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world
    return value


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """CUDA (this process's GPU under torchrun), then Apple's MPS, then the CPU; or exactly what `name` says."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:  # a typo such as "gpu" or "cuda0"
            raise ConfigError(f"training.device: expected auto, cpu, cuda, cuda:N or mps, got {name!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"training.device: {name!r} asked for, but CUDA is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
