"""What every entry point shares: expected failures become one line on stderr, never a traceback."""

from __future__ import annotations

import sys

from .checkpoint import CheckpointError
from .config import ConfigError
from .data import DataError
from .training import NonFiniteLoss, OutputError


class UsageError(RuntimeError):
    """A bad command-line value; the message says which and what is expected."""


def fail(message: str):
    raise UsageError(message)


def run_main(main) -> int:
    """Run an entry point's main(); map the project's errors to exit codes.

    2: the config is wrong (nothing was done). 1: data, checkpoint or usage problems.
    130: interrupted by Ctrl-C.
    """
    try:
        return main() or 0
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError, UsageError, OutputError, NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
