"""Latent vs pixel diffusion: training images/s at (about) the same parameter count, on this machine.

    python benchmarks/latent_speed.py --threads 1

The pixel model is SD1's U-Net on 1x28x28 (configs/unified_sd1_unet_eps.yaml); the
latent one is the U-Net of configs/reference/ldm_latent.yaml on the 4x7x7 latents of
configs/reference/vae_mnist.yaml. Both run train.py's own loop (Trainer.fit) on random
data of their shape (random numbers time the same as digits; no VAE training needed).
Rounds alternate, so a busy machine slows both alike; the medians and their ratio are
printed, with the FLOPs of one training image (forward + backward) and the VAE's
one-off cost of encoding the training set.
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
from difflab.infra.speed import training_flops  # noqa: E402
from difflab.models.vae import build_vae  # noqa: E402
from difflab.training import Trainer  # noqa: E402

N = 60000  # MNIST's training set


def make_trainer(config: Path, shape: tuple, out: str) -> Trainer:
    cfg = load_config(config, [f"training.output_dir={out}", "training.device=cpu", "training.log_every=1000000"])
    x, y = torch.randn(N, *shape), torch.randint(0, 10, (N,))
    return Trainer(cfg, data=(x, y), quiet=True)


def images_per_s(trainer: Trainer, steps: int) -> float:
    start = time.perf_counter()
    trainer.fit(stop_after=trainer.step + steps)
    return steps * trainer.batch_size / (time.perf_counter() - start)


def gflop_per_image(trainer: Trainer) -> float:
    """FLOPs of one training step's forward and backward, per image (multiply-add = 2 FLOPs)."""
    x, y = trainer.x[: trainer.batch_size], trainer.y[: trainer.batch_size]
    return training_flops(trainer.model, x, torch.rand(len(x)) * 1000, y) / len(x) / 1e9


@torch.no_grad()
def vae_throughput(vae, n: int = 2000) -> tuple[float, float]:
    """(images encoded per s, images decoded per s)."""
    x = torch.rand(n, 1, 28, 28) * 2 - 1
    start = time.perf_counter()
    z = torch.cat([vae.encode_latents(x[i : i + 500]) for i in range(0, n, 500)])
    encode = n / (time.perf_counter() - start)
    start = time.perf_counter()
    torch.cat([vae.decode_latents(z[i : i + 500]) for i in range(0, n, 500)])
    return encode, n / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pixel-config", default=ROOT / "configs/unified_sd1_unet_eps.yaml", type=Path)
    p.add_argument("--latent-config", default=ROOT / "configs/reference/ldm_latent.yaml", type=Path)
    p.add_argument("--vae-config", default=ROOT / "configs/reference/vae_mnist.yaml", type=Path)
    p.add_argument("--steps", type=int, default=5, help="training steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    vae = build_vae(load_config(args.vae_config).model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {"pixel": make_trainer(args.pixel_config, (1, 28, 28), tmp),
                    "latent": make_trainer(args.latent_config, vae.latent_shape, tmp)}
        flops = {k: gflop_per_image(t) for k, t in trainers.items()}
        for t in trainers.values():
            images_per_s(t, 2)  # warm-up
        speeds = {k: [] for k in trainers}
        for _ in range(args.rounds):
            for k, t in trainers.items():
                speeds[k].append(images_per_s(t, args.steps))
    encode, decode = vae_throughput(vae)

    print(f"{args.rounds} alternating rounds of {args.steps} steps, batch 128, {torch.get_num_threads()} threads")
    median = {k: statistics.median(v) for k, v in speeds.items()}
    for k, t in trainers.items():
        shape = tuple(t.x.shape[1:])
        print(f"{k:6s} {t.cfg.name:22s} {t.params:>9,} params on {str(shape):12s} {flops[k]:6.3f} GFLOP/image "
              f"{median[k]:8.1f} images/s  (rounds: {', '.join(f'{v:.0f}' for v in speeds[k])})")
    print(f"latent / pixel: {median['latent'] / median['pixel']:.2f}x the training images/s, "
          f"{flops['pixel'] / flops['latent']:.2f}x fewer FLOPs per image, "
          f"{(28 * 28) / (vae.latent_shape[1] * vae.latent_shape[2]):.0f}x fewer positions")
    print(f"VAE {sum(p.numel() for p in vae.parameters()):,} params: encodes {encode:.0f} images/s "
          f"(the {N} training images once: {N / encode:.0f} s, then cached), decodes {decode:.0f} images/s")


if __name__ == "__main__":
    main()
