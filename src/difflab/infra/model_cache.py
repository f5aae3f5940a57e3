"""Small networks trained once on demand and kept beside the data: the judge, the tiny CLIP, the text encoders.

Each lives as two files in the data folder: the weights (a state dict) and a JSON record holding their
SHA-256, the cache format and the settings they were trained with. A cache is used only if all three
match; anything else (a missing file, other settings, bytes changed since) is a reason, printed, to train
again. Writes go through a temporary file and a rename, the weights before the record that vouches for them,
so a reader never trusts half a file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .checkpoint import CheckpointError, load_weights
from .outputs import sha256_file, write_bytes_atomic, write_error
from .untrusted import shown


def cache_problem(weights: Path, meta_path: Path, cache_format: int, settings: dict, what: str) -> Optional[str]:
    """Why the cached network cannot be used, or None if it can."""
    if not weights.exists() or not meta_path.exists():
        return f"no cached {what} in {weights.parent}"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON or bad UTF-8
        return f"unreadable {meta_path.name} ({type(err).__name__}: {str(err)[:80]})"
    if not isinstance(meta, dict):
        return f"{meta_path.name} holds {type(meta).__name__} {shown(meta, 40)}, not a JSON object"
    if meta.get("format") != cache_format:
        return f"cache format {shown(meta.get('format'), 40)} != {cache_format}"
    if meta.get("settings") != settings:
        return f"cached {what} was trained with other settings"
    if meta.get("sha256") != sha256_file(weights):
        return f"SHA-256 of {weights.name} does not match {meta_path.name} (file changed or corrupt)"
    return None


def load_cached(model: nn.Module, weights: Path, what: str) -> Optional[str]:
    """Load the cached weights into `model`; why they cannot be, or None. Their hash matched the JSON,
    but whoever wrote one could write both: a list, an int8 tensor or other shapes are not the network."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # damaged or foreign bytes fail in many ways (as in checkpoint.load_checkpoint)
        return f"unreadable {weights.name} ({type(err).__name__})"
    try:
        load_weights(model, state, weights.name, what=what)  # names, shapes and dtypes checked
    except CheckpointError as err:
        return str(err)
    return None


def save_cached(model: nn.Module, weights: Path, meta_path: Path, cache_format: int, meta: dict) -> None:
    """Save the state dict, then the JSON holding its hash; each through a temporary file and a rename.
    A full disk raises OSError naming the file."""
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)  # into memory: on a full disk torch.save fails with no errno, a plain write with ENOSPC
    write_bytes_atomic(weights, buffer.getvalue())
    meta = {"format": cache_format, "weights": weights.name, "sha256": sha256_file(weights), **meta}
    write_bytes_atomic(meta_path, (json.dumps(meta, indent=2) + "\n").encode())


def load_or_train(paths: tuple[Path, Path], cache_format: int, settings: dict, what: str, build, train,
                  train_if_missing: bool = True) -> nn.Module:
    """The cached network (eval mode, on the CPU), or a new one from train() if the cache cannot be used.

    build() makes an untrained network for the cached weights; train() returns (network, meta), meta being what
    the JSON records beside the settings (its accuracy, its training time). train_if_missing=False raises
    FileNotFoundError instead of training. A cache that cannot be written (a full disk) costs one printed line.
    """
    weights, meta_path = paths
    problem = cache_problem(weights, meta_path, cache_format, settings, what)
    if problem is None:
        model = build()
        problem = load_cached(model, weights, what)
        if problem is None:
            return model.eval()
    if not train_if_missing:
        raise FileNotFoundError(f"{problem}; load it with train_if_missing=True to train it")
    print(f"difflab: {problem}; training the {what} ({settings})")
    model, meta = train()
    try:
        save_cached(model, weights, meta_path, cache_format, {**meta, "settings": settings,
                                                              "torch_version": torch.__version__})
    except OSError as e:  # a cache is worth a warning, not the run: it goes on with the network in memory
        print(f"difflab: {write_error(e.filename or weights, e, f'the {what} is used but not cached')}")
    return model.eval()
