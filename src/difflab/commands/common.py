"""What every entry point shares: expected failures become one line on stderr, never a traceback."""

from __future__ import annotations

import sys

from ..infra.checkpoint import CheckpointError
from ..infra.failures import InputError, UsageError, usage
from ..config import ConfigError
from ..data import DataError
from ..infra.outputs import OutputError
from ..loop import NonFiniteLoss
from ..infra.validation import MAX_STEPS, cfg_scale_ok, steps_ok


def run_main(main) -> int:
    """Run an entry point's main(); map the project's errors to exit codes.

    One convention for every command (docs/reliability.md):
    2: what you asked for is wrong, a config or a command-line value (argparse uses 2 too); nothing was done.
    1: what the command works with failed: the data, a checkpoint, an input or output file, the disk,
       or a run that stopped being finite. 130: interrupted by Ctrl-C.
    """
    try:
        return main() or 0
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except UsageError as e:
        print(f"usage error: {e}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError, InputError, OutputError, NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def check_sampling_args(args) -> None:
    """--sampler, --batch-size, --steps and --cfg-scale, as sample.py and evaluate.py take them (exit code 2)."""
    from ..samplers import SAMPLERS

    if args.sampler is not None and args.sampler not in SAMPLERS:
        usage(f"--sampler: expected one of {', '.join(SAMPLERS)}, got {args.sampler!r}")
    if args.batch_size is not None and args.batch_size < 1:
        usage("--batch-size: expected a positive integer")
    check_steps(args.steps, "--steps")
    check_cfg_scale(args.cfg_scale)


def check_steps(steps, where: str = "--steps") -> None:
    """Sampling steps by validation.steps_ok, 1 to MAX_STEPS: beyond the training's 1000 steps sampling only
    gets slower (exit code 2). `where` names the value: --steps, or the checkpoint's sampling.steps."""
    if steps is None or steps_ok(steps):
        return
    if steps < 1:
        usage(f"{where}: expected a positive integer")
    usage(f"{where}: at most {MAX_STEPS} steps (the 1000-step discretisation the model was trained on; "
          f"more only take longer), got {steps}")


def check_at_most(value, limit: int, where: str, why: str) -> None:
    """A count on the command line past its bound (exit code 2): the message gives the bound and why."""
    if value is not None and value > limit:
        usage(f"{where}: at most {limit:,} ({why}), got {value:,}")


def check_cfg_scale(scale) -> None:
    """--cfg-scale by validation.cfg_scale_ok: a finite number >= 0 (exit code 2)."""
    if scale is not None and not cfg_scale_ok(scale):
        usage(f"--cfg-scale: expected a finite number >= 0, got {scale}")


def sampler_help() -> str:
    """--sampler's help, built from the registry (samplers.SAMPLERS), so a new sampler is listed without editing it."""
    from ..samplers import SAMPLERS, describe

    listed = "; ".join(f"{name}: {describe(name)}" for name in SAMPLERS)
    return f"{listed} (default: the config's)".replace("%", "%%")  # argparse %-formats help strings


STEPS_HELP = (f"sampling steps, 1 to {MAX_STEPS} (default: the config's); {MAX_STEPS} is the training's "
              "discretisation, DDPM's full chain: more would only take longer")
