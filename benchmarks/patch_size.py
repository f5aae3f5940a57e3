"""Patch size is a measured choice: speed against quality at an equal budget of training images.

    python benchmarks/patch_size.py --config configs/reference/dit_transformer.yaml --images 20000

For each patch size, trains the config (same seed, same images) through the Trainer,
then prints training images/s, the final training loss, and FID / accuracy from
evaluate's metrics on --n samples. Rows are interleaved in one run so a noisy machine
slows every row alike; compare the ratios.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from difflab.classifier import load_classifier  # noqa: E402
from difflab.config import load_config  # noqa: E402
from difflab.data import load_split  # noqa: E402
from difflab.evaluation import evaluate_images  # noqa: E402
from difflab.pipeline import Pipeline  # noqa: E402
from difflab.training import Trainer  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs/reference/dit_transformer.yaml"))
    p.add_argument("--patches", default="2,4")
    p.add_argument("--images", type=int, default=20000, help="training images per patch size")
    p.add_argument("--n", type=int, default=1000, help="samples for FID / accuracy")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_split("train")
    classifier = load_classifier()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for patch in [int(v) for v in args.patches.split(",")]:
            cfg = load_config(args.config, [f"model.patch_size={patch}", f"training.output_dir={tmp}/patch{patch}",
                                            "training.device=cpu", "training.log_every=20",
                                            f"training.max_images={args.images}", "training.epochs=100",
                                            "sampling.n_per_class=1"])
            trainer = Trainer(cfg, data=data, quiet=True)
            log = trainer.fit()
            pipe = Pipeline(trainer.ema.model, cfg, trainer.device)
            labels = torch.arange(args.n) % 10
            res = pipe.generate(labels, seed=0, batch_size=250)
            metrics = evaluate_images(res.images, labels, classifier)
            seconds = trainer.elapsed
            rows.append({"patch": patch, "tokens": (28 // patch) ** 2, "params": trainer.params,
                         "images": trainer.images_seen, "train_images_per_s": round(trainer.images_seen / seconds, 1),
                         "final_loss": round(log["loss"], 4), "fid": round(metrics["fid"], 2),
                         "fid_floor": round(metrics["fid_floor"], 2), "accuracy": round(metrics["accuracy"], 4),
                         "sample_seconds_per_1000": round(1000 * res.seconds / args.n, 1)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{Path(args.config).stem}, {args.images} training images each, {torch.get_num_threads()} threads")
    print("| patch | tokens | params | train img/s | final loss | FID | accuracy | s / 1000 samples |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['patch']} | {r['tokens']} | {r['params']:,} | {r['train_images_per_s']} | {r['final_loss']} "
              f"| {r['fid']} | {r['accuracy']:.3f} | {r['sample_seconds_per_1000']} |")


if __name__ == "__main__":
    main()
