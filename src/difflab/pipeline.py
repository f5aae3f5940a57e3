"""A trained model, ready to sample: model + objective + path (+ VAE), rebuilt from a checkpoint alone."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from .infra.checkpoint import CheckpointError, load_checkpoint, load_weights
from .infra.distributed import select_device
from .config import ConfigError, config_from_dict, parse_override
from .settings import Config
from .guidance import make_denoiser
from .models import ARCHITECTURES, NULL_CLASS, build_model, count_parameters
from .cascade import hand_over, sampling_condition
from .microcond import CENTRED
from .models.text import IMAGE_EMBED_DIM
from .prompts import encode, write
from .objectives import build_objective
from .samplers import SAMPLERS, sampler_options
from .schedules import build_path, time_grid
from .infra.untrusted import shown


def sampling_batch_size(device: Union[str, torch.device], architecture: str = "unet") -> int:
    """Images per sampling batch when none is asked for: small on a CPU, large on a GPU.

    On a CPU, small batches keep the activations in cache. Measured on 2 cores with
    `python benchmarks/sampling_batch.py` (image-steps/s, guidance on): the SD2 U-Net
    296.8 / 302.1 / 263.2 at batches of 16 / 32 / 64; the SD3 MMDiT (196 tokens of width 112)
    165.0 / 131.5 / 112.8 at 8 / 16 / 64, so transformers sample in batches of 8.
    A GPU is idle below a few hundred images. The batch never changes the images: the
    starting noise is drawn for all of them first, and later noise per image (image_generators).
    """
    if torch.device(device).type != "cpu":
        return 500
    return ARCHITECTURES[architecture].settings.CPU_SAMPLING_BATCH


def image_generators(seed: int, start: int, stop: int) -> list[torch.Generator]:
    """One CPU generator per image, for the fresh noise of stochastic samplers (DDPM, DDIM eta > 0).

    Image i's stream is seeded by (seed, i) alone, so its noise, and the image, are the same
    whatever the batch size (pipeline.sampling_batch_size differs by device and model).
    """
    return [torch.Generator().manual_seed((seed + 1) * 1_000_003 + i) for i in range(start, stop)]


def check_finite(weights: dict, path: Union[str, Path], what: str) -> None:
    """Refuse weights holding NaN or inf: every image they sample would be NaN, saved as all black."""
    if not isinstance(weights, dict):
        return  # not a state dict at all: load_weights says so
    bad = [name for name, w in weights.items()
           if isinstance(w, torch.Tensor) and w.is_floating_point() and not torch.isfinite(w).all()]
    if bad:
        raise CheckpointError(f"{path}: the {what} hold NaN or inf ({len(bad)} of {len(weights)} tensors, "
                              f"first {shown(bad[0], 60)}); every sample would be NaN: use an earlier checkpoint")


def number_or_none(value) -> Optional[float]:
    """A finite int or float from a checkpoint's bookkeeping (step, images seen, speed), else None:
    these are only shown, and a list or a string there must not break a table or a message."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None


def run_info(state: dict) -> dict:
    """What a checkpoint says about its run, for tables and the demo: numbers, and a short device name."""
    info = {k: number_or_none(state.get(k)) for k in ("step", "epoch", "images_seen", "train_images_per_s")}
    device = state.get("device")
    info["device"] = device[:40] if isinstance(device, str) else None
    return info


# Sampling settings that name a file on this user's machine: given at sampling time (--set), never read from a
# checkpoint's stored config (a stranger's paths): autoguidance's weaker model, DALL-E 2's decoder.
SAMPLING_PATHS = ("guide", "decoder")


def is_unconditional(cfg: Config) -> bool:
    """A model trained with every label dropped (DDPM 2020) knows only the null class."""
    return cfg.training.cfg_dropout_prob >= 1.0


def sample_shape(cfg: Config, vae=None) -> tuple[int, ...]:
    """(C, H, W) of what diffusion runs on: pixels, or the VAE's latents; (C, F, H, W) for a clip."""
    if cfg.model.architecture == "video_dit":  # Moving MNIST's clips (moving_mnist.py)
        from .moving_mnist import CANVAS

        return (1, cfg.model.net.frames, CANVAS, CANVAS)
    if vae is not None:
        return vae.latent_shape
    if cfg.model.architecture == "prior":  # DALL-E 2's prior: a CLIP image embedding (unclip.py)
        return (IMAGE_EMBED_DIM, 1, 1)
    return (1, cfg.data.resolution, cfg.data.resolution)  # 28, or smaller for a cascade's base (cascade.py)


@dataclass(frozen=True)
class SamplingSettings:
    """What one sampling run uses, worked out in one place (Pipeline.settings) for every caller:
    generate, evaluation, adherence, the commands and the demo."""

    sampler: str
    steps: int
    cfg_scale: float  # 1 for an unconditional model: it knows no condition to be guided towards
    batch_size: int  # images per batch: a speed setting only, the images are the same for any batch


@dataclass
class GenerationResult:
    images: torch.Tensor  # (N, 1, 28, 28) in [-1, 1], on the CPU
    labels: torch.Tensor  # (N,) the requested digits (NULL_CLASS for unconditional)
    nfe: int  # model evaluations (a CFG step counts once)
    seconds: float
    trajectory: list = field(default_factory=list)  # [(t, x_t, x0_hat)] when asked for
    low_res: Optional[torch.Tensor] = None  # a cascade's: what its super-resolution stage enlarged (N, 1, h, w)



def readable_path(path) -> str:
    """`path` relative to the working folder when it lies inside it (a results file then names no one's home
    folder), else as it is."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)

class Pipeline:
    """Everything needed to turn noise into digits."""

    def __init__(self, model: torch.nn.Module, cfg: Config, device: torch.device, vae=None,
                 info: Optional[dict] = None, guide: Optional[torch.nn.Module] = None,
                 decoder: Optional["Pipeline"] = None, base: Optional["Pipeline"] = None):
        self.model, self.cfg, self.device, self.vae = model.eval(), cfg, device, vae
        self.decoder = decoder  # a DALL-E 2 prior's decoder pipeline, which draws its embeddings (sampling.decoder)
        self.base = base  # a cascade's base stage, whose samples a super-resolution stage enlarges (cascade.base)
        self.guide = None if guide is None else guide.eval()  # autoguidance's weaker model (sampling.guide)
        self.objective = build_objective(cfg.diffusion.target)
        self.path = build_path(cfg.diffusion)
        self.info = info or {}

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], device: Union[str, torch.device] = "auto", use_ema: bool = True,
                        sampling: Sequence[str] = (), vae_path: Optional[Union[str, Path]] = None):  # fmt: skip
        """Load a checkpoint's weights and config. `sampling`: "sampling.key=value" overrides
        of its sampling section (how to sample can change after training; nothing else can).
        `vae_path`: a latent model's VAE checkpoint, chosen by the caller; by default the one its
        config names, looked for only in the caller's folders (latent.checkpoint_vae)."""
        device = select_device(device) if isinstance(device, str) else device
        state = load_checkpoint(path)
        try:
            cfg = config_from_dict(state["config"], source=f"{path} (stored config)", stored=True)
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
        # A guide (autoguidance) or a decoder (unCLIP) is a file on this user's machine, named here: one a stored
        # config names is not loaded
        stored = state["config"].get("sampling")
        stored_paths = isinstance(stored, dict) and any(key in stored for key in SAMPLING_PATHS)
        if sampling or stored_paths:
            raw = {**state["config"], "sampling": dict(state["config"].get("sampling") or {})}
            for key in SAMPLING_PATHS:
                raw["sampling"].pop(key, None)
            for text in sampling:
                section, key, value = parse_override(text)
                if section != "sampling":
                    raise ConfigError(f"override {text!r}: only sampling.* can change after training")
                raw["sampling"][key] = value
            cfg = config_from_dict(raw, source=f"{path} with {' '.join(sampling)}", stored=True)
        # The config's paths were valid where the checkpoint was written; here they are a stranger's
        # choice. The VAE is looked for only in this user's folders (latent.checkpoint_vae), and the data
        # folder is this user's own (data.resolve_data_dir: $DIFFLAB_DATA or ./data), never the stored one.
        vae = None
        if cfg.data.vae_checkpoint:
            from .latent import checkpoint_vae, load_vae  # latent diffusion: decode through the VAE

            vae_file = Path(vae_path) if vae_path is not None else checkpoint_vae(cfg.data.vae_checkpoint, path)
            vae = load_vae(vae_file, device)
            trained_with = state.get("vae_scale_factor")
            if trained_with is not None and number_or_none(trained_with) is None:
                raise CheckpointError(f"{path}: 'vae_scale_factor' holds {shown(trained_with, 40)}, expected a number")
            if trained_with is not None and abs(trained_with - vae.scale_factor) > 1e-6 * abs(trained_with):
                raise CheckpointError(f"{path}: trained on latents of another VAE (scale factor {trained_with:.5f}, "
                                      f"{vae_file} has {vae.scale_factor:.5f}); retrain or restore that VAE")
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, vae_checkpoint=str(vae_file)))
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_dir=None))
        shape = sample_shape(cfg, vae)
        model = build_model(cfg.model, in_channels=shape[0], image_size=shape[-1])
        ema = use_ema and state.get("ema") is not None
        weights = state["ema"] if ema else state["model"]
        check_finite(weights, path, "EMA weights" if ema else "raw (non-EMA) weights")
        load_weights(model, weights, path)
        info = run_info(state)
        info["params"] = count_parameters(model)
        info["checkpoint"] = str(path)
        guide = None
        if cfg.sampling.guide:
            guide = cls.guide_model(cfg, Path(cfg.sampling.guide), device, use_ema, vae)
            info["guide"] = cfg.sampling.guide
        decoder = None
        if cfg.sampling.decoder:  # DALL-E 2: the prior's embeddings are drawn by this decoder (unclip.py)
            decoder = cls.decoder_pipeline(cfg, Path(cfg.sampling.decoder), device, use_ema)
            info["decoder"] = cfg.sampling.decoder
        base = None
        if (cls.super_resolves(cfg) and cfg.sampling.low_res_from == "base") or cls.refines(cfg):
            # Imagen: the base draws, this enlarges; SDXL: the base takes the noisy steps, this refiner the rest
            base = cls.base_pipeline(cfg, Path(path), device, use_ema)
            info["base"] = readable_path(base.info["checkpoint"])  # as it is shown in results: not /home/you/...
            info["stage_params"] = [base.info["params"], info["params"]]
            info["params"] += base.info["params"]  # the cascade's, both stages
        return cls(model.to(device), cfg, device, vae=vae, info=info, guide=guide, decoder=decoder, base=base)

    @staticmethod
    def super_resolves(cfg: Config) -> bool:
        """A cascade's super-resolution stage (model.low_resolution, difflab.cascade)."""
        return bool(getattr(cfg.model.net, "low_resolution", 0))

    @staticmethod
    def refines(cfg: Config) -> bool:
        """A refiner: an expert of the low noise levels that finishes its base's steps (cascade.refine_below)."""
        return bool(cfg.cascade.refine_below)

    @classmethod
    def base_pipeline(cls, cfg: Config, path: Path, device: torch.device, use_ema: bool) -> "Pipeline":
        """The base stage a super-resolution checkpoint or a refiner names (cascade.base, looked for in this user's
        folders only), checked to draw the digits it enlarges, or to be a model whose steps the refiner can finish."""
        from .cascade import base_checkpoint, check_base

        file = base_checkpoint(cfg, path)
        base = cls.from_checkpoint(file, device, use_ema)
        check_base(base.cfg, cfg, file)
        return base

    @classmethod
    def guide_model(cls, cfg: Config, path: Path, device: torch.device, use_ema: bool, vae) -> torch.nn.Module:
        """Autoguidance's weaker model (Karras et al. 2024): another checkpoint that draws the same kind of sample
        from the same noise path and condition (its architecture and size may differ, as in the paper)."""
        guide = cls.from_checkpoint(path, device, use_ema, vae_path=None if vae is None else cfg.data.vae_checkpoint)
        mismatch = [what for what, same in (
            ("diffusion section (objective and noise path)", guide.cfg.diffusion == cfg.diffusion),
            ("conditioning", guide.cfg.model.conditioning == cfg.model.conditioning),
            ("sample shape", sample_shape(guide.cfg, guide.vae) == sample_shape(cfg, vae)),
        ) if not same]
        if mismatch:
            raise ConfigError(f"sampling.guide={path}: its {', '.join(mismatch)} differ from the model's; autoguidance "
                              "needs a weaker version of the same model (an earlier checkpoint of the run, say)")
        if any(stage(c) for stage in (cls.super_resolves, cls.refines) for c in (cfg, guide.cfg)):
            raise ConfigError(f"sampling.guide={path}: autoguidance of a cascade's super-resolution stage or a "
                              "refiner is not supported")
        if cfg.model.net.reads_jump_size() or guide.cfg.model.net.reads_jump_size():
            raise ConfigError(f"sampling.guide={path}: autoguidance of a model told its jump size is not supported")
        return guide.model

    @classmethod
    def decoder_pipeline(cls, prior_cfg: Config, path: Path, device: torch.device, use_ema: bool) -> "Pipeline":
        """The unCLIP decoder a prior's embeddings go to (sampling.decoder=CKPT), checked to read CLIP embeddings."""
        if prior_cfg.model.architecture != "prior":
            raise ConfigError(f"sampling.decoder={path}: only a prior (model.architecture: prior) hands its samples "
                              f"to a decoder; {prior_cfg.name} draws images itself")
        decoder = cls.from_checkpoint(path, device, use_ema)
        if decoder.cfg.model.conditioning != "clip_image":
            raise ConfigError(f"sampling.decoder={path}: {decoder.cfg.name} does not draw from CLIP image embeddings "
                              "(its model.conditioning is not clip_image; configs/unclip/decoder.yaml trains one)")
        return decoder

    def default_labels(self, digits: Sequence[int], n_per_digit: int) -> torch.Tensor:
        """A row of `n_per_digit` for each digit; only the null class if the model is unconditional.

        A model that reads prompts gets the prompt naming the digit alone ("a 7"), as tokens (N, L); DALL-E 2's
        decoder (model.conditioning: clip_image), the CLIP image embeddings (N, 64) of that many real test images.
        """
        if self.reads_prompts:
            return self.prompts([write(d, {}) for d in digits for _ in range(n_per_digit)])
        if self.cfg.model.architecture == "video_dit":  # clips: each digit moving each way in turn
            from .moving_mnist import conditions

            return conditions(digits, n_per_digit)
        if self.cfg.model.conditioning == "clip_image":  # a decoder: CLIP embeddings of real test images of the digit
            from .unclip import test_embeddings_of

            return test_embeddings_of([d for d in digits for _ in range(n_per_digit)], self.cfg.data.data_dir)
        labels = torch.tensor([d for d in digits for _ in range(n_per_digit)], dtype=torch.long)
        labels = torch.full_like(labels, NULL_CLASS) if is_unconditional(self.cfg) else labels
        return self.framed(labels)

    def framed(self, labels: torch.Tensor, framing: Sequence[int] = CENTRED) -> torch.Tensor:
        """Labels (N,) as a model told SDXL's micro-conditions reads them, (N, 4): (label, size, top, left),
        by default MNIST's own framing, "centred, full size" (difflab.microcond.CENTRED); others pass through."""
        if not getattr(self.cfg.model.net, "micro_conditioning", False):
            return labels
        return torch.cat([labels[:, None], torch.tensor(framing, dtype=torch.long).expand(len(labels), 3)], dim=1)

    @property
    def reads_prompts(self) -> bool:
        """Trained on prompts (model.conditioning: prompt) rather than class labels."""
        return self.cfg.model.conditioning == "prompt"

    def prompts(self, texts: Sequence[str]) -> torch.Tensor:
        """Prompts -> tokens (N, L) for generate(); a class-label model refuses them, naming what it reads."""
        if not self.reads_prompts:
            raise ValueError(f"{self.cfg.name} was trained on class labels, not prompts: ask for digits instead")
        return encode(texts)

    def settings(self, sampler: Optional[str] = None, steps: Optional[int] = None, cfg_scale: Optional[float] = None,
                 batch_size: Optional[int] = None) -> SamplingSettings:
        """The settings a sampling run uses: each one asked for, else the config's `sampling` section
        (the batch: sampling_batch_size for this device and network). An unconditional model (every
        label dropped in training) samples unguided whatever is asked: it knows no condition to guide towards."""
        s = self.cfg.sampling
        return SamplingSettings(
            sampler=sampler or s.sampler,
            steps=steps or s.steps,
            cfg_scale=1.0 if is_unconditional(self.cfg) else (s.cfg_scale if cfg_scale is None else cfg_scale),
            batch_size=batch_size or sampling_batch_size(self.device, self.cfg.model.architecture),
        )

    def initial_noise(self, n: int, seed: int) -> torch.Tensor:
        """Starting noise from a CPU generator, so a seed means the same images on every device."""
        g = torch.Generator().manual_seed(seed)
        return torch.randn((n, *sample_shape(self.cfg, self.vae)), generator=g)

    @torch.no_grad()
    def generate(
        self,
        labels: torch.Tensor,
        *,
        sampler: Optional[str] = None,
        steps: Optional[int] = None,
        cfg_scale: Optional[float] = None,
        seed: int = 0,
        noise: Optional[torch.Tensor] = None,
        batch_size: Optional[int] = None,
        trajectory: bool = False,
        callback: Optional[Callable] = None,
        first_frames: Optional[torch.Tensor] = None,
        **options,
    ) -> GenerationResult:
        """Sample one image per label, with the settings `self.settings` resolves from the unset ones
        (the config's; the images are the same for any batch_size). A video DiT of image-to-video is given
        `first_frames` (N, 1, H, W), or with sampling.first_frame a held-out clip's first frame of each digit."""
        run = self.settings(sampler, steps, cfg_scale, batch_size)
        times, options = self._plan(run.sampler, run.steps, options)
        prior = self.cfg.model.architecture == "prior"
        if prior and trajectory:
            raise ValueError("a prior's trajectory is one of embeddings, not images: sample its decoder's instead")
        model = self.model
        if self.cfg.model.net.reads_jump_size():  # a shortcut model jumps 1/steps at each of its equal steps
            model = functools.partial(self.model, d=1000.0 / run.steps)
        if self.refines(self.cfg):  # SDXL's refiner: the base's network above refine_below, this one below
            model = hand_over(self.base.model, model, self.cfg.cascade.refine_below)
        x_all = self.initial_noise(len(labels), seed) if noise is None else noise.cpu()
        start, outs, nfe, calls, traj = time.perf_counter(), [], 0, 0, []
        low_res, condition = None, {}
        if self.super_resolves(self.cfg):  # Imagen's cascade: the base draws small, this stage enlarges (cascade.py)
            low_res, nfe = self.low_res_images(labels, seed, callback)
            condition = sampling_condition(low_res, self.cfg.sampling.aug_level, seed, self.path)
        if first_frames is not None or self.cfg.sampling.first_frame:  # image-to-video (models/video_dit.py)
            condition = {"first": self.first_frames(labels) if first_frames is None else first_frames.cpu()}
        for lo in range(0, len(labels), run.batch_size):
            y = labels[lo : lo + run.batch_size].to(self.device)
            x = x_all[lo : lo + run.batch_size].to(self.device)
            here = {key: value[lo : lo + run.batch_size].to(self.device) for key, value in condition.items()}
            denoiser = make_denoiser(functools.partial(model, **here) if here else model, self.objective, self.path,
                                     y, self.cfg.sampling, run.cfg_scale, guide=self.guide)

            def cb(i, t, x_t, x0):
                if trajectory and lo == 0:
                    traj.append((t, self.decode(x_t).cpu(), self.decode(x0).cpu()))
                if callback:
                    callback(i, t, x_t, x0)

            gens = image_generators(seed, lo, lo + len(y))  # a stochastic sampler's noise, per image
            x0 = SAMPLERS[run.sampler](denoiser, x, times, self.path, generator=gens, callback=cb, **options)
            outs.append(x0.cpu() if prior else self.decode(x0).clamp(-1, 1).cpu())
            calls = denoiser.calls
        nfe += calls
        if trajectory:
            traj.append((0.0, outs[0], outs[0]))
        images = torch.cat(outs)
        if prior and self.decoder is not None:  # unCLIP: text -> CLIP image embedding (this) -> image (the decoder)
            from .unclip import embeddings_from_prior

            drawn = self.decoder.generate(embeddings_from_prior(images), seed=seed, callback=callback)
            images, nfe = drawn.images, nfe + drawn.nfe
        return GenerationResult(images, labels.cpu(), nfe, time.perf_counter() - start, traj, low_res)

    def first_frames(self, labels: torch.Tensor) -> torch.Tensor:
        """Image-to-video's given frames for clips asked for `labels` (N, 3): a held-out clip's first frame of each
        digit (moving_mnist.first_frames)."""
        if not getattr(self.cfg.model.net, "first_frame", 0):
            raise ValueError(f"sampling.first_frame: {self.cfg.name} was not trained to be given a first frame "
                             "(model.first_frame: 0); use a checkpoint of configs/video/sora_moving_mnist.yaml")
        from .moving_mnist import first_frames

        return first_frames(labels[:, 0].tolist(), self.cfg.data.data_dir)

    def low_res_images(self, labels: torch.Tensor, seed: int, callback: Optional[Callable] = None
                       ) -> tuple[torch.Tensor, int]:
        """A super-resolution stage's input, (N, 1, h, w) in [-1, 1], and the model evaluations it took: the base
        stage's samples for these labels (its own settings, this seed), or real test digits shrunk where there is no
        base (sampling.low_res_from: real; the grids of training, drawn before the base exists)."""
        if self.base is not None:
            drawn = self.base.generate(labels, seed=seed, callback=callback)
            return drawn.images, drawn.nfe
        from .cascade import real_low_res

        digits = [d if d < NULL_CLASS else i % NULL_CLASS for i, d in enumerate(labels.tolist())]
        return real_low_res(digits, self.cfg.model.net.low_resolution, self.cfg.data.data_dir), 0

    def callbacks(self, n: int, run: SamplingSettings) -> int:
        """How many times generate() calls its callback for n images with the settings `run`: once per step of each
        batch, and so for the stage before (a cascade's base) or after (a prior's decoder): a progress bar's total."""
        count = run.steps * -(-n // run.batch_size)
        for stage in (None if self.refines(self.cfg) else self.base, self.decoder):  # a refiner's base: same steps
            if stage is not None:
                count += stage.callbacks(n, stage.settings())
        return count

    def _plan(self, sampler: str, steps: int, options: dict) -> tuple[list, dict]:
        """The time grid, and the sampler's own options (DDIM's eta): each as asked, else the config's."""
        s, options = self.cfg.sampling, dict(options)
        spacing, shift = options.pop("spacing", s.spacing), options.pop("shift", s.shift)
        midpoint = options.pop("midpoint", s.midpoint)
        for name in sampler_options(sampler):
            if hasattr(s, name):
                options.setdefault(name, getattr(s, name))
        return time_grid(steps, spacing, shift, self.cfg.diffusion.num_timesteps, midpoint).tolist(), options

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents -> pixels through the VAE; pixels pass through."""
        return x if self.vae is None else self.vae.decode_latents(x)
