"""Writing results: check an output path before the work starts, and turn a failed write into one line.

Every command writes something at the end (a checkpoint, a PNG, an .npz, a JSON file); a path
that cannot be written should fail before minutes of work, and a disk that fills on the way
should say what, where and how much space is left, never print a traceback. Several files that
belong together (the docs' pages) are written all or nothing, Ctrl-C held back (write_together).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Union


class OutputError(RuntimeError):
    """A file or folder cannot be written (permissions, a full disk); one line says which."""


def free_space(path: Union[str, Path]) -> str:
    """'12.3 MiB free' on the file system that holds `path` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return "free space unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if free < 1024 or unit == "GiB":
            return f"{free:.0f} {unit} free" if unit == "B" else f"{free:.1f} {unit} free"
        free /= 1024
    return "free space unknown"  # not reached


def write_error(path: Union[str, Path], e: BaseException, kept: str = "") -> OutputError:
    """The one-line OutputError for a write of `path` that raised `e`; `kept` says what is still intact."""
    if isinstance(e, OSError):  # a full disk reads "No space left on device (12.0 KiB free)"
        reason = f"{e.strerror or e} ({free_space(path)})"
    else:
        reason = f"{str(e).splitlines()[0][:120] if str(e) else type(e).__name__} ({free_space(path)})"
    return OutputError(f"could not write {path}: {reason}" + (f"; {kept}" if kept else ""))


@contextmanager
def writing(path: Union[str, Path], kept: str = ""):
    """Any OSError inside becomes the one-line OutputError naming `path` and the free space."""
    try:
        yield
    except OSError as e:
        raise write_error(e.filename or path, e, kept) from None


def check_output_file(path: Union[str, Path], option: str = "--out") -> Path:
    """Fail now, with one line, if `path` cannot be written later: a folder, or a parent we cannot create or write.

    The probe creates and removes a file beside `path`; an existing file at `path` is left untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder; give a file name inside it")
    probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{option} {path}: cannot be written ({e.strerror or e})") from None
    return path


def write_bytes_atomic(path: Union[str, Path], data: bytes, fsync: bool = False) -> Path:
    """Write `data` to a temporary sibling, then rename it to `path`.

    A full disk then never leaves half a file under the final name (an older file there survives),
    and the OSError raised names `path` itself, not the temporary, so `writing(path)` can report it.
    Serialise into memory first (io.BytesIO): torch.save reports a full disk as a RuntimeError, a plain
    write as the honest OSError(ENOSPC).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:  # on disk before the rename: a crash leaves the old file or the new, never half
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _discard(tmp)
        raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:  # Ctrl-C mid-write: no temporary left behind either
        _discard(tmp)
        raise
    return path


def _discard(path: Path) -> None:
    """Remove a half-written temporary if there is one; a folder that refuses even that is left as it is."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


# ---------------------------------------------------------------------- Ctrl-C around writes


@contextmanager
def sigint_handler(handle):
    """`handle(signum, frame)` answers Ctrl-C inside the block; the previous handler comes back after it.

    (Outside the main thread signals cannot be caught: the block runs with the handler it had.)
    """
    try:
        previous = signal.signal(signal.SIGINT, handle)
    except ValueError:  # not the main thread
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


@contextmanager
def ctrl_c_held():
    """Ctrl-C inside the block waits for its end, then interrupts: a set of renames is never cut in two.

    (Outside the main thread signals cannot be caught, and the block runs as it is.)
    """
    pressed = []
    with sigint_handler(lambda signum, frame: pressed.append(signum)):
        yield
    if pressed:
        raise KeyboardInterrupt


def write_together(files: dict) -> None:
    """Write {path: text} all or nothing: every text to a temporary beside its file, then every rename.

    A full disk, a refused write or Ctrl-C before the renames changes no file (the temporaries are
    removed); a rename needs no space, and Ctrl-C during the renames waits for the last one. Only a
    crash (power, SIGKILL) or a refused rename in those few milliseconds can leave some files new and
    some old; each file is always whole, old or new, with its contents (the docs' pages: their generated-block markers).
    """
    temporaries = {path: path.with_name(f".{path.name}.{os.getpid()}.tmp") for path in files}
    try:
        for path, text in files.items():
            try:
                temporaries[path].write_bytes(text.encode())
            except OSError as e:
                raise write_error(path, e, "no file was changed") from None
        with ctrl_c_held():
            for path, tmp in temporaries.items():
                try:
                    os.replace(tmp, path)
                except OSError as e:
                    raise write_error(path, e) from None
    finally:
        for tmp in temporaries.values():
            with suppress(OSError):
                tmp.unlink(missing_ok=True)  # written but not renamed: a failure or Ctrl-C part-way


def sha256_file(path: Union[str, Path]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (a downloaded wheel, a cached judge or encoder)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
