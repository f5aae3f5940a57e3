"""Weights for sharing: a checkpoint's EMA weights as .safetensors, the config in its metadata.

A `.pt` checkpoint holds everything to resume training (optimiser, RNG, both weight sets). What
people share is smaller and safer to open: the weights that sample (the EMA), as a safetensors file
(a JSON header and raw tensors; opening it runs no code), with the resolved config and a SHA-256 of
the tensors in the header's metadata, so the file alone rebuilds and checks the model:

    difflab export --checkpoint experiments/unified_sd1_unet_eps/checkpoints/model_epoch_1.pt

`checkpoint.load_checkpoint` reads either format, so sample.py, evaluate.py and the demo take both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch

FORMAT = "difflab-safetensors-v1"
# What a .pt checkpoint says about its run that is worth keeping beside the weights.
KEPT = ("step", "epoch", "images_seen", "params", "train_images_per_s", "device", "torch", "vae_scale_factor")


def tensors_sha256(weights: dict) -> str:
    """SHA-256 of named tensors in name order (a safetensors file lists them sorted, a state dict does not)."""
    from .checkpoint import contents_sha256

    return contents_sha256({k: weights[k] for k in sorted(weights)})


def export_safetensors(state: dict, out: Union[str, Path], source: str = "") -> Path:
    """Write a loaded checkpoint's EMA weights (else its raw weights) and config to `out`."""
    from safetensors.torch import save

    from .outputs import write_bytes_atomic

    use_ema = state.get("ema") is not None
    weights = {k: v.detach().cpu().contiguous() for k, v in (state["ema"] if use_ema else state["model"]).items()}
    meta = {"format": FORMAT, "config": state["config"], "weights": "ema" if use_ema else "model",
            "source": source, "sha256": tensors_sha256(weights), **{k: state.get(k) for k in KEPT}}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    # whole or not at all, like the checkpoints: serialised in memory, then written and renamed
    return write_bytes_atomic(out, save(weights, metadata={"difflab": json.dumps(meta)}), fsync=True)


def load_safetensors(path: Path) -> dict:
    """A .safetensors export read back as a checkpoint dict ({"config", "model", ...}) or CheckpointError."""
    from safetensors import SafetensorError, safe_open

    from .checkpoint import CheckpointError

    try:
        with safe_open(str(path), framework="pt") as f:
            meta: Optional[dict] = f.metadata()
            weights = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None
    try:
        info = json.loads((meta or {})["difflab"])
    except (KeyError, ValueError):
        raise CheckpointError(f"{path}: a safetensors file without difflab's metadata (its config); "
                              f"export checkpoints with `difflab export`") from None
    if info.get("format") != FORMAT or not isinstance(info.get("config"), dict):
        raise CheckpointError(f"{path}: not a difflab export (no '{FORMAT}' marker)")
    if info.get("sha256") != tensors_sha256(weights):
        raise CheckpointError(f"{path}: corrupted export (its tensors do not match their SHA-256)")
    return {"config": info["config"], "model": weights, "ema": None, "exported": info["weights"],
            **{k: info.get(k) for k in KEPT}}
