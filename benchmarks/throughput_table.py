"""`train_throughput.py --all`: FLOPs, images/s and achieved GFLOP/s for every config."""

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from difflab.config import load_config  # noqa: E402
from difflab.infra.speed import training_flops  # noqa: E402
from difflab.models import build_model, count_parameters  # noqa: E402

CONFIGS = ["configs/unified_sd1_unet_eps.yaml", "configs/unified_sd2_unet_v.yaml",
           "configs/unified_sd3_mmdit_flow.yaml", "configs/reference/ddpm_original.yaml",
           "configs/reference/unet_x0_prediction.yaml", "configs/reference/unet_flow.yaml",
           "configs/reference/dit_transformer.yaml"]


# the shapes the docs' FLOP tables compare besides the configs themselves (docs/dit.md, docs/lab/)
VARIANTS = [("dit_transformer, 4x4 patches", "configs/reference/dit_transformer.yaml", ["model.patch_size=4"]),
            ("unified_sd3_mmdit_flow, 4 joint blocks", "configs/unified_sd3_mmdit_flow.yaml",
             ["model.depth=4", "model.single_depth=0"]),
            ("unified_sd3_mmdit_flow, 4 joint blocks, 4x4 patches", "configs/unified_sd3_mmdit_flow.yaml",
             ["model.depth=4", "model.single_depth=0", "model.patch_size=4"]),
            ("unified_sd3_mmdit_flow, hourglass", "configs/unified_sd3_mmdit_flow.yaml", ["model.hourglass=true"]),
            ("dit_transformer, hourglass", "configs/reference/dit_transformer.yaml", ["model.hourglass=true"])]


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    """This machine's fp32 matmul GFLOP/s, now (the ceiling for everything below)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return reps * 2 * n**3 / (time.perf_counter() - start) / 1e9


def flops_per_image(model, shape) -> float:
    """FLOPs of one image's training forward and backward, attention included (difflab.infra.speed.flop_counter)."""
    return training_flops(model, torch.randn(1, *shape), torch.full((1,), 500.0), torch.tensor([3]))


def train_speed(model, shape, batch: int, steps: int, rounds: int) -> float:
    """Median images/s of forward + MSE + backward + AdamW, in rounds."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, t, y = torch.randn(batch, *shape), torch.rand(batch) * 1000, torch.randint(0, 11, (batch,))

    def step():
        loss = (model(x, t, y) - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(), step()  # warm-up (and compilation)
    speeds = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        speeds.append(steps * batch / (time.perf_counter() - start))
    return statistics.median(speeds)


@torch.no_grad()
def sample_speed(model, shape, batch: int = 100, steps: int = 5) -> float:
    """Images/s of sampling at 50 steps with CFG (two forward passes' worth per step)."""
    x, y = torch.randn(2 * batch, *shape), torch.randint(0, 11, (2 * batch,))
    model(x, torch.full((2 * batch,), 500.0), y)
    start = time.perf_counter()
    for i in range(steps):
        model(x, torch.full((2 * batch,), 1000.0 - 100 * i), y)
    per_step = (time.perf_counter() - start) / steps
    return batch / (50 * per_step)


def diffusers_peer():
    """diffusers' UNet2DModel shaped like our SD1 U-Net: channels (16, 64, 96), one res block
    per level, attention at 7x7, class embeddings; the same parameter count."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        sys.exit("--peer compares against diffusers' UNet2DModel: pip install diffusers (not a difflab dependency)")

    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(16, 64, 96),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), num_class_embeds=11,
                       norm_num_groups=8, attention_head_dim=24)


class _Peer(torch.nn.Module):
    """diffusers' (x, t, class_labels) -> output object, as our (x, t, y) -> tensor."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t, y):
        return self.net(x, t, class_labels=y).sample


def run_flops(args) -> int:
    """`--flops`: parameters and GFLOP per training image of every config and VARIANTS, nothing timed (seconds)."""
    print("| network | params | tokens or positions | GFLOP / train image |\n|---|---|---|---|")
    rows = []
    for name, path, overrides in [(Path(c).stem, c, []) for c in CONFIGS] + VARIANTS:
        cfg = load_config(ROOT / path, overrides)
        model = build_model(cfg.model)
        patch = getattr(cfg.model.net, "patch_size", None)
        where = f"{(28 // patch) ** 2} tokens" if patch else "28x28 pixels"
        rows.append({"network": name, "config": path, "overrides": overrides, "params": count_parameters(model),
                     "inputs": where, "gflop_per_training_image": round(flops_per_image(model, (1, 28, 28)) / 1e9, 4)})
        print(f"| {name} | {rows[-1]['params']:,} | {where} | {rows[-1]['gflop_per_training_image']:.2f} |")
    if args.out:
        args.out.write_text(json.dumps({"kind": "flops", "counter": "difflab.infra.speed.flop_counter",
                                        "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def run_table(args) -> int:
    peak = matmul_peak()
    rows = []
    configs = [load_config(ROOT / c) for c in CONFIGS]
    models = [(Path(c).stem, build_model(cfg.model), cfg.training.batch_size) for c, cfg in zip(CONFIGS, configs)]
    if args.peer:
        try:  # timed at the SD1 config's batch: the same step as ours
            models.append(("diffusers UNet2DModel (peer)", _Peer(diffusers_peer()), configs[0].training.batch_size))
        except ImportError:
            print("--peer: diffusers is not installed (pip install diffusers); skipping the peer", file=sys.stderr)
    for name, model, batch in models:
        shape = (1, 28, 28)
        fl = flops_per_image(model, shape)
        eager = train_speed(model, shape, batch, args.steps, args.rounds)
        compiled = train_speed(torch.compile(model), shape, batch, args.steps, args.rounds) if args.compile else None
        best = max(eager, compiled or 0)
        rows.append((name, count_parameters(model), fl / 1e9, eager, compiled, fl * best / 1e9,
                     sample_speed(model, shape)))
        print(f"{name}: done", file=sys.stderr, flush=True)
    print(f"fp32 matmul peak, measured now: {peak:.0f} GFLOP/s; {torch.get_num_threads()} threads; "
          f"{args.rounds} rounds of {args.steps} steps")
    print("| config | params | GFLOP / train image | train img/s eager | compiled | achieved GFLOP/s (% of peak) "
          "| sample img/s (50 steps, CFG) |")
    print("|---|---|---|---|---|---|---|")
    for name, params, gfl, eager, compiled, achieved, sampling in rows:
        comp = f"{compiled:.0f}" if compiled else "-"
        print(f"| {name} | {params:,} | {gfl:.2f} | {eager:.0f} | {comp} | "
              f"{achieved:.0f} ({100 * achieved / peak:.0f}%) | {sampling:.1f} |")
    names = [r[0] for r in rows]
    if "diffusers UNet2DModel (peer)" in names:
        ours, peer = rows[names.index("unified_sd1_unet_eps")][3], rows[-1][3]
        print(f"\nours / diffusers at equal parameters: {ours / peer:.2f}x (training images/s, eager)")
    return 0


def run_peer(args) -> int:
    """Our SD1 U-Net against diffusers' UNet2DModel, in alternating rounds of the same step,
    so a noisy machine slows both alike (the --all table times them minutes apart)."""
    cfg = load_config(ROOT / CONFIGS[0])
    ours, peer = build_model(cfg.model), _Peer(diffusers_peer())
    batch, shape = cfg.training.batch_size, (1, 28, 28)
    speeds = {"ours": [], "peer": []}
    for _ in range(args.rounds):
        speeds["ours"].append(train_speed(ours, shape, batch, args.steps, 1))
        speeds["peer"].append(train_speed(peer, shape, batch, args.steps, 1))
    o, q = statistics.median(speeds["ours"]), statistics.median(speeds["peer"])
    print(f"batch {batch}, {torch.get_num_threads()} threads, {args.rounds} alternating rounds of {args.steps} steps")
    print(f"ours  ({count_parameters(ours):,} params): {o:7.1f} images/s  "
          f"(rounds: {', '.join(f'{v:.0f}' for v in speeds['ours'])})")
    print(f"peer  ({count_parameters(peer):,} params): {q:7.1f} images/s  "
          f"(rounds: {', '.join(f'{v:.0f}' for v in speeds['peer'])})")
    print(f"ours / diffusers at equal parameters: {o / q:.2f}x")
    return 0

