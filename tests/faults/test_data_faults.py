"""Data problems stop the run with one line saying what to do: a missing file names `setup_mnist.py`,
a file that fails its checksum (or is truncated, or not an .npz at all) is refused."""

import subprocess
import sys

import numpy as np
import pytest

from difflab.data import DataError, KEYS, load_arrays

from ._support import MNIST, ROOT, env, needs_mnist, record, tiny_yaml


@pytest.fixture(scope="module")
def broken_data_dirs(tmp_path_factory):
    """{problem: data folder}: an empty one, and folders whose mnist.npz is broken in one way each."""
    root = tmp_path_factory.mktemp("data")
    dirs = {"missing": root / "missing"}
    dirs["missing"].mkdir()
    arrays = dict(np.load(MNIST))
    flipped = {**arrays, "x_train": arrays["x_train"].copy()}
    flipped["x_train"][12345, 14, 14] ^= 1  # one pixel of one image: only the checksum can tell
    relabelled = {**arrays, "y_train": arrays["y_train"].copy()}
    relabelled["y_train"][:10] = (relabelled["y_train"][:10] + 1) % 10
    for name, content in [("checksum-pixel-changed", flipped), ("checksum-labels-changed", relabelled)]:
        (root / name).mkdir()
        np.savez(root / name / "mnist.npz", **content)
    raw = MNIST.read_bytes()
    for name, data in [("truncated", raw[: len(raw) // 2]), ("empty", b""), ("not-an-npz", b"<html>404</html>")]:
        (root / name).mkdir()
        (root / name / "mnist.npz").write_bytes(data)
    (root / "wrong-shape").mkdir()
    np.savez(root / "wrong-shape" / "mnist.npz", **{k: arrays[k][:100] for k in KEYS})
    return dirs | {p.name: p for p in root.iterdir() if p.name != "missing"}


@needs_mnist
def test_every_broken_data_file_is_refused_in_one_line(broken_data_dirs):
    refused = 0
    for name, folder in broken_data_dirs.items():
        with pytest.raises(DataError) as e:
            load_arrays("mnist", folder)
        message = str(e.value)
        hint = "setup_mnist.py" in message and ("not found" in message if name == "missing" else True)
        checksum = "SHA-256" in message if name.startswith("checksum") else True
        refused += "\n" not in message and hint and checksum
    record("MNIST file missing, truncated, empty, not an .npz, wrong shape, failing its SHA-256",
           len(broken_data_dirs), refused, "refused with one line that says to run setup_mnist.py")
    assert refused == len(broken_data_dirs)


@needs_mnist
def test_train_py_refuses_missing_and_corrupt_data_with_exit_code_1(broken_data_dirs, tmp_path):
    chosen = {name: broken_data_dirs[name] for name in ("missing", "checksum-pixel-changed")}
    config = tiny_yaml(tmp_path)
    procs = {name: subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--config", str(config),
                                     f"data.data_dir={folder}"], cwd=tmp_path, env=env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, folder in chosen.items()}  # in parallel: each spends seconds importing torch
    results = {name: (proc.wait(timeout=120), proc.communicate()[1]) for name, proc in procs.items()}
    ok = {name: code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
          and "setup_mnist.py" in err for name, (code, err) in results.items()}
    ok["missing"] = ok["missing"] and "not found" in results["missing"][1]
    ok["checksum-pixel-changed"] = ok["checksum-pixel-changed"] and "SHA-256" in results["checksum-pixel-changed"][1]
    record("`train.py` with the MNIST file missing / failing its checksum", len(ok), sum(ok.values()),
           "exit code 1, one line on stderr naming setup_mnist.py")
    assert all(ok.values()), results
    assert not (tmp_path / "experiments").exists()  # stopped before writing anything
