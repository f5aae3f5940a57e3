"""Run the fault-injection suite (tests/faults/) and print its reliability table.

    python benchmarks/fault_report.py            # prints a Markdown table, as in docs/reliability.md
    python benchmarks/fault_report.py -- -x      # anything after -- goes to pytest

Each fault test appends what it tried to a log named by $DIFFLAB_FAULT_LOG: the fault, the number
of trials and how many came through with nothing lost. This script runs the suite with that log set,
then adds the rows up by fault. A failing test shows as fewer survivors, or as no row at all, and
pytest's summary line (printed under the table) says which.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list) -> int:
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    with tempfile.TemporaryDirectory(prefix="difflab-faults-") as tmp:
        log = Path(tmp) / "faults.jsonl"
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/faults", *extra],
                              cwd=ROOT, env={**os.environ, "DIFFLAB_FAULT_LOG": str(log)},
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    table = defaultdict(lambda: {"trials": 0, "survived": 0, "notes": []})
    for row in rows:  # parametrised tests write one row per case: add them up
        entry = table[row["fault"]]
        entry["trials"] += row["trials"]
        entry["survived"] += row["survived"]
        if row["note"] and row["note"] not in entry["notes"]:
            entry["notes"].append(row["note"])
    print("| fault | trials | survived, nothing lost | how |")
    print("|---|---:|---:|---|")
    for fault, entry in table.items():
        print(f"| {fault} | {entry['trials']} | {entry['survived']} | {'; '.join(entry['notes'])} |")
    trials = sum(e["trials"] for e in table.values())
    survived = sum(e["survived"] for e in table.values())
    print(f"| **all** | **{trials}** | **{survived}** | |")
    summary = (done.stdout.strip().splitlines() or ["(no pytest output)"])[-1]
    print(f"\npytest tests/faults: {summary} (exit code {done.returncode}); "
          f"the suite took {seconds:.0f} s wall-clock with this script's `{sys.executable}`")
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-2000:], sep="\n", file=sys.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
