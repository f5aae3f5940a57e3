"""Score a model with numbers: python evaluate.py --checkpoint PATH [--n 5000 --sampler heun --steps 20 ...]

Samples N images (evenly over the digits 0-9) and prints one JSON object on stdout:

- fid: Frechet distance (Heusel et al. 2017) between the classifier's penultimate
  features of the samples and of the MNIST test set; fid_floor is the same for N real
  training images, what a perfect model would score at this N (FID is biased upwards
  for small N, so compare runs at the same N);
- accuracy / per_digit_accuracy: how often the classifier sees the digit asked for
  (null for an unconditional model, which is asked for no digit);
- precision / recall (Kynkaanniemi et al. 2019): quality and coverage;
- n, sampler, steps, nfe, cfg_scale, seconds (sampling only), device, checkpoint, config;
- prompts (models of prompts only, else null): what the N images were asked, --fid-prompts:
  "digit" ("a 7", as a model of labels is asked) or "captions" (training images' own prompts);
- adherence (models of prompts only, else null): digit accuracy and attribute hit rates on
  held-out prompts against their chance rates (src/difflab/adherence.py), sampled as the N were;
  its "clip" entry: their CLIP score (Hessel et al. 2021) with the tiny CLIP of src/difflab/clip.py,
  real images' score with their own prompts, and how the score agrees with the hit rates;
- framing (models trained on reframed digits only, data.reframe, else null): the shares of the N images whose
  digit is cut off by the canvas or tiny (src/difflab/microcond.py), asked for MNIST's own framing;
- cascade (a cascade's stages only, src/difflab/cascade.py, else null): a base alone is scored enlarged to 28x28;
  a super-resolution stage says where its input came from (the base's samples, or real digits shrunk), the
  augmentation level and both stages' parameters; a refiner (cascade.refine_below), the noise level where it
  takes over from its base and both stages' parameters;
- video (a video DiT's clips only, configs/video/, else null): asked for the first N held-out clips' prompts, fid
  and accuracy are of their frames as the judge reads them (a window centred on the ink); here, whether each clip
  keeps one digit (identity_consistent) and the one asked for (identity_correct), moves the way asked
  (direction_accuracy) at the speed asked (speed_accuracy, from the ink's centroid track), and the same of the
  real held-out clips (real); N at most 1,000 (the held-out clips).

`--samples FILE.npz` scores images saved by `sample.py --save-npz` instead. Progress goes
to stderr, so `python evaluate.py ... > scores.json` keeps stdout clean.
"""

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Optional, Sequence


from difflab.commands.common import STEPS_HELP, check_at_most, check_sampling_args, check_steps, sampler_help
from difflab.infra.failures import fail, usage

# The keys of every answer, in the order they are printed; what does not apply is null.
KEYS = ("fid", "fid_floor", "accuracy", "per_digit_accuracy", "precision", "recall", "n",
        "sampler", "steps", "nfe", "cfg_scale", "seconds", "device", "checkpoint", "samples", "config",
        "prompts", "adherence", "framing", "cascade", "video")  # fmt: skip
MIN_IMAGES = 4  # FID needs a covariance, precision/recall the 3 nearest neighbours of each point
# FID compares the N images with the MNIST test set, and precision/recall with N of its images: it has
# 10,000, so more samples add time, not accuracy (and 10^9 ends in an allocator traceback).
MAX_IMAGES = 10_000
MAX_PER_PROMPT = 1000  # --adherence-per-prompt: images for each held-out prompt; the default is 20


def load_samples(path):
    """(images (N, 1, 28, 28) in [-1, 1], labels (N,) or None) from a `sample.py --save-npz` file.

    The file holds x: uint8 (N, 28, 28) and y: integer (N,), the digits asked for; y all
    equal to the null class 10 means unconditional samples (no accuracy to measure).
    """
    import zipfile

    import numpy as np
    import torch

    from difflab.data import DataError, images_to_tensor, npy_header
    from difflab.models import NULL_CLASS
    from difflab.infra.untrusted import shown

    path = Path(path)
    if not path.is_file():
        fail(f"--samples: {path}: no such file")
    if not zipfile.is_zipfile(path):  # else np.load may try it as a pickle or a bare .npy
        fail(f"--samples: {path}: not an .npz file (write one with `sample.py --save-npz`)")
    try:
        with zipfile.ZipFile(path) as zf:  # the headers first: numpy allocates what a header claims
            missing = [k for k in ("x", "y") if f"{k}.npy" not in zf.namelist()]
            if missing:
                fail(f"--samples: {path} has no array {' or '.join(missing)} "
                     "(expected x: uint8 N x 28 x 28, y: N labels)")
            claims = {k: npy_header(zf, f"{k}.npy") for k in ("x", "y")}
        (x_shape, x_dtype), (y_shape, _) = claims["x"], claims["y"]
        if x_dtype != np.uint8 or len(x_shape) != 3 or x_shape[1:] != (28, 28) or not 0 < x_shape[0] <= MAX_IMAGES:
            fail(f"--samples: x claims {shown(x_dtype, 30)} {shown(x_shape, 60)}, "
                 f"expected uint8 (N, 28, 28) with N at most {MAX_IMAGES:,}")
        if len(y_shape) != 1 or y_shape[0] > MAX_IMAGES:
            fail(f"--samples: y claims shape {shown(y_shape, 60)}, expected {x_shape[0]} labels")
        with np.load(path, allow_pickle=False) as npz:  # bounded now: at most MAX_IMAGES images
            x, y = npz["x"], npz["y"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, DataError) as e:
        fail(f"--samples: {path}: not a readable .npz file ({type(e).__name__})")
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
        fail(f"--samples: x is {x.dtype} {x.shape}, expected uint8 (N, 28, 28)")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        fail(f"--samples: y is {y.dtype} {y.shape}, expected {len(x)} integer labels")
    if len(x) < MIN_IMAGES:
        fail(f"--samples: {path} holds {len(x)} images, need at least {MIN_IMAGES}")
    if (y == NULL_CLASS).all():
        labels = None
    elif y.min() < 0 or y.max() > 9:
        fail(f"--samples: y must be digits 0..9, or all {NULL_CLASS} for unconditional samples")
    else:
        labels = torch.from_numpy(y.astype(np.int64))
    return images_to_tensor(x), labels


def evaluate_checkpoint(checkpoint, classifier=None, n: int = 5000, *, sampler: Optional[str] = None,
                        steps: Optional[int] = None, cfg_scale: Optional[float] = None, seed: int = 0,
                        batch_size: Optional[int] = None, device: str = "auto", data_dir=None, use_ema: bool = True,
                        progress: bool = True, sampling: Sequence[str] = (), adherence_per_prompt: int = 20,
                        fid_prompts: str = "digit", clip_model=None) -> dict:  # fmt: skip
    """Sample n images from a checkpoint and score them; the dict that evaluate.py prints.

    A model of prompts is asked fid_prompts (difflab.evaluation.asked_for) for the N images, and
    scored for prompt adherence (difflab.adherence): adherence_per_prompt images for each
    held-out prompt, 0 to skip, with the same sampler, steps and guidance, and their CLIP score with
    `clip_model` (default: the cached tiny CLIP of difflab.clip, trained on first use).

    `classifier` defaults to the cached MNIST classifier (trained on first use); tests
    pass a small untrained one. The data folder is data_dir, else the default (resolve_data_dir):
    never one a checkpoint's config names (Pipeline.from_checkpoint clears it; docs/reliability.md).
    """
    from difflab import evaluation as ev
    from difflab.pipeline import Pipeline

    pipe = Pipeline.from_checkpoint(checkpoint, device, use_ema=use_ema, sampling=sampling)
    run = pipe.settings(sampler, steps, cfg_scale, batch_size)
    check_steps(run.steps, "sampling.steps (the checkpoint's, or --set)")
    data_dir = data_dir or pipe.cfg.data.data_dir
    if classifier is None:  # each dataset has its own judge, trained and cached on first use (MNIST's for its clips)
        judged = "mnist" if pipe.cfg.data.dataset == "moving_mnist" else pipe.cfg.data.dataset
        classifier = quiet_load_classifier(data_dir, pipe.device, judged)
    try:
        scores = ev.evaluate_pipeline(pipe, classifier, n, sampler=run.sampler, steps=run.steps,
                                      cfg_scale=run.cfg_scale, seed=seed, batch_size=run.batch_size,
                                      data_dir=data_dir, progress=progress, prompts=fid_prompts)
        if pipe.reads_prompts and adherence_per_prompt:  # prompts: does it draw the attributes asked for?
            from difflab.adherence import adherence_table, prompt_adherence

            if clip_model is None:  # CLIP score: the tiny CLIP, trained and cached on first use like the judge
                from difflab.clip import load_clip

                with contextlib.redirect_stdout(sys.stderr):
                    clip_model = load_clip(data_dir, pipe.device)
            scores["adherence"] = prompt_adherence(
                pipe, classifier, adherence_per_prompt, seed, data_dir, run.batch_size, sampler=run.sampler,
                steps=run.steps, cfg_scale=run.cfg_scale, progress=progress, clip_model=clip_model,
            )  # fmt: skip
            print(adherence_table(scores["adherence"]), file=sys.stderr)
    except FloatingPointError as e:
        fail(f"{checkpoint}: {e}")
    return tidy({**scores, "checkpoint": str(checkpoint), "config": pipe.cfg.name})


def evaluate_samples(path, classifier=None, *, batch_size: int = 500, device: str = "auto", data_dir=None,
                     dataset: str = "mnist") -> dict:
    """Score the images of a `sample.py --save-npz` file; sampling keys are null."""
    from difflab import evaluation as ev
    from difflab.infra.distributed import select_device

    images, labels = load_samples(path)
    device = select_device(device)
    if classifier is None:
        classifier = quiet_load_classifier(data_dir, device, dataset)
    scores = ev.evaluate_images(images, labels, classifier, data_dir=data_dir, batch_size=batch_size)
    return tidy({**scores, "device": str(device), "samples": str(path)})


def quiet_load_classifier(data_dir, device, dataset: str = "mnist"):
    """difflab.classifier.load_classifier, with its messages sent to stderr: stdout is for the JSON."""
    from difflab.classifier import load_classifier

    with contextlib.redirect_stdout(sys.stderr):
        return load_classifier(data_dir, device=device, dataset=dataset)


def tidy(scores: dict) -> dict:
    """Every key of KEYS in order (null where it does not apply); no per-digit dict without labels."""
    out = {k: scores.get(k) for k in KEYS}
    if out["accuracy"] is None:
        del out["per_digit_accuracy"]
    else:  # JSON object keys are strings; "0".."9" in order
        out["per_digit_accuracy"] = {str(d): a for d, a in sorted(out["per_digit_accuracy"].items())}
    return out


def main(argv=None):
    from difflab.prompts import PROMPT_SETS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="sample from this checkpoint (or a shipped model: sd1, sd2, sd3, "
                                           "sd3_distilled, sd2_distilled) and score the images")
    what.add_argument("--samples", metavar="FILE.npz", help="score saved samples (x uint8 N x 28 x 28, y labels)")
    p.add_argument("--n", type=int, default=5000,
                   help=f"images to sample, {MIN_IMAGES} to {MAX_IMAGES:,}: the test set FID compares with "
                        "(default 5000)")
    p.add_argument("--sampler", default=None, help=sampler_help())
    p.add_argument("--steps", type=int, default=None,
                   help=STEPS_HELP)
    p.add_argument("--cfg-scale", type=float, default=None, help="guidance scale, finite and >= 0; 1 = no guidance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per batch: bounds memory (default on a CPU, where small is fastest: 32, "
                        "8 for a transformer; 500 on a GPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None, help="MNIST and the classifier (default: $DIFFLAB_DATA, else data/)")
    p.add_argument("--dataset", default="mnist", choices=("mnist", "fashion_mnist"),
                   help="--samples only: whose images they imitate (a checkpoint names its own)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--set", action="append", default=[], metavar="sampling.KEY=VALUE", dest="sampling",
                   help="change how the checkpoint samples, e.g. --set sampling.clip_x0=true (repeatable)")
    p.add_argument("--adherence-per-prompt", type=int, default=20,
                   help="a model of prompts: images per held-out prompt for the adherence scores, "
                        f"0 (skip) to {MAX_PER_PROMPT}")
    p.add_argument("--fid-prompts", default="digit", choices=PROMPT_SETS,
                   help="a model of prompts: what the N images are asked, the digit alone ('a 7', default) or "
                        "training images' own prompts ('a thick, upright 7'; text-to-image FID's real captions)")
    p.add_argument("--out", default=None, metavar="FILE.json", help="also write the JSON here")
    args = p.parse_args(argv)

    from difflab.infra.outputs import check_output_file, write_bytes_atomic, writing

    check_sampling_args(args)
    if args.adherence_per_prompt < 0:
        usage("--adherence-per-prompt: expected an integer >= 0")
    if args.n < MIN_IMAGES:
        usage(f"--n: expected at least {MIN_IMAGES} images, got {args.n}")
    check_at_most(args.n, MAX_IMAGES, "--n", "the MNIST test set FID compares with holds 10,000 images")
    check_at_most(args.adherence_per_prompt, MAX_PER_PROMPT, "--adherence-per-prompt", "images per held-out prompt")
    if args.out:  # tried now: a path that cannot be written fails before minutes of sampling
        check_output_file(args.out, "--out")

    if args.samples:
        scores = evaluate_samples(args.samples, batch_size=args.batch_size or 500, device=args.device,
                                  data_dir=args.data_dir, dataset=args.dataset)
    else:
        from difflab.infra.weights import checkpoint_path

        scores = evaluate_checkpoint(
            checkpoint_path(args.checkpoint), n=args.n, sampler=args.sampler, steps=args.steps,
            cfg_scale=args.cfg_scale,
            seed=args.seed, batch_size=args.batch_size, device=args.device, data_dir=args.data_dir,
            use_ema=not args.no_ema, sampling=args.sampling, adherence_per_prompt=args.adherence_per_prompt,
            fid_prompts=args.fid_prompts,
        )  # fmt: skip
    text = json.dumps(scores, indent=2)
    print(text)
    if args.out:
        with writing(args.out, kept="the scores are on stdout above"):
            write_bytes_atomic(args.out, (text + "\n").encode())
        print(f"wrote {args.out}", file=sys.stderr)
    return 0

