"""A run's folder and the limits of a run: a new run never wipes a finished one, two live runs never share a
folder, a really full disk is one line, a run that skips or diverges stops, a checkpoint that cannot be
resumed says why and what to do, and an empty config trains nothing."""

import json
import math
import os
import re
import signal

import pytest
import torch

from difflab.infra.checkpoint import load_checkpoint, save_checkpoint
from difflab.loop import NonFiniteLoss

from ._support import fill, needs_mnist, quick_trainer, record, small_tmpfs, start, tiny_yaml, train_main, wait_for


def _one_line(capsys) -> list:
    """What the user reads on stderr once the progress bar's lines are left out (none, on a traceback)."""
    err = capsys.readouterr().err
    if "Traceback" in err:
        return [err]
    return [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not PROGRESS.search(line)]


def _files(out_dir) -> dict:
    """Every file of a run (checkpoints, samples, log) with its bytes."""
    return {str(p.relative_to(out_dir)): p.read_bytes() for p in sorted(out_dir.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


PROGRESS = re.compile(r"^\s*\d+%\|")  # a tqdm line: " 67%|######    | 4/6 [...]"


# ------------------------------------------------------------------ 1. a run's folder belongs to one run


@needs_mnist
def test_a_new_run_never_wipes_a_finished_one(tmp_path, capsys):
    config = tiny_yaml(tmp_path)
    assert train_main(["--config", config]) == 0
    out_dir = tmp_path / "experiments" / "tiny"
    before = _files(out_dir)
    capsys.readouterr()
    code = train_main(["--config", config])
    err = _one_line(capsys)
    kept = _files(out_dir) == before
    refused = code == 1 and len(err) == 1 and "--resume" in err[0] and "--overwrite" in err[0]
    # --overwrite is the way to start afresh: the old run's files go, none is left mixed with the new ones
    code_over = train_main(["--config", config, "training.epochs=1", "--overwrite"])
    names = {p.name for p in (out_dir / "checkpoints").glob("*.pt")}
    steps = [json.loads(line)["step"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    fresh = code_over == 0 and names == {"model_epoch_1.pt", "last.pt"} and steps == sorted(steps) and steps[-1] == 2
    ok = kept and refused and fresh
    record("a second run started in a finished run's folder, without --resume", 1, int(ok),
           "refused with one line naming --resume and --overwrite; every file of the old run unchanged")
    assert ok, (code, err, kept, code_over, names, steps)


@needs_mnist
def test_a_second_live_run_in_the_same_folder_is_refused_and_a_killed_one_leaves_no_stuck_lock(tmp_path, capsys):
    config = tiny_yaml(tmp_path, training={"epochs": 2000})  # runs until it is killed
    out_dir = tmp_path / "experiments" / "tiny"
    child = start("train.py", "--config", config, cwd=tmp_path, out=tmp_path / "out", err=tmp_path / "err")
    try:
        lock = out_dir / ".lock"
        wait_for(lambda: lock.is_file() and lock.read_text().strip() == str(child.pid), child, what="the lock")
        code = train_main(["--config", config, "--overwrite"])  # even --overwrite must not touch a live run
        err = _one_line(capsys)
        refused = code == 1 and len(err) == 1 and f"pid {child.pid}" in err[0]
        alive = child.poll() is None
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    code_after = train_main(["--config", config, "training.epochs=1", "--overwrite"])  # the lock died with it
    ok = refused and alive and code_after == 0
    record("a second live run in the same folder; then the first is killed with SIGKILL", 1, int(ok),
           "refused with one line naming the live run's pid; after the kill the folder is free (no stuck lock)")
    assert ok, (code, err, alive, code_after)


# ------------------------------------------------------------------ 2. a real full disk (tmpfs)


@needs_mnist
def test_a_really_full_disk_stops_training_and_resume_with_one_line(tmp_path, capsys):
    with small_tmpfs(tmp_path, 4096) as disk:
        config = tiny_yaml(tmp_path, training={"epochs": 1, "output_dir": str(disk)})
        assert train_main(["--config", config]) == 0
        folder = disk / "tiny" / "checkpoints"
        good = load_checkpoint(folder / "last.pt")["step"]
        fill(disk, leave_kib=64)  # room for the 4 KiB probe and the log, not for a checkpoint
        capsys.readouterr()
        code = train_main(["--config", config, "training.epochs=3", "--resume"])
        err = _one_line(capsys)
        intact = load_checkpoint(folder / "last.pt")["step"] == good and not list(folder.glob(".*.tmp"))
        mid_run = (code == 1 and len(err) == 1 and "No space left on device" in err[0] and "free" in err[0]
                   and str(folder) in err[0] and intact)
        fill(disk, leave_kib=0)
        (disk / "tiny" / ".lock").unlink(missing_ok=True)
        capsys.readouterr()
        code_full = train_main(["--config", config, "training.output_dir=" + str(disk / "new")])
        err_full = _one_line(capsys)
        at_start = code_full == 1 and len(err_full) == 1 and "No space left on device" in err_full[0]
    ok = mid_run and at_start
    record("a real full disk (tmpfs): mid-run under --resume, and before a fresh run", 2, int(mid_run) + int(at_start),
           "one line with the file, 'No space left on device' and the space left; the last good checkpoint loads")
    assert ok, (code, err, intact, code_full, err_full)


# ------------------------------------------------------------------ 4. skipping and diverging have limits


class _Poison:
    """Wraps the training model: at chosen steps its output becomes NaN."""

    def __init__(self, trainer, steps):
        self.trainer, self.model, self.steps = trainer, trainer.train_model, set(steps)

    def __call__(self, *args):
        out = self.model(*args)
        return out + math.nan if self.trainer.step in self.steps else out


def test_skipping_more_than_a_small_share_of_the_steps_stops_the_run(tmp_path):
    trainer = quick_trainer(tmp_path, on_nonfinite="skip", epochs=10)
    trainer.train_model = _Poison(trainer, range(2, 20))  # 18 of 20 steps go bad
    with pytest.raises(NonFiniteLoss) as e:
        trainer.fit()
    message = str(e.value)
    ok = "skipped" in message and "\n" not in message and trainer.step < 6 and trainer.skipped == 3
    record("training.on_nonfinite=skip with most steps non-finite", 1, int(ok),
           "stops at the 3rd skipped step with one line (exit code 1 from train.py)")
    assert ok, (message, trainer.step, trainer.skipped)


def test_a_skipped_step_is_not_logged_as_a_zero_loss(tmp_path):
    alone = quick_trainer(tmp_path / "a", log_every=1)
    alone.fit(stop_after=1)  # step 0 by itself: the same batch and noise as below
    step0 = json.loads((alone.out_dir / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    trainer = quick_trainer(tmp_path / "b", on_nonfinite="skip", log_every=2)
    trainer.train_model = _Poison(trainer, {1})  # the second step of the first log window
    trainer.fit(stop_after=2)
    first = json.loads((trainer.out_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert first["skipped_steps"] == 1 and first["loss"] == pytest.approx(step0, rel=1e-6), (first, step0)


@needs_mnist
def test_a_run_that_diverges_to_huge_finite_losses_stops(tmp_path, capsys):
    config = tiny_yaml(tmp_path, training={"lr": 1e6, "epochs": 3, "log_every": 1})
    code = train_main(["--config", config])
    err = _one_line(capsys)
    folder = tmp_path / "experiments" / "tiny" / "checkpoints"
    saved = {p.name: load_checkpoint(p)["step"] for p in folder.glob("*.pt")}
    ok = code == 1 and len(err) == 1 and "diverged" in err[0] and "training.lr" in err[0] and not saved
    record("a run that diverges (lr 1e6: huge but finite losses)", 1, int(ok),
           "stops at the first log step with one line naming training.lr; no checkpoint of the blown-up weights")
    assert ok, (code, err, saved)


# ------------------------------------------------------------------ 6. checkpoints that cannot be resumed


def _broken_copies(tmp_path, good_path) -> dict:
    """Complete, loadable checkpoints (their digest matches) that lack or garble what resuming needs."""
    good = load_checkpoint(good_path)
    changes = {
        "no ema": lambda s: s.pop("ema"),
        "no RNG state": lambda s: s.pop("noise_rng"),
        "step = 'x'": lambda s: s.update(step="x"),
        "RNG state of the wrong size": lambda s: s.update(noise_rng=torch.zeros(3, dtype=torch.uint8)),
        "optimizer = []": lambda s: s.update(optimizer=[]),
    }
    paths = {}
    for name, change in changes.items():
        state = {k: v for k, v in good.items() if k != "format"}
        change(state)
        paths[name] = save_checkpoint(state, tmp_path / "broken" / f"{len(paths)}.pt")
    return paths


@needs_mnist
def test_resume_from_a_checkpoint_with_missing_or_malformed_keys_is_one_line(tmp_path, capsys):
    config = tiny_yaml(tmp_path, training={"epochs": 1})
    assert train_main(["--config", config]) == 0
    cases = _broken_copies(tmp_path, tmp_path / "experiments" / "tiny" / "checkpoints" / "last.pt")
    capsys.readouterr()
    results = {}
    for name, path in cases.items():
        code = train_main(["--config", config, "training.epochs=2", "--resume", path])
        err = _one_line(capsys)
        results[name] = (code, err)
    clean = {name: code == 1 and len(err) == 1 and str(path) in err[0] and "--overwrite" in err[0]
             for (name, (code, err)), path in zip(results.items(), cases.values())}
    record("`train.py --resume` from checkpoints lacking ema / RNG state / a valid step / optimizer", len(clean),
           sum(clean.values()), "exit code 1, one line naming the file and the way out")
    assert all(clean.values()), results


@needs_mnist
def test_a_corrupt_last_pt_names_the_epoch_file_to_resume_from(tmp_path, capsys):
    config = tiny_yaml(tmp_path)  # 2 epochs: model_epoch_1.pt, model_epoch_2.pt, last.pt
    assert train_main(["--config", config, "training.epochs=2"]) == 0
    folder = tmp_path / "experiments" / "tiny" / "checkpoints"
    last = folder / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    capsys.readouterr()
    code = train_main(["--config", config, "training.epochs=3", "--resume"])
    err = _one_line(capsys)
    named = code == 1 and len(err) == 1 and f"--resume {folder / 'model_epoch_2.pt'}" in err[0]
    code_resumed = train_main(["--config", config, "training.epochs=3", "--resume", folder / "model_epoch_2.pt"])
    ok = named and code_resumed == 0 and load_checkpoint(last)["step"] == 6
    record("a corrupt last.pt beside good epoch files, then the command it names", 1, int(ok),
           "one line naming model_epoch_2.pt and the --resume command; that command finishes the run")
    assert ok, (code, err, code_resumed)


# ------------------------------------------------------------------ 7. an empty config


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_config_file_trains_nothing(tmp_path, capsys, text):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    code = train_main(["--config", path])
    err = _one_line(capsys)
    ok = code == 2 and len(err) == 1 and "the file is empty" in err[0] and not (tmp_path / "experiments").exists()
    record("an empty config file", 1, int(ok), "exit code 2, one line; nothing trained")
    assert ok, (code, err)
