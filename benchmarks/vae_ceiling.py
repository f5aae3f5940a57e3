"""How good can a latent model be? The FID of the VAE's reconstructions: stage 2's ceiling.

    python benchmarks/vae_ceiling.py --n 500

A latent diffusion model draws through the VAE's decoder, so it can at best score what
decode(encode(x)) of real images scores (Rombach et al. 2022, Sec. 4.1: how much
the autoencoder compresses bounds the quality). This prints, at the same N and on the same judge as evaluate.py:
the FID of N training images reconstructed by the VAE, of the same N images as they are, and
the floor evaluate.py reports at this N (a fixed subset of training images). Compare a latent
model's FID with the first line, not with zero.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from difflab.classifier import load_classifier  # noqa: E402
from difflab.data import load_split  # noqa: E402
from difflab.evaluation import evaluate_images  # noqa: E402
from difflab.latent import load_vae  # noqa: E402
from difflab.vae_training import reconstruct  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vae", default="experiments/vae_mnist/checkpoints/last.pt", help="a VAE checkpoint (stage 1)")
    p.add_argument("--n", type=int, default=500, help="training images to reconstruct")
    p.add_argument("--seed", type=int, default=1, help="which random N training images")
    args = p.parse_args()
    if not Path(args.vae).is_file():
        sys.exit(f"error: no VAE at {args.vae}: train it with "
                 "python train.py --config configs/reference/vae_mnist.yaml")
    images, labels = load_split("train")
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[: args.n]
    images, labels = images[pick], labels[pick]
    with torch.no_grad():
        rebuilt = reconstruct(load_vae(args.vae, "cpu"), images)
    judge = load_classifier()
    for what, x in (("reconstructed by the VAE", rebuilt), ("as they are", images)):
        r = evaluate_images(x, labels, judge)
        print(json.dumps({"images": f"{args.n} training images {what}", "fid": round(r["fid"], 2),
                          "fid_floor": round(r["fid_floor"], 2), "accuracy": r["accuracy"]}))


if __name__ == "__main__":
    main()
