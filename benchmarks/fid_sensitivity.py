"""What moves the FID of evaluate.py: real MNIST digits, spoiled in known ways, scored like samples.

    python benchmarks/fid_sensitivity.py [--n 1000]

Takes N real training digits (a fixed random subset, seed 1), applies one change at a
time and prints FID (against the test set, as evaluate.py does), conditional accuracy,
precision and recall. The untouched row is what a perfect model scores at this N; every
other row says how far one familiar flaw of generated digits moves the numbers:
- Gaussian noise left in the image (an under-trained last denoising step);
- strokes one pixel thicker or thinner (3x3 max / min filter): strong guidance
  saturates and thickens strokes;
- contrast pushed towards black and white (what over-guided samples look like);
- 4x4 blocks (each 4x4 patch replaced by its mean): the seams of a patch-4 transformer.
Read it before reading a results table: FID on classifier features punishes a change of
stroke width far more than a little noise.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from difflab.classifier import load_classifier  # noqa: E402
from difflab.data import load_split  # noqa: E402
from difflab.evaluation import evaluate_images  # noqa: E402


def spoilers(generator: torch.Generator) -> dict:
    """name -> function of images (N, 1, 28, 28) in [-1, 1]."""
    def noise(std):
        return lambda x: (x + std * torch.randn(x.shape, generator=generator)).clamp(-1, 1)

    return {
        "real digits, untouched": lambda x: x,
        "noise std 0.02": noise(0.02),
        "noise std 0.05": noise(0.05),
        "noise std 0.1": noise(0.1),
        "strokes thicker (3x3 max filter)": lambda x: F.max_pool2d(x, 3, 1, 1),
        "strokes thinner (3x3 min filter)": lambda x: -F.max_pool2d(-x, 3, 1, 1),
        "contrast x2 (clamped)": lambda x: (2 * x + 1).clamp(-1, 1),
        "4x4 blocks (patch means)": lambda x: F.interpolate(F.avg_pool2d(x, 4), scale_factor=4, mode="nearest"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="images per row (compare with evaluate.py at the same N)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()

    classifier = load_classifier(args.data_dir)
    x, y = load_split("train", data_dir=args.data_dir)[:2]
    g = torch.Generator().manual_seed(1)
    idx = torch.randperm(len(x), generator=g)[: args.n]
    x, y = x[idx], y[idx]

    print(f"N = {args.n} real training digits, scored against the test set\n")
    print("| change | FID | accuracy | precision | recall |")
    print("|---|---:|---:|---:|---:|")
    rows = []
    for name, spoil in spoilers(g).items():
        r = evaluate_images(spoil(x), y, classifier, data_dir=args.data_dir)
        rows.append({"change": name, **{k: r[k] for k in ("fid", "fid_floor", "accuracy", "precision", "recall")}})
        print(f"| {name} | {r['fid']:.2f} | {r['accuracy']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} |")
    print(f"\nfloor at this N (evaluate.py's fid_floor, another subset): {rows[0]['fid_floor']:.2f}")
    print(json.dumps(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
