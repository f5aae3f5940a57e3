"""Range checks on a loaded config: the impossible values a typo produces (config.py builds, this checks)."""

from __future__ import annotations

import math
from typing import Optional

from .untrusted import shown

# Sizes that end in an allocator traceback, or hours of waiting, rather than in a result:
# - diffusion.num_timesteps: the discrete schedules are arrays of that length, and training draws t from
#   them. DDPM used 1000, improved DDPM 4000; 10,000 is ten times DDPM (and 10^10 would be 80 GB of betas).
MAX_TIMESTEPS = 10_000
# - sampling.n_per_class: the grid sampled and saved at every epoch, a row of n per digit: 100 is a
#   2,800-pixel-wide picture of 1,000 images, already minutes of sampling on a CPU at each epoch.
MAX_N_PER_CLASS = 100
# - training.batch_size: a batch is drawn from the training images; MNIST and Fashion-MNIST have 60,000
#   each (data.limit keeps fewer), and a batch larger than them has nothing to be drawn from.
TRAIN_IMAGES = {"mnist": 60_000, "fashion_mnist": 60_000, "moving_mnist": 60_000}  # clips, for the last
# - sampling steps: the models are trained on a 1000-step discretisation (diffusion.num_timesteps). DDPM's
#   full chain is exactly 1000 steps, and "leading" spacing cannot place more distinct times, so beyond it only
#   the run time grows (about linearly). A config may name more; what samples (a command, the demo) refuses them.
MAX_STEPS = 1000


# The one rule for each sampling value, wherever it arrives: a config (below), a command line (commands/common.py), the
# demo's page (demo/session.py). Each caller words its own message; the rule and its bounds are these two functions.


def steps_ok(steps, most: Optional[int] = MAX_STEPS) -> bool:
    """A number of sampling steps: a whole number, at least 1, at most `most` (None: no upper bound)."""
    whole = isinstance(steps, int) or (math.isfinite(steps) and steps == int(steps))  # 10**400 is a whole int
    return whole and steps >= 1 and (most is None or steps <= most)


def cfg_scale_ok(scale, most: float = math.inf) -> bool:
    """A guidance scale w of d = d_u + w (d_c - d_u) (Ho & Salimans 2022, Eq. 6, rewritten with our w = 1 + their
    w): finite, at least 0 (w = 0 is the unconditional prediction alone, 1 no guidance), at most `most` where the
    caller caps it (the demo).
    `nan < 0` is False, so a range check alone would let NaN through (and all-black images out): finiteness first."""
    return math.isfinite(scale) and 0 <= scale <= most


class ConfigError(ValueError):
    """A config problem, reported as one line: `file: key: what was expected`."""


def validate(cfg, source: str, choices: dict) -> None:
    """Range checks: the impossible values a typo produces."""

    def bad(key: str, expected: str):
        section, name = key.split(".")
        values = getattr(cfg, section)
        if section == "model" and not hasattr(values, name):  # the architecture's own settings
            values = values.net
        raise ConfigError(f"{source}: {key}: expected {expected}, got {shown(getattr(values, name))}")

    for (section, key), allowed in choices.items():
        if getattr(getattr(cfg, section), key) not in allowed:
            bad(f"{section}.{key}", "one of " + ", ".join(allowed))
    _validate_ranges(cfg, bad)
    _validate_sizes(cfg, bad)
    _validate_model(cfg, bad)
    for key, expected in cfg.model.net.problems(cfg.model):  # each architecture checks its own (models/*.py)
        bad(f"model.{key}", expected)
    _validate_fewstep(cfg, bad)
    _validate_cascade(cfg, bad)
    _validate_video(cfg, bad)


def _validate_ranges(cfg, bad) -> None:
    """Numbers that must be positive, non-negative or in [0, 1]; optional limits that must be >= 1."""
    d, tc, s = cfg.diffusion, cfg.training, cfg.sampling
    positive = {
        "diffusion.num_timesteps": d.num_timesteps, "diffusion.beta_start": d.beta_start,
        "diffusion.logit_std": d.logit_std, "training.epochs": tc.epochs,
        "training.max_batch_size": tc.max_batch_size, "training.lr": tc.lr,
        "training.text_lr_scale": tc.text_lr_scale,
        "training.log_every": tc.log_every, "training.checkpoint_every": tc.checkpoint_every,
        "sampling.shift": s.shift, "sampling.n_per_class": s.n_per_class,
    }
    for key, value in positive.items():
        if not value > 0:
            bad(key, "a number > 0")
    if not steps_ok(s.steps, most=None):  # a config may name more than MAX_STEPS: refused when it samples
        bad("sampling.steps", "a number > 0")
    if not d.beta_start < d.beta_end < 1:
        bad("diffusion.beta_end", f"a number in (beta_start={d.beta_start}, 1)")
    if isinstance(tc.batch_size, str) and tc.batch_size != "auto":
        bad("training.batch_size", 'a positive integer or "auto"')
    if isinstance(tc.batch_size, int) and tc.batch_size < 1:
        bad("training.batch_size", 'a positive integer or "auto"')
    for key, value in {
        "training.cfg_dropout_prob": tc.cfg_dropout_prob,
        "training.ema_decay": tc.ema_decay,
        "sampling.eta": s.eta,
        "sampling.cfg_rescale": s.cfg_rescale,
    }.items():
        if not 0 <= value <= 1:
            bad(key, "a number in [0, 1]")
    if not 0 <= tc.adam_beta2 < 1:
        bad("training.adam_beta2", "a number in [0, 1)")
    for key, value in {
        "training.weight_decay": tc.weight_decay, "training.warmup_steps": tc.warmup_steps,
        "training.grad_clip": tc.grad_clip, "training.sample_every": tc.sample_every,
        "training.keep_last": tc.keep_last,
    }.items():
        if value < 0:
            bad(key, "a number >= 0")
    if not cfg_scale_ok(s.cfg_scale):
        bad("sampling.cfg_scale", "a number >= 0")
    if cfg.data.limit is not None and cfg.data.limit < 1:
        bad("data.limit", "a positive integer or null")
    if tc.threads is not None and tc.threads < 1:
        bad("training.threads", "a positive integer or null")
    if tc.max_steps is not None and tc.max_steps < 1:
        bad("training.max_steps", "a positive integer or null")
    if tc.max_images is not None and tc.max_images < 1:
        bad("training.max_images", "a positive integer or null")
    if tc.min_snr_gamma is not None and not tc.min_snr_gamma > 0:
        bad("training.min_snr_gamma", "a number > 0 or null")
    if s.midpoint is not None and not (isinstance(s.midpoint, (int, float)) and 0 < s.midpoint < 1):
        bad("sampling.midpoint", "a number in (0, 1) or null")
    gi = s.guidance_interval
    if not (len(gi) == 2 and all(isinstance(v, (int, float)) for v in gi) and 0 <= gi[0] <= gi[1] <= 1):
        bad("sampling.guidance_interval", "[lo, hi] with 0 <= lo <= hi <= 1")
    if s.guide is not None and not (isinstance(s.guide, str) and s.guide.strip()):
        bad("sampling.guide", "a checkpoint's path (autoguidance's weaker model) or null")
    if s.decoder is not None and not (isinstance(s.decoder, str) and s.decoder.strip()):
        bad("sampling.decoder", "a checkpoint's path (an unCLIP decoder, configs/unclip/decoder.yaml) or null")


def _validate_sizes(cfg, bad) -> None:
    """Sizes with an upper bound (see MAX_TIMESTEPS and the others above): each names its reason."""
    d, tc, s = cfg.diffusion, cfg.training, cfg.sampling
    if d.num_timesteps > MAX_TIMESTEPS:
        bad("diffusion.num_timesteps",
            f"at most {MAX_TIMESTEPS:,} (the schedules are arrays of that length; DDPM used 1000)")
    if s.n_per_class > MAX_N_PER_CLASS:
        bad("sampling.n_per_class", f"at most {MAX_N_PER_CLASS} (the grid sampled at every epoch is 10 x n images)")
    images = TRAIN_IMAGES.get(cfg.data.dataset, 60_000)
    if cfg.data.limit is not None and cfg.data.limit < images:
        images, named = cfg.data.limit, f"data.limit = {cfg.data.limit:,}"
    else:
        named = f"the {images:,} training images of {cfg.data.dataset}"
    if isinstance(tc.batch_size, int) and tc.batch_size > images:
        bad("training.batch_size", f"at most {named}: a batch is drawn from the training images")


def _validate_model(cfg, bad) -> None:
    """Settings that only some networks or data take (each network's own sizes: NetConfig.problems)."""
    m, s = cfg.model, cfg.sampling
    if s.clip_x0 and cfg.data.vae_checkpoint:
        bad("sampling.clip_x0", "false for latent diffusion (latents are not bounded to [-1, 1])")
    if s.clip_x0 and m.architecture == "prior":
        bad("sampling.clip_x0", "false for a prior (CLIP embeddings at unit variance are not bounded to [-1, 1])")
    if m.net.reads_jump_size() and ((s.spacing, s.shift) != ("trailing", 1.0) or s.midpoint is not None):
        bad("sampling.spacing",
            "trailing with sampling.shift 1 and no midpoint for a model that reads its jump size (equal jumps 1/steps)")
    if m.reads_sequence():
        for key, value in {"model.text_dim": m.text_dim, "model.text_depth": m.text_depth,
                           "model.text_heads": m.text_heads}.items():
            if not (isinstance(value, int) and value > 0):
                bad(key, "a positive integer")
        if m.text_dim % m.text_heads:
            bad("model.text_dim", f"a multiple of model.text_heads ({m.text_heads})")
    if cfg.data.reframe and (m.conditioning != "class" or cfg.data.vae_checkpoint):
        bad("data.reframe", "false for a model of prompts, image embeddings or latents (reframed digits: class labels)")
    if getattr(m.net, "micro_conditioning", False) and not cfg.data.reframe:
        bad("model.micro_conditioning", "false unless data.reframe is true (it tells the model each digit's size "
                                        "and crop)")
    if m.text_encoder != "joint" and m.conditioning != "prompt":
        bad("model.text_encoder", "joint for a model of class labels or image embeddings (a text encoder reads "
                                  "prompts: model.conditioning prompt)")


def _validate_fewstep(cfg, bad) -> None:
    """fewstep.*: a teacher for distillation, a grid of at least one step, a target EMA in [0, 1)."""
    dc = cfg.fewstep
    if dc.method == "none":
        return
    if dc.method in ("consistency_distillation", "progressive_distillation") and not dc.teacher:
        bad("fewstep.teacher", "the path of a trained checkpoint to distil")
    if dc.steps < 1:
        bad("fewstep.steps", "an integer >= 1")
    if not 0 <= dc.target_ema < 1:
        bad("fewstep.target_ema", "a number in [0, 1)")
    if dc.huber_c is not None and not dc.huber_c > 0:
        bad("fewstep.huber_c", "a number > 0 or null")
    if dc.stages < 1:
        bad("fewstep.stages", "an integer >= 1")
    if not dc.noise_std > 0:
        bad("fewstep.noise_std", "a number > 0")
    if not cfg_scale_ok(dc.teacher_cfg_scale):
        bad("fewstep.teacher_cfg_scale", "a number >= 0")
    if dc.method in ("shortcut", "meanflow"):
        what = {"shortcut": "a shortcut model", "meanflow": "MeanFlow"}[dc.method]
        if (cfg.diffusion.target, cfg.diffusion.schedule) != ("flow", "flow"):
            bad("diffusion.target", f"flow, with schedule flow, for {what} (it learns jumps along the flow)")
        if not hasattr(cfg.model.net, "step_conditioning"):
            bad("model.architecture", f"mmdit for {what} (with step_conditioning: true)")
        if not cfg.model.net.reads_jump_size():
            bad("model.step_conditioning", f"true for {what} (the network reads the jump size)")
        if dc.method == "shortcut" and (dc.steps < 2 or dc.steps & (dc.steps - 1)):
            bad("fewstep.steps", "a power of two >= 2 for a shortcut model (jumps of 1/N, 2/N, 4/N ... 1)")
        return
    if cfg.diffusion.target == "x0":  # f = c_skip x + c_out F needs c_skip(0) = 1; x0-prediction has c_skip = 0
        bad("diffusion.target", "eps, v or flow for a consistency model (x0-prediction misses f(x, 0) = x)")


def _validate_video(cfg, bad) -> None:
    """Clips (difflab.moving_mnist) are drawn by the video DiT, and the video DiT draws nothing else (its frames are
    checked by its own settings, models/video_dit.py)."""
    video, clips = cfg.model.architecture == "video_dit", cfg.data.dataset == "moving_mnist"
    if video != clips:
        bad("data.dataset" if video else "model.architecture",
            "moving_mnist with model.architecture: video_dit, and the one with the other")
    if video and (cfg.data.vae_checkpoint or cfg.data.reframe or cfg.data.resolution != 28
                  or cfg.cascade.refine_below or cfg.fewstep.method != "none"):
        bad("model.architecture", "a video DiT on pixels, without latents, reframing, a cascade or few-step training")


CASCADE_RESOLUTIONS = (7, 14, 28)  # 28 / 4, 28 / 2, MNIST's own: what area averaging shrinks a digit to exactly


def _validate_cascade(cfg, bad) -> None:
    """Imagen's cascade (difflab.cascade): a base at a lower data.resolution, a super-resolution stage that reads its
    samples (model.low_resolution) and is trained on real digits shrunk to that size, augmented by cascade.noise_aug."""
    c, s, res = cfg.cascade, cfg.sampling, cfg.data.resolution
    low = getattr(cfg.model.net, "low_resolution", 0)
    if res not in CASCADE_RESOLUTIONS:
        bad("data.resolution", f"one of {', '.join(map(str, CASCADE_RESOLUTIONS))} (28 divided by 1, 2 or 4)")
    if res != 28 and (cfg.data.vae_checkpoint or cfg.data.reframe or cfg.model.conditioning != "class"):
        bad("data.resolution", "28 for latents, reframed digits, prompts or image embeddings (a cascade's base "
                               "draws class-conditioned digits)")
    if low and (low not in CASCADE_RESOLUTIONS or low >= res):
        bad("model.low_resolution", f"0, or one of {', '.join(str(r) for r in CASCADE_RESOLUTIONS if r < res)} "
                                    f"(below data.resolution = {res})")
    if low and (cfg.data.vae_checkpoint or cfg.data.reframe or cfg.model.conditioning != "class"):
        bad("model.low_resolution", "0 for latents, reframed digits, prompts or image embeddings")
    if not 0 <= c.noise_aug <= 1:
        bad("cascade.noise_aug", "a number in [0, 1] (the largest noise level t the low-resolution input gets)")
    if not 0 <= s.aug_level <= 1:
        bad("sampling.aug_level", "a number in [0, 1] (the noise level t the base's samples get)")
    if not 0 <= c.refine_below < 1:
        bad("cascade.refine_below", "a number in [0, 1) (the noise level t below which a refiner takes over)")
    if c.refine_below and low:
        bad("cascade.refine_below", "0 for a super-resolution stage (a refiner draws at its base's resolution)")
    if c.refine_below and (cfg.model.architecture == "prior" or cfg.fewstep.method != "none"):
        bad("cascade.refine_below", "0 for a prior or a few-step model (a refiner finishes a diffusion model's steps)")
    if not low:
        unset = {"cascade.noise_aug": c.noise_aug, "sampling.aug_level": s.aug_level}
        if not c.refine_below:
            unset.update({"cascade.base": c.base, "cascade.base_config": c.base_config})
        for key, value in unset.items():
            if value:
                bad(key, "unset for a model that is not a super-resolution stage (model.low_resolution: 0)"
                    + ("" if key.startswith(("cascade.noise", "sampling")) else " or a refiner (cascade.refine_below)"))
    for key, value in {"cascade.base": c.base, "cascade.base_config": c.base_config}.items():
        if value is not None and not (isinstance(value, str) and value.strip()):
            bad(key, "a path or null")
