"""Weights for sharing: a checkpoint's EMA weights as .safetensors, the config in its metadata.

A `.pt` checkpoint holds everything to resume training (optimiser, RNG, both weight sets). What
people share is smaller and safer to open: the weights that sample (the EMA), as a safetensors file
(a JSON header and raw tensors; opening it runs no code), with the resolved config and a SHA-256 of
the tensors in the header's metadata, so the file alone rebuilds and checks the model:

    difflab export --checkpoint experiments/unified_sd1_unet_eps/checkpoints/model_epoch_1.pt

`checkpoint.load_checkpoint` reads either format (checkpoint.load_safetensors), so sample.py, evaluate.py and the
demo take both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from .checkpoint import EXPORT_FORMAT, EXPORT_KEPT, CheckpointError, tensors_sha256

# The weights shipped in the repository, to sample and play with before training anything: a name -> its file in
# weights/ (weights/README.md: what trained each, its SHA-256, and the command that makes it again).
SHIPPED = {
    "sd1": "sd1_unet_eps.safetensors",
    "sd2": "sd2_unet_v.safetensors",
    "sd3": "sd3_mmdit_flow.safetensors",
    # the best few-step student of each path (docs/fewstep.md): progressive distillation of the shipped teacher
    "sd3_distilled": "sd3_distilled.safetensors",
    "sd2_distilled": "sd2_distilled.safetensors",
}
WEIGHTS_DIR = Path(__file__).resolve().parents[3] / "weights"  # src/difflab/infra/weights.py -> the checkout


def shipped(name: str) -> Path:
    """The file of a shipped model, by name (sd1, sd2, sd3, ...: SHIPPED).

    CheckpointError if this copy of difflab lacks it."""
    path = WEIGHTS_DIR / SHIPPED[name]
    if not path.is_file():
        raise CheckpointError(f"{path}: the shipped {name} weights are not here (a git checkout of difflab has them; "
                              "an installed package does not): train a model, or clone the repository")
    return path


def checkpoint_path(value: str) -> Path:
    """What a command's --checkpoint names: a shipped model's name (SHIPPED: sd1, sd2, sd3, ...), or a file."""
    return shipped(value) if value in SHIPPED else Path(value)


def export_safetensors(state: dict, out: Union[str, Path], source: str = "", half: bool = False) -> Path:
    """Write a loaded checkpoint's EMA weights (else its raw weights) and config to `out`; `half`: as float16, half
    the size (the models load them into float32: what rounding to 11 significant bits changes is measured in
    weights/README.md)."""
    import torch
    from safetensors.torch import save

    from .outputs import write_bytes_atomic

    use_ema = state.get("ema") is not None
    weights = {k: v.detach().cpu().contiguous() for k, v in (state["ema"] if use_ema else state["model"]).items()}
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
        for k, v in weights.items():
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise CheckpointError(f"{k}: values beyond float16's range (65,504); export without --fp16")
    meta = {"format": EXPORT_FORMAT, "config": state["config"], "weights": "ema" if use_ema else "model",
            "source": source, "sha256": tensors_sha256(weights), **{k: state.get(k) for k in EXPORT_KEPT}}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    # whole or not at all, like the checkpoints: serialised in memory, then written and renamed
    return write_bytes_atomic(out, save(weights, metadata={"difflab": json.dumps(meta)}), fsync=True)
