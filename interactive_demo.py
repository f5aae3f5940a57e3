"""A local web page to play with trained models: python interactive_demo.py --checkpoint CKPT

The command lives in src/difflab/commands/demo.py (also `difflab demo` once installed
with `pip install -e .`); this file runs it from a plain checkout, nothing installed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from difflab.commands.common import run_main  # noqa: E402
from difflab.commands.demo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_main(main))
