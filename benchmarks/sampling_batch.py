"""How many images per sampling batch? The measurement behind pipeline.sampling_batch_size.

    python benchmarks/sampling_batch.py                      # the SD2 U-Net, on this machine
    python benchmarks/sampling_batch.py --config configs/unified_sd3_mmdit_flow.yaml

Times Pipeline.generate (the path evaluate.py and compare_models.py take, guidance
included) on --n images for each batch size, with the config's untrained network: speed
does not depend on the weights. Rounds are interleaved so a noisy machine slows every
batch size alike; the best round of each is shown, with its speed relative to a batch of 500.
The images are the same for every batch size (the starting noise is drawn for all first),
which the script checks.
"""

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from difflab.config import load_config  # noqa: E402
from difflab.models import build_model, count_parameters  # noqa: E402
from difflab.pipeline import Pipeline, sampling_batch_size  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs/unified_sd2_unet_v.yaml"))
    p.add_argument("--batches", default="16,32,64,128,256,500")
    p.add_argument("--n", type=int, default=500, help="images per timing")
    p.add_argument("--steps", type=int, default=4, help="sampler steps per timing")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(b) for b in args.batches.split(",")]

    cfg = load_config(args.config)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    pipe = Pipeline(model.to(args.device), cfg, torch.device(args.device))
    labels = torch.arange(args.n) % 10
    print(f"{cfg.name}: {count_parameters(model):,} parameters, {args.n} images x {args.steps} "
          f"{cfg.sampling.sampler} steps, guidance {cfg.sampling.cfg_scale}, {torch.get_num_threads()} threads")

    best, images = {b: 0.0 for b in sizes}, {}
    pipe.generate(labels[: sizes[0]], steps=1, batch_size=sizes[0])  # warm-up
    for _ in range(args.rounds):
        for b in sizes:
            start = time.perf_counter()
            out = pipe.generate(labels, steps=args.steps, batch_size=b, seed=0).images
            best[b] = max(best[b], args.n * args.steps / (time.perf_counter() - start))
            images[b] = out
    same = all(torch.allclose(images[b], images[sizes[0]], atol=1e-4) for b in sizes)

    base = best.get(500)
    print(f"{'batch':>6} {'image-steps/s':>14} {'vs 500':>7}")
    for b in sizes:
        ratio = f"{best[b] / base:6.2f}x" if base else "   -"
        print(f"{b:>6} {best[b]:>14.1f} {ratio:>7}")
    print(f"default here (pipeline.sampling_batch_size): {sampling_batch_size(args.device, cfg.model.architecture)}; "
          f"same images for every batch size: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
