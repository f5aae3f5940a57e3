"""`--dry-run`: build the model a config describes and say what it is, without data or training; and the
memory its training needs, estimated before any of it is allocated (train.py checks it before the data).

The network is built on PyTorch's "meta" device: every tensor has a shape and a dtype but no memory, so
counting a 400M-parameter model, or running it forward on a batch of 60,000, costs nothing. Without the
estimate such a run builds, loads the data, and dies at its first step with an allocator traceback.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch

from ..config import ConfigError
from ..settings import Config
from ..trainers import trainer_name
from ..models import build_model, count_parameters
from ..models.vae import VAE
from ..infra.validation import TRAIN_IMAGES

# Per parameter, in fp32: the weights, their gradients, AdamW's two moments and the EMA copy.
BYTES_PER_PARAMETER = 4 * 5
# training.batch_size: auto times batches from 32 up (speed.choose_batch_size); 32 must fit.
AUTO_FIRST_BATCH = 32


def _on_meta(build):
    """`build()` with every tensor on the meta device: shapes without memory. Sizes no tensor can have
    (a width of 2^80, or storage past 2^63 bytes) are a ConfigError, as in build_model."""
    try:
        with torch.device("meta"):
            return build()
    except ConfigError:
        raise
    except (TypeError, RuntimeError, OverflowError) as e:
        raise ConfigError(f"model: too large to build ({str(e).splitlines()[0][:120]})") from None


def _network(cfg: Config) -> tuple[torch.nn.Module, tuple[int, ...], dict]:
    """(the network on the meta device, the (C, H, W) or (C, F, H, W) it trains on, what describe() adds about a
    VAE)."""
    if trainer_name(cfg) == "vae":  # latent diffusion's first stage: it trains on the pixels
        from ..models.vae import build_vae

        return _on_meta(lambda: build_vae(cfg.model)), (1, 28, 28), {}
    from ..pipeline import sample_shape

    shape, extra = sample_shape(cfg), {}  # pixels at data.resolution, DALL-E 2's prior's (E, 1, 1), or clips
    c, size = shape[0], shape[-1]
    if cfg.data.vae_checkpoint:
        from ..latent import describe_vae

        extra = describe_vae(cfg)  # vae_params: reported apart from the diffusion model's
        c, size, _ = extra["latent_shape"]
    shape = (c, size, size) if len(shape) == 3 else shape
    return _on_meta(lambda: build_model(cfg.model, in_channels=c, image_size=size)), shape, extra


def describe(cfg: Config) -> dict:
    """What --dry-run prints: the network's size, and the memory its training needs against what is there
    (refused as train.py would refuse it, when it does not fit)."""
    network = _network(cfg)
    model, _, extra = network
    memory = check_memory(cfg, network=network)
    if getattr(model, "text", None) is not None:  # a model of prompts: its text encoder is counted in params
        extra["text_encoder_params"] = count_parameters(model.text)
        # a frozen, pretrained encoder (difflab.encoders) is counted apart, as SD1's CLIP and Imagen's T5 are
        extra["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "config": cfg.name,
        "architecture": cfg.model.architecture,
        "target": "reconstruction" if isinstance(model, VAE) else cfg.diffusion.target,  # what it learns to output
        "params": count_parameters(model),
        **extra,
        **memory,
    }


# ---------------------------------------------------------------------- the memory estimate


def training_batch(cfg: Config) -> int:
    """The batch the estimate is for: the config's, or the first one `auto` tries."""
    b = cfg.training.batch_size
    if isinstance(b, int):
        return b
    return cfg.training.max_batch_size if trainer_name(cfg) == "vae" else AUTO_FIRST_BATCH  # as VAETrainer does


def activation_bytes(model: torch.nn.Module, cfg: Config, shape: tuple, batch: int) -> Optional[int]:
    """Bytes of what one forward pass keeps for the backward pass, measured on the meta device:
    the tensors autograd saves (a few are saved twice, so this errs a little high for those, and
    misses the short-lived temporaries, a little low). None if the network cannot run on meta tensors.

    Measured against a real step on a CPU (configs/unified_sd1_unet_eps.yaml): 167 MiB here for a batch
    of 32 where the process grew by 208 MiB, 1.3 GiB for a batch of 256 where it grew by 1.4 GiB."""
    from ..models.text import IMAGE_EMBED_DIM
    from ..prompts import MAX_TOKENS

    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    try:
        with torch.device("meta"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            x = torch.empty(batch, *shape)
            if isinstance(model, VAE):  # an autoencoder reads the image alone
                model(x)
            else:
                prompt = cfg.model.conditioning == "prompt"
                y = torch.zeros((batch, MAX_TOKENS) if prompt else (batch,), dtype=torch.long)
                if cfg.model.conditioning == "clip_image":  # DALL-E 2's decoder reads a CLIP image embedding
                    y = torch.zeros((batch, IMAGE_EMBED_DIM))
                if getattr(cfg.model.net, "micro_conditioning", False):  # (label, size, top, left): SDXL's
                    y = torch.zeros((batch, 4), dtype=torch.long)
                if cfg.model.architecture == "video_dit":  # a clip's (digit, direction, speed)
                    y = torch.zeros((batch, 3), dtype=torch.long)
                low = getattr(cfg.model.net, "low_resolution", 0)  # a cascade's super-resolution stage
                extra = {"low": torch.empty(batch, 1, low, low), "aug": torch.empty(batch)} if low else {}
                model(x, torch.empty(batch), y, **extra)
    except Exception:  # noqa: BLE001 -- an op meta tensors lack: the estimate is a help, never why a run fails
        return None
    return sum(saved)


def estimate_training_memory(cfg: Config, network: Optional[tuple] = None) -> dict:
    """The memory a training run needs at least, in bytes, from the config alone (nothing allocated);
    `network`: _network(cfg), when it is already built."""
    model, shape, _ = network or _network(cfg)
    batch, params = training_batch(cfg), count_parameters(model)
    dataset = TRAIN_IMAGES.get(cfg.data.dataset, 60_000)
    images = min(cfg.data.limit or dataset, dataset)
    pixels = math.prod(shape)
    activations = activation_bytes(model, cfg, shape, batch)
    parts = {
        "states": params * BYTES_PER_PARAMETER,
        "activations": activations or 0,
        # the whole training set lives on the device (loop.TrainingLoop.batch): floats, or clips as bytes
        "data": images * pixels * (1 if cfg.data.dataset == "moving_mnist" else 4),
    }
    return {"params": params, "batch": batch, "activations_known": activations is not None, **parts,
            "total": sum(parts.values())}


def _meminfo_available() -> Optional[int]:
    """Linux's MemAvailable (free memory plus caches it can drop); else free pages by os.sysconf."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_left() -> Optional[int]:
    """What a container's memory limit (cgroup v2) leaves: the machine's RAM may be far more."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def _address_space_left() -> Optional[int]:
    """What `ulimit -v` (RLIMIT_AS) leaves this process: allocations past it fail whatever the RAM."""
    try:
        import resource  # POSIX only: on Windows there is no such limit to read
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as f:
            size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, ValueError, StopIteration):
        return None
    return max(soft - size, 0)


def available_memory(device: torch.device) -> Optional[tuple[int, str]]:
    """(bytes, what they are) that a run on `device` can still allocate; None where it is not known."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free on {device}"
    if device.type != "cpu":  # MPS shares the RAM but reports no limit of its own
        return None
    known = [(n, what) for n, what in ((_meminfo_available(), "of RAM available"),
                                       (_cgroup_left(), "left under this container's memory limit"),
                                       (_address_space_left(), "left under the address-space limit (ulimit -v)"))
             if n is not None]
    return min(known) if known else None


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_memory(cfg: Config, device: Optional[torch.device] = None, network: Optional[tuple] = None) -> dict:
    """Refuse (ConfigError) a training run whose estimate exceeds the memory available, in one line that
    names both and the settings to lower; else the estimate, for --dry-run's line."""
    from ..infra.distributed import select_device

    device = device or select_device(cfg.training.device)
    need = estimate_training_memory(cfg, network)
    have = available_memory(device)
    if have is not None and need["total"] > have[0]:
        activations = (f"activations of a batch of {need['batch']:,} {_size(need['activations'])}"
                       if need["activations_known"] else "activations not estimated")
        raise ConfigError(
            f"{cfg.name}: training needs at least {_size(need['total'])} ({need['params']:,} parameters "
            f"x {BYTES_PER_PARAMETER} bytes for weights, gradients, AdamW's moments and the EMA "
            f"{_size(need['states'])}; {activations}; "
            f"data {_size(need['data'])}), more than the {_size(have[0])} {have[1]} on {device.type}: "
            f"lower training.batch_size, or the model's size (model.channels, hidden_size, depth)")
    # Not what is available: that changes from one moment to the next, and --dry-run's line is read by scripts.
    return {"memory_estimate": need["total"], "device": str(device)}
