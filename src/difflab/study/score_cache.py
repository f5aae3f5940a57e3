"""Scores already computed, kept on disk, so a comparison that stopped half-way resumes where it was.

Scoring the study samples for an hour or more on a CPU (DDPM's 1000 steps alone take most of one).
compare.run_comparison keeps every score it computes in `<out>/scores.json`, keyed by

- the SHA-256 of the checkpoint file as it was loaded (its weights, config and sampling settings),
- what was asked: n, the sampling seed and any option swept (steps, guidance scale),
- the judge: a digest of the classifier's weights,
- the code that samples and scores: a digest of difflab's sources (NOT_SCORING excepted: the report,
  the demo, and the modules that only train or parse commands), so a change to a sampler or to FID
  makes every stored score stale. Each module counts by its syntax tree, so a comment or a line
  break changes nothing, and settings.py without TrainingConfig (TRAINING_ONLY): a new training
  option does not send the study back to hours of sampling.

A second run with the same key reads the score instead of sampling again: `make compare` after a
failure, or `make compare-all` after `make compare`, scores only what is new. A damaged file, or an
entry that is not a score (a list, a string, a number where FID belongs), is ignored and scored again.

The checkpoint's digest is the one compare.load_pipeline took of the bytes it loaded (pipe.info["sha256"]),
never the file's digest at scoring time: a checkpoint rewritten or deleted while the study runs must
not pass its score to another model, or lose it. Saves merge with what is on disk, under a lock, and
replace the file atomically: two writers keep both their scores and never mix their files.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import torch

from ..infra.outputs import write_bytes_atomic, writing

try:
    import fcntl  # POSIX; on Windows saves are not locked
except ImportError:  # pragma: no cover
    fcntl = None

# Files that do not change a score: the comparison's own report, the demo, and what only trains
# (a checkpoint's file digest already covers what training produced) or only parses commands.
# A name counts wherever it is in the package: "demo.py" is commands/demo.py; session, page and guard are demo/'s.
NOT_SCORING = {"compare.py", "config_diff.py", "report.py", "page_tables.py", "score_cache.py", "session.py",
               "page.py", "guard.py", "runs.py", "download.py", "loop.py", "training.py", "vae_training.py",
               "fewstep.py", "board.py", "optim.py", "speed.py", "dryrun.py", "trainers.py", "validation.py",
               "untrusted.py", "common.py", "failures.py", "__main__.py", "train.py", "demo.py", "setup_data.py",
               "export.py"}

# Classes of a module that scores which only training reads: left out of that module's digest.
TRAINING_ONLY = {"settings.py": {"TrainingConfig"}}


def source_digest(path: Path, skip=()) -> bytes:
    """A module as its syntax tree (comments and layout do not count), without the top-level classes in `skip`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    tree.body = [node for node in tree.body if not (isinstance(node, ast.ClassDef) and node.name in skip)]
    return ast.dump(tree).encode()


def scoring_files(root: Path) -> list:
    """The source files under `root` that sampling and scoring run through, subpackages included, in a fixed order."""
    return [path for path in sorted(root.rglob("*.py")) if path.name not in NOT_SCORING]


def code_digest(root: Optional[Path] = None) -> str:
    """SHA-256 over the source files (under `root`, default the difflab package) that sampling and scoring
    run through."""
    root = Path(root or Path(__file__).resolve().parents[1])  # this file is difflab/study/score_cache.py
    h = hashlib.sha256()
    for path in scoring_files(root):
        h.update(str(path.relative_to(root)).encode())
        h.update(source_digest(path, TRAINING_ONLY.get(path.name, ())))
    return h.hexdigest()


def model_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a network's weights (the judge's)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# What compare reads from a stored score: an entry without one of these, or with a number of the wrong
# type (a hand-edited or foreign scores.json), would fail later inside a table; it is scored again instead.
NUMBERS = ("fid", "fid_floor", "nfe", "seconds")
NUMBERS_OR_NONE = ("accuracy", "precision", "recall")  # None: an unconditional model asked for no digit
PRESENT = ("sampler", "steps", "cfg_scale", "device")


def is_number(value, none: bool = False) -> bool:
    """A finite int or float (not a bool); None too when `none`."""
    if value is None:
        return none
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def usable(entry) -> bool:
    """Is a stored entry a score compare can read (a dict with every field it uses, numbers where numbers belong)?"""
    return (isinstance(entry, dict) and all(is_number(entry.get(k)) for k in NUMBERS)
            and all(k in entry and is_number(entry[k], none=True) for k in NUMBERS_OR_NONE)
            and all(k in entry for k in PRESENT))


def read_scores(path: Optional[Path]) -> dict:
    """The usable entries of a scores.json; {} for a missing, damaged or foreign file (scored again, then rewritten)."""
    if path is None or not path.is_file():
        return {}
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # unreadable, not JSON, nested past the parser's depth
        return {}
    if not isinstance(loaded, dict):
        return {}
    return {key: entry for key, entry in loaded.items() if usable(entry)}


class ScoreCache:
    """`get(pipe, classifier, score, **what)`: the stored score for this key, else score() stored."""

    def __init__(self, path: Optional[Path]):
        self.path = None if path is None else Path(path)
        self.scores: dict = read_scores(self.path)
        self._judges: dict = {}
        self._code = code_digest()
        self.reused = 0

    def key(self, pipe, classifier, **what) -> Optional[str]:
        """The key of a score, or None for a pipeline not loaded by compare.load_pipeline (built in memory)."""
        checkpoint = pipe.info.get("sha256")  # the digest of the bytes that were loaded
        if checkpoint is None:
            return None  # nothing to recognise it by
        if id(classifier) not in self._judges:
            self._judges[id(classifier)] = model_digest(classifier)
        return json.dumps([checkpoint, self._judges[id(classifier)], self._code, sorted(what.items())])

    def get(self, pipe, classifier, score: Callable[[], dict], **what) -> dict:
        key = self.key(pipe, classifier, **what)
        if key is not None and usable(self.scores.get(key)):
            self.reused += 1
            return self.scores[key]
        result = json.loads(json.dumps(score(), default=str))  # as it will read back from disk
        if key is not None:
            self.scores[key] = result
            self.save()
        return result

    def save(self) -> None:
        """Write every score, with those another writer saved since (merged), atomically, under a lock."""
        if self.path is None:
            return
        with writing(self.path, "the scores are still used by this run"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with locked(self.path.with_name(f".{self.path.name}.lock")):
                self.scores = {**read_scores(self.path), **self.scores}  # another run's scores are kept too
                write_bytes_atomic(self.path, json.dumps(self.scores).encode())  # a kill mid-write: the old file


@contextmanager
def locked(path: Path):
    """Hold an exclusive flock on `path` for the block: one save at a time, from any process or thread.

    A save takes milliseconds, so a second writer waits rather than failing; the kernel releases the
    lock when its holder dies. Each save opens the file anew, so two threads of one process exclude
    each other too (a flock belongs to an open file, not to a process).
    """
    with open(path, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock
