"""Tests of difflab.data: checks, paths and tensor conversion (the sources: test_download.py).

All are offline and fast; the ones that need the real MNIST file skip without it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from difflab import data  # noqa: E402
from difflab.data import DataError  # noqa: E402


def _real_mnist_file() -> Path | None:
    """The downloaded MNIST file, wherever the project would look for it, if any."""
    for path in (data.dataset_path("mnist"), REPO / "data" / "mnist.npz"):
        if path.is_file():
            return path
    return None


# --------------------------------------------------------------------------- checksums


def test_check_sha256_accepts_matching_and_names_a_tampered_array() -> None:
    """The digest check passes on the right bytes and names the array with one flipped pixel."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
              "y_train": rng.integers(0, 10, 4, dtype=np.uint8)}
    expected = {key: data.array_sha256(a) for key, a in arrays.items()}
    data.check_sha256(arrays, expected)  # must not raise

    arrays["x_train"][2, 13, 13] ^= 1
    with pytest.raises(DataError, match="x_train"):
        data.check_sha256(arrays, expected)


def test_sha256_depends_on_label_dtype() -> None:
    """Labels are hashed as uint8: the same values as int64 give another digest."""
    y = np.arange(10)
    assert data.array_sha256(y.astype(np.uint8)) != data.array_sha256(y.astype(np.int64))


def test_load_arrays_refuses_tampered_copy_of_real_file(tmp_path: Path) -> None:
    """The real file verifies; a copy with one pixel changed is refused, naming the array."""
    real = _real_mnist_file()
    if real is None:
        pytest.skip("no data/mnist.npz here; run `python setup_mnist.py` first")
    arrays = data.load_arrays(data_dir=real.parent)  # the genuine file passes
    arrays["x_test"][0, 14, 14] ^= 0x80
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(DataError, match=r"x_test.*setup_mnist\.py"):
        data.load_arrays(data_dir=tmp_path)
    # verify=False skips the digests (not the layout), so the same copy loads.
    unchecked = data.load_arrays(data_dir=tmp_path, verify=False)
    assert unchecked["x_test"][0, 14, 14] == arrays["x_test"][0, 14, 14]


def test_load_arrays_refuses_unreadable_file(tmp_path: Path) -> None:
    """A file that is not an .npz gives a DataError, not a zipfile traceback."""
    (tmp_path / "mnist.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"not an \.npz file.*setup_mnist\.py"):
        data.load_arrays(data_dir=tmp_path)


def test_missing_file_says_to_run_setup(tmp_path: Path) -> None:
    """A missing file points at setup_mnist.py, with --dataset when it is not MNIST."""
    with pytest.raises(DataError, match=r"setup_mnist\.py"):
        data.load_arrays(data_dir=tmp_path)
    with pytest.raises(DataError, match="--dataset fashion_mnist"):
        data.load_split("train", dataset="fashion_mnist", data_dir=tmp_path)


# --------------------------------------------------------------------------- paths


def test_resolve_data_dir_precedence(tmp_path: Path, monkeypatch) -> None:
    """Explicit argument beats $DIFFLAB_DATA, which beats ./data in the current directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIFFLAB_DATA", raising=False)
    assert data.resolve_data_dir() == tmp_path / "data"
    monkeypatch.setenv("DIFFLAB_DATA", str(tmp_path / "env"))
    assert data.resolve_data_dir() == tmp_path / "env"
    assert data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.dataset_path("fashion_mnist") == tmp_path / "env" / "fashion_mnist.npz"


def test_unknown_dataset_is_refused() -> None:
    """A typo in the dataset name is a DataError listing the known ones."""
    with pytest.raises(DataError, match="fashion_mnist"):
        data.dataset_path("mnsit")


# --------------------------------------------------------------------------- tensors


def test_images_round_trip_exactly() -> None:
    """Every byte value survives uint8 -> [-1, 1] float -> uint8."""
    x = (np.arange(4 * 28 * 28) % 256).astype(np.uint8).reshape(4, 28, 28)
    t = data.images_to_tensor(x)
    assert t.shape == (4, 1, 28, 28) and t.dtype == torch.float32
    assert t.min().item() == -1.0 and t.max().item() == 1.0
    back = data.tensor_to_uint8(t)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, x)


def test_tensor_to_uint8_clamps() -> None:
    """Values outside [-1, 1] clamp to 0 and 255 instead of wrapping around."""
    t = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.5]).reshape(1, 1, 1, 5)
    np.testing.assert_array_equal(data.tensor_to_uint8(t), [[[0, 0, 128, 255, 255]]])


def test_load_split_on_real_file() -> None:
    """load_split gives float images in [-1, 1] and int64 labels 0..9 of the right length."""
    real = _real_mnist_file()
    if real is None:
        pytest.skip("no data/mnist.npz here; run `python setup_mnist.py` first")
    images, labels = data.load_split("test", data_dir=real.parent)
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (10000,) and labels.dtype == torch.int64
    assert -1.0 <= images.min().item() < images.max().item() <= 1.0
    assert set(labels.unique().tolist()) == set(range(10))
