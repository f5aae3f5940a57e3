"""Imagen's cascade (Saharia et al. 2022), after cascaded diffusion models (CDM, Ho et al. 2021): draw small, enlarge.

A *base* model draws a digit at 14x14 (data.resolution: 14), where a step is cheap and the whole digit fits in a
few positions; a *super-resolution* model draws the 28x28 digit conditioned on the base's image, upsampled to 28x28
and given to the U-Net as an extra input channel (model.low_resolution: 14; CDM; SR3, Saharia et al. 2021):

    label --base (14x14 diffusion)--> small --noise to level s--> z_s --upsample, SR (28x28 diffusion | z_s, s)--> image

The super-resolution stage trains on real digits shrunk to 14x14, but samples from the base's drawings, which are
never quite real ones: the mismatch compounds. CDM's answer (Ho et al. 2021, "Gaussian conditioning
augmentation"; Imagen, Sec. 2.4) is *noise conditioning augmentation*: in training, noise the low-resolution input
to a random level s on the forward process, z_s = alpha(s) x_low + sigma(s) eps, and tell the model s; when
sampling, noise the base's image to one fixed level (sampling.aug_level). Noise hides the small ways the base's
images differ from real ones, and the model learns to fill in what the noise hid. cascade.noise_aug: 0 trains
without it, the ablation the CDM paper shows is the key to cascades.

A *refiner* (SDXL, Podell et al. 2023; eDiff-I's experts, Balaji et al. 2022) is the same idea along the noise
levels instead of the resolution: a base takes the sampling steps of high noise, where the layout is decided, and
hands its trajectory to an expert trained only on the low noise levels t < cascade.refine_below, where the detail is:

    label --base (t from 1 down to refine_below)--> x_t --refiner (t from refine_below down to 0)--> image

Both stages are ordinary diffusion models through train.py; the second stage's config names its base
(cascade.base, and cascade.base_config that trains it first on a fresh clone), and sampling runs the whole chain
(pipeline.Pipeline.generate; sample.py --stages shows both).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .settings import Config

IMAGE_SIZE = 28  # MNIST's, what the last stage draws


def downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Images (N, C, H, W) shrunk to size x size by averaging each block of pixels (area resampling: 28 -> 14 averages
    2x2 blocks), the low-resolution data of a cascade; images already that size pass through."""
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="area")


def upsample(x: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Low-resolution images (N, C, h, w) enlarged to size x size, bilinearly: what the super-resolution U-Net reads
    beside x_t (and how the base's drawings are shown and scored at MNIST's size)."""
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def augment(low: torch.Tensor, s: torch.Tensor, eps: torch.Tensor, path) -> torch.Tensor:
    """Noise conditioning augmentation (Ho et al. 2021): z_s = alpha(s) x_low + sigma(s) eps on the model's
    own noise path, s (N,) in [0, 1]; s = 0 leaves the image as it is."""
    a, sigma = path.alpha(s).view(-1, 1, 1, 1), path.sigma(s).view(-1, 1, 1, 1)
    return torch.where(s.view(-1, 1, 1, 1) > 0, a * low + sigma * eps, low)


def training_condition(x0: torch.Tensor, draws, cfg: Config, path) -> dict:
    """What the super-resolution U-Net reads beside (x_t, t, y) in one training step: the batch's own digits shrunk to
    model.low_resolution, noised to levels s ~ U(0, cascade.noise_aug), and s; keyword arguments of its forward."""
    low = downsample(x0, cfg.model.net.low_resolution)
    s = draws.rand() * cfg.cascade.noise_aug  # (B,); all zero without augmentation
    return {"low": augment(low, s, draws.randn(*low.shape[1:]), path), "aug": s * 1000}


def sampling_condition(low: torch.Tensor, aug_level: float, seed: int, path) -> dict:
    """The super-resolution stage's input when sampling: the base's images (N, 1, h, w) noised to the one level
    sampling.aug_level (the noise from a CPU generator seeded by `seed`: the same images on every device)."""
    s = torch.full((len(low),), float(aug_level))
    eps = torch.randn(low.shape, generator=torch.Generator().manual_seed(seed + 7919))
    return {"low": augment(low.cpu(), s, eps, path), "aug": s * 1000}


def real_low_res(digits, size: int, data_dir=None) -> torch.Tensor:
    """Real test digits, one per label, shrunk to size x size: a perfect base (sampling.low_res_from: real), what the
    grids of training show (the base may not exist yet) and an upper bound for the cascade."""
    from .unclip import test_images_of

    return downsample(test_images_of([int(d) for d in digits], data_dir), size)


def refiner_times(t: torch.Tensor, refine_below: float, num_timesteps: int, discrete: bool) -> torch.Tensor:
    """A refiner's training times: the config's draw of t in (0, 1] squeezed into (0, refine_below], so the expert
    learns only the low noise levels it will be handed (eDiff-I's experts, Balaji et al. 2022). A discrete draw k / T
    stays on the grid: ceil(k refine_below) / T, uniform over 1..refine_below T when T refine_below is whole."""
    if discrete:
        return torch.ceil(t * num_timesteps * refine_below - 1e-6).clamp(min=1) / num_timesteps
    return t * refine_below


def hand_over(base, refiner, refine_below: float):
    """The network a refiner's sampler calls (model(x, t * 1000, y, ...)): the base at noise levels t >= refine_below,
    the refiner below, image by image (SDXL's base hands its latents to the refiner for the last steps, Podell et al.
    2023; eDiff-I switches experts by noise level). A sampler's step has one t for the whole batch, so one of the two
    runs; a batch of mixed levels runs both and keeps each image's own."""

    def network(x: torch.Tensor, t: torch.Tensor, y, **kwargs) -> torch.Tensor:
        low = (t < refine_below * 1000).view(-1)
        if bool(low.all()):
            return refiner(x, t, y, **kwargs)
        if not bool(low.any()):
            return base(x, t, y, **kwargs)
        mask = low.view(-1, *[1] * (x.ndim - 1))
        return torch.where(mask, refiner(x, t, y, **kwargs), base(x, t, y, **kwargs))

    return network


def base_checkpoint(cfg: Config, checkpoint: Path) -> Path:
    """The base stage's file a super-resolution checkpoint's stored cascade.base means here: looked for only in this
    user's folders, as a latent model's VAE is (latent.checkpoint_vae)."""
    from .infra.checkpoint import CheckpointError
    from .latent import checkpoint_vae

    if not cfg.cascade.base:
        raise CheckpointError(f"{checkpoint}: a super-resolution stage or refiner whose config names no base "
                              "(cascade.base)")
    return checkpoint_vae(cfg.cascade.base, checkpoint, what="base stage")


def check_base(base_cfg: Config, sr_cfg: Config, path) -> None:
    """A base must draw what the super-resolution stage was trained to enlarge: that size, those labels; or, for a
    refiner, be a model of the same noise path, condition and samples, whose trajectory the refiner can finish."""
    from .config import ConfigError

    if sr_cfg.cascade.refine_below:
        mismatch = [what for what, same in (
            ("diffusion section (objective and noise path)", base_cfg.diffusion == sr_cfg.diffusion),
            ("conditioning", base_cfg.model.conditioning == sr_cfg.model.conditioning),
            ("data (resolution, latents, framing)", base_cfg.data.resolution == sr_cfg.data.resolution
             and base_cfg.data.vae_checkpoint == sr_cfg.data.vae_checkpoint
             and base_cfg.data.reframe == sr_cfg.data.reframe),
        ) if not same]
        kind = (base_cfg.cascade.refine_below or getattr(base_cfg.model.net, "low_resolution", 0)
                or base_cfg.model.architecture == "prior" or base_cfg.fewstep.method != "none")
        if mismatch or kind:
            raise ConfigError(f"cascade.base={path}: its {', '.join(mismatch) or 'kind'} differ from the refiner "
                              f"{sr_cfg.name}'s; a refiner finishes the steps of an ordinary diffusion model of the "
                              "same path, condition and samples")
        return
    low = sr_cfg.model.net.low_resolution
    if base_cfg.data.resolution != low or base_cfg.model.conditioning != "class":
        raise ConfigError(f"cascade.base={path}: draws {base_cfg.data.resolution}x{base_cfg.data.resolution} images "
                          f"of {base_cfg.model.conditioning} conditioning; {sr_cfg.name} enlarges {low}x{low} digits "
                          "of class labels")


# The command line's settings of a run's length and machine, which the base trained first shares with the stage
# that asked for it (`train.py --config sr_28.yaml training.max_images=640` trains both on 640 images); how each
# stage learns (lr, batch size, ...) stays its own config's.
SHARED_WITH_BASE = ("training.epochs", "training.max_steps", "training.max_images", "training.seed",
                    "training.device", "training.threads", "training.precision", "training.compile")


def train_base_first(cfg: Config, command_line: Sequence[str] = ()) -> Optional[Path]:
    """A cascade's first stage, when cascade.base does not exist yet and cascade.base_config names how to train it
    (a fresh clone): train it, saying so; as latent diffusion trains its VAE first (vae_training.train_vae_first).
    `command_line`: train.py's overrides; those of SHARED_WITH_BASE apply to the base too."""
    from .config import ConfigError, load_config, parse_override
    from .trainers import build_trainer

    path = Path(cfg.cascade.base)
    if path.name != "last.pt" or path.parent.name != "checkpoints":
        raise ConfigError(f"cascade.base: to train the base first it must end in <name>/checkpoints/last.pt (where "
                          f"train.py writes it), got {path}")
    shared = [o for o in command_line if ".".join(parse_override(o)[:2]) in SHARED_WITH_BASE]
    overrides = [f"training.output_dir={path.parents[2]}", *shared] + ([f"data.data_dir={cfg.data.data_dir}"]
                                                                      if cfg.data.data_dir else [])
    base_cfg = dataclasses.replace(load_config(cfg.cascade.base_config, overrides), name=path.parents[1].name)
    check_base(base_cfg, cfg, cfg.cascade.base_config)
    print(f"no base stage at {path} yet: training it first (stage 1; the same as `python train.py "
          f"--config {cfg.cascade.base_config} {' '.join(overrides)}`)")
    trainer = build_trainer(base_cfg)
    trainer.fit()
    if trainer.interrupted:
        raise KeyboardInterrupt
    print(f"base stage trained: {path}; now the {'refiner' if cfg.cascade.refine_below else 'super-resolution stage'} "
          "(stage 2)")
    return path
