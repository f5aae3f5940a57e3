"""Judging generated digits: metrics on the features of a small MNIST classifier.

- FID (Heusel et al. 2017): Frechet distance between Gaussians fitted to features
  of real and generated images. Inception-v3 is the usual feature extractor; on
  MNIST a small CNN trained here (classifier.py) plays that role, so the numbers
  are comparable within this project only.
- Precision / recall (Kynkaanniemi et al. 2019): how much of the generated set
  lies on the real manifold (quality) and how much of the real manifold the
  generated set covers (diversity).
- Conditional accuracy: for a class-conditional model, does the classifier see
  the digit that was asked for?

The classifier itself (network, training and cache) is in classifier.py; the
maths of FID and precision/recall is in metrics.py.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import torch
from torch import nn
from tqdm import tqdm

from difflab.cascade import IMAGE_SIZE
from difflab.data import load_split, resolve_data_dir
from difflab.prompts import PROMPT_SETS, captions, write
from difflab.metrics import feature_statistics, fid_from_statistics, precision_recall


# --------------------------------------------------------------------------
# Running the classifier
# --------------------------------------------------------------------------


@contextmanager
def on_its_device(model: nn.Module) -> Iterator[torch.device]:
    """Eval mode (BatchNorm running stats, no dropout) and no_grad; restores the mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield next(model.parameters()).device
    finally:
        model.train(was_training)


def _batched(fn: Callable, classifier: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Apply fn(batch) over images in inference mode; returns a float32 CPU tensor."""
    if images.ndim != 4 or images.shape[1:] != (1, 28, 28):
        raise ValueError(f"expected images of shape (N, 1, 28, 28), got {tuple(images.shape)}")
    with on_its_device(classifier) as device:
        out = [fn(images[i : i + batch_size].to(device).float()).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out).float()


def features(classifier: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Penultimate-layer features (N, 128) of images (N, 1, 28, 28) in [-1, 1]."""
    return _batched(classifier.features, classifier, images, batch_size)


def conditional_accuracy(
    classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500
) -> tuple[float, dict[int, float]]:
    """Fraction of images classified as the digit they were asked to be.

    Returns (overall accuracy, {digit: accuracy}) for the digits present in labels.
    """
    labels = _check_labels(labels, len(images))
    return accuracy_of(predicted_digits(classifier, images, batch_size), labels)


def predicted_digits(classifier: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The digit (N,) the classifier sees in each image."""
    return _batched(classifier, classifier, images, batch_size).argmax(1)


def _check_labels(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Labels as a CPU int64 tensor; they must be one digit 0..9 per image."""
    labels = torch.as_tensor(labels).long().cpu()
    if labels.ndim != 1 or len(labels) != n or n == 0:
        raise ValueError(f"need as many labels as images (>0), got {len(labels)} and {n}")
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError("labels must be digits 0..9 (the null class 10 has no digit to check)")
    return labels


def accuracy_of(predictions: torch.Tensor, labels: torch.Tensor) -> tuple[float, dict[int, float]]:
    """Overall and per-digit fraction of predictions equal to labels."""
    correct = (predictions.cpu() == labels).double()
    per_digit = {int(d): correct[labels == d].mean().item() for d in labels.unique()}
    return correct.mean().item(), per_digit


# --------------------------------------------------------------------------
# Everything at once, with the reference statistics cached per classifier
# --------------------------------------------------------------------------

# classifier -> {key: cached value}; entries vanish with the classifier.
_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _cached(classifier: nn.Module, key: tuple, compute):
    """compute() once per (classifier, key), kept in memory."""
    store = _CACHE.setdefault(classifier, {})
    if key not in store:
        store[key] = compute()
    return store[key]


def judged_dataset(classifier: nn.Module) -> str:
    """The dataset a judge was trained on (classifier.load_classifier sets it; MNIST otherwise)."""
    return getattr(classifier, "dataset", "mnist")


def _split_features(classifier: nn.Module, split: str, data_dir, batch_size: int) -> torch.Tensor:
    """Features of a whole split of the judge's dataset, computed once per classifier and data folder."""
    key = ("features", split, str(resolve_data_dir(data_dir)))
    return _cached(classifier, key, lambda: features(
        classifier, load_split(split, dataset=judged_dataset(classifier), data_dir=data_dir)[0], batch_size))


def _split_statistics(classifier: nn.Module, split: str, data_dir,
                      batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, Sigma) of a split's features, cached."""
    key = ("stats", split, str(resolve_data_dir(data_dir)))
    return _cached(classifier, key,
                   lambda: feature_statistics(_split_features(classifier, split, data_dir, batch_size)))


def _fixed_subset(feats: torch.Tensor, n: int) -> torch.Tensor:
    """The first n rows of a fixed random permutation (seed 0) of feats."""
    perm = torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))
    return feats[perm[:n]]


def _fid_floor(classifier: nn.Module, reference: str, n: int, data_dir, batch_size: int) -> float:
    """FID of n real images of the other split against the reference split, cached per n."""
    other = "train" if reference == "test" else "test"

    def compute() -> float:
        real_n = _fixed_subset(_split_features(classifier, other, data_dir, batch_size), n)
        return fid_from_statistics(*feature_statistics(real_n),
                                   *_split_statistics(classifier, reference, data_dir, batch_size))

    return _cached(classifier, ("floor", reference, str(resolve_data_dir(data_dir)), n), compute)


def evaluate_images(
    images: torch.Tensor,
    labels: Optional[torch.Tensor],
    classifier: nn.Module,
    reference: str = "test",
    data_dir: Optional[Union[str, Path]] = None,
    batch_size: int = 500,
) -> dict:
    """FID, its floor, precision/recall and conditional accuracy of generated images.

    images: (N, 1, 28, 28) in [-1, 1]; labels: (N,) the digits asked for, or None
    for an unconditional model. reference: the real split ("test" or "train").

    fid_floor is the FID of N real images of the *other* split (the first N of a
    fixed permutation, seed 0; at most the whole split) against the reference.
    FID is biased upwards for finite N, so a perfect generator would score about
    fid_floor, not 0: compare models at the same N. Precision/recall use N
    reference images (same subset rule), as the paper compares equal-sized sets.
    The reference features, statistics and floors are cached in memory per
    classifier, so repeated calls only pay for the N generated images.
    """
    if reference not in ("test", "train"):
        raise ValueError(f"reference must be 'test' or 'train', got {reference!r}")
    n = len(images)
    labels = None if labels is None else _check_labels(labels, n)
    fake = features(classifier, images, batch_size)  # (N, 128)
    ref_stats = _split_statistics(classifier, reference, data_dir, batch_size)
    ref_subset = _fixed_subset(_split_features(classifier, reference, data_dir, batch_size), n)
    precision, recall = precision_recall(ref_subset, fake)
    accuracy, per_digit = None, {}
    if labels is not None:  # logits from the features already computed: one pass over the images
        with on_its_device(classifier) as device:
            predictions = classifier.classify(fake.to(device)).argmax(1)
        accuracy, per_digit = accuracy_of(predictions, labels)
    return {
        "fid": fid_from_statistics(*feature_statistics(fake), *ref_stats),
        "fid_floor": _fid_floor(classifier, reference, n, data_dir, batch_size),
        "accuracy": accuracy,
        "per_digit_accuracy": per_digit,
        "precision": precision,
        "recall": recall,
        "n": n,
    }


# --------------------------------------------------------------------------
# Sampling and scoring in one call (evaluate.py, benchmarks/sampler_quality.py)
# --------------------------------------------------------------------------


def balanced_labels(n: int) -> torch.Tensor:
    """n digit labels spread evenly over 0..9 (0, 1, ..., 9, 0, 1, ...): counts differ by at most one."""
    return torch.arange(n) % 10


def asked_for(pipe, n: int, prompts: str = "digit", data_dir=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the digits asked for, what the model is given): balanced digits as labels; the null class for an
    unconditional model. A model of prompts is given, by `prompts`:
    - "digit": the digit alone, "a 7", as a model of labels is asked (difflab.adherence asks for the rest);
    - "captions": n prompts drawn from the training images' own, the attributes as often as the data
      has them: how text-to-image models are scored, with real captions (FID-30K on MS-COCO's
      captions, Saharia et al. 2022, Sec. 4.1). Their digits are the ones asked for; they are the same
      for every model."""
    from difflab.models import NULL_CLASS
    from difflab.pipeline import is_unconditional

    if prompts not in PROMPT_SETS:
        raise ValueError(f"prompts: expected one of {', '.join(PROMPT_SETS)}, got {prompts!r}")
    labels = balanced_labels(n)
    if is_unconditional(pipe.cfg):
        labels = torch.full_like(labels, NULL_CLASS)
    if pipe.cfg.model.conditioning == "clip_image":  # DALL-E 2's decoder: asked to draw real test digits' embeddings
        from difflab.unclip import test_embeddings_of

        return labels, test_embeddings_of(labels.tolist(), data_dir)
    if not pipe.reads_prompts:
        return labels, pipe.framed(labels)  # SDXL's micro-conditions, if told: asked for centred, full size
    if prompts == "captions":
        digits, texts = captions(n, data_dir)
        return torch.as_tensor(digits, dtype=torch.long), pipe.prompts(texts)
    return labels, pipe.prompts([write(int(d), {}) for d in labels])


def generate_with_bar(pipe, condition, run, *, seed: int, progress: bool = True, **options):
    """pipe.generate with the resolved settings `run` (Pipeline.settings) and one progress bar over every
    batch's steps (the callback fires once per step)."""
    total = pipe.callbacks(len(condition), run)  # every batch's steps, and a cascade's base's or a prior's decoder's
    with tqdm(total=total, unit="step", desc=f"{run.sampler} x{run.steps}", disable=not progress) as bar:
        return pipe.generate(
            condition, sampler=run.sampler, steps=run.steps, cfg_scale=run.cfg_scale, seed=seed,
            batch_size=run.batch_size, callback=lambda *_: bar.update(1), **options,
        )  # fmt: skip


def evaluate_pipeline(
    pipe,
    classifier: nn.Module,
    n: int,
    *,
    sampler: Optional[str] = None,
    steps: Optional[int] = None,
    cfg_scale: Optional[float] = None,
    seed: int = 0,
    batch_size: Optional[int] = None,
    data_dir: Optional[Union[str, Path]] = None,
    progress: bool = True,
    prompts: str = "digit",
    **options,
) -> dict:
    """Sample n images from a difflab.pipeline.Pipeline and score them with evaluate_images.

    Labels are balanced_labels(n), or all the null class for an unconditional model
    (then accuracy is None); a model of prompts is given asked_for's `prompts`. Unset
    sampler, steps, cfg_scale and batch_size are resolved by Pipeline.settings (the
    checkpoint's config); `options` (spacing, eta, ...) go to Pipeline.generate. Adds to evaluate_images'
    dict: sampler, steps, nfe (model evaluations per image; a CFG step counts once, as in the
    papers), cfg_scale (the one used), seconds (sampling only), device, and for a model of
    prompts which prompts.
    """
    from difflab.pipeline import is_unconditional  # here: the pipeline imports every model

    if pipe.cfg.model.architecture == "video_dit":  # clips of Moving MNIST: scored frame by frame and as motion
        from difflab.video_scores import evaluate_clips

        return evaluate_clips(pipe, classifier, n, sampler=sampler, steps=steps, cfg_scale=cfg_scale, seed=seed,
                              batch_size=batch_size, data_dir=data_dir, progress=progress, **options)
    if pipe.cfg.data.dataset != judged_dataset(classifier):
        raise ValueError(f"{pipe.cfg.name} was trained on {pipe.cfg.data.dataset}, the judge on "
                         f"{judged_dataset(classifier)}: load_classifier(dataset={pipe.cfg.data.dataset!r})")
    if pipe.cfg.model.architecture == "prior" and pipe.decoder is None:
        raise ValueError(f"{pipe.cfg.name} is a prior: it draws CLIP embeddings, scored through the decoder that "
                         "draws them (--set sampling.decoder=CKPT)")
    run = pipe.settings(sampler, steps, cfg_scale, batch_size)
    unconditional = is_unconditional(pipe.cfg)
    labels, condition = asked_for(pipe, n, prompts, data_dir)
    result = generate_with_bar(pipe, condition, run, seed=seed, progress=progress, **options)
    if not torch.isfinite(result.images).all():  # clamp keeps NaN: say so instead of a silent FID
        raise FloatingPointError(f"{run.sampler} x{run.steps} produced non-finite pixels")
    images, small = result.images, result.images.shape[-1] < IMAGE_SIZE
    if small:  # a cascade's base alone (data.resolution 14): scored enlarged bilinearly, as the judge reads 28x28
        from difflab.cascade import upsample

        images = upsample(images)
    scores = evaluate_images(images, None if unconditional else labels, classifier, data_dir=data_dir)
    if pipe.cfg.data.reframe:  # SDXL's problem: how many digits come out cut off or tiny, asked for centred
        from difflab.microcond import framing_shares

        scores["framing"] = framing_shares(result.images)
    return {
        **scores,
        **how_sampled(pipe, run, result),
        **({"prompts": prompts} if pipe.reads_prompts else {}),
        **({"cascade": cascade_entry(pipe, small)} if small or pipe.super_resolves(pipe.cfg) or pipe.refines(pipe.cfg)
           else {}),
    }


def how_sampled(pipe, run, result) -> dict:
    """The sampling settings used (Pipeline.settings), the model evaluations per image (a CFG step counts once, as in
    the papers), the seconds of sampling alone, and the device: what every score says beside its numbers. A DALL-E 2
    prior's settings are its own; the decoder that draws its embeddings samples with its config's, recorded apart."""
    decoder = {}
    if pipe.decoder is not None:
        d = pipe.decoder.settings()
        decoder = {"decoder": {"checkpoint": pipe.info.get("decoder"), "sampler": d.sampler, "steps": d.steps,
                               "cfg_scale": d.cfg_scale}}
    return {"sampler": run.sampler, "steps": run.steps, "nfe": result.nfe, "cfg_scale": run.cfg_scale,
            "seconds": round(result.seconds, 3), "device": str(pipe.device), **decoder}


def cascade_entry(pipe, small: bool) -> dict:
    """What evaluate.py says of a cascade's stage (difflab.cascade): a base scored alone, enlarged bilinearly to 28x28;
    a super-resolution stage, with where its input came from, the augmentation level and both stages' sizes; or a
    refiner (SDXL), with the noise level where it takes over and both stages' sizes."""
    if small:
        return {"stage": "base", "resolution": pipe.cfg.data.resolution, "scored": "enlarged bilinearly to 28x28"}
    if pipe.refines(pipe.cfg):
        return {"stage": "refiner", "refine_below": pipe.cfg.cascade.refine_below, "base": pipe.info.get("base"),
                "stage_params": pipe.info.get("stage_params")}
    return {"stage": "super-resolution", "low_res_from": pipe.cfg.sampling.low_res_from,
            "aug_level": pipe.cfg.sampling.aug_level, "base": pipe.info.get("base"),
            "stage_params": pipe.info.get("stage_params")}
