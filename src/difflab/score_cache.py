"""Scores already computed, kept on disk, so a comparison that stopped half-way resumes where it was.

Scoring the study samples for an hour or more on a CPU (DDPM's 1000 steps alone take most of one).
compare.run_comparison keeps every score it computes in `<out>/scores.json`, keyed by

- the SHA-256 of the checkpoint file (its weights, config and sampling settings),
- what was asked: n, the sampling seed and any option swept (steps, guidance scale),
- the judge: a digest of the classifier's weights,
- the code that samples and scores: a digest of difflab's sources (NOT_SCORING excepted: the report,
  the demo, and the modules that only train or parse commands), so a change to a sampler or to FID
  makes every stored score stale. Each module counts by its syntax tree, so a comment or a line
  break changes nothing, and settings.py without TrainingConfig (TRAINING_ONLY): a new training
  option does not send the study back to hours of sampling.

A second run with the same key reads the score instead of sampling again: `make compare` after a
failure, or `make compare-all` after `make compare`, scores only what is new. A damaged file is
ignored (and rewritten).
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from typing import Callable, Optional

import torch

from .data import sha256_file

# Files that do not change a score: the comparison's own report, the demo, and what only trains
# (a checkpoint's file digest already covers what training produced) or only parses commands.
NOT_SCORING = {"compare.py", "report.py", "page_tables.py", "score_cache.py", "demo.py", "demo_page.py", "runs.py", "download.py",
               "loop.py", "training.py", "vae_training.py", "fewstep.py", "board.py", "optim.py", "speed.py",
               "dryrun.py", "validation.py", "cli.py", "__main__.py", "train.py", "setup_data.py", "export.py"}

# Classes of a module that scores which only training reads: left out of that module's digest.
TRAINING_ONLY = {"settings.py": {"TrainingConfig"}}


def source_digest(path: Path, skip=()) -> bytes:
    """A module as its syntax tree (comments and layout do not count), without the top-level classes in `skip`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    tree.body = [node for node in tree.body if not (isinstance(node, ast.ClassDef) and node.name in skip)]
    return ast.dump(tree).encode()


def code_digest(root: Optional[Path] = None) -> str:
    """SHA-256 over difflab's source files (under `root`, default this package) that sampling and scoring run through."""
    root = Path(root or Path(__file__).resolve().parent)
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if path.name not in NOT_SCORING:
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


class ScoreCache:
    """`get(pipe, classifier, score, **what)`: the stored score for this key, else score() stored."""

    def __init__(self, path: Optional[Path]):
        self.path = None if path is None else Path(path)
        self.scores: dict = {}
        self._digests: dict = {}
        self._code = code_digest()
        if self.path is not None and self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text())
                self.scores = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self.scores = {}  # damaged: scored again, then rewritten
        self.reused = 0

    def key(self, pipe, classifier, **what) -> Optional[str]:
        checkpoint = pipe.info.get("checkpoint")
        if checkpoint is None or not Path(checkpoint).is_file():
            return None  # a pipeline built in memory: nothing to recognise it by
        if checkpoint not in self._digests:
            self._digests[checkpoint] = sha256_file(Path(checkpoint))
        if id(classifier) not in self._digests:
            self._digests[id(classifier)] = model_digest(classifier)
        return json.dumps([self._digests[checkpoint], self._digests[id(classifier)], self._code,
                           sorted(what.items())])

    def get(self, pipe, classifier, score: Callable[[], dict], **what) -> dict:
        key = self.key(pipe, classifier, **what)
        if key is not None and key in self.scores:
            self.reused += 1
            return self.scores[key]
        result = json.loads(json.dumps(score(), default=str))  # as it will read back from disk
        if key is not None:
            self.scores[key] = result
            self.save()
        return result

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.scores))
        tmp.replace(self.path)  # atomic: a kill mid-write leaves the previous file
