"""Does the model draw what the prompt asks for? Digit accuracy and attribute hit rates (issue 26).

A fixed set of held-out prompts, PER_DIGIT of them for each digit:
- three that name one attribute each ("a thick 4", "a left-slanted 4", "a wide 4"), the bin
  turning with the digit so every bin of every attribute is asked for;
- the digit's most common combination of all three bins in the training set, and its rarest
  (often one no training image has: "a thick, left-slanted, narrow 1").
Each prompt is sampled `per_prompt` times; every image is measured with difflab.attributes and
binned with the training set's thresholds, exactly as its training prompts were written.

Reported per attribute: the hit rate (the share of images whose measured bin is the bin asked
for), its chance rate (the share of training images of the same digit in that bin: what a model
that ignored the word but drew the digit would score) and the correlation of asked and measured
bin. For the combinations: the share of images that hit all three bins, against chance.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from . import attributes
from .evaluation import conditional_accuracy, generate_with_bar, predicted_digits
from .data import tensor_to_uint8
from .prompts import BINS, PromptData, training_prompt_set, write

PER_DIGIT = 5
def combination_counts(data: PromptData) -> np.ndarray:
    """(10, 3, 3, 3): training images per digit and (thickness, slant, width) bin."""
    counts = np.zeros((10, 3, 3, 3), np.int64)
    np.add.at(counts, (data.digits, *(data.bins[name] for name in BINS)), 1)
    return counts


def held_out_prompts(data: PromptData) -> list[dict]:
    """[{text, digit, asked, kind}] with kind 'single', 'common' or 'rare' (see the module docstring)."""
    names, counts, out = list(BINS), combination_counts(data), []
    for d in range(10):
        for j, name in enumerate(names):
            asked = {name: (d + j) % 3}
            out.append({"text": write(d, asked), "digit": d, "asked": asked, "kind": "single"})
        for kind, pick in (("common", counts[d].argmax()), ("rare", counts[d].argmin())):
            asked = dict(zip(names, (int(b) for b in np.unravel_index(pick, (3, 3, 3)))))
            out.append({"text": write(d, asked), "digit": d, "asked": asked, "kind": kind,
                        "training_images": int(counts[d][tuple(asked.values())])})
    return out


def chance(data: PromptData, digit: int, name: str, b: int) -> float:
    """The share of training images of `digit` in bin b of attribute `name`."""
    return float((data.bins[name][data.digits == digit] == b).mean())


def prompt_adherence(pipe, classifier, per_prompt: int = 20, seed: int = 0, data_dir=None,
                     batch_size: Optional[int] = None, *, sampler: Optional[str] = None, steps: Optional[int] = None,
                     cfg_scale: Optional[float] = None, progress: bool = False, clip_model=None) -> dict:
    """Sample every held-out prompt per_prompt times and score what was drawn against what was asked.
    Unset sampler, steps, cfg_scale and batch_size are resolved by Pipeline.settings (the config's;
    evaluate.py passes the ones it scored FID with). With a tiny CLIP (difflab.clip), also the CLIP score
    of the samples, that of real images with their own prompts, and how the two kinds of number agree."""
    data = training_prompt_set(data_dir)
    asks = held_out_prompts(data)
    texts = [a["text"] for a in asks for _ in range(per_prompt)]
    digits = torch.tensor([a["digit"] for a in asks for _ in range(per_prompt)])
    run = pipe.settings(sampler, steps, cfg_scale, batch_size)
    images = generate_with_bar(pipe, pipe.prompts(texts), run, seed=seed, progress=progress).images
    accuracy, _ = conditional_accuracy(classifier, images, digits)
    measured = data.thresholds.bin(attributes.measure(tensor_to_uint8(images)), digits.numpy())
    result = {"prompts": len(asks), "per_prompt": per_prompt, "accuracy": accuracy, "attributes": {}}
    for name in BINS:
        rows = [(i, a) for i, a in enumerate(asks) if name in a["asked"]]
        idx = np.array([i * per_prompt + k for i, _ in rows for k in range(per_prompt)])
        wanted = np.array([a["asked"][name] for _, a in rows for _ in range(per_prompt)])
        got = measured[name][idx]
        result["attributes"][name] = {
            "hit_rate": float((got == wanted).mean()),
            "chance": float(np.mean([chance(data, a["digit"], name, a["asked"][name]) for _, a in rows])),
            "correlation": float(np.corrcoef(wanted, got)[0, 1]) if got.std() > 0 else 0.0,
        }
    for kind in ("common", "rare"):
        rows = [(i, a) for i, a in enumerate(asks) if a["kind"] == kind]
        hits = [all(measured[n][i * per_prompt + k] == b for n, b in a["asked"].items())
                for i, a in rows for k in range(per_prompt)]
        # chance of all three: the training share of the combination among images of the digit
        share = [a["training_images"] / max((data.digits == a["digit"]).sum(), 1) for _, a in rows]
        result[f"{kind}_combinations"] = {"all_three_hit": float(np.mean(hits)), "chance": float(np.mean(share)),
                                          "training_images": [a["training_images"] for _, a in rows]}
    if clip_model is not None:
        result["clip"] = clip_agreement(clip_model, images, texts, asks, per_prompt, measured, digits, classifier,
                                        data_dir)
    return result


def clip_agreement(clip_model, images, texts, asks, per_prompt, measured, digits, classifier, data_dir) -> dict:
    """CLIP score (Hessel et al. 2021) beside the measured hit rates: the samples' score, real images' score with
    their own prompts, and the correlation over held-out prompts between a prompt's mean CLIP score and the share
    of its images that are the digit asked for with every attribute asked (the two ways to say "followed")."""
    from difflab.clip import clip_scores, real_clip_score

    per_image = clip_scores(clip_model, images, texts).numpy()
    right = (predicted_digits(classifier, images) == digits).numpy()
    followed = np.array([right[i * per_prompt + k] and all(measured[n][i * per_prompt + k] == b
                                                           for n, b in a["asked"].items())
                         for i, a in enumerate(asks) for k in range(per_prompt)])
    score_by_prompt = per_image.reshape(len(asks), per_prompt).mean(1)
    followed_by_prompt = followed.reshape(len(asks), per_prompt).mean(1)
    agree = (float(np.corrcoef(score_by_prompt, followed_by_prompt)[0, 1])
             if score_by_prompt.std() > 0 and followed_by_prompt.std() > 0 else 0.0)
    return {"clip_score": float(per_image.mean()), "real_images": real_clip_score(clip_model, data_dir),
            "all_asked_followed": float(followed.mean()), "correlation_over_prompts": agree}


def adherence_table(result: dict) -> str:
    """The attribute rows as Markdown, for evaluate.py's stderr and the docs."""
    lines = ["| attribute | hit rate | chance | correlation asked/measured |", "|---|---|---|---|"]
    for name, r in result["attributes"].items():
        lines.append(f"| {name} | {100 * r['hit_rate']:.1f}% | {100 * r['chance']:.1f}% | {r['correlation']:.2f} |")
    for kind in ("common", "rare"):
        r = result[f"{kind}_combinations"]
        lines.append(f"| all three, {kind} combinations | {100 * r['all_three_hit']:.1f}% | "
                     f"{100 * r['chance']:.1f}% | |")
    text = "\n".join(lines) + f"\n\ndigit accuracy from the prompts: {100 * result['accuracy']:.1f}%\n"
    if result.get("clip"):
        c = result["clip"]
        text += (f"CLIP score {c['clip_score']:.1f} (real images with their own prompts: {c['real_images']:.1f}); "
                 f"over the held-out prompts it correlates {c['correlation_over_prompts']:.2f} with the share of "
                 f"images that follow everything asked ({100 * c['all_asked_followed']:.1f}%)\n")
    return text
