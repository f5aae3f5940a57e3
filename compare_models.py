"""Compare trained models side by side: python compare_models.py [--checkpoints A B ...]

The command lives in src/difflab/commands/compare.py (also `difflab compare` once installed
with `pip install -e .`); this file runs it from a plain checkout, nothing installed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from difflab.commands.common import run_main  # noqa: E402
from difflab.commands.compare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_main(main))
