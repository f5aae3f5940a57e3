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

from .checkpoint import EXPORT_FORMAT, EXPORT_KEPT, tensors_sha256


def export_safetensors(state: dict, out: Union[str, Path], source: str = "") -> Path:
    """Write a loaded checkpoint's EMA weights (else its raw weights) and config to `out`."""
    from safetensors.torch import save

    from .outputs import write_bytes_atomic

    use_ema = state.get("ema") is not None
    weights = {k: v.detach().cpu().contiguous() for k, v in (state["ema"] if use_ema else state["model"]).items()}
    meta = {"format": EXPORT_FORMAT, "config": state["config"], "weights": "ema" if use_ema else "model",
            "source": source, "sha256": tensors_sha256(weights), **{k: state.get(k) for k in EXPORT_KEPT}}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    # whole or not at all, like the checkpoints: serialised in memory, then written and renamed
    return write_bytes_atomic(out, save(weights, metadata={"difflab": json.dumps(meta)}), fsync=True)
