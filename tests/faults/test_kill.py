"""SIGKILL at random moments: every checkpoint on disk stays complete, and --resume picks up the newest.

train.py runs as a child process on the tiny U-Net and the first 8 MNIST images (2 steps an
epoch), so an epoch's steps, its sample grid and its two checkpoint writes come round every few
hundred milliseconds. Each trial waits for the child's 1st or 2nd epoch to end, then kills it at a
random point of the next epoch (a step, the sampling, a write, the moment between two writes);
every other trial instead kills it a random few milliseconds into its 1st or 2nd checkpoint write,
the case the temporary file and the rename are there for.
"""

import os
import random
import re
import signal
import time

from difflab.infra.checkpoint import load_checkpoint

from ._support import needs_mnist, record, start, tiny_yaml, train_main, wait_for

TRIALS = 5
EPOCHS = 16  # each trial advances at most 3 epochs, so no trial can reach the end
KEEP = 2


def _checkpoints(folder):
    """{name: step} of every checkpoint file, each loaded in full (a broken one raises here)."""
    return {p.name: int(load_checkpoint(p)["step"]) for p in sorted(folder.glob("*.pt"))}


def _mtime(path):
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _kill_after_epochs(proc, last, epochs, phase, period):
    """SIGKILL `phase` of an epoch after the child has written last.pt `epochs` times; return the epoch's length."""
    seen, times = _mtime(last), []
    while len(times) < epochs:
        assert proc.poll() is None, f"the child exited ({proc.returncode}) before it was killed"
        now = _mtime(last)
        if now != seen:
            seen = now
            times.append(time.monotonic())
        time.sleep(0.01)
    if len(times) > 1:
        period = times[-1] - times[-2]
    time.sleep(phase * period)
    os.kill(proc.pid, signal.SIGKILL)
    return period


def _kill_inside_write(proc, folder, nth, delay):
    """SIGKILL `delay` seconds after the child's `nth` checkpoint write began (its temporary file appeared)."""
    present, count = False, 0
    while True:
        assert proc.poll() is None, f"the child exited ({proc.returncode}) before it was killed"
        now = any(folder.glob(f".*.{proc.pid}.tmp"))  # this child's own, not a dead one's
        count += now and not present
        present = now
        if count == nth:
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
            return
        time.sleep(0.001)


@needs_mnist
def test_sigkill_at_random_moments_loses_nothing(tmp_path, capsys):
    rng = random.Random(10)
    config = tiny_yaml(tmp_path, training={"epochs": EPOCHS, "keep_last": KEEP})
    folder = tmp_path / "experiments" / "tiny" / "checkpoints"
    survived, mid_write, expected_start, pid, period = 0, 0, 0, None, 0.5
    for trial in range(TRIALS + 1):  # the extra run resumes to the end without a kill
        out, err = tmp_path / f"out{trial}.txt", tmp_path / f"err{trial}.txt"
        resume = ["--resume"] if (folder / "last.pt").exists() else []
        if trial == TRIALS:
            # A temporary file of a dead process, named to win if it were ever taken for a checkpoint;
            # then the last resume, in this process (a child would spend seconds importing torch).
            (folder / f".model_epoch_999.pt.{pid}.tmp").write_bytes(b"half a checkpoint")
            assert train_main(["--config", config, *resume]) == 0
            started = int(re.search(r"at step (\d+) of", capsys.readouterr().out).group(1))
        else:
            proc = start("train.py", "--config", config, *resume, cwd=tmp_path, out=out, err=err)
            started = 0
            if resume:
                wait_for(lambda: "resuming from" in out.read_text(), proc, what="the resume line")
                started = int(re.search(r"at step (\d+) of", out.read_text()).group(1))
        if trial > 0:  # the kill lost nothing: --resume went on from the newest checkpoint it left
            survived += started == expected_start
        if trial == TRIALS:
            break
        if trial % 2:
            _kill_inside_write(proc, folder, rng.choice([1, 2]), rng.uniform(0, 0.01))
        else:
            period = _kill_after_epochs(proc, folder / "last.pt", rng.choice([1, 2]), rng.random(), period)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        pid = proc.pid
        mid_write += any(folder.glob(".*.tmp"))  # a temporary file the kill cut short
        steps = _checkpoints(folder)  # every file named *.pt loads, in full
        assert "last.pt" in steps
        assert len([n for n in steps if n.startswith("model_epoch_")]) <= KEEP + 1  # pruned right after a save
        expected_start = max(steps.values())

    final = _checkpoints(folder)
    total = EPOCHS * 2
    assert final == {"last.pt": total, f"model_epoch_{EPOCHS - 1}.pt": total - 2, f"model_epoch_{EPOCHS}.pt": total}
    assert not list(folder.glob(".*.tmp")), "stale temporary files were not cleaned up"
    record("SIGKILL at a random moment in training, then `train.py --resume`", TRIALS, survived,
           f"{mid_write} of {TRIALS} kills cut a checkpoint write short (a half-written temporary file left)")
    assert survived == TRIALS
