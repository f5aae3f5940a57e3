"""Checkpoints: written atomically, loaded as weights only, refused with one clear line;
and which one `--resume` continues from.

A checkpoint is a dict of tensors and plain Python values (no pickled classes),
so `torch.load(..., weights_only=True)` reads it and no code can run from it.
It carries the resolved config, so nothing else is needed to rebuild the model
(the nanoGPT habit), and a SHA-256 of its contents: `torch.load` does not check the
zip's CRCs, so without it a flipped bit in the weights would load silently.
"""

from __future__ import annotations

import hashlib
import json
import io
import pickle
import re
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .outputs import write_bytes_atomic
from .untrusted import StructureError, check_structure, shown

FORMAT = "difflab-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message is one line that says why."""


def contents_sha256(state: dict) -> str:
    """SHA-256 of a checkpoint's contents: every key and value in order, tensors as dtype, shape and bytes."""
    h = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(value, dict):
            h.update(b"{")
            for k, v in value.items():
                feed(k)
                feed(v)
            h.update(b"}")
        elif isinstance(value, (list, tuple)):  # pickling may turn one into the other: hash them alike
            h.update(b"[")
            for v in value:
                feed(v)
            h.update(b"]")
        else:
            h.update(repr(value).encode() + b";")

    feed(state)
    return h.hexdigest()


def save_checkpoint(state: dict, path: Union[str, Path]) -> Path:
    """Write to a temporary file beside `path`, flush to disk, then rename over it.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, **state}
    payload["sha256"] = contents_sha256(payload)
    # Serialise in memory first: torch.save reports a full disk as a RuntimeError from its zip
    # writer ("unexpected pos ..."), while a plain file write raises the honest OSError(ENOSPC).
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes_atomic(path, buffer.getbuffer(), fsync=True)
    return path


def load_checkpoint(path: Union[str, Path], map_location: Any = "cpu") -> dict:
    """Load a difflab checkpoint (.pt, or a .safetensors export) or raise CheckpointError with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":  # weights for sharing (weights.py): no optimiser, so no resume
        return load_safetensors(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e).lower():
            raise CheckpointError(f"{path}: refused, the file holds Python objects beyond weights "
                                  "(code could run)") from None
        raise CheckpointError(f"{path}: corrupted or not a PyTorch checkpoint") from None
    except Exception as e:  # damaged bytes fail in many ways: RuntimeError, EOFError, BadZipFile, KeyError, TypeError
        first = str(e).splitlines()[0].split(". ")[0] if str(e) else ""  # PyTorch's first sentence says it
        reason = first if isinstance(e, (RuntimeError, OSError)) and first else f"{type(e).__name__}: {first}"
        raise CheckpointError(f"{path}: truncated or corrupted checkpoint ({reason[:120]})") from None
    # Bounded before anything walks it: a pickle can point many branches at one shared list, so a
    # 9 KB file may stand for 2^40 nodes, and the digest below (or a repr) would run for hours.
    bounded(state, path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a difflab checkpoint (no '{FORMAT}' marker)")
    digest = state.pop("sha256", None)  # None: written before checkpoints carried one
    if digest is not None and digest != contents_sha256(state):
        raise CheckpointError(f"{path}: corrupted checkpoint (its contents do not match their SHA-256)")
    for key in ("config", "model"):
        if key not in state:
            raise CheckpointError(f"{path}: incomplete difflab checkpoint (missing '{key}')")
    check_contents(state, path)
    return state


def bounded(value: Any, path: Union[str, Path]) -> None:
    """Refuse, in one line, nested data too large or too deep to walk (difflab.infra.untrusted)."""
    try:
        check_structure(value)
    except StructureError as e:
        raise CheckpointError(f"{path}: refused, its contents are {e}") from None


def check_contents(state: dict, path: Union[str, Path]) -> None:
    """The types everything after loading relies on: a config dict, named tensors for 'model', and for
    'ema' named tensors or nothing. A list or a string there would otherwise be a traceback later."""
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{path}: 'config' holds {kind_of(state['config'])}, expected a mapping of sections")
    for key in ("model", "ema"):
        value = state.get(key)
        if value is None and key == "ema":
            continue
        if not isinstance(value, dict):
            raise CheckpointError(f"{path}: '{key}' holds {kind_of(value)}, expected named tensors (a state dict)")
        for name, tensor in value.items():
            if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
                raise CheckpointError(f"{path}: '{key}' holds {shown(name, 40)}: {kind_of(tensor)}, "
                                      f"expected named tensors (a state dict)")


def kind_of(value: Any) -> str:
    """A value's type and a short look at it, for a message: "list [1, 2, 3]"."""
    return f"{type(value).__name__} {shown(value, 40)}"


# .safetensors exports (weights.py writes them): the weights that sample, the config in the metadata.
EXPORT_FORMAT = "difflab-safetensors-v1"
# What a .pt checkpoint says about its run that is worth keeping beside the weights.
EXPORT_KEPT = ("step", "epoch", "images_seen", "params", "train_images_per_s", "device", "torch", "vae_scale_factor")


def tensors_sha256(weights: dict) -> str:
    """SHA-256 of named tensors in name order (a safetensors file lists them sorted, a state dict does not)."""
    return contents_sha256({k: weights[k] for k in sorted(weights)})


def load_safetensors(path: Path) -> dict:
    """A .safetensors export read back as a checkpoint dict ({"config", "model", ...}) or CheckpointError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta: Optional[dict] = f.metadata()
            weights = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None
    try:
        info = json.loads((meta or {})["difflab"])
    except (KeyError, ValueError, RecursionError):  # RecursionError: JSON nested thousands of levels deep
        raise CheckpointError(f"{path}: a safetensors file without difflab's metadata (its config); "
                              f"export checkpoints with `difflab export`") from None
    if not isinstance(info, dict):  # valid JSON, but a list or a number where the metadata belongs
        raise CheckpointError(f"{path}: its difflab metadata holds {kind_of(info)}, expected a JSON object")
    bounded(info, path)
    if info.get("format") != EXPORT_FORMAT or not isinstance(info.get("config"), dict):
        raise CheckpointError(f"{path}: not a difflab export (no '{EXPORT_FORMAT}' marker)")
    if info.get("sha256") != tensors_sha256(weights):
        raise CheckpointError(f"{path}: corrupted export (its tensors do not match their SHA-256)")
    exported = info.get("weights") if info.get("weights") in ("ema", "model") else None
    return {"config": info["config"], "model": weights, "ema": None, "exported": exported,
            **{k: info.get(k) for k in EXPORT_KEPT}}


# The dtypes a model's floating-point weights may be stored in: each converts to the model's own
# float32 without losing meaning. An int8 or bool tensor would be cast to numbers that mean nothing
# (int8 weights load and sample noise at exit code 0), and float64 is not what any difflab run saves.
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def weights_problem(module: torch.nn.Module, weights: Any) -> Optional[str]:
    """Why `weights` cannot be loaded into `module` as they are, or None: not named tensors, or a
    tensor of a dtype load_state_dict would silently cast (a floating weight stored as int8, bool or
    float64; an integer buffer such as BatchNorm's step count stored as anything but its own dtype)."""
    if not isinstance(weights, dict):
        return f"the weights are {kind_of(weights)}, not named tensors"
    own = module.state_dict()
    for name, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor):
            return f"{shown(name, 60)} is {kind_of(tensor)}, not a tensor"
        expected = own.get(name)
        if expected is None:
            continue  # an unexpected name: load_state_dict names it
        allowed = WEIGHT_DTYPES if expected.is_floating_point() else (expected.dtype,)
        if tensor.dtype not in allowed:
            wanted = "/".join(str(d).removeprefix("torch.") for d in allowed)
            return f"tensor {shown(name, 60)} is {str(tensor.dtype).removeprefix('torch.')}, expected {wanted}"
    return None


def load_weights(module: torch.nn.Module, weights: dict, path: Union[str, Path], what: str = "model") -> None:
    """load_state_dict, turning a mismatch (names, shapes or dtypes) into one line that names the problem."""
    problem = weights_problem(module, weights)
    if problem is not None:
        raise CheckpointError(f"{path}: the {what} weights cannot be used: {problem}")
    try:
        module.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            f"{path}: the {what} weights do not match the architecture in its config ({first[:160]})"
        ) from None


def epoch_of(path: Path) -> int:
    """N of a `model_epoch_<N>.pt` file; -1 for any other name."""
    match = re.fullmatch(r"model_epoch_(\d+)\.pt", Path(path).name)
    return int(match.group(1)) if match else -1


def epoch_checkpoints(folder: Union[str, Path]) -> list:
    """The `model_epoch_<N>.pt` files in a checkpoints folder, by N: the newest epoch last."""
    return sorted((p for p in Path(folder).glob("model_epoch_*.pt") if epoch_of(p) >= 0), key=epoch_of)


def resume_path(trainer) -> Path:
    """What `--resume` continues from: last.pt, or model_epoch_<N>.pt when a kill between the two
    writes at the end of epoch N left last.pt one epoch behind it (any trainer: pixels or VAE)."""
    folder = trainer.out_dir / "checkpoints"
    last = folder / "last.pt"
    epochs = epoch_checkpoints(folder)
    if not epochs or (last.is_file() and last.stat().st_mtime_ns >= epochs[-1].stat().st_mtime_ns):
        return last  # the usual case: last.pt was written after every other checkpoint
    if not last.is_file():
        return epochs[-1]
    newest_step = min(epoch_of(epochs[-1]) * trainer.steps_per_epoch, trainer.total_steps)
    step = load_checkpoint(last).get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        raise CheckpointError(f"{last}: cannot resume: 'step' holds {kind_of(step)}, expected a step count ({WAY_OUT})")
    return epochs[-1] if newest_step > step else last


# What --resume needs beyond what sampling needs, and of which type (bool is not a step count).
RESUME_FIELDS = {"model": dict, "optimizer": dict, "step": int, "noise_rng": torch.Tensor}
WAY_OUT = "sample from it with sample.py, or start afresh with --overwrite"


def check_resume_fields(state: dict, path: Union[str, Path], fields: dict) -> None:
    """Refuse, in one line naming the key, a checkpoint that lacks what resuming needs or holds the wrong type."""
    for key, kind in fields.items():
        value = state.get(key)
        if key not in state:
            raise CheckpointError(f"{path}: cannot resume: the checkpoint has no '{key}' ({WAY_OUT})")
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise CheckpointError(f"{path}: cannot resume: '{key}' holds {kind_of(value)}, "
                                  f"expected {'a step count' if kind is int else kind.__name__} ({WAY_OUT})")


def set_rng_state(generator: torch.Generator, state: torch.Tensor, path: Union[str, Path]) -> None:
    """Restore a generator's saved state; a state of the wrong size or kind is one line, not a traceback."""
    try:
        generator.set_state(state.cpu())
    except (RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: cannot resume: 'noise_rng' is not a random-number state "
                              f"({str(e).splitlines()[0][:80]}; {WAY_OUT})") from None


def intact_alternative(folder: Path, bad: Path) -> Optional[Path]:
    """The newest model_epoch_<N>.pt in `folder`, other than `bad`, that loads; None if there is none."""
    for candidate in reversed(epoch_checkpoints(folder)):
        if candidate.resolve() != Path(bad).resolve():
            try:
                load_checkpoint(candidate)
                return candidate
            except CheckpointError:
                continue
    return None


def resume(trainer, which: str) -> Path:
    """Load `--resume [PATH]` into `trainer` ('last': resume_path's pick) and return the file it came from.

    A damaged file stops with one line; when it was the run's own checkpoint, the line names
    the newest epoch file that still loads, and the command that continues from it.
    """
    path = Path(which) if which != "last" else None
    try:
        path = path or resume_path(trainer)
        if not path.is_file():
            raise CheckpointError(f"--resume: no checkpoint at {path} (train first, or name one with --resume PATH)")
        trainer.load_state(path)
    except CheckpointError as e:
        folder = trainer.out_dir / "checkpoints"
        bad = path or folder / "last.pt"
        other = intact_alternative(folder, bad) if which == "last" and bad.is_file() else None
        if other is None:
            raise
        raise CheckpointError(f"{e}; {other.name} in the same folder loads: continue from it with "
                              f"--resume {other}") from None
    return path
