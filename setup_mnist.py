"""Download MNIST (or Fashion-MNIST) into the data folder, checked: `python setup_mnist.py`.

The command lives in src/difflab/commands/setup_data.py (also `difflab setup` once installed
with `pip install -e .`); this file runs it from a plain checkout, nothing installed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from difflab.commands.setup_data import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
