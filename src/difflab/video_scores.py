"""Scoring clips (issue 49): a video DiT's Moving MNIST clips read by the MNIST judge, frame by frame, and as motion.

evaluation.py scores images; a clip is scored through the same judge by reading each frame as MNIST frames a digit
(moving_mnist.judge_view: a 28x28 window centred on the ink's centre of mass), and as motion by the ink's centroid
track (moving_mnist.motion_of). evaluate.py calls evaluate_clips for a video checkpoint (evaluation.evaluate_pipeline).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from . import moving_mnist as mm
from .evaluation import accuracy_of, features, generate_with_bar, how_sampled, judged_dataset, on_its_device
from .metrics import feature_statistics, fid_from_statistics

MIN_CLIPS = 4  # FID needs a covariance


def clip_scores(clips: torch.Tensor, asked: torch.Tensor, classifier: nn.Module) -> tuple[dict, torch.Tensor]:
    """What the MNIST judge and the centroid track say of clips (N, 1, F, H, W) asked for `asked` (N, 3), (digit,
    direction, speed): each frame's digit, the clip's identity and its motion; and the frames' judge features."""
    frames = mm.judge_view(clips)  # (N F, 1, 28, 28)
    feats = features(classifier, frames)
    with on_its_device(classifier) as device:
        digits = classifier.classify(feats.to(device)).argmax(1).cpu().view(len(clips), -1)  # (N, F)
    direction, speed = mm.motion_of(clips[:, 0])  # (N, F, H, W): the one channel
    digit = asked[:, 0:1]
    _, per_digit = accuracy_of(digits.flatten(), digit.expand_as(digits).flatten())
    return {
        "frame_accuracy": (digits == digit).float().mean().item(),  # each frame's digit, the one asked for
        "per_digit_accuracy": per_digit,
        "identity_consistent": (digits == digits[:, :1]).all(1).float().mean().item(),  # one digit all through
        "identity_correct": (digits == digit).all(1).float().mean().item(),  # and the one asked for
        "direction_accuracy": (direction == asked[:, 1]).float().mean().item(),
        "speed_accuracy": (speed == asked[:, 2]).float().mean().item(),
    }, feats


def evaluate_clips(pipe, classifier: nn.Module, n: int, *, sampler: Optional[str] = None, steps: Optional[int] = None,
                   cfg_scale: Optional[float] = None, seed: int = 0, batch_size: Optional[int] = None,
                   data_dir: Optional[Union[str, Path]] = None, progress: bool = True, **options) -> dict:
    """A video DiT asked for the first n held-out clips' prompts (the test digits' motions): per-frame digit
    accuracy with the MNIST judge (fid and accuracy keep their meaning: frames, read as the judge reads digits),
    whether each clip keeps one digit (identity) and moves as asked (direction and speed, from the ink's centroid
    track), and the same measures of the real held-out clips, the ceiling (its `real` entry). The frame FID is
    against the real held-out clips' frames; its floor, the real training clips' frames against them.

    Image-to-video (sampling.first_frame): each clip is given its held-out clip's own first frame, and the video
    entry adds how far the drawn first frame is from it (mean absolute pixel difference, pixels in [0, 1])."""
    if judged_dataset(classifier) != "mnist":
        raise ValueError("clips of Moving MNIST are judged by the MNIST classifier")
    held_out = mm.SPLITS["test"][0]
    if not MIN_CLIPS <= n <= held_out:
        raise ValueError(f"a video model is scored on {MIN_CLIPS} to {held_out} held-out clips, not {n}")
    tiles, motion, labels = mm.load_split("test", data_dir)
    asked = torch.from_numpy(np.stack([labels, motion[:, mm.DIRECTION], motion[:, mm.SPEED]], 1))[:n]
    run = pipe.settings(sampler, steps, cfg_scale, batch_size)

    def clips_of(t, m):
        return torch.from_numpy(mm.render(t, m))[:, None].float() / 127.5 - 1

    real_clips = clips_of(tiles, motion[:n])  # (n, 1, F, H, W)
    given = real_clips[:, :, 0] if pipe.cfg.sampling.first_frame else None  # image-to-video: each its own frame
    result = generate_with_bar(pipe, asked, run, seed=seed, progress=progress, first_frames=given, **options)
    if not torch.isfinite(result.images).all():
        raise FloatingPointError(f"{run.sampler} x{run.steps} produced non-finite pixels")
    scores, fake = clip_scores(result.images, asked, classifier)
    if given is not None:
        scores["first_frame_error"] = ((result.images[:, :, 0] - given).abs().mean() / 2).item()
    real, real_feats = clip_scores(real_clips, asked, classifier)
    train_tiles, train_motion, _ = mm.load_split("train", data_dir)
    train_feats = features(classifier, mm.judge_view(clips_of(train_tiles, train_motion[:n])))
    stats = feature_statistics(real_feats)
    return {
        "fid": fid_from_statistics(*feature_statistics(fake), *stats),
        "fid_floor": fid_from_statistics(*feature_statistics(train_feats), *stats),
        "accuracy": scores["frame_accuracy"],
        "per_digit_accuracy": scores.pop("per_digit_accuracy"),
        "n": n,
        "video": {**scores, "frames": result.images.shape[2], "first_frame_given": given is not None,
                  "real": {k: v for k, v in real.items() if k != "per_digit_accuracy"}},
        **how_sampled(pipe, run, result),
    }
