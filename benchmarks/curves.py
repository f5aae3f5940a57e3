"""Learning curves (issue 46, docs/why_they_changed.md): quality against training images, FLOPs and CPU time.

    python benchmarks/curves.py                  # make curves: hours on 2 CPU cores, resumable (run it again)
    python benchmarks/curves.py --status         # where every run stands, nothing trained
    python benchmarks/curves.py --epochs 2 --points 1,2 --n 40 --max-images 640 --out /tmp/curves --publish ''
                                                 # a smoke test: two slices of 640 images, nothing published

Each model trains ONE run of --epochs epochs (its config's recipe; the learning rate's cosine decay spans the
whole run) and is scored with evaluate.py at the end of each epoch in --points (N images, sampling seed 0, the
config's own sampler, steps and guidance; the study's judge). Points before the last are mid-run: their learning
rate has not decayed, so they sit above what a run of that length alone would reach.

Resuming: within a machine, each `train.py --until-epoch K --resume` slice continues where the last stopped. Across
machines (a new checkout has no checkpoints), the published docs/results/<--publish>.json is the memory: a model
whose points are all published there is not trained again, so the study goes model by model (one model's whole
run, then the next), and each model's run fits in one sitting (a U-Net's 10 epochs: about 1.5 hours on 2 cores).
A model half-trained on a machine that is gone starts again from its first epoch.

Each score file gains a "training" record (epoch, run length, images, wall and CPU seconds of training from the
checkpoint: CPU seconds, summed over the process's threads, do not count the time a run was paused; GFLOP per
training image from difflab.infra.speed.flop_counter, attention included) before the scores are published as
docs/results/<--publish>.json (block `learning curves`) with the figure docs/images/learning_curves.png, after every
scored point.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from throughput_table import flops_per_image  # noqa: E402  (benchmarks/, beside this script)

MODELS = {  # label: config; the seed's three milestones and the DiT
    "SD1 U-Net eps": "configs/unified_sd1_unet_eps.yaml",
    "SD2 U-Net v": "configs/unified_sd2_unet_v.yaml",
    "SD3 MMDiT flow": "configs/unified_sd3_mmdit_flow.yaml",
    "DiT flow": "configs/reference/dit_transformer.yaml",
}
FIGURE = ROOT / "docs" / "images" / "learning_curves.png"


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower())


def run_dir(out: Path, label: str) -> Path:
    return out / slug(label) / Path(MODELS[label]).stem


def checkpoint(out: Path, label: str, epoch: int) -> Path:
    return run_dir(out, label) / "checkpoints" / f"model_epoch_{epoch}.pt"


def train_until(out: Path, label: str, epoch: int, args) -> None:
    """Train the model's one run up to the end of `epoch` (a slice: train.py --until-epoch, --resume after)."""
    if checkpoint(out, label, epoch).exists():
        return
    overrides = [f"training.epochs={args.epochs}", f"training.output_dir={out / slug(label)}",
                 f"training.threads={args.threads}"]
    if args.max_images:  # a smoke test: epochs of the first max_images training images
        overrides.append(f"data.limit={args.max_images}")
    resume = ["--resume"] if (run_dir(out, label) / "checkpoints" / "last.pt").exists() else []
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"{slug(label)}.train.log"
    command = [sys.executable, "train.py", "--config", MODELS[label], *overrides, "--until-epoch", str(epoch), *resume]
    print(f"{label}: training to epoch {epoch} of {args.epochs} (log: {log})", flush=True)
    with open(log, "a") as f:
        done = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0 or not checkpoint(out, label, epoch).exists():
        sys.exit(f"{label}: training to epoch {epoch} failed (exit {done.returncode}); see {log}")


def gflop_per_image(label: str) -> float:
    """FLOPs of one training image's forward and backward pass through the config's network, in GFLOP."""
    from difflab.config import load_config
    from difflab.models import build_model

    cfg = load_config(ROOT / MODELS[label])
    model = build_model(cfg.model)
    return flops_per_image(model, (1, 28, 28)) / 1e9


def score(out: Path, scores: Path, label: str, epoch: int, args, gflop: float) -> Path:
    """evaluate.py on the epoch's checkpoint, kept if scored already; the checkpoint's training record added."""
    from difflab.infra.checkpoint import load_checkpoint

    path = scores / f"{slug(label)}_epoch{epoch}.json"
    if path.exists() and path.stat().st_size:
        return path
    ckpt = checkpoint(out, label, epoch)
    print(f"{label}: scoring epoch {epoch} (N = {args.n})", flush=True)
    command = [sys.executable, "evaluate.py", "--checkpoint", str(ckpt), "--n", str(args.n), "--out", str(path)]
    with open(f"{path}.log", "w") as f:
        done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=f)
    if done.returncode != 0:
        path.unlink(missing_ok=True)
        sys.exit(f"{label} at epoch {epoch}: evaluation failed; see {path}.log")
    state = load_checkpoint(ckpt)
    result = json.loads(path.read_text())
    images = int(state["images_seen"])
    result["training"] = {"epoch": epoch, "images": images, "seconds": round(float(state.get("seconds") or 0.0), 1),
                          "cpu_seconds": round(float(state.get("cpu_seconds") or 0.0), 1),
                          "gflop_per_image": round(gflop, 4), "pflop": round(gflop * images / 1e6, 4),
                          "threads": args.threads, "run_epochs": args.epochs}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def figure(rows: list[dict], png: Path) -> None:
    """FID against training images, training compute (PFLOP) and CPU hours, a line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    models: dict = {}
    for r in rows:
        models.setdefault(r["label"].rpartition(" @ ")[0], []).append(r)
    for name, points in models.items():
        points.sort(key=lambda r: r["training"]["images"])
        fid = [r["fid"] for r in points]
        axes[0].plot([r["training"]["images"] for r in points], fid, "o-", label=name)
        axes[1].plot([r["training"]["pflop"] for r in points], fid, "o-", label=name)
        axes[2].plot([r["training"].get("cpu_seconds", 0) / 3600 for r in points], fid, "o-", label=name)
    floor = rows[0]["fid_floor"]
    threads = rows[0]["training"]["threads"]
    for ax, what in zip(axes, ("training images", "training compute (PFLOP, forward + backward)",
                               f"training CPU hours (this machine, {threads} threads)")):
        ax.axhline(floor, color="grey", ls=":", lw=1, label=f"floor ({floor:.2f})")
        ax.set_xscale("log"), ax.set_yscale("log"), ax.set_xlabel(what), ax.set_ylabel(f"FID (N = {rows[0]['n']})")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle("Quality against training: one run per model, scored at the end of epochs", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10, help="each model's one run, in epochs (its LR schedule)")
    p.add_argument("--points", default="1,2,5,10", help="epochs at which each run is scored")
    p.add_argument("--n", type=int, default=1000, help="samples per score (evaluate.py --n)")
    p.add_argument("--models", default=",".join(MODELS), help=f"a subset of: {', '.join(MODELS)}")
    p.add_argument("--threads", type=int, default=2, help="training.threads of every run")
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "curves", help="where the runs train")
    p.add_argument("--scores", type=Path, default=None, help="where the scores go (default: results/curves)")
    p.add_argument("--max-images", type=int, default=0, help="a smoke test: epochs of this many images")
    p.add_argument("--publish", default="curves", help="docs/results/<name>.json after each point ('': none)")
    p.add_argument("--status", action="store_true", help="print where every run stands and exit")
    args = p.parse_args(argv)
    points = sorted({int(e) for e in args.points.split(",")})
    labels = [m.strip() for m in args.models.split(",")]
    unknown = [m for m in labels if m not in MODELS]
    if unknown or not points or points[0] < 1 or points[-1] > args.epochs:
        p.error(f"unknown models {unknown}" if unknown else f"--points must lie in 1..{args.epochs}")
    out = args.out if args.out.is_absolute() else ROOT / args.out
    scores = args.scores or (ROOT / "results" / "curves" if args.out == p.get_default("out") else out / "scores")
    scores.mkdir(parents=True, exist_ok=True)
    if args.publish:
        recover(scores, args.publish, labels, points, args)
    if args.status:
        for label in labels:
            have = [e for e in points if checkpoint(out, label, e).exists()]
            scored = [e for e in points if (scores / f"{slug(label)}_epoch{e}.json").exists()]
            print(f"{label}: trained to epochs {have or 'none'} of {points}; scored {scored or 'none'}")
        return 0
    torch.set_num_threads(args.threads)
    done: list[tuple[str, Path]] = []
    for label in labels:  # model by model: a whole run, then the next (see "Resuming" above)
        todo = [e for e in points if not (scores / f"{slug(label)}_epoch{e}.json").exists()]
        gflop = gflop_per_image(label) if todo else 0.0
        for epoch in points:
            if epoch in todo:
                train_until(out, label, epoch, args)
            done.append((f"{label} @ epoch {epoch}", score(out, scores, label, epoch, args, gflop)))
            if args.publish and epoch in todo:
                # with this model's later points scored before, and the later models' (both recovered)
                later = later_rows(scores, [label], [e for e in points if e > epoch])
                later += later_rows(scores, labels[labels.index(label) + 1:], points)
                publish(done + later, args.publish)
    if args.publish:
        publish(done, args.publish)
    else:
        print("\n".join(f"{label}={path}" for label, path in done))
    return 0


def later_rows(scores: Path, labels: list[str], points: list[int]) -> list[tuple[str, Path]]:
    """Score files of models after the one training now (published before, recovered): kept in every publication."""
    return [(f"{label} @ epoch {e}", scores / f"{slug(label)}_epoch{e}.json") for label in labels for e in points
            if (scores / f"{slug(label)}_epoch{e}.json").exists()]


def recover(scores: Path, name: str, labels: list[str], points: list[int], args) -> None:
    """Score files from docs/results/<name>.json for each point it holds of a run of the same length and N.

    A new machine has no checkpoints and no score files; the published rows carry everything a score file held
    (evaluate.py's output and the training record), so the published points count as scored.
    """
    published = ROOT / "docs" / "results" / f"{name}.json"
    if not published.exists():
        return
    for row in json.loads(published.read_text()).get("rows", []):
        model, _, epoch = row["label"].rpartition(" @ epoch ")
        training = row.get("training") or {}
        if (model not in labels or not epoch.isdigit() or int(epoch) not in points or row.get("n") != args.n
                or training.get("run_epochs", args.epochs) != args.epochs):
            continue
        path = scores / f"{slug(model)}_epoch{epoch}.json"
        if not path.exists():
            path.write_text(json.dumps({k: v for k, v in row.items() if k != "label"}, indent=2) + "\n")
            print(f"{model} @ epoch {epoch}: published in {published.relative_to(ROOT)}, not trained again")


def publish(done: list[tuple[str, Path]], name: str) -> None:
    """The scores so far as docs/results/<name>.json (compare_models.py --evaluations), and the figure."""
    command = [sys.executable, "compare_models.py", "--evaluations", *(f"{label}={path}" for label, path in done),
               "--as", name]
    subprocess.run(command, cwd=ROOT, check=True)
    figure([{"label": label, **json.loads(path.read_text())} for label, path in done], FIGURE)
    print(f"published docs/results/{name}.json and {FIGURE.relative_to(ROOT)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
