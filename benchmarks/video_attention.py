"""What factorised space-time attention saves (issue 49, docs/video.md): the video DiT's cost on this machine.

    python benchmarks/video_attention.py                     # training clips/s and sampling s/clip, both kinds
    python benchmarks/video_attention.py --steps 5 --rounds 3
    python benchmarks/video_attention.py --out docs/results/video_attention.json   # what docs/video.md quotes

The two configs of configs/video/ have the same weights and differ in which tokens attend to which: every one to
every other (full: 256 x 256 pairs a block) or within a frame, then across the frames at one position (factorised).
Rounds of the two alternate, so a noisy machine slows both alike; the medians and their ratio are printed, with the
FLOPs of one training clip (difflab.infra.speed.flop_counter; the attention products' share counted by hand) and
the seconds to sample one clip (50 Euler steps, guided: one network call of a doubled batch per step, at the CPU's
sampling batch of 8).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from difflab.config import load_config  # noqa: E402
from difflab.models import build_model, count_parameters  # noqa: E402
from difflab.moving_mnist import CANVAS, FRAMES  # noqa: E402

CONFIGS = {"factorised": ROOT / "configs/video/sora_moving_mnist.yaml",
           "full": ROOT / "configs/video/sora_full_attention.yaml"}


def batch(n: int):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, 1, FRAMES, CANVAS, CANVAS, generator=g), torch.rand(n, generator=g) * 1000,
            torch.randint(0, 2, (n, 3), generator=g))


def train_seconds(model, opt, x, t, y, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        loss = model(x, t, y).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


@torch.no_grad()
def sample_seconds(model, n: int, steps: int) -> float:
    x, t, y = batch(2 * n)  # guided: the conditional and unconditional halves in one call
    start = time.perf_counter()
    for _ in range(steps):
        model(x, t, y)
    return time.perf_counter() - start


def flops_per_clip(model, x, t, y) -> float:
    """FLOPs of one training clip, attention included (difflab.infra.speed.flop_counter)."""
    from difflab.infra.speed import training_flops

    return training_flops(model, x[:1], t[:1], y[:1])


def attention_flops(model) -> float:
    """Training FLOPs per clip of the attention products q k^T and (softmax) v, counted by hand (the share of
    flops_per_clip's total that attention is): 2 products x 2 FLOPs per multiply-add x query-key pairs x width,
    forward and backward (x 3)."""
    T, S, Ft = model.times * model.grid ** 2, model.grid ** 2, model.times
    width = model.pos_embed.shape[-1]
    blocks = len(model.blocks)
    if model.attention == "full":
        pairs = blocks * T * T
    else:  # even blocks within each frame, odd ones across the frames at each position
        pairs = (blocks + 1) // 2 * Ft * S * S + blocks // 2 * S * Ft * Ft
    return 3 * 2 * 2 * pairs * width


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32, help="training clips per step (the configs' batch_size)")
    p.add_argument("--steps", type=int, default=10, help="training steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--out", type=Path, help="also write the numbers printed to this JSON file")
    args = p.parse_args()
    torch.manual_seed(0)
    models, opts = {}, {}
    for name, path in CONFIGS.items():
        cfg = load_config(path)
        models[name] = build_model(cfg.model, in_channels=1, image_size=CANVAS)
        opts[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-4)
    x, t, y = batch(args.batch)
    for name in CONFIGS:  # warm-up, outside the timing
        train_seconds(models[name], opts[name], x, t, y, 1)
    times: dict[str, list] = {name: [] for name in CONFIGS}
    for _ in range(args.rounds):
        for name in CONFIGS:
            times[name].append(train_seconds(models[name], opts[name], x, t, y, args.steps))
    print(f"video DiT, {count_parameters(models['full']):,} parameters, {torch.get_num_threads()} threads, "
          f"batch {args.batch}, {args.rounds} rounds of {args.steps} steps")
    rate, measured = {}, {}
    for name in CONFIGS:
        rate[name] = args.batch * args.steps / statistics.median(times[name])
        total, attn = flops_per_clip(models[name], x, t, y) / 1e9, attention_flops(models[name]) / 1e9
        sample = sample_seconds(models[name], 8, args.sample_steps) / 8
        print(f"  {name:10s} training {rate[name]:6.1f} clips/s   {total:5.2f} GFLOP per training clip "
              f"({attn:.2f} of it attention)   sampling {sample:5.2f} s per clip ({args.sample_steps} guided steps)")
        measured[name] = {"training_clips_per_s": rate[name], "gflop_per_training_clip": total,
                          "attention_gflop": attn, "sampling_s_per_clip": sample}
    speedup = rate["factorised"] / rate["full"]
    print(f"  factorised / full training speed: {speedup:.2f}x")
    if args.out:
        args.out.write_text(json.dumps({"kind": "video attention", "threads": torch.get_num_threads(),
                                        "batch": args.batch, "sample_steps": args.sample_steps,
                                        "speedup": speedup, **measured}, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
