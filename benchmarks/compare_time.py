"""Where the time of `make compare` goes, and what the sampling batch changed (issue 25, item 4).

    python benchmarks/compare_time.py                  # the three milestones, a few minutes
    python benchmarks/compare_time.py --configs configs/reference/dit_transformer.yaml

For each config, in one run (so a noisy machine slows every number alike):
- train.py's loop (Trainer.fit) in images/s, on random pixels (speed does not depend on them);
- sampling in image-steps/s through Pipeline.generate with the config's guidance, in batches
  of 64 (the CPU default before) and of today's default (pipeline.sampling_batch_size),
  in alternating rounds.
From these it projects the minutes `make compare` spends: training (COMPARE_IMAGES per seed),
the table (COMPARE_N samples per seed at the config's steps) and the sweeps (seed 0 only:
COMPARE_SWEEP_N samples at 10, 25, 50 steps and at 5 guidance scales, scale 1 counted at half
cost since it skips the unconditional pass). Loading, figures and FID are left out: the run
itself reports them in results.json ("seconds").
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
from difflab.pipeline import Pipeline, sampling_batch_size  # noqa: E402
from difflab.training import Trainer  # noqa: E402

OLD_BATCH = 64  # pipeline.sampling_batch_size on a CPU before issue 25


def train_speed(cfg_path: Path, steps: int, rounds: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(cfg_path, [f"training.output_dir={tmp}", "training.device=cpu", "training.log_every=1000000"])
        x, y = torch.rand(4096, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (4096,))
        trainer = Trainer(cfg, data=(x, y), quiet=True)
        trainer.fit(stop_after=2)  # warm-up
        speeds = []
        for _ in range(rounds):
            start = time.perf_counter()
            trainer.fit(stop_after=trainer.step + steps)
            speeds.append(steps * trainer.batch_size / (time.perf_counter() - start))
    return statistics.median(speeds)


def sample_speeds(cfg_path: Path, n: int, steps: int, rounds: int) -> dict[int, float]:
    """Batch size -> image-steps/s with the config's sampler and guidance."""
    cfg = load_config(cfg_path)
    pipe = Pipeline(build_model(cfg.model), cfg, torch.device("cpu"))
    labels = torch.arange(n) % 10
    batches = sorted({OLD_BATCH, sampling_batch_size("cpu", cfg.model.architecture)})
    best = {b: [] for b in batches}
    pipe.generate(labels[:8], steps=2, batch_size=8)  # warm-up
    for _ in range(rounds):
        for b in batches:
            start = time.perf_counter()
            pipe.generate(labels, steps=steps, batch_size=b)
            best[b].append(n * steps / (time.perf_counter() - start))
    return {b: max(v) for b, v in best.items()}


def projected_minutes(cfg, train_ips: float, sample_isps: float, images: int, n: int, sweep_n: int) -> dict:
    steps = cfg.sampling.steps
    scales = [1, 1.5, 2, 3.5, 7.5]
    sweeps = sum(sweep_n * s for s in (10, 25, 50)) / sample_isps
    sweeps += sum(sweep_n * steps * (0.5 if c == 1 else 1.0) for c in scales) / sample_isps
    return {"train": images / train_ips / 60, "table": n * steps / sample_isps / 60, "sweeps": sweeps / 60}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=sorted(str(c) for c in (ROOT / "configs").glob("*.yaml")))
    p.add_argument("--train-steps", type=int, default=15, help="training steps per round")
    p.add_argument("--sample-n", type=int, default=64, help="images per sampling round")
    p.add_argument("--sample-steps", type=int, default=3, help="sampler steps per sampling round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=60000, help="COMPARE_IMAGES")
    p.add_argument("--n", type=int, default=1000, help="COMPARE_N")
    p.add_argument("--sweep-n", type=int, default=100, help="COMPARE_SWEEP_N")
    args = p.parse_args()

    print(f"{torch.get_num_threads()} threads; minutes projected for COMPARE_IMAGES={args.images}, "
          f"COMPARE_N={args.n}, COMPARE_SWEEP_N={args.sweep_n}")
    print(f"{'config':<26} {'train img/s':>11} {'img-steps/s @64':>15} {'@default':>12} "
          f"{'train':>6} {'table @64':>9} {'table':>6} {'sweeps @64':>10} {'sweeps':>6}")
    totals = {"train": 0.0, "table_old": 0.0, "table": 0.0, "sweeps_old": 0.0, "sweeps": 0.0}
    for path in args.configs:
        cfg = load_config(path)
        ips = train_speed(Path(path), args.train_steps, args.rounds)
        speeds = sample_speeds(Path(path), args.sample_n, args.sample_steps, args.rounds)
        default = sampling_batch_size("cpu", cfg.model.architecture)
        old = projected_minutes(cfg, ips, speeds[OLD_BATCH], args.images, args.n, args.sweep_n)
        new = projected_minutes(cfg, ips, speeds[default], args.images, args.n, args.sweep_n)
        for key, value in (("train", new["train"]), ("table_old", old["table"]), ("table", new["table"]),
                           ("sweeps_old", old["sweeps"]), ("sweeps", new["sweeps"])):
            totals[key] += value
        print(f"{cfg.name:<26} {ips:>11.1f} {speeds[OLD_BATCH]:>15.1f} {speeds[default]:>8.1f} ({default:>2}) "
              f"{new['train']:>6.1f} {old['table']:>9.1f} {new['table']:>6.1f} {old['sweeps']:>10.1f} "
              f"{new['sweeps']:>6.1f}")
    for seeds in (1, 3):
        before = seeds * (totals["train"] + totals["table_old"]) + totals["sweeps_old"]
        after = seeds * (totals["train"] + totals["table"]) + totals["sweeps"]
        print(f"make compare SEEDS={seeds}: {before:.0f} min with sampling batches of {OLD_BATCH}, "
              f"{after:.0f} min with today's defaults (before loading, figures and FID)")


if __name__ == "__main__":
    sys.exit(main())
