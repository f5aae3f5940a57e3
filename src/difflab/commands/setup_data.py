"""Download MNIST (or Fashion-MNIST) into the data folder, checked: `python setup_mnist.py`.

The data folder is --data-dir, else $DIFFLAB_DATA, else ./data. All the work is in
`difflab.commands.download.fetch`; this file only reads the command line and reports errors.
"""

from __future__ import annotations

import argparse
import sys


from difflab.data import DATASETS, DataError
from difflab.commands.download import fetch
from difflab.infra.untrusted import one_line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder for <dataset>.npz "
                        "(default: $DIFFLAB_DATA, else ./data)")
    parser.add_argument("--dataset", default="mnist", choices=DATASETS)
    parser.add_argument("--force", action="store_true", help="fetch again even if the file is fine")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Fetch the dataset; on an expected failure print why in one line (no traceback) and return 1.

    The exit codes are difflab.commands.common.run_main's (1: the data or the disk failed, 130: Ctrl-C), without
    importing it: that would import PyTorch, which downloading never needs.
    """
    args = parse_args(argv)
    try:
        fetch(args.dataset, args.data_dir, force=args.force)
    except (DataError, OSError) as e:  # OSError: a data folder that cannot be created or read
        print(f"error: {one_line(e, 1000)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0

