"""The sections of a config as dataclasses: every key, its type and its default, commented. The settings of
each network (model.channels, model.depth...) are the one exception: they live beside the network, in the
NetConfig dataclass of models/<architecture>.py, so that a new backbone is one file and one registry line.

config.py reads YAML into these (and checks every value); everything else reads them. This module
imports nothing of difflab's, so the registries of models, paths and samplers can name these types
while config.py checks names against those registries.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Iterator, Optional, Union


@dataclass
class DataConfig:
    dataset: str = "mnist"
    data_dir: Optional[str] = None  # None: $DIFFLAB_DATA, else ./data
    # Latent diffusion: path of a trained VAE checkpoint. None = pixel space.
    vae_checkpoint: Optional[str] = None
    # The config that trains that VAE: train.py trains it first when vae_checkpoint does not exist yet.
    vae_config: Optional[str] = None
    limit: Optional[int] = None  # use only the first N training images (quick experiments, tests)
    # SDXL's problem made on MNIST (difflab.microcond): every training digit at a random size and crop
    reframe: bool = False
    # Imagen's cascade (difflab.cascade): train at this resolution, the digits shrunk by area averaging (28: MNIST's)
    resolution: int = 28


class NetConfig:
    """What every architecture's own settings share: models/<architecture>.py subclasses it as a dataclass
    (UNetConfig, DiTConfig, MMDiTConfig, VAEConfig), and `model.architecture` picks which one a config fills.

    In a YAML file those settings stay beside `architecture` under `model:`; config.py sorts them into this
    section, and refuses a key that belongs to another architecture.
    """

    # Images per sampling batch on a CPU (pipeline.sampling_batch_size): small batches keep activations in cache.
    CPU_SAMPLING_BATCH: ClassVar[int] = 32

    def problems(self, model: "ModelConfig") -> Iterator[tuple[str, str]]:
        """(key, what was expected) for each setting the network cannot be built with; none by default."""
        return iter(())

    def reads_jump_size(self) -> bool:
        """Whether the network reads the jump size d beside t (shortcut models, Frans et al. 2024)."""
        return False


def positive(**values) -> Iterator[tuple[str, str]]:
    """The (key, expected) problems of settings that must be > 0 (for NetConfig.problems)."""
    return ((key, "a number > 0") for key, value in values.items() if not value > 0)


def level_indices(levels, widths: list) -> bool:
    """True if `levels` is a list of indices into a U-Net's levels (model.channel_mult)."""
    return all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a < len(widths) for a in levels)


@dataclass
class ModelConfig:
    architecture: str = "unet"  # unet | dit | mmdit | prior | vae: the registry models.ARCHITECTURES
    # The architecture's own settings (channels, depth, patch size...): its NetConfig dataclass, in the same
    # models/<architecture>.py file as the network. config.py always fills it; None only before that.
    net: Optional[NetConfig] = None
    # What the model is conditioned on: "class" (one label per image) or "prompt" (a sentence about
    # the image, difflab.prompts, read by a tiny text encoder trained with the model; issue 26)
    conditioning: str = "class"
    text_dim: int = 64  # the text encoder's width, depth and heads (models/text.py), for any architecture
    text_depth: int = 2
    text_heads: int = 4
    # ("clip_image": a CLIP image embedding, DALL-E 2's decoder, difflab.unclip; issue 47)
    # Which text encoder reads the prompt: joint (trained with the model), or frozen and pretrained (difflab.encoders):
    # clip (the tiny CLIP's text tower, SD1's choice) or mlm (a masked language model of the prompts, Imagen's)
    text_encoder: str = "joint"

    def reads_sequence(self) -> bool:
        """Conditioned on a sequence of vectors (cross-attention, joint attention): a prompt's tokens, or the tokens
        a CLIP image embedding is turned into (DALL-E 2's decoder); a class label is one vector instead."""
        return self.conditioning in ("prompt", "clip_image")


@dataclass
class DiffusionConfig:
    target: str = "eps"  # what the network predicts: eps | x0 | v | flow
    schedule: str = "linear"  # the noise path x_t = alpha(t) x0 + sigma(t) eps
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    zero_terminal_snr: bool = False  # Lin et al. 2023, Algorithm 1
    t_sampling: str = "uniform_discrete"  # how training draws t
    logit_mean: float = 0.0  # logit-normal t (Esser et al. 2024, Sec. 3.1)
    logit_std: float = 1.0


@dataclass
class TrainingConfig:
    epochs: int = 100
    batch_size: Union[int, str] = 128  # or "auto" (probe for the fastest that fits)
    max_batch_size: int = 512
    lr: float = 2e-3
    text_lr_scale: float = 1.0  # models of prompts: the text encoder learns at lr x this (docs/prompts.md)
    weight_decay: float = 0.0
    adam_beta2: float = 0.999  # AdamW's second-moment decay (Kingma & Ba 2015, Alg. 1)
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    cfg_dropout_prob: float = 0.1
    min_snr_gamma: Optional[float] = None  # Min-SNR loss weighting (Hang et al. 2023); None = plain MSE
    seed: int = 0
    max_steps: Optional[int] = None
    max_images: Optional[int] = None  # a budget in training images, whatever the batch size
    log_every: int = 50
    sample_every: int = 0  # steps between sample grids; 0 = once per epoch
    checkpoint_every: int = 1  # epochs between model_epoch_<N>.pt files
    keep_last: int = 0  # keep only the newest K epoch checkpoints; 0 = keep all
    device: str = "auto"  # auto | cpu | cuda | mps | cuda:1 ...
    output_dir: str = "experiments"
    compile: Optional[bool] = None  # None: on for CUDA, off for CPU
    precision: str = "fp32"  # fp32 | bf16 (autocast; fast on recent GPUs)
    threads: Optional[int] = None  # CPU threads; None = PyTorch's default (one per core)
    on_nonfinite: str = "stop"  # stop | skip
    tensorboard: bool = False  # also write metrics.jsonl's numbers and the sample grids to <run>/tensorboard/


@dataclass
class SamplingConfig:
    sampler: str = "ddim"
    steps: int = 50
    cfg_scale: float = 7.5
    eta: float = 0.0  # DDIM stochasticity (Song et al. 2021, Eq. 16)
    spacing: str = "leading"
    shift: float = 1.0  # SD3/Flux timestep shift (Esser et al. 2024, Eq. 23)
    midpoint: Optional[float] = None  # 2 steps only: the one intermediate time (None: the grid's own; docs/fewstep.md)
    guidance_interval: list = field(default_factory=lambda: [0.0, 1.0])
    cfg_rescale: float = 0.0  # Lin et al. 2023, Sec. 3.4
    # autoguidance (Karras et al. 2024): a weaker checkpoint of the same model (fewer epochs, say) takes the
    # unconditional branch's place in the guidance mix; only as a sampling override (--set sampling.guide=CKPT)
    guide: Optional[str] = None
    # DALL-E 2: the decoder that draws a prior's CLIP image embeddings (unclip.py); as guide, only as a sampling
    # override (--set sampling.decoder=CKPT), never read from a stored config
    decoder: Optional[str] = None
    # a cascade's super-resolution stage (difflab.cascade): the noise level its low-resolution input is augmented
    # to while sampling (Ho et al. 2021), and where that input comes from: the base stage's samples
    # ("base", the cascade), or real test digits shrunk ("real": what the stage does with a perfect base)
    aug_level: float = 0.0
    low_res_from: str = "base"
    # image-to-video (a video DiT trained with model.first_frame > 0): each clip is given a first frame, that of a
    # held-out clip of the digit asked for (moving_mnist.first_frames), and draws the motion from it
    first_frame: bool = False
    clip_x0: bool = False  # clamp the predicted x0 to [-1, 1] each step (DDPM's sampler); pixels only
    n_per_class: int = 8


@dataclass
class FewStepConfig:
    """Few-step training (issue 27, src/difflab/fewstep.py); method none is ordinary diffusion training."""

    # consistency_distillation (Song et al. 2023, Alg. 2) | consistency_training (Alg. 3) | shortcut (Frans et al. 2024)
    # | progressive_distillation (Salimans & Ho 2022: fewstep.steps student steps learn 2 x steps teacher steps)
    # | meanflow (Geng et al. 2025: the average velocity over [r, t], from scratch; teacher_cfg_scale = its omega)
    method: str = "none"
    teacher: Optional[str] = None  # the trained checkpoint to distil (its model section must be this config's)
    teacher_config: Optional[str] = None  # the config that trains it, named when the checkpoint is missing
    steps: int = 20  # consistency: neighbours t = (n + 1) / N and n / N; shortcut: the smallest jump is 1 / N
    teacher_cfg_scale: float = 1.0  # guidance baked into the student (Luo et al. 2023, LCM)
    target_ema: float = 0.95  # mu: the target network's EMA of the student (0: the student itself, iCT)
    huber_c: Optional[float] = None  # pseudo-Huber constant (Song & Dhariwal 2023); None: 0.00054 sqrt(dims)
    # Which pairs (t, r) the consistency loss compares: grid = neighbours n+1, n of N (Song et al. 2023); ect =
    # Geng et al. 2024: t from a lognormal over the noise-to-signal ratio, r = t less a gap that halves each stage
    schedule: str = "grid"
    stages: int = 8  # ect: the gap halves at each of the stages (q = 2), starting from half of t
    noise_mean: float = -1.1  # ect: ln(sigma / alpha) ~ N(noise_mean, noise_std^2) (Geng et al. 2024, Sec. 4)
    noise_std: float = 2.0
    weighting: str = "uniform"  # uniform | snr: w(t) = SNR(t) + 1 / 0.5^2, ECT's (Geng et al. 2024)


@dataclass
class CascadeConfig:
    """A model that works after a base (difflab.cascade): a cascade's super-resolution stage (Ho et al. 2021, Saharia
    et al. 2022; the U-Net reads the low-resolution image through model.low_resolution), or a refiner (refine_below,
    SDXL's refiner and eDiff-I's experts). Unused by every other model."""

    base: Optional[str] = None  # the base's checkpoint: whose samples this stage enlarges, or whose steps it finishes
    base_config: Optional[str] = None  # the config that trains it: train.py trains the base first when it is missing
    # noise conditioning augmentation: in training, the low-resolution input is noised to a level s ~ U(0, noise_aug)
    # on the model's own noise path, and the model is told s (0: none, the ablation of CDM, Ho et al. 2021)
    noise_aug: float = 0.0
    # a refiner (Podell et al. 2023; Balaji et al. 2022): an expert of the low noise levels t < refine_below, trained
    # only there; sampling, the base takes the steps above and hands its trajectory over (0: not a refiner)
    refine_below: float = 0.0


@dataclass
class Config:
    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    fewstep: FewStepConfig = field(default_factory=FewStepConfig)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)

    def to_dict(self) -> dict:
        """Plain values, as config.json and checkpoints store them: the architecture's settings sit beside
        `architecture` under `model`, as in the YAML file (config.py reads them back)."""
        values = dataclasses.asdict(self)
        values["model"].update(values["model"].pop("net") or {})
        return values
