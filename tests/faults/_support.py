"""What the fault tests share: the root conftest's tiny config and data, subprocess runs, and a trial log.

Each test records how many trials it ran and how many came through with nothing lost;
`benchmarks/fault_report.py` runs this folder with $DIFFLAB_FAULT_LOG set and prints the table.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
MNIST = ROOT / "data" / "mnist.npz"
LOG_ENV = "DIFFLAB_FAULT_LOG"


def _root_conftest():
    """tests/conftest.py itself: inside this package `from conftest import ...` could find another file."""
    path = TESTS / "conftest.py"
    mod = sys.modules.get("conftest")
    if mod is not None and Path(getattr(mod, "__file__", "")).resolve() == path:
        return mod
    spec = importlib.util.spec_from_file_location("difflab_tests_conftest", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_conftest = _root_conftest()
tiny_config, tiny_data, synthetic_split = _conftest.tiny_config, _conftest.tiny_data, _conftest.synthetic_split
ARCHITECTURES, model_keys = _conftest.ARCHITECTURES, _conftest.model_keys

needs_mnist = pytest.mark.skipif(not MNIST.is_file(), reason=f"{MNIST} is missing; run `python setup_mnist.py`")


def record(fault: str, trials: int, survived: int, note: str = "") -> None:
    """Append one row of the reliability table to $DIFFLAB_FAULT_LOG (when set)."""
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"fault": fault, "trials": trials, "survived": survived, "note": note}) + "\n")


def tiny_yaml(tmp_path: Path, name: str = "tiny", **sections) -> Path:
    """A YAML config for train.py: the tiny U-Net on the first images of the real MNIST file."""
    raw = {
        "name": name,
        "data": {"data_dir": str(MNIST.parent), "limit": 8},
        "model": {"architecture": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                  "attention_levels": [], "num_heads": 2},
        "diffusion": {"target": "eps", "schedule": "linear"},
        "training": {"epochs": 2, "batch_size": 4, "lr": 2e-3, "warmup_steps": 2, "log_every": 2,
                     "output_dir": str(tmp_path / "experiments"), "seed": 0, "device": "cpu", "threads": 1,
                     "checkpoint_every": 1},
        "sampling": {"sampler": "ddim", "steps": 2, "cfg_scale": 2.0, "n_per_class": 1},
    }
    architecture = sections.get("model", {}).get("architecture", "unet")
    if architecture in ARCHITECTURES:  # another network keeps those of the tiny U-Net's settings it has (num_heads)
        raw["model"] = {k: v for k, v in raw["model"].items() if k in model_keys(architecture)}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def env() -> dict:
    """The environment of a child process: one thread, unbuffered output, no stray data folder."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def script(name: str, *args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run one of the entry points (train.py, sample.py) to completion."""
    return subprocess.run([sys.executable, str(ROOT / name), *map(str, args)], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def start(name: str, *args, cwd: Path, out: Path, err: Path) -> subprocess.Popen:
    """Start an entry point with stdout and stderr in files (a full pipe would block the child)."""
    with open(out, "w") as stdout, open(err, "w") as stderr:  # the child keeps its own copies
        return subprocess.Popen([sys.executable, str(ROOT / name), *map(str, args)], cwd=cwd, env=env(),
                                stdout=stdout, stderr=stderr)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 60, what: str = "") -> None:
    """Poll until `predicate()` holds; fail if the child exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the child exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def one_clear_line(result: subprocess.CompletedProcess) -> str:
    """The failure was reported as exactly one line on stderr, with no traceback; return it."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


def quick_trainer(tmp_path: Path, data=None, **training):
    """An in-process Trainer on 16 synthetic images: batch 8 (2 steps an epoch), 3 epochs, no attention
    layers and 1-step sample grids, so that a whole run takes a second or two."""
    from difflab.training import Trainer

    cfg = tiny_config(tmp_path, model={"attention_levels": []}, sampling={"steps": 1},
                      training={"batch_size": 8, "epochs": 3, **training})
    return Trainer(cfg, data=tiny_data(16) if data is None else data, quiet=True)


def entry_main(name: str, argv: list) -> int:
    """`python NAME ARGV` (train.py, sample.py) run in this process, through the same run_main that maps
    errors to exit codes; a child process would first spend seconds importing torch."""
    from difflab.commands.common import run_main

    spec = importlib.util.spec_from_file_location(f"difflab_entry_{Path(name).stem}", ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return run_main(lambda: module.main([str(a) for a in argv]))


def train_main(argv: list) -> int:
    return entry_main("train.py", argv)


@contextmanager
def small_tmpfs(tmp_path: Path, size_kib: int):
    """A real, nearly full disk: a tmpfs of `size_kib` KiB mounted in `tmp_path / "disk"`.

    torch.save reports a full disk as a RuntimeError when it closes the file (not an OSError), and
    only a real file system shows that; faking ENOSPC in Python does not. Mounting needs root and a
    kernel that allows it (CI runs as root): elsewhere the test is skipped with the reason.
    """
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(mounted.stderr.strip() or 'mount failed')[:120]}); needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(folder: Path, leave_kib: int = 0) -> None:
    """Fill the file system under `folder` until about `leave_kib` KiB are free."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize - leave_kib * 1024
    if free > 0:
        with open(folder / ".filler", "ab") as f:  # append: a second call only takes more
            try:
                f.write(b"\0" * free)
            except OSError:
                pass
