"""SIGKILL at random moments: every checkpoint on disk stays complete, and --resume picks up the newest."""

import os
import random
import re
import signal
import subprocess


from difflab.checkpoint import load_checkpoint

from ._support import needs_mnist, record, script, start, tiny_yaml, wait_for

TRIALS = 5
EPOCHS = 24  # 2 steps each (8 images, batch 4): an epoch ends, samples and checkpoints every few 100 ms;
# the seeded kill delays add up to 4.4 s, well short of the whole run even on a fast machine
KEEP = 2


def _checkpoints(folder):
    """{name: step} of every checkpoint file, each loaded in full (a broken one raises here)."""
    return {p.name: int(load_checkpoint(p)["step"]) for p in sorted(folder.glob("*.pt"))}


@needs_mnist
def test_sigkill_at_random_moments_loses_nothing(tmp_path):
    rng = random.Random(10)
    config = tiny_yaml(tmp_path, training={"epochs": EPOCHS, "keep_last": KEEP})
    folder = tmp_path / "experiments" / "tiny" / "checkpoints"
    survived, mid_write, expected_start, pid = 0, 0, 0, None
    for trial in range(TRIALS + 1):  # the extra run resumes to the end without a kill
        out, err = tmp_path / f"out{trial}.txt", tmp_path / f"err{trial}.txt"
        resume = ["--resume"] if (folder / "last.pt").exists() else []
        if trial == TRIALS and pid is not None:  # a decoy left by a dead process: never to be loaded
            (folder / f".model_epoch_999.pt.{pid}.tmp").write_bytes(b"half a checkpoint")
        import time; print(trial, "start", time.monotonic(), flush=True)
        proc = start("train.py", "--config", config, *resume, cwd=tmp_path, out=out, err=err)
        if resume:  # --resume continued from the newest checkpoint left by the kill
            wait_for(lambda: "resuming from" in out.read_text(), proc, what="the resume line")
            step = int(re.search(r"at step (\d+) of", out.read_text()).group(1))
            assert step == expected_start, (trial, step, expected_start)
            survived += trial > 0
        elif trial > 0:
            assert expected_start == 0  # killed before its first checkpoint: nothing to lose
            survived += 1
        if trial == TRIALS:
            assert proc.wait(timeout=180) == 0, err.read_text()[-2000:]
            break
        wait_for(lambda: "training tiny" in out.read_text(), proc, what="training started")
        # Kill at a random moment: mid-step, mid-sampling, mid-write or between two writes.
        try:
            proc.wait(timeout=rng.uniform(0.2, 1.5))
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL, "the run ended before the kill; raise EPOCHS"
        pid = proc.pid; print(trial, "killed", time.monotonic(), flush=True)
        mid_write += any(folder.glob(".*.tmp"))  # a temporary file the kill cut short
        steps = _checkpoints(folder) if folder.exists() else {}  # every one loads, in full
        assert not steps or "last.pt" in steps
        assert len([n for n in steps if n.startswith("model_epoch_")]) <= KEEP + 1  # pruned right after a save
        expected_start = max(steps.values(), default=0)

    final = _checkpoints(folder)
    total = EPOCHS * 2
    assert final == {"last.pt": total, f"model_epoch_{EPOCHS - 1}.pt": total - 2, f"model_epoch_{EPOCHS}.pt": total}
    assert not list(folder.glob(".*.tmp")), "stale temporary files were not cleaned up"
    record("SIGKILL at a random moment during training, then --resume", TRIALS, survived,
           f"{mid_write} of {TRIALS} kills cut a checkpoint write short")
    assert survived == TRIALS
