"""SDXL's problem, measured on the data (issue 48, docs/microcond.md): how many digits are cut off or tiny in MNIST's
own framing, and after difflab.microcond reframes the training set. Publishes docs/results/framing_data.json.

    python benchmarks/framing_data.py        (seconds)
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from difflab import microcond  # noqa: E402
from difflab.data import load_split, tensor_to_uint8  # noqa: E402


def shares(images) -> dict:
    measured = microcond.framing(tensor_to_uint8(images))
    return {"cut_off": float(measured["cut_off"].mean()), "tiny": float(measured["tiny"].mean()),
            "median_height": float(sorted(measured["height"])[len(images) // 2]), "n": len(images)}


def main() -> int:
    x, _ = load_split("train")
    framed, framings = microcond.framed_training_set(x)
    out = {"kind": "framing data", "mnist": shares(x), "reframed": shares(framed),
           "size_range": [round(28 * microcond.SIZE_MIN), round(28 * microcond.SIZE_MAX)], "tiny_rows": microcond.TINY}
    path = ROOT / "docs" / "results" / "framing_data.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    for name in ("mnist", "reframed"):
        s = out[name]
        print(f"{name}: {100 * s['cut_off']:.1f}% cut off, {100 * s['tiny']:.1f}% tiny (under {microcond.TINY} rows), "
              f"median height {s['median_height']:.0f} rows, of {s['n']:,} training images")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
