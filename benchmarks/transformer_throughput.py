"""Transformer training throughput on the CPU, before and after the hourglass (issue 46, part 3; docs/lab/speed.md).

    python benchmarks/transformer_throughput.py [--steps 6 --rounds 5 --threads 2]

Times one training step (forward, MSE, backward, AdamW; the bare loop of train_throughput.py) of the SD2 U-Net,
the SD3 MMDiT and the DiT as configured, and of the two transformers with `model.hourglass: true` (HDiT,
Crowson et al. 2024: the blocks between the first and the last run on 2x2-merged tokens). The rows alternate
round by round, so a noisy machine slows all alike; it prints parameters, GFLOP per training image
(difflab.infra.speed.flop_counter), the median images/s and its ratio to the U-Net's. Run it alone: two CPU-heavy
processes on 2 cores slow each other ten-fold.
"""

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from throughput_table import flops_per_image  # noqa: E402  (benchmarks/, beside this script)
from train_throughput import bare_loop  # noqa: E402

from difflab.config import load_config  # noqa: E402
from difflab.models import build_model, count_parameters  # noqa: E402

ROWS = [  # label, config, overrides
    ("SD2 U-Net v", "configs/unified_sd2_unet_v.yaml", []),
    ("SD3 MMDiT (before)", "configs/unified_sd3_mmdit_flow.yaml", []),
    ("SD3 MMDiT, hourglass", "configs/unified_sd3_mmdit_flow.yaml", ["model.hourglass=true"]),
    ("DiT (before)", "configs/reference/dit_transformer.yaml", []),
    ("DiT, hourglass", "configs/reference/dit_transformer.yaml", ["model.hourglass=true"]),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6, help="training steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = 4096  # random pixels time the same as digits
    x, y = torch.rand(n, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (n,))
    runs = []
    for label, config, overrides in ROWS:
        cfg = load_config(ROOT / config, overrides)
        torch.manual_seed(0)
        model = build_model(cfg.model)
        runs.append({"label": label, "model": model, "batch": cfg.training.batch_size,
                     "opt": torch.optim.AdamW(model.parameters(), lr=cfg.training.lr),
                     "params": count_parameters(model), "gflop": flops_per_image(model, (1, 28, 28)) / 1e9,
                     "rates": []})
    gen = torch.Generator().manual_seed(0)
    for r in runs:  # warm-up
        bare_loop(r["model"], r["opt"], x, y, r["batch"], 2, gen)
    for i in range(args.rounds):
        for r in runs:
            r["rates"].append(bare_loop(r["model"], r["opt"], x, y, r["batch"], args.steps, gen))
        print(f"round {i + 1}/{args.rounds}: " + ", ".join(f"{r['label']} {r['rates'][-1]:.0f}" for r in runs),
              file=sys.stderr, flush=True)
    base = statistics.median(runs[0]["rates"])
    print(f"{torch.get_num_threads()} threads, batch {runs[0]['batch']}, {args.rounds} alternating rounds of "
          f"{args.steps} steps; images/s: median (min-max)")
    print("| model | parameters | GFLOP / training image | images/s | / U-Net |\n|---|---|---|---|---|")
    for r in runs:
        med = statistics.median(r["rates"])
        print(f"| {r['label']} | {r['params']:,} | {r['gflop']:.2f} | {med:.0f} ({min(r['rates']):.0f}-"
              f"{max(r['rates']):.0f}) | {med / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
