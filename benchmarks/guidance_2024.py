"""Guidance of 2024 against plain CFG, on the learning curves' milestones (issue 46, part 2; docs/why_they_changed.md).

For each milestone (SD1, SD2, SD3) this takes the run of benchmarks/curves.py at its best scored epoch (the lowest
FID) and samples it three ways, each with the config's own sampler and steps:

- **CFG** (Ho & Salimans 2022): the unconditional branch guides at every step;
- **guidance interval** (Kynkaanniemi et al. 2024): CFG only where sigma / alpha lies in (0.28, 5.42], the
  interval of their Table 1 for EDM2 (converted to each noise path's t); outside it, the conditional model alone;
- **autoguidance** (Karras et al. 2024): an earlier checkpoint of the same run (a weaker model) takes the
  unconditional branch's place: d = d_weak + w (d - d_weak); `--set sampling.guide=CKPT`.

Each method's scale (and autoguidance's guide epoch) is tuned on sampling seed 1 at --tune-n images, never on the
reported seed; the best setting of each method is then scored at --n images, seed 0, and published as
docs/results/<--publish>.json. Resumable: every score is a file, kept once written.

    python benchmarks/guidance_2024.py              (about 3 hours on 2 CPU cores, after make curves)
    python benchmarks/guidance_2024.py --status     what is scored and what is left
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from curves import MODELS, ROOT, checkpoint, slug  # noqa: E402  (benchmarks/, beside this script)

sys.path.insert(0, str(ROOT / "src"))

MILESTONES = ["SD1 U-Net eps", "SD2 U-Net v", "SD3 MMDiT flow"]
SIGMA_INTERVAL = (0.28, 5.42)  # Kynkaanniemi et al. 2024, Table 1 (EDM2-XXL, FID): guide for sigma in (lo, hi]
CFG_SCALES = (1.25, 1.5, 2.0)
INTERVAL_SCALES = (2.0, 3.0, 4.0)
AUTO_SCALES = (1.5, 2.0, 3.0)
GUIDE_EPOCHS = (1, 2)


def t_interval(config: str) -> list[float]:
    """The times t in [0, 1] of the config's noise path where sigma / alpha crosses SIGMA_INTERVAL's ends."""
    import torch

    from difflab.config import load_config
    from difflab.schedules import build_path

    path = build_path(load_config(ROOT / config).diffusion)
    t = torch.linspace(0, 1, 100001)
    ratio = path.sigma(t) / path.alpha(t).clamp(min=1e-12)
    return [round(float(t[int((ratio >= bound).nonzero()[0])]), 3) for bound in SIGMA_INTERVAL]


def best_epoch(curves_scores: Path, label: str) -> tuple[int, Path]:
    """The scored epoch of the model's curve with the lowest FID, and its score file."""
    scored = sorted(curves_scores.glob(f"{slug(label)}_epoch*.json"))
    if not scored:
        sys.exit(f"{label}: no scores in {curves_scores}; run benchmarks/curves.py (make curves) first")
    fid = {int(p.stem.rpartition("_epoch")[2]): (json.loads(p.read_text())["fid"], p) for p in scored}
    epoch = min(fid, key=lambda e: fid[e][0])
    return epoch, fid[epoch][1]


def variants(label: str, out: Path, epoch: int) -> dict[str, list[tuple[str, list[str]]]]:
    """method -> [(setting's name, evaluate.py options)], the grid each method is tuned over. Autoguidance's guide
    is an earlier checkpoint than the model's own `epoch` (none earlier: no autoguidance)."""
    lo, hi = t_interval(MODELS[label])
    guides = [g for g in GUIDE_EPOCHS if g < epoch]
    methods = {
        "CFG": [(f"w {w:g}", ["--cfg-scale", str(w)]) for w in CFG_SCALES],
        "guidance interval": [(f"w {w:g}, t in [{lo:g}, {hi:g}]",
                               ["--cfg-scale", str(w), "--set", f"sampling.guidance_interval=[{lo}, {hi}]"])
                              for w in INTERVAL_SCALES],
        "autoguidance": [(f"w {w:g}, guide epoch {g}",
                          ["--cfg-scale", str(w), "--set", f"sampling.guide={checkpoint(out, label, g)}"])
                         for g in guides for w in AUTO_SCALES],
    }
    return {method: grid for method, grid in methods.items() if grid}


def score(ckpt: Path, options: list[str], n: int, seed: int, path: Path) -> dict:
    """evaluate.py once (kept if scored already)."""
    if not (path.exists() and path.stat().st_size):
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"  scoring {path.name}", flush=True)
        command = [sys.executable, "evaluate.py", "--checkpoint", str(ckpt), "--n", str(n), "--seed", str(seed),
                   *options, "--out", str(path)]
        with open(f"{path}.log", "w") as f:
            done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=f)
        if done.returncode != 0:
            path.unlink(missing_ok=True)
            sys.exit(f"evaluation failed; see {path}.log")
    return json.loads(path.read_text())


def good_enough(result: dict) -> bool:
    """The study's rule for a guidance setting: the digit asked for at least 95% of the time."""
    return result["accuracy"] is None or result["accuracy"] >= 0.95


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--curves", type=Path, default=ROOT / "experiments" / "curves", help="benchmarks/curves.py --out")
    p.add_argument("--curves-scores", type=Path, default=ROOT / "results" / "curves")
    p.add_argument("--models", default=",".join(MILESTONES), help=f"a subset of: {', '.join(MILESTONES)}")
    p.add_argument("--tune-n", type=int, default=500, help="images per tuning score (sampling seed 1)")
    p.add_argument("--n", type=int, default=1000, help="images per reported score (sampling seed 0)")
    p.add_argument("--scores", type=Path, default=ROOT / "results" / "guidance_2024")
    p.add_argument("--publish", default="guidance_2024", help="docs/results/<name>.json ('': none)")
    p.add_argument("--status", action="store_true", help="print what is scored and exit")
    args = p.parse_args(argv)
    labels = [m.strip() for m in args.models.split(",")]
    if any(m not in MILESTONES for m in labels):
        p.error(f"--models: a subset of {', '.join(MILESTONES)}")
    reported: list[str] = []
    for label in labels:
        epoch, _ = best_epoch(args.curves_scores, label)
        ckpt = checkpoint(args.curves, label, epoch)
        folder = args.scores / slug(label)
        print(f"{label}: best epoch {epoch} ({ckpt})", flush=True)
        for method, grid in variants(label, args.curves, epoch).items():
            tuned = []
            for name, options in grid:
                path = folder / f"tune_{slug(method)}_{slug(name)}.json"
                if args.status:
                    print(f"  {method}, {name}: {'scored' if path.exists() else 'to do'}")
                    continue
                tuned.append((score(ckpt, options, args.tune_n, 1, path), name, options))
            if args.status:
                continue
            # the lowest FID among the settings that draw the asked-for digit often enough (else: the lowest FID)
            pool = [t for t in tuned if good_enough(t[0])] or tuned
            _, name, options = min(pool, key=lambda t: t[0]["fid"])
            path = folder / f"{slug(method)}.json"
            score(ckpt, options, args.n, 0, path)
            reported.append(f"{label} @ epoch {epoch}, {method} ({name})={path}")
    if args.status:
        return 0
    if args.publish:
        subprocess.run([sys.executable, "compare_models.py", "--evaluations", *reported, "--as", args.publish],
                       cwd=ROOT, check=True)
    else:
        print("\n".join(reported))
    return 0


if __name__ == "__main__":
    sys.exit(main())
