"""Broken checkpoints are refused with one clear line: truncated, corrupted, foreign, the wrong
architecture, or carrying code (weights only: the code never runs). In process and through sample.py."""

import os
import random
import subprocess
import sys

import pytest
import torch

from difflab.infra.checkpoint import CheckpointError, contents_sha256, load_checkpoint, save_checkpoint
from difflab.config import ConfigError
from difflab.pipeline import Pipeline

from ._support import ROOT, entry_main, env, quick_trainer, record


class _RunsCode:
    """Unpickling this would call os.mkdir(marker): what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """{kind: [paths]}: every kind of broken checkpoint, several of each where bytes are involved."""
    tmp = tmp_path_factory.mktemp("bad_checkpoints")
    trainer = quick_trainer(tmp)
    trainer.fit(stop_after=1)
    good = trainer.out_dir / "checkpoints" / "last.pt"
    raw = good.read_bytes()
    rng = random.Random(10)
    files = {"truncated": [], "corrupted": [], "foreign": [], "wrong architecture": [], "carrying code": []}
    for i, cut in enumerate([0, 1, 100, len(raw) // 3, len(raw) // 2, len(raw) - 100, len(raw) - 1]):
        files["truncated"].append(tmp / f"truncated_{i}.pt")
        files["truncated"][-1].write_bytes(raw[:cut])
    for i in range(20):  # 1 to 8 random bytes changed in the middle half of the file
        data = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(raw) // 4, 3 * len(raw) // 4)] ^= rng.randrange(1, 256)
        files["corrupted"].append(tmp / f"corrupted_{i}.pt")
        files["corrupted"][-1].write_bytes(bytes(data))
    torch.save(trainer.model.state_dict(), tmp / "state_dict.pt")  # a plain PyTorch state dict
    (tmp / "notes.pt").write_text("these are not weights\n")
    torch.save({"format": "difflab-checkpoint-v0", "weights": torch.zeros(3)}, tmp / "other_format.pt")
    files["foreign"] += [tmp / "state_dict.pt", tmp / "notes.pt", tmp / "other_format.pt"]
    for key, value in [("channels", 16), ("channel_mult", [1, 2, 2])]:  # weights for another U-Net
        state = load_checkpoint(good)
        state["config"]["model"][key] = value
        files["wrong architecture"].append(save_checkpoint(state, tmp / f"wrong_{key}.pt"))
    state = load_checkpoint(good)
    state["extra"] = _RunsCode(tmp / "code_ran")
    torch.save(state, tmp / "code.pt")
    files["carrying code"].append(tmp / "code.pt")
    return files, trainer, tmp


def _refused(path, trainer) -> bool:
    """Loading for sampling and loading to resume both refuse `path` with a one-line error."""
    for load in (lambda: Pipeline.from_checkpoint(path, "cpu"), lambda: trainer.load_state(path)):
        try:
            load()
        except (CheckpointError, ConfigError) as e:  # ConfigError: resuming with another model section
            if "\n" in str(e) or str(path) not in str(e):
                return False
        else:
            return False
    return True


@pytest.mark.parametrize("kind", ["truncated", "foreign", "wrong architecture", "carrying code"])
def test_broken_checkpoints_are_refused_in_one_line(bad_files, kind):
    files, trainer, tmp = bad_files
    refused = sum(_refused(path, trainer) for path in files[kind])
    assert not (tmp / "code_ran").exists(), "unpickling ran code"
    record(f"checkpoint {kind}: loaded to sample and to resume", len(files[kind]), refused,
           "refused with one line, nothing run" if kind == "carrying code" else "refused with one line")
    assert refused == len(files[kind])


def test_corrupted_checkpoints_are_refused_unless_the_bytes_hit_only_padding(bad_files):
    """A changed byte in the zip's alignment padding or an unchecked header field changes nothing that is
    loaded: such a file must load exactly what was saved. Every other change must be refused."""
    files, trainer, _ = bad_files
    original = contents_sha256(load_checkpoint(trainer.out_dir / "checkpoints" / "last.pt"))
    refused = harmless = 0
    for path in files["corrupted"]:
        try:  # (Pipeline.from_checkpoint and Trainer.load_state both begin with load_checkpoint)
            same = contents_sha256(load_checkpoint(path)) == original
        except CheckpointError as e:
            refused += "\n" not in str(e) and str(path) in str(e)
        else:
            harmless += same
    record("checkpoint corrupted (1-8 random bytes changed mid-file)", len(files["corrupted"]), refused + harmless,
           f"{refused} refused with one line; {harmless} changed only padding and loaded the exact saved contents")
    assert refused + harmless == len(files["corrupted"])


def test_sample_py_refuses_each_kind_with_exit_code_1_and_one_line(bad_files, tmp_path, capsys):
    files, _, tmp = bad_files
    chosen = {kind: paths[len(paths) // 2] for kind, paths in files.items()}
    results = {}
    for kind, path in chosen.items():  # every kind through sample.py's main() and run_main, in this process
        code = entry_main("sample.py", ["--checkpoint", path, "--device", "cpu", "--out", tmp_path / f"{kind}.png"])
        results[kind] = (code, capsys.readouterr().err)
    procs = {kind: subprocess.Popen([sys.executable, str(ROOT / "sample.py"), "--checkpoint", str(chosen[kind]),
                                     "--device", "cpu", "--out", str(tmp_path / "child.png")],
                                    cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for kind in ("corrupted", "carrying code")}  # and two as real child processes, in parallel
    for kind, proc in procs.items():
        results[f"{kind} (child process)"] = (proc.wait(timeout=120), proc.communicate()[1])
    clean = {kind: code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
             for kind, (code, err) in results.items()}
    record("`sample.py` given each kind of broken checkpoint", len(clean), sum(clean.values()),
           "exit code 1, one line on stderr, no traceback (5 kinds in process, 2 as child processes)")
    assert all(clean.values()), results
    assert not (tmp / "code_ran").exists() and not list(tmp_path.glob("*.png"))
