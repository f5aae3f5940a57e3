"""A run's output folder: one run writes to it at a time, and a new run never writes over another's results.

Every trainer (diffusion, VAE) opens its folder with `claim(...)` before the first step:
- a lock (`.lock`, held with flock) refuses a second live run in the same folder; the kernel
  drops the lock when its process dies, so a killed run never leaves it stuck;
- a fresh run (step 0) refuses a folder that already holds results, and names `--resume`
  and `--overwrite`; only `--overwrite` deletes the old run's files;
- the folder is probed with a 4 KiB write, so a full disk or a folder that cannot be
  created stops the run before any work;
- half-written `.<name>.<pid>.tmp` files of dead processes are removed (they are never loaded).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager, suppress
from pathlib import Path

from .outputs import OutputError, free_space, sigint_handler

try:
    import fcntl  # POSIX; on Windows runs are not locked
except ImportError:  # pragma: no cover
    fcntl = None

RESULTS = ("checkpoints/*.pt", "metrics.jsonl", "samples/*.png", "reconstructions/*.png")
FOLDERS = ("checkpoints", "samples", "reconstructions")  # what --overwrite removes, with metrics.jsonl


def existing_results(out_dir: Path) -> list:
    """The files of an earlier run in `out_dir` (empty for a new folder)."""
    return sorted(p for pattern in RESULTS for p in out_dir.glob(pattern))


def check_writable(out_dir: Path) -> None:
    """Fail before the first step, with one line, if the output folder cannot be written."""
    probe = out_dir / f".write_test.{os.getpid()}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as e:
        with suppress(OSError):  # a full disk may have kept part of the probe
            probe.unlink(missing_ok=True)
        raise OutputError(f"cannot write to {out_dir}: {e.strerror or e} ({free_space(out_dir)}; "
                          f"set training.output_dir=... to a writable folder)") from None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, but another user's
        return True
    return True


def remove_stale_temporaries(out_dir: Path) -> None:
    """Delete the `.<name>.<pid>.tmp` files a killed run left half-written; they are never loaded."""
    for tmp in (out_dir / "checkpoints").glob(".*.tmp"):
        pid = tmp.name.split(".")[-2]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


TRAINING_BUSY = ("{folder} is in use by a run still training (pid {holder}); wait for it, stop it, "
                 "or set training.output_dir=... to another folder")


def lock_folder(out_dir: Path, busy: str = TRAINING_BUSY):
    """Hold `out_dir/.lock` (flock, released by the kernel when this process dies); refuse if another holds it.

    `busy` is the refusal, formatted with the folder and the holder's pid (compare.py has its own).
    Returns the open file: closing it releases the lock.
    """
    if fcntl is None:
        return None
    handle = open(out_dir / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise OutputError(busy.format(folder=out_dir, holder=holder)) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _refuse_or_clear(out_dir: Path, overwrite: bool) -> None:
    """A fresh run: stop if the folder holds another run's results, unless asked to overwrite them."""
    found = existing_results(out_dir)
    if not found:
        return
    if not overwrite:
        shown = ", ".join(str(p.relative_to(out_dir)) for p in found[:3]) + (", ..." if len(found) > 3 else "")
        raise OutputError(f"{out_dir} already holds a run ({shown}); continue it with --resume, "
                          f"or start afresh with --overwrite (deletes it) or training.output_dir=OTHER")
    for name in FOLDERS:
        shutil.rmtree(out_dir / name, ignore_errors=True)
    (out_dir / "metrics.jsonl").unlink(missing_ok=True)


@contextmanager
def claim(out_dir: Path, fresh: bool, overwrite: bool = False):
    """The folder is this run's until the block ends: writable, locked, and (if fresh) free of other results."""
    check_writable(out_dir)
    handle = lock_folder(out_dir)
    try:
        if fresh:
            _refuse_or_clear(out_dir, overwrite)
        remove_stale_temporaries(out_dir)
        yield
    finally:
        if handle is not None:
            handle.close()  # closing the file releases the lock


@contextmanager
def sigint_sets_flag(trainer):
    """Within the loop, a first Ctrl-C sets `trainer.interrupted` (the step finishes); a second raises."""

    def handle(signum, frame):
        if trainer.interrupted:
            raise KeyboardInterrupt
        trainer.interrupted = True

    with sigint_handler(handle):
        yield
