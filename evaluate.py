"""Score a model with numbers: python evaluate.py --checkpoint PATH [--n 5000 --sampler heun --steps 20 ...]

The command lives in src/difflab/commands/evaluate.py (also `difflab evaluate` once installed
with `pip install -e .`); this file runs it from a plain checkout, nothing installed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from difflab.commands.common import run_main  # noqa: E402
from difflab.commands.evaluate import KEYS, evaluate_checkpoint, main, tidy  # noqa: E402,F401 (tests use them from here)

if __name__ == "__main__":
    sys.exit(run_main(main))
