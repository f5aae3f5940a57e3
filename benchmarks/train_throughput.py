"""Training throughput.

    python benchmarks/train_throughput.py                 # SD1: train.py's loop vs a bare loop
    python benchmarks/train_throughput.py --config configs/unified_sd2_unet_v.yaml --steps 20
    python benchmarks/train_throughput.py --all [--compile] [--peer]
    python benchmarks/train_throughput.py --flops         # GFLOP per training image of every network, in seconds
    python benchmarks/train_throughput.py --flops --out docs/results/flops.json    # what the docs quote

Default: train.py's loop against a bare forward/backward/step loop on the same model
and batch. Rounds of the two alternate, so a noisy machine slows both alike; the
medians and their ratio are printed. The loop's overhead (EMA, clipping, LR schedule,
batch indexing, logging) should stay under 10% on the CPU.

--all: per config, parameters, FLOPs per training image (difflab.infra.speed.flop_counter),
images/s eager (and compiled with --compile), the GFLOP/s achieved against this
machine's fp32 matmul peak measured in the same run, and sampling images/s. FLOPs are
counted by difflab.infra.speed.flop_counter: torch's counter, told what attention costs on
a CPU (torch alone counts it as nothing there). --flops prints only the FLOP table.
--peer adds diffusers' UNet2DModel configured to our SD1 U-Net's parameter count
(pip install diffusers), timed with the same bare loop; --peer alone times ours and it in
alternating rounds and prints their ratio.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from difflab.config import load_config  # noqa: E402
from difflab.models import build_model  # noqa: E402
from difflab.training import Trainer  # noqa: E402


def bare_loop(model, opt, x, y, batch_size, steps, gen):
    """The least a training step can do: forward, MSE, backward, AdamW."""
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=gen)
        xb, yb = x[idx], y[idx]
        t = torch.rand(batch_size, generator=gen)
        noise = torch.randn(xb.shape, generator=gen)
        loss = (model(xb + noise, t * 1000, yb) - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch_size / (time.perf_counter() - start)


def trainer_loop(trainer, steps):
    """train.py's own loop (Trainer.fit), for `steps` more steps."""
    start = time.perf_counter()
    trainer.fit(stop_after=trainer.step + steps)
    return steps * trainer.batch_size / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs/unified_sd1_unet_eps.yaml"))
    p.add_argument("--steps", type=int, default=10, help="steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--all", action="store_true", help="a table over every config")
    p.add_argument("--flops", action="store_true", help="only the FLOPs per training image of every network")
    p.add_argument("--out", type=Path, help="with --flops: also write the table to this JSON file")
    p.add_argument("--compile", action="store_true", help="with --all: also time torch.compile")
    p.add_argument("--peer", action="store_true",
                   help="with --all: a row for diffusers' UNet2DModel; alone: ours against it in alternating rounds")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.all or args.peer or args.flops:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from throughput_table import run_flops, run_peer, run_table

        return run_flops(args) if args.flops else run_table(args) if args.all else run_peer(args)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, [f"training.output_dir={tmp}", "training.device=cpu",
                                        "training.log_every=1000000"])
        n = 60000  # the size of MNIST; random pixels time the same as digits
        x, y = torch.rand(n, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (n,))
        trainer = Trainer(cfg, data=(x, y), quiet=True)
        model = build_model(cfg.model)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.training.lr)
        gen = torch.Generator().manual_seed(0)
        bare_loop(model, opt, x, y, trainer.batch_size, 2, gen)  # warm-up both
        trainer_loop(trainer, 2)
        bare, loop = [], []
        for _ in range(args.rounds):
            bare.append(bare_loop(model, opt, x, y, trainer.batch_size, args.steps, gen))
            loop.append(trainer_loop(trainer, args.steps))
    b, lp = statistics.median(bare), statistics.median(loop)
    print(f"config {cfg.name}, batch {trainer.batch_size}, {torch.get_num_threads()} threads, "
          f"{args.rounds} alternating rounds of {args.steps} steps")
    print(f"bare forward/backward/step : {b:8.1f} images/s  (rounds: {', '.join(f'{v:.0f}' for v in bare)})")
    print(f"train.py loop (Trainer.fit): {lp:8.1f} images/s  (rounds: {', '.join(f'{v:.0f}' for v in loop)})")
    print(f"loop / bare = {lp / b:.3f}  (overhead {100 * (1 - lp / b):.1f}%)")


if __name__ == "__main__":
    sys.exit(main())
