"""An output folder that cannot be written, or a disk that fills: one clear line, before or at the first
write that fails, and every checkpoint already on disk survives (no partial file under a final name)."""

import errno
import io
import os
from pathlib import Path

import pytest
import torch

import difflab.loop as loop
import difflab.training as training
from difflab.infra.checkpoint import load_checkpoint
from difflab.infra.outputs import OutputError

from ._support import needs_mnist, quick_trainer, record, tiny_yaml, train_main

def _full(path=None):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), None if path is None else str(path))


def test_output_folder_below_a_file_fails_before_the_first_step(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    trainer = quick_trainer(tmp_path, output_dir=str(tmp_path / "a_file" / "experiments"))
    with pytest.raises(OutputError) as e:
        trainer.fit()
    message = str(e.value)
    ok = trainer.step == 0 and "\n" not in message and "a_file" in message and "training.output_dir" in message
    record("output folder cannot be created (below a regular file)", 1, int(ok), "refused before the first step")
    assert ok, message


@needs_mnist
def test_train_py_with_an_unwritable_output_folder_says_so_in_one_line(tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    config = tiny_yaml(tmp_path)
    code = train_main(["--config", config, f"training.output_dir={tmp_path / 'a_file'}"])
    err = capsys.readouterr().err.strip().splitlines()
    ok = code == 1 and len(err) == 1 and err[0].startswith("error: cannot write to")
    record("`train.py` with an output folder it cannot create", 1, int(ok), "exit code 1, one line")
    assert ok, (code, err)


def _half_written_then_enospc(real_save, fail_on: int):
    """torch.save that writes only half of checkpoint number `fail_on` and then finds the disk full."""
    calls = []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) != fail_on:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        _full()

    return save


FULL_DISK = {  # where the disk fills, during epoch 2 of a run whose epoch 1 is safely on disk
    "writing model_epoch_2.pt": lambda mp, real: mp.setattr(torch, "save", _half_written_then_enospc(real, 1)),
    "writing last.pt": lambda mp, real: mp.setattr(torch, "save", _half_written_then_enospc(real, 2)),
    "flushing a checkpoint to disk (fsync)": lambda mp, real: mp.setattr(os, "fsync", lambda fd: _full()),
    "appending to metrics.jsonl": lambda mp, real: mp.setattr(loop, "open", lambda path, *a, **k: _full(path),
                                                              raising=False),
    "writing the sample grid": lambda mp, real: mp.setattr(training, "save_grid",
                                                           lambda images, path, **k: _full(path)),
}


@pytest.mark.parametrize("where", list(FULL_DISK))
def test_a_full_disk_mid_run_is_reported_and_earlier_checkpoints_survive(tmp_path, monkeypatch, where):
    trainer = quick_trainer(tmp_path)
    trainer.fit(stop_after=2)  # epoch 1: model_epoch_1.pt and last.pt at step 2
    folder = trainer.out_dir / "checkpoints"
    before = {p.name: p.read_bytes() for p in folder.glob("*.pt")}
    FULL_DISK[where](monkeypatch, torch.save)
    with pytest.raises(OutputError) as e:
        trainer.fit()
    monkeypatch.undo()
    message = str(e.value)
    after = {p.name: p.read_bytes() for p in folder.glob("*.pt")}
    new = {name: load_checkpoint(folder / name)["step"] for name in after if name not in before}
    # The grid is drawn after the epoch's weights are saved: that failure costs no checkpoint.
    epoch_saved = where in ("writing last.pt", "writing the sample grid")
    kept = {name: data for name, data in before.items()
            if not (name == "last.pt" and where == "writing the sample grid")}
    ok = ("No space left on device" in message and "\n" not in message
          and all(after[name] == data for name, data in kept.items())  # nothing else already there was touched
          and all(load_checkpoint(folder / name)["step"] == 2 for name in kept)
          and new == ({"model_epoch_2.pt": 4} if epoch_saved else {})  # complete, or absent
          and (where != "writing the sample grid" or load_checkpoint(folder / "last.pt")["step"] == 4)
          and not list(folder.glob(".*.tmp")))
    record(f"disk full while {where}", 1, int(ok), "one line naming the file; earlier checkpoints intact")
    assert ok, (message, sorted(after), new)


def test_a_disk_already_full_is_reported_before_the_first_step(tmp_path, monkeypatch):
    trainer = quick_trainer(tmp_path)
    real = Path.write_bytes
    monkeypatch.setattr(Path, "write_bytes",
                        lambda self, data: _full(self) if self.name.startswith(".write_test") else real(self, data))
    with pytest.raises(OutputError, match="No space left on device") as e:
        trainer.fit()
    ok = trainer.step == 0 and not list(trainer.out_dir.rglob("*.pt")) and "\n" not in str(e.value)
    record("disk already full when training starts", 1, int(ok), "refused by the write probe before step 1")
    assert ok
