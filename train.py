"""Train any config: python train.py --config configs/unified_sd1_unet_eps.yaml [section.key=value ...]

The command lives in src/difflab/commands/train.py (also `difflab train` once installed
with `pip install -e .`); this file runs it from a plain checkout, nothing installed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from difflab.commands.common import run_main  # noqa: E402
from difflab.commands.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_main(main))
