"""Where the training data comes from: MNIST pixels, or a VAE's latents (latent diffusion).

Latent diffusion (Rombach et al. 2022) runs in two stages:

1. a VAE is trained on pixels (`configs/reference/vae_mnist.yaml`, `vae_training.py`);
2. a diffusion model is trained on its scaled latents z = scale * E(x)
   (`configs/reference/ldm_latent.yaml`, the ordinary `training.py`), and samples
   are decoded by x = D(z / scale).

The encoder is frozen in stage 2, so the training set is encoded once and cached
(in memory, and in a file beside the VAE checkpoint named by the checkpoint's hash);
each training step then costs only the small diffusion model.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Union

import torch

from .infra.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from .config import ConfigError, config_from_dict
from .settings import Config
from .data import load_split, resolve_data_dir
from .models import count_parameters
from .models.vae import VAE, build_vae
from .infra.untrusted import shown

DEFAULT_VAE_CONFIG = "configs/reference/vae_mnist.yaml"


def load_training_data(cfg: Config, device: torch.device):
    """((x, y), vae): pixels and None, or the scaled latents of every training image and the VAE."""
    if cfg.data.dataset == "moving_mnist":  # clips (N, 1, F, H, W) as bytes, and each one's (digit, direction, speed)
        from .moving_mnist import training_clips

        x, y = training_clips(cfg.data.data_dir, cfg.data.limit)
        return (x.to(device), y.to(device)), None
    if not cfg.data.vae_checkpoint:
        x, y = load_split("train", dataset=cfg.data.dataset, data_dir=cfg.data.data_dir, device=device)
        x, y = x[: cfg.data.limit], y[: cfg.data.limit]  # data.limit: the first N images only
        if cfg.data.resolution != x.shape[-1]:  # a cascade's base: the digits shrunk (difflab.cascade)
            from .cascade import downsample

            x = downsample(x, cfg.data.resolution)
        if cfg.data.reframe:  # SDXL's problem: every digit at a random size and crop (difflab.microcond)
            from .microcond import framed_training_set

            x, framings = framed_training_set(x.cpu())
            x = x.to(device)
            if cfg.model.net.micro_conditioning:  # and the model is told them: (label, size, top, left)
                y = torch.cat([y[:, None], framings.to(y.device)], dim=1)
        if cfg.model.conditioning == "prompt":  # a prompt per image instead of its label (difflab.prompts)
            from .prompts import training_prompts

            y = training_prompts(x, y, cfg.data).to(device)
        elif cfg.model.conditioning == "clip_image":  # DALL-E 2's decoder: each image's CLIP embedding (unclip.py)
            from .unclip import image_embeddings_of

            y = image_embeddings_of(x, cfg.data.data_dir, device)
        if cfg.model.architecture == "prior":  # DALL-E 2's prior: the data are the images' CLIP embeddings
            from .unclip import prior_data

            x = prior_data(x, cfg.data.data_dir, device)
        return (x, y), None
    vae = load_vae(cfg.data.vae_checkpoint, device)  # first: a missing VAE fails before any data work
    x, y = load_split("train", dataset=cfg.data.dataset, data_dir=cfg.data.data_dir, device="cpu")
    x, y = x[: cfg.data.limit], y[: cfg.data.limit]
    z = cached_latents(vae, Path(cfg.data.vae_checkpoint), x, cfg.data.dataset)  # (N, C, H / f, W / f)
    print(f"latents {tuple(z.shape)}: std {z.std().item():.3f} after scaling by {vae.scale_factor:.5f}")
    return (z.to(device), y.to(device)), vae


def load_vae(path: Union[str, Path], device: Union[str, torch.device]) -> VAE:
    """Rebuild a trained VAE from its checkpoint alone: config, weights, scale factor."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no VAE checkpoint there; train the VAE first: {train_command(path)}")
    state = load_checkpoint(path)
    try:
        cfg = config_from_dict(state["config"], source=f"{path} (stored config)", stored=True)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    if cfg.model.architecture != "vae" or "scale_factor" not in state:
        raise CheckpointError(
            f"{path}: not a VAE checkpoint (its model.architecture is {shown(cfg.model.architecture, 40)}); "
            f"data.vae_checkpoint must name one written by {train_command(path)}"
        )
    scale, step = state["scale_factor"], state.get("step", 0)
    if not _positive_number(scale):  # it divides every latent before decoding
        raise CheckpointError(f"{path}: 'scale_factor' holds {shown(scale, 40)}, expected a positive number")
    vae = build_vae(cfg.model)
    load_weights(vae, state["model"], path, what="VAE")
    vae.scale_factor = float(scale)
    # what the compare table shows beside the latent model's own training images
    seen = state.get("images_seen")
    vae.images_seen = (seen if _positive_number(seen)
                       else (step * cfg.training.batch_size if _positive_number(step) else 0))
    return vae.to(device).eval().requires_grad_(False)


def _positive_number(value) -> bool:
    """An int or a float above 0 (not a bool, not NaN or inf): what a scale factor or a count must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")


# A shared checkpoint's config names its VAE by a path on the machine that trained it. Followed as
# written, that path would let whoever wrote the file make this reader open any file (and say in its
# error what kind of file it is). So the VAE is looked for only in the reader's own folders, and
# only under a checkpoint's name.
VAE_SUFFIXES = (".pt", ".safetensors")


def vae_folders(checkpoint: Union[str, Path]) -> list[Path]:
    """Where a checkpoint's VAE may be: the folder holding its run (<output_dir> of
    <output_dir>/<name>/checkpoints/<file>; else the checkpoint's own folder), the folder the command
    runs in (a config's relative vae_checkpoint, such as experiments/vae_mnist/..., is read from there
    while `make compare-all` trains the latent model in experiments/compare/), and the data folder."""
    folder = Path(checkpoint).resolve().parent
    run_root = folder.parent.parent if folder.name == "checkpoints" else folder
    return list(dict.fromkeys([run_root, Path.cwd().resolve(), resolve_data_dir().resolve()]))


def checkpoint_vae(stored: str, checkpoint: Union[str, Path], what: str = "VAE") -> Path:
    """The VAE file a latent model's stored data.vae_checkpoint means here, inside vae_folders only (and, `what`
    named otherwise, any file a stored config names beside it: a cascade's base stage, difflab.cascade).

    Tried in turn: the path as written (the usual case: the run tree where it was trained), then
    relative to each folder, then its last three parts (<vae run>/checkpoints/<file>) in each, for
    a run tree copied elsewhere. A file outside the folders is never opened, and the message is the
    same whether or not one exists there.
    """
    name = Path(stored)
    if name.suffix not in VAE_SUFFIXES:
        raise CheckpointError(f"{checkpoint}: its config names the {what} {shown(stored, 60)}, not a .pt or "
                              f".safetensors file; refused")
    folders = vae_folders(checkpoint)
    tail = Path(*[p for p in name.parts if p not in (name.anchor, "..", ".")][-3:])
    candidates = ([name] + [root / name for root in folders if not name.is_absolute()]
                  + [root / tail for root in folders])
    for candidate in candidates:
        try:
            found = candidate.resolve()  # '..' and symbolic links resolved before the check below
        except (OSError, ValueError, RuntimeError):  # a null byte, a symlink loop
            continue
        if any(found.is_relative_to(root) for root in folders) and found.is_file():
            return found
    raise CheckpointError(f"{checkpoint}: its config names the {what} {shown(stored, 60)}, not found in "
                          f"{', '.join(map(str, folders))} (where a checkpoint's {what} is looked for); "
                          f"put it there as <{what.split()[0].lower()} run>/checkpoints/{shown(tail.name, 40)}")


def describe_vae(cfg: Config) -> dict:
    """For --dry-run (no data needed): the latent shape (C, H, W), the VAE's size, and whether it is trained yet.

    A VAE not trained yet is built untrained from data.vae_config: its shapes are those of the trained one.
    """
    path = Path(cfg.data.vae_checkpoint)
    if path.is_file() or not cfg.data.vae_config:
        vae, trained = load_vae(path, "cpu"), True
    else:
        vae, trained = build_vae(vae_training_config(cfg).model), False
    return {"latent_shape": tuple(vae.latent_shape), "vae_params": count_parameters(vae), "vae_trained": trained}


def vae_training_config(cfg: Config) -> Config:
    """data.vae_config, set to write exactly data.vae_checkpoint (<output_dir>/<name>/checkpoints/last.pt)."""
    from .config import load_config

    path = Path(cfg.data.vae_checkpoint)
    if path.name != "last.pt" or path.parent.name != "checkpoints":
        raise ConfigError(f"data.vae_checkpoint: to train the VAE first it must end in <name>/checkpoints/last.pt "
                          f"(where train.py writes it), got {path}")
    overrides = [f"training.output_dir={path.parents[2]}"]
    if cfg.data.data_dir:
        overrides.append(f"data.data_dir={cfg.data.data_dir}")
    vae_cfg = dataclasses.replace(load_config(cfg.data.vae_config, overrides), name=path.parents[1].name)
    if vae_cfg.model.architecture != "vae":
        raise ConfigError(f"data.vae_config: {cfg.data.vae_config} trains a {vae_cfg.model.architecture}, not a VAE")
    return vae_cfg


def train_command(path: Path) -> str:
    """The command that writes `path`, which train.py names <output_dir>/<config name>/checkpoints/<file>.pt."""
    name, output_dir = path.parent.parent.name, path.parent.parent.parent
    configs = [Path("configs/reference") / f"{name}.yaml", Path("configs") / f"{name}.yaml"]
    config = next((c for c in configs if c.is_file()), None)
    if path.parent.name != "checkpoints" or config is None:
        return f"`python train.py --config {DEFAULT_VAE_CONFIG}`, then point data.vae_checkpoint at its checkpoint"
    extra = "" if output_dir == Path("experiments") else f" training.output_dir={output_dir}"
    return f"`python train.py --config {config}{extra}`"


# --------------------------------------------------------------------------- the latent cache


@torch.no_grad()
def encode_dataset(vae: VAE, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Images (N, 1, 28, 28) -> scaled latents (N, C, H / f, W / f) on the CPU."""
    dev = next(vae.parameters()).device
    return torch.cat([vae.encode_latents(x[i : i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cached_latents(vae: VAE, vae_path: Path, x: torch.Tensor, dataset: str) -> torch.Tensor:
    """encode_dataset(vae, x), read from `latents_<dataset>_<VAE hash>.pt` beside the VAE when it is there.

    The file name carries the VAE checkpoint's hash and the file the images' hash, so a
    retrained VAE or other data is never served stale latents.
    """
    vae_hash = _sha256(vae_path.read_bytes())[:16]
    data_hash = _sha256(x.contiguous().numpy().tobytes())
    cache = vae_path.parent / f"latents_{dataset}_{vae_hash}.pt"
    if cache.is_file():
        try:
            saved = torch.load(cache, map_location="cpu", weights_only=True)
            if isinstance(saved, dict) and saved.get("data_sha256") == data_hash:
                latents = saved.get("latents")
                expected = (len(x), *vae.latent_shape)  # one latent per image: anything else is not ours
                if isinstance(latents, torch.Tensor) and latents.dtype == torch.float32 and latents.shape == expected:
                    return latents
        except Exception:  # a corrupt or foreign file: encode again and overwrite it
            pass
    print(f"encoding {len(x)} images with the VAE (once; cached in {cache})")
    z = encode_dataset(vae, x)
    try:
        for old in vae_path.parent.glob(f"latents_{dataset}_*.pt"):  # caches of earlier VAEs
            old.unlink()
        save_checkpoint({"latents": z, "data_sha256": data_hash, "vae_sha256": vae_hash}, cache)
    except OSError:
        pass  # a read-only folder: the latents stay in memory for this run
    return z
