"""How long each notebook takes, top to bottom with its exercises solved, at the size a reader runs it.

    python benchmarks/notebook_times.py            # every notebook; --tiny for CI's size

Prints one line per notebook (seconds on this machine) and a total. CI runs the same scripts at the tiny size
(tests/test_notebooks.py); this is the number a student on a laptop CPU waits.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "notebooks"))
from solved import NOTEBOOKS, solved_script  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the size CI runs (DIFFLAB_TINY=1)")
    parser.add_argument("names", nargs="*", help="notebooks to time (default: all), e.g. 03_v")
    args = parser.parse_args()
    chosen = [p for p in NOTEBOOKS if not args.names or p.stem in args.names]
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT / "src")}
    env.pop("DIFFLAB_TINY", None)
    if args.tiny:
        env["DIFFLAB_TINY"] = "1"
    total, failed = 0.0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in chosen:
            script = Path(tmp) / f"{path.stem}.py"
            script.write_text(solved_script(path))
            start = time.perf_counter()
            run = subprocess.run([sys.executable, str(script)], cwd=ROOT / "notebooks", env=env,
                                 capture_output=True, text=True)
            seconds = time.perf_counter() - start
            total += seconds
            status = "ok" if run.returncode == 0 else f"FAILED (exit {run.returncode}): {run.stderr.strip()[-300:]}"
            failed += run.returncode != 0
            print(f"{path.name:24s} {seconds:7.1f} s  {status}", flush=True)
    print(f"{'total':24s} {total:7.1f} s  ({'tiny' if args.tiny else 'full'} size, {os.cpu_count()} CPUs)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
