"""Checkpoints: written atomically, loaded as weights only, refused with one clear line.

A checkpoint is a dict of tensors and plain Python values (no pickled classes),
so `torch.load(..., weights_only=True)` reads it and no code can run from it.
It carries the resolved config, so nothing else is needed to rebuild the model
(the nanoGPT habit).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Union

import torch

FORMAT = "difflab-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message is one line that says why."""


def save_checkpoint(state: dict, path: Union[str, Path]) -> Path:
    """Write to a temporary file beside `path`, flush to disk, then rename over it.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: Union[str, Path], map_location: Any = "cpu") -> dict:
    """Load a difflab checkpoint or raise CheckpointError with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e).lower():
            raise CheckpointError(f"{path}: refused, the file holds Python objects beyond weights (code could run)") from None
        raise CheckpointError(f"{path}: corrupted or not a PyTorch checkpoint") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: truncated or corrupted checkpoint ({reason[:120]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a difflab checkpoint (no '{FORMAT}' marker)")
    for key in ("config", "model"):
        if key not in state:
            raise CheckpointError(f"{path}: incomplete difflab checkpoint (missing '{key}')")
    return state


def load_weights(module: torch.nn.Module, weights: dict, path: Union[str, Path], what: str = "model") -> None:
    """load_state_dict, turning a mismatch into one line that names the problem."""
    try:
        module.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            f"{path}: the {what} weights do not match the architecture in its config ({first[:160]})"
        ) from None
