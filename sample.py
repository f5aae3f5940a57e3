"""Sample a grid of digits from a checkpoint: python sample.py --checkpoint PATH [--sampler heun --steps 20 ...]

The command lives in src/difflab/commands/sample.py (also `difflab sample` once installed
with `pip install -e .`); this file runs it from a plain checkout, nothing installed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from difflab.commands.common import run_main  # noqa: E402
from difflab.commands.sample import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_main(main))
