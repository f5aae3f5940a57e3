"""The two failures a command reports in one line: a bad value on its command line (exit code 2), and a file
or folder it works with that cannot be used (exit code 1). commands/common.py's run_main turns them into exit
codes; they live here, below the lesson, so that the demo's page raises them without importing the commands."""

from __future__ import annotations


class UsageError(RuntimeError):
    """A bad command-line value; the message says which and what is expected (exit code 2)."""


class InputError(RuntimeError):
    """A file the command was pointed at cannot be used (missing, unreadable, the wrong kind; exit code 1)."""


def usage(message: str):
    """A value on the command line is wrong: nothing was done (exit code 2, as argparse's own errors)."""
    raise UsageError(message)


def fail(message: str):
    """Something the command works with is missing or broken: a file, the data, a checkpoint (exit code 1)."""
    raise InputError(message)
