"""The fair comparison: several checkpoints, the same noise, the same digits, the same judge.

Used by compare_models.py. Every figure here is drawn from models given identical
starting noise (where their sample shapes agree), so differences are the models'.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from . import report  # noqa: E402
from ..infra.checkpoint import CheckpointError, epoch_checkpoints  # noqa: E402
from ..evaluation import evaluate_pipeline  # noqa: E402
from ..infra.outputs import write_bytes_atomic, writing  # noqa: E402
from ..pipeline import Pipeline, is_unconditional  # noqa: E402
from ..infra.runs import lock_folder  # noqa: E402
from .score_cache import ScoreCache  # noqa: E402
from ..visualize import grid_array  # noqa: E402


def architecture(config: Path) -> str:
    """model.architecture in a run's config.json ("unet" where the file is absent or names none).

    Raises ValueError with one line for a file that cannot be read, is not JSON, or is not a config.
    """
    if not config.exists():
        return "unet"
    try:
        raw = json.loads(config.read_text())
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: nested past the parser's depth
        raise ValueError(f"{config}: cannot be read as JSON ({type(e).__name__})") from None
    model = raw.get("model", {}) if isinstance(raw, dict) else None
    if not isinstance(model, dict):
        raise ValueError(f"{config}: not a run's config (expected an object with a 'model' section)")
    return model.get("architecture", "unet")


def newest_checkpoints(experiments: Path) -> list[Path]:
    """The newest model_epoch_<N>.pt (largest N) of each diffusion config's folder, else its last.pt.

    Autoencoder runs (model.architecture: vae, see config.json beside the checkpoints) are skipped; so is
    a run whose config.json cannot be read, with a warning: whether it is an autoencoder is unknown.
    """
    found = []
    for folder in sorted(p for p in Path(experiments).iterdir() if (p / "checkpoints").is_dir()):
        try:
            if architecture(folder / "config.json") == "vae":
                continue
        except ValueError as e:
            print(f"warning: {e}; {folder.name} is left out of the comparison", file=sys.stderr)
            continue
        epochs = epoch_checkpoints(folder / "checkpoints")
        last = folder / "checkpoints" / "last.pt"
        if epochs:
            found.append(epochs[-1])
        elif last.exists():
            found.append(last)
    return found


def seed_runs(experiments: Path) -> dict[int, list[Path]]:
    """Training seed -> the newest checkpoint of each config: seed 0's runs sit in `experiments/`,
    seed k's in `experiments/seed<k>/` (where `make compare SEEDS=N` trains them)."""
    runs = {0: newest_checkpoints(experiments)}
    for folder in sorted(Path(experiments).glob("seed*")):
        k = folder.name.removeprefix("seed")
        if k.isdigit() and int(k) > 0 and folder.is_dir():
            runs[int(k)] = newest_checkpoints(folder)
    return runs


def add_seeds(rows: list[dict], seed_rows: Sequence[list[dict]]) -> None:
    """Each row gets the FID and accuracy of every training seed of its config, with their mean and spread.

    Spread is the sample standard deviation over seeds (0 for one seed): two models whose
    mean +- spread intervals overlap are not ordered by this budget.
    """
    for row in rows:
        same = [r for rows_k in seed_rows for r in rows_k if r["model"] == row["model"]]
        for key in ("fid", "accuracy"):
            values = [row[key]] + [r[key] for r in same]
            row[f"{key}_seeds"] = values
            if None not in values:
                row[f"{key}_mean"] = float(np.mean(values))
                row[f"{key}_spread"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def same_noise_grid(pipes: dict, out: Path, per_digit: int = 4, seed: int = 0) -> Path:
    """One column per model: a row per digit, every model starting from the same noise."""
    fig, axes = plt.subplots(1, len(pipes), figsize=(1.2 + 1.1 * per_digit * len(pipes) / 2, 6), squeeze=False)
    for ax, (name, pipe) in zip(axes[0], pipes.items()):
        y = pipe.default_labels(range(10), per_digit)
        images = pipe.generate(y, seed=seed).images
        ax.imshow(grid_array(images, nrow=per_digit), cmap="gray", vmin=0, vmax=255)
        ax.set_title(name + (" (uncond.)" if is_unconditional(pipe.cfg) else ""), fontsize=8)
        ax.axis("off")
    classes = "digits" if next(iter(pipes.values())).cfg.data.dataset == "mnist" else "classes"
    fig.suptitle(f"same noise (seed {seed}), rows = {classes} 0-9", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def trajectories(pipes: dict, png: Path, gif: Path, digits: Sequence[int] = (3, 7), seed: int = 0,
                 columns: int = 8) -> tuple[Path, Path]:
    """x_t (top) and predicted x0 (bottom) over the steps, one band per model; also as a GIF."""
    trajs = {}
    for name, pipe in pipes.items():
        y = pipe.default_labels(digits, 1)
        trajs[name] = pipe.generate(y, seed=seed, trajectory=True).trajectory
    bands = []
    for name, traj in trajs.items():
        picks = np.unique(np.linspace(0, len(traj) - 1, columns).round().astype(int))
        tiles = [torch.cat([traj[i][1][:1], traj[i][2][:1]]) for i in picks]  # (2, C, H, W)
        bands.append((name, grid_array(torch.stack(tiles, 1).flatten(0, 1), nrow=len(picks), scale=2)))
    fig, axes = plt.subplots(len(bands), 1, figsize=(columns * 0.9, 2.0 * len(bands)), squeeze=False)
    for ax, (name, band) in zip(axes[:, 0], bands):
        ax.imshow(band, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{name}: x_t (top), predicted x0 (bottom), noise -> image", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    # GIF: frame k shows every model at the same fraction of its own sampling run.
    frames = []
    for f in np.linspace(0, 1, 24):
        rows = []
        for traj in trajs.values():
            _, x_t, x0 = traj[int(round(f * (len(traj) - 1)))]
            rows.append(grid_array(torch.cat([x_t, x0]), nrow=len(x_t), scale=3))
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 4), (0, width - r.shape[1])), constant_values=0) for r in rows]
        frames.append(Image.fromarray(np.concatenate(rows, 0)))
    frames[0].save(gif, save_all=True, append_images=frames[1:] + [frames[-1]] * 8, duration=120, loop=0)
    return png, gif


def sweep(pipes: dict, classifier, n: int, what: str, values: Sequence, seed: int = 0,
          cache: Optional[ScoreCache] = None) -> dict:
    """FID and accuracy of each model as `what` ('steps' or 'cfg_scale') varies."""
    out, cache = {}, cache or ScoreCache(None)
    for name, pipe in pipes.items():
        rows = []
        for v in values:
            if what == "cfg_scale" and is_unconditional(pipe.cfg):
                continue
            r = cache.get(pipe, classifier, lambda: evaluate_pipeline(pipe, classifier, n, seed=seed, progress=False,
                                                                      **{what: v}), n=n, seed=seed, **{what: v})
            rows.append({what: v, "fid": r["fid"], "accuracy": r["accuracy"], "fid_floor": r["fid_floor"],
                         "nfe": r["nfe"], "seconds_per_1000": 1000 * r["seconds"] / n})
        out[name] = rows
    return out


def plot_sweep(results: dict, x: str, out: Path, xlabel: str, log_x: bool = False) -> Path:
    """FID and accuracy against the key `x` of each point (the guidance scale, a sampler's NFE, ...)."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    floor = None
    for name, rows in results.items():
        if not rows:
            continue
        xs = [r[x] for r in rows]
        a1.plot(xs, [r["fid"] for r in rows], marker="o", label=name)
        if rows[0]["accuracy"] is not None:
            a2.plot(xs, [100 * r["accuracy"] for r in rows], marker="o", label=name)
        floor = rows[0]["fid_floor"]
    if floor is not None:
        a1.axhline(floor, color="gray", ls="--", lw=1, label="floor (real vs real)")
    a1.set(xlabel=xlabel, ylabel="FID (classifier features)", yscale="log")
    a2.set(xlabel=xlabel, ylabel="conditional accuracy (%)")
    if log_x:  # labelled with the measured values: 1, 2, 4, 8 rather than 2 x 10^0
        ticks = sorted({r[x] for rows in results.values() for r in rows})
        for a in (a1, a2):
            a.set_xscale("log")
            a.set_xticks(ticks, [str(t) for t in ticks])
            a.minorticks_off()
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def loss_curves(checkpoints: dict, out: Path) -> Path:
    """Training loss against images seen, from each run's metrics.jsonl."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, ckpt in checkpoints.items():
        metrics = Path(ckpt).parent.parent / "metrics.jsonl"
        if not metrics.exists():
            continue
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        ax.plot([r["images_seen"] for r in rows], [r["loss"] for r in rows], label=name)
    ax.set(xlabel="training images seen", ylabel="training loss (own target)", yscale="log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def results_table(rows: list[dict], note: str = "") -> str:
    """RESULTS.md: one row per model (report.table, the same table the README shows)."""
    return "# Results\n\n" + note + "\n\n" + report.table(rows)


def evaluate_models(pipes: dict, classifier, n: int, seed: int = 0, cache: Optional[ScoreCache] = None) -> list[dict]:
    """Each model with its own config's sampler, steps and guidance, on n images."""
    rows, cache = [], cache or ScoreCache(None)
    for name, pipe in pipes.items():
        r = cache.get(pipe, classifier, lambda: evaluate_pipeline(pipe, classifier, n, seed=seed, progress=True),
                      n=n, seed=seed)
        info = pipe.info
        rows.append({
            "model": name, "params": info.get("params"), "images_seen": info.get("images_seen") or 0,
            "train_images_per_s": info.get("train_images_per_s"), "train_device": info.get("device"),
            "fid": r["fid"], "fid_floor": r["fid_floor"], "accuracy": r["accuracy"], "precision": r["precision"],
            "recall": r["recall"], "sampler": r["sampler"], "steps": r["steps"], "cfg_scale": r["cfg_scale"],
            "nfe": r["nfe"], "seconds_per_1000": 1000 * r["seconds"] / n, "checkpoint": info.get("checkpoint"),
            "sample_device": r["device"],
            "vae_images_seen": getattr(pipe.vae, "images_seen", None),  # latent diffusion's first stage
            "fewstep": pipe.cfg.fewstep.method, "teacher": pipe.cfg.fewstep.teacher,  # few-step models (issue 27)
        })
    return rows


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """The same file, unchanged: same inode, size and modification time."""
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns)


def load_pipeline(path: Path, device: str = "auto", tries: int = 3) -> Pipeline:
    """Pipeline.from_checkpoint, with pipe.info["sha256"]: the SHA-256 of the bytes it loaded.

    The score cache files each score under that digest. Taking it when the scores are saved instead
    gave a checkpoint rewritten meanwhile (a training run still saving) the other model's score, and
    lost the score of one deleted meanwhile. The file is hashed through a handle held open while the
    checkpoint loads; if `path` is no longer that file, unchanged, afterwards (replaced, or written in
    place), what loaded may be other bytes, and it is loaded again. A file deleted after loading is
    still the one the handle holds: its digest stands.
    """
    path = Path(path)
    for _ in range(tries):
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no such checkpoint file") from None
        except OSError as e:
            raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
        with handle:
            before = os.fstat(handle.fileno())
            digest = hashlib.sha256()
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
            pipe = Pipeline.from_checkpoint(path, device)
            after = os.fstat(handle.fileno())
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = after  # deleted since it loaded: the handle still holds the file
        if same_file(before, after) and same_file(before, now):
            pipe.info["sha256"] = digest.hexdigest()
            return pipe
    raise CheckpointError(f"{path}: changed while it was being loaded, {tries} times; "
                          f"compare it once it is written")


def load_pipelines(checkpoints: Sequence[Path], device: str = "auto") -> tuple[dict, dict]:
    """name -> Pipeline and name -> checkpoint path; names are the config names (made unique)."""
    pipes, paths = {}, {}
    for ckpt in checkpoints:
        pipe = load_pipeline(ckpt, device)
        name = pipe.cfg.name
        while name in pipes:
            name += "'"
        pipes[name], paths[name] = pipe, Path(ckpt)
    return pipes, paths


def run_comparison(checkpoints: Sequence[Path], out_dir: Path, classifier, n: int = 1000, seed: int = 0,
                   steps_list: Optional[Sequence[int]] = (10, 25, 50),
                   scales: Optional[Sequence[float]] = (1.0, 3.0, 7.5),
                   sweep_n: Optional[int] = None, device: str = "auto", note: str = "",
                   other_seeds: Sequence[Sequence[Path]] = ()) -> dict:
    """Write every figure and RESULTS.md into out_dir; return the rows and the sweeps.

    `other_seeds`: the same configs trained with other seeds; each is scored like the first
    (same n, same sampling noise) and the table reports mean and spread (add_seeds). The figures
    and sweeps use the first seed's models.

    One comparison writes to out_dir at a time (holding): a second, started while the first is alive, is
    refused with one line naming the first's pid (two used to overwrite each other's results and exit 0).
    """
    out_dir = Path(out_dir)
    with holding(out_dir):
        return _compare(checkpoints, out_dir, classifier, n=n, seed=seed, steps_list=steps_list, scales=scales,
                        sweep_n=sweep_n, device=device, note=note, other_seeds=other_seeds)


# Said when another comparison holds out_dir (runs.lock_folder fills in the folder and the pid).
BUSY = ("{folder} is in use by another comparison (pid {holder}); wait for it, stop it, "
        "or pass --out OTHER_FOLDER")
_HELD: set = set()  # the folders this process holds: holding() one of them again (nested) is a no-op


@contextmanager
def holding(out_dir: Path):
    """out_dir is this comparison's for the block: created, and locked against a second comparison.

    The lock (out_dir/.lock, flock, as train.py's runs.claim) dies with its process, so a killed
    comparison never leaves it stuck. compare_models.py takes it before loading anything, so a second
    run is refused at once; run_comparison, inside, finds it already held by this process.
    """
    out_dir = Path(out_dir)
    key = out_dir.resolve()
    if key in _HELD:
        yield
        return
    with writing(out_dir):  # a folder that cannot be created or written: one line, before any work
        out_dir.mkdir(parents=True, exist_ok=True)
        handle = lock_folder(out_dir, BUSY)
    _HELD.add(key)
    try:
        yield
    finally:
        _HELD.discard(key)
        if handle is not None:
            handle.close()  # closing the file releases the lock


def _compare(checkpoints, out_dir: Path, classifier, n, seed, steps_list, scales, sweep_n, device, note,
             other_seeds) -> dict:
    """run_comparison's work, in the folder it holds."""
    clock = time.perf_counter()
    seconds = {}  # wall-clock time of each phase, in results.json: where the time of `make compare` goes

    def lap(phase: str) -> None:
        nonlocal clock
        seconds[phase] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    pipes, paths = load_pipelines(checkpoints, device)
    same_noise_grid(pipes, out_dir / "grid.png", seed=seed)
    trajectories(pipes, out_dir / "trajectories.png", out_dir / "trajectories.gif", seed=seed)
    loss_curves(paths, out_dir / "loss_curves.png")
    lap("figures")
    cache = ScoreCache(out_dir / "scores.json")  # a rerun after a failure samples only what was not scored
    rows = evaluate_models(pipes, classifier, n, seed, cache)
    lap("table, first seed")
    add_seeds(rows, [evaluate_models(load_pipelines(ckpts, device)[0], classifier, n, seed, cache)
                     for ckpts in other_seeds])
    lap("table, other seeds")
    sweeps = {}

    def save() -> None:  # after the table and after each sweep: a failure later loses nothing scored
        for name, text in (("RESULTS.md", results_table(rows, note)), ("results.json", json.dumps(
                {"rows": rows, "sweeps": sweeps, "n": n, "seed": seed, "seconds": seconds}, indent=2))):
            with writing(out_dir / name, "the scores are kept in scores.json"):
                write_bytes_atomic(out_dir / name, text.encode())  # Ctrl-C mid-write: the previous file

    save()
    # Steps are plotted as network calls per image (NFE): Heun's step makes two, a few-step model's one.
    for what, values, name, label, x in [
            ("steps", steps_list, "fid_vs_steps.png", "network calls per image (NFE; a guided call counts once)",
             "nfe"),
            ("cfg_scale", scales, "fid_vs_guidance.png", "guidance scale", "cfg_scale")]:
        if values:
            sweeps[what] = sweep(pipes, classifier, sweep_n or n, what, values, seed, cache)
            plot_sweep(sweeps[what], x, out_dir / name, label, log_x=what == "steps")
            lap(f"sweep of {what}")
            save()
        else:  # a plot left by an earlier run would pass for this run's: remove it
            (out_dir / name).unlink(missing_ok=True)
    return {"rows": rows, "sweeps": sweeps}
