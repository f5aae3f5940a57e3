"""Does a model told SDXL's micro-conditions draw the size and crop it is asked for? (issue 48, docs/microcond.md)

For each requested framing (size, top, left) the model draws --n digits (balanced over 0-9, sampling seed 0), and
the same framing is applied to --n real test digits; difflab.microcond.framing measures both. A request is
followed when the drawn digits' height, centre and cut-off and tiny shares match the real digits' under it.

    python benchmarks/framing_requests.py --checkpoint CKPT [--publish]    (CKPT: an sdxl_microcond.yaml run's)

Prints a line per request; --publish writes docs/results/framing_requests.json.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from difflab import microcond  # noqa: E402
from difflab.data import load_split, tensor_to_uint8  # noqa: E402
from difflab.evaluation import balanced_labels  # noqa: E402
from difflab.pipeline import Pipeline  # noqa: E402

# MNIST's framing; small in the middle; small in a corner; big and centred; big, its top-left quarter
REQUESTS = [(28, 0, 0), (16, -6, -6), (16, 0, -12), (40, 6, 6), (40, 0, 0)]


def summary(images: torch.Tensor) -> dict:
    m = microcond.framing(tensor_to_uint8(images))
    return {"height": float(np.mean(m["height"])), "centre_row": float(np.mean(m["centre_row"])),
            "centre_col": float(np.mean(m["centre_col"])), "cut_off": float(m["cut_off"].mean()),
            "tiny": float(m["tiny"].mean())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint of configs/microcond/sdxl_microcond.yaml")
    p.add_argument("--n", type=int, default=200, help="digits per request")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the config's)")
    p.add_argument("--publish", action="store_true", help="write docs/results/framing_requests.json")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    pipe = Pipeline.from_checkpoint(args.checkpoint, "cpu")
    if not getattr(pipe.cfg.model.net, "micro_conditioning", False):
        sys.exit(f"{args.checkpoint}: not told sizes and crops (model.micro_conditioning); nothing to ask it")
    x, y = load_split("test")
    labels = balanced_labels(args.n)
    real = torch.cat([x[(y == d).nonzero().flatten()[: int((labels == d).sum())]] for d in range(10)])
    rows = []
    for request in REQUESTS:
        drawn = pipe.generate(pipe.framed(labels, request), steps=args.steps, seed=0).images
        framed = microcond.apply_framings(real, torch.tensor([request]).expand(len(real), 3))
        rows.append({"request": list(request), "drawn": summary(drawn), "real": summary(framed)})
        d, r = rows[-1]["drawn"], rows[-1]["real"]
        print(f"{str(request):>14}: height {d['height']:5.1f} (real {r['height']:5.1f}), centre "
              f"({d['centre_row']:4.1f}, {d['centre_col']:4.1f}) "
              f"(real ({r['centre_row']:4.1f}, {r['centre_col']:4.1f})), "
              f"cut off {100 * d['cut_off']:3.0f}% (real {100 * r['cut_off']:3.0f}%), "
              f"tiny {100 * d['tiny']:3.0f}% (real {100 * r['tiny']:3.0f}%)")
    if args.publish:
        out = {"kind": "framing requests", "checkpoint": args.checkpoint, "n": args.n, "rows": rows}
        path = ROOT / "docs" / "results" / "framing_requests.json"
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
