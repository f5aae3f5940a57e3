"""MNIST (and Fashion-MNIST) on disk: where the file is, checking it, and loading it as tensors.

One file per dataset, `<data dir>/<dataset>.npz`, holds four uint8 arrays:
`x_train` (60000, 28, 28), `y_train` (60000,), `x_test` (10000, 28, 28), `y_test` (10000,).

The data folder is found the same way everywhere (`resolve_data_dir`):
an explicit argument, else `$DIFFLAB_DATA`, else `./data` in the current directory.

Both datasets' arrays are compared with known SHA-256 digests. Getting the file onto disk
in the first place is `difflab.commands.download`'s job (run by `python setup_mnist.py`).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Union

import numpy as np

from .infra.outputs import sha256_file  # noqa: F401  (re-exported: data.sha256_file)
from .infra.untrusted import shown

if TYPE_CHECKING:  # torch is imported inside the functions that use it: importing it
    import torch  # takes seconds, and `python setup_mnist.py` never needs it

PathLike = Union[str, os.PathLike]

DATASETS = ("mnist", "fashion_mnist")
KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SIZE = 28
NUM_CLASSES = 10
SPLIT_SIZES = {"train": 60000, "test": 10000}
ENV_VAR = "DIFFLAB_DATA"

# SHA-256 of np.ascontiguousarray(a).tobytes() for each MNIST array (labels as uint8).
MNIST_SHA256 = {
    "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}
# The same for Fashion-MNIST (Xiao, Rasul & Vollgraf 2017), computed from the IDX files of Debian's
# dataset-fashion-mnist 0.0~git20200523.55506a9-1 (the authors' repository at that commit): 6000 images
# of each class in train, 1000 in test, mean pixel 72.94 (0.286 of 255) as the authors report. Its
# authors publish MD5s of their .gz files only, which depend on the compression (Debian's differ).
FASHION_MNIST_SHA256 = {
    "x_train": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
    "y_train": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
    "x_test": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
    "y_test": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
}
EXPECTED_SHA256: dict[str, Optional[Mapping[str, str]]] = {
    "mnist": MNIST_SHA256,
    "fashion_mnist": FASHION_MNIST_SHA256,
}

Arrays = dict[str, np.ndarray]


class DataError(RuntimeError):
    """A data problem the user can fix; the message says what went wrong and what to do."""


# --------------------------------------------------------------------------- paths


def resolve_data_dir(data_dir: Optional[PathLike] = None) -> Path:
    """Return the data folder: `data_dir` if given, else $DIFFLAB_DATA, else ./data."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    from_env = os.environ.get(ENV_VAR, "")
    if from_env:  # an empty variable counts as unset
        return Path(from_env).expanduser()
    return Path.cwd() / "data"


def dataset_path(dataset: str = "mnist", data_dir: Optional[PathLike] = None) -> Path:
    """Return `<data dir>/<dataset>.npz`."""
    _check_dataset_name(dataset)
    return resolve_data_dir(data_dir) / f"{dataset}.npz"


def _check_dataset_name(dataset: str) -> None:
    """Refuse dataset names we know nothing about."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")


def _setup_hint(dataset: str, data_dir: Optional[PathLike]) -> str:
    """The command that (re)creates this dataset's file, to quote in error messages."""
    command = "python setup_mnist.py"
    if dataset != "mnist":
        command += f" --dataset {dataset}"
    if data_dir is not None and str(data_dir) != "":
        command += f" --data-dir {data_dir}"
    return f"`{command}`"


# --------------------------------------------------------------------------- checks


def array_sha256(a: np.ndarray) -> str:
    """SHA-256 hex digest of an array's bytes in C order (the digests above use this)."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def check_sha256(arrays: Mapping[str, np.ndarray], expected: Mapping[str, str]) -> None:
    """Raise DataError naming the first array whose digest is not the expected one."""
    for key, digest in expected.items():
        if key not in arrays:
            raise DataError(f"array {key} is missing")
        if array_sha256(arrays[key]) != digest:
            raise DataError(f"array {key} fails its SHA-256 check (corrupt or not the expected data)")


def expected_shape(key: str) -> tuple[int, ...]:
    """The shape of one of the four arrays: x_* (N, 28, 28) images, y_* (N,) labels."""
    n = SPLIT_SIZES[key.split("_")[1]]
    return (n, IMAGE_SIZE, IMAGE_SIZE) if key[0] == "x" else (n,)


def check_layout(arrays: Mapping[str, np.ndarray]) -> None:
    """Raise DataError unless the four arrays have the dtype, shape and label range we expect."""
    for key in KEYS:
        if key not in arrays:
            raise DataError(f"array {key} is missing")
        a = arrays[key]
        shape = expected_shape(key)
        if a.dtype != np.uint8 or a.shape != shape:
            raise DataError(f"array {key} is {a.dtype} {shown(a.shape, 60)}, expected uint8 {shape}")
        if key[0] == "y" and a.size and int(a.max()) >= NUM_CLASSES:
            raise DataError(f"array {key} holds label {int(a.max())}, expected 0..{NUM_CLASSES - 1}")


def verify_arrays(arrays: Mapping[str, np.ndarray], dataset: str) -> None:
    """Run every check that applies to `dataset` (layout first: its messages are clearer)."""
    check_layout(arrays)
    expected = EXPECTED_SHA256[dataset]
    if expected is not None:
        check_sha256(arrays, expected)


# --------------------------------------------------------------------------- loading


# What reading a damaged or foreign .npz can raise: zlib.error from a damaged compressed member,
# NotImplementedError for a compression method zipfile lacks, RuntimeError for an encrypted member.
NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError)


def _read_npz(path: Path) -> Arrays:
    """Read every known array of an .npz file into memory (no pickles allowed), each only after its
    header showed the dtype and shape it should have."""
    if not zipfile.is_zipfile(path):  # else np.load guesses "pickle" and says so, confusingly
        raise DataError("not an .npz file (empty, truncated or overwritten)")
    arrays = {}
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            for key in KEYS:
                member = f"{key}.npy" if f"{key}.npy" in names else key
                if member in names:
                    arrays[key] = _read_member(zf, member, key)
    except DataError:  # ours, already one line (and a RuntimeError: keep it from the clause below)
        raise
    except NPZ_ERRORS as e:  # e.g. a truncated download or a full disk at write time
        raise DataError(f"cannot read the file ({type(e).__name__}: {str(e)[:120]})") from None
    return arrays


def npy_header(zf: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) an .npz member claims, read from its header alone (a few hundred bytes).

    Check them before reading the array: numpy allocates what the header claims before it reads
    the data, so a 200-byte file claiming 10^12 elements ends in a MemoryError, or a swapping
    machine, before any check after the read could run.
    """
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):  # 3.0 exists only for structured dtypes with unicode names
            raise DataError(f"{member} is an .npy of version {version}, expected 1.0 or 2.0")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
    return tuple(shape), dtype


def _read_member(zf: zipfile.ZipFile, member: str, key: str) -> np.ndarray:
    """One of the four arrays, read only once its header shows the expected dtype and shape."""
    shape, dtype = npy_header(zf, member)
    expected = expected_shape(key)
    if dtype != np.uint8 or shape != expected:
        raise DataError(f"array {key} is {shown(dtype, 30)} {shown(shape, 60)}, expected uint8 {expected}")
    with zf.open(member) as f:  # bounded now: at most the 47 MB of the training images
        return np.lib.format.read_array(f, allow_pickle=False)  # fewer bytes than claimed: ValueError


def load_checked(path: Path, dataset: str, verify: bool = True) -> Arrays:
    """Read an .npz file and check it: layout always (cheap), digests too when `verify`."""
    arrays = _read_npz(path)
    if verify:
        verify_arrays(arrays, dataset)
    else:
        check_layout(arrays)  # wrong shapes would only break something much later
    return arrays


def load_arrays(
    dataset: str = "mnist", data_dir: Optional[PathLike] = None, verify: bool = True
) -> Arrays:
    """Load the four uint8 arrays of `dataset`, checked against their digests when `verify`."""
    path = dataset_path(dataset, data_dir)
    hint = _setup_hint(dataset, data_dir)
    if not path.is_file():
        raise DataError(f"{path} not found; run {hint} to download it")
    try:
        return load_checked(path, dataset, verify)
    except DataError as e:
        raise DataError(f"{path}: {e}; re-run {hint}") from None


def images_to_tensor(x: np.ndarray, device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """uint8 images (N, 28, 28) -> float32 (N, 1, 28, 28) in [-1, 1] on `device`."""
    import torch

    # Move the uint8 array first: it is 4x smaller than its float32 version.
    t = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    return (t.float() / 127.5 - 1.0).unsqueeze(1)


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """Inverse of images_to_tensor: [-1, 1] (N, 1, H, W) -> uint8 (N, H, W), clamped and rounded."""
    import torch

    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected one channel, got shape {tuple(x.shape)}")
        x = x[:, 0]
    # Samples can overshoot [-1, 1]; clamp before the cast so they do not wrap around.
    pixels = ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255)
    return pixels.to(torch.uint8).cpu().numpy()


def load_split(
    split: str = "train",
    dataset: str = "mnist",
    data_dir: Optional[PathLike] = None,
    device: Union[str, torch.device] = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) float in [-1, 1] and labels int64 (N,) of one split, on `device`."""
    import torch

    if split not in SPLIT_SIZES:
        raise ValueError(f"split must be one of {', '.join(SPLIT_SIZES)}, got {split!r}")
    arrays = load_arrays(dataset, data_dir)
    images = images_to_tensor(arrays[f"x_{split}"], device)
    labels = torch.from_numpy(arrays[f"y_{split}"].astype(np.int64)).to(device)
    return images, labels
