"""`difflab COMMAND [ARGS]` (installed with `pip install -e .`) or `python -m difflab COMMAND [ARGS]`.

The same commands as the scripts of a checkout: `difflab train --config FILE` is `python train.py --config FILE`.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional

from .commands.common import run_main

# command -> (module in difflab.commands, the script it stands for)
COMMANDS = {
    "setup": ("setup_data", "setup_mnist.py: download MNIST or Fashion-MNIST, checked"),
    "train": ("train", "train.py: train any config"),
    "sample": ("sample", "sample.py: a grid of digits from a checkpoint"),
    "evaluate": ("evaluate", "evaluate.py: FID, accuracy, precision and recall of a checkpoint"),
    "compare": ("compare", "compare_models.py: models side by side, same noise, same judge"),
    "demo": ("demo", "interactive_demo.py: a local page to play with trained models"),
    "export": ("export", "a checkpoint's EMA weights as .safetensors, with its config"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    return "usage: difflab COMMAND [ARGS]   (difflab COMMAND --help for its options)\n\n" + "\n".join(
        f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items())


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"difflab: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"difflab.commands.{COMMANDS[argv[0]][0]}")
    sys.argv[0] = f"difflab {argv[0]}"  # what argparse shows as the program's name
    return run_main(lambda: module.main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
