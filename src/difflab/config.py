"""Typed configuration: YAML files -> dataclasses, with `section.key=value` overrides.

Every config file has the sections below. A key that is not a field, a value of
the wrong type or an impossible value raises `ConfigError`, which the entry
points turn into one line on stderr and exit code 2 (see `exit_on_config_error`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .validation import ConfigError, validate

# Names with code behind them come from the dicts that map them to it (models.MODELS,
# objectives.OBJECTIVES, schedules.PATHS, samplers.SAMPLERS; see choices()): adding a sampler is
# one function and one entry there. The names below select a branch inside one function.
T_SAMPLINGS = ("uniform_discrete", "uniform", "logit_normal")
SPACINGS = ("leading", "trailing")
POS_EMBEDS = ("sincos", "rope")
DATASETS = ("mnist", "fashion_mnist")
PRECISIONS = ("fp32", "bf16")
CONDITIONINGS = ("class", "prompt")
FEW_STEP_METHODS = ("none", "consistency_distillation", "consistency_training", "shortcut")


@dataclass
class DataConfig:
    dataset: str = "mnist"
    data_dir: Optional[str] = None  # None: $DIFFLAB_DATA, else ./data
    # Latent diffusion: path of a trained VAE checkpoint. None = pixel space.
    vae_checkpoint: Optional[str] = None
    # The config that trains that VAE: train.py trains it first when vae_checkpoint does not exist yet.
    vae_config: Optional[str] = None
    limit: Optional[int] = None  # use only the first N training images (quick experiments, tests)


@dataclass
class ModelConfig:
    architecture: str = "unet"
    # U-Net (Ronneberger et al. 2015; as used by Ho et al. 2020 and SD)
    channels: int = 16
    channel_mult: list = field(default_factory=lambda: [1, 4, 6])
    num_res_blocks: int = 1
    attention_levels: list = field(default_factory=lambda: [2])  # indices into channel_mult
    dropout: float = 0.0
    # Transformers (DiT, MMDiT)
    hidden_size: int = 192
    depth: int = 6
    num_heads: int = 4
    patch_size: int = 4
    mlp_ratio: float = 4.0
    cond_tokens: int = 4  # MMDiT: learned conditioning tokens per class
    qk_norm: bool = False  # MMDiT: RMS-normalise queries and keys (SD3.5)
    pos_embed: str = "sincos"  # MMDiT: sincos (SD3: added to the tokens) | rope (Flux: rotates q and k)
    single_depth: int = 0  # MMDiT: Flux's single-stream blocks after the `depth` joint blocks
    step_conditioning: bool = False  # MMDiT: also read the jump size d (shortcut models, Frans et al. 2024)
    # What the model is conditioned on: "class" (one label per image) or "prompt" (a sentence about
    # the image, difflab.prompts, read by a tiny text encoder trained with the model; issue 26)
    conditioning: str = "class"
    text_dim: int = 64  # the text encoder's width, depth and heads (models/text.py)
    text_depth: int = 2
    text_heads: int = 4
    cross_attention_levels: list = field(default_factory=lambda: [2])  # U-Net levels that read the prompt
    pooled_text: bool = False  # U-Net: also add the pooled prompt to the time embedding (SDXL; SD1 did not)
    # VAE (latent diffusion's first stage, Rombach et al. 2022): channels, channel_mult, num_res_blocks above
    latent_channels: int = 4
    kl_weight: float = 1e-4  # weight of the per-element KL term against the per-pixel MSE


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
    guidance_interval: list = field(default_factory=lambda: [0.0, 1.0])
    cfg_rescale: float = 0.0  # Lin et al. 2023, Sec. 3.4
    clip_x0: bool = False  # clamp the predicted x0 to [-1, 1] each step (DDPM's sampler); pixels only
    n_per_class: int = 8


@dataclass
class FewStepConfig:
    """Few-step training (issue 27, src/difflab/fewstep.py); method none is ordinary diffusion training."""

    # consistency_distillation (Song et al. 2023, Alg. 2) | consistency_training (Alg. 3) | shortcut (Frans et al. 2024)
    method: str = "none"
    teacher: Optional[str] = None  # the trained checkpoint to distil (its model section must be this config's)
    teacher_config: Optional[str] = None  # the config that trains it, named when the checkpoint is missing
    steps: int = 20  # consistency: neighbours t = (n + 1) / N and n / N; shortcut: the smallest jump is 1 / N
    teacher_cfg_scale: float = 1.0  # guidance baked into the student (Luo et al. 2023, LCM)
    target_ema: float = 0.95  # mu: the target network's EMA of the student (0: the student itself, iCT)
    huber_c: Optional[float] = None  # pseudo-Huber constant (Song & Dhariwal 2023); None: 0.00054 sqrt(dims)


@dataclass
class Config:
    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    fewstep: FewStepConfig = field(default_factory=FewStepConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTION_CLASSES = {
    "data": DataConfig,
    "model": ModelConfig,
    "diffusion": DiffusionConfig,
    "training": TrainingConfig,
    "sampling": SamplingConfig,
    "fewstep": FewStepConfig,
}

# Values that must come from a fixed set.
_CHOICES = {
    ("data", "dataset"): DATASETS,
    ("model", "pos_embed"): POS_EMBEDS,
    ("model", "conditioning"): CONDITIONINGS,
    ("diffusion", "t_sampling"): T_SAMPLINGS,
    ("sampling", "spacing"): SPACINGS,
    ("training", "precision"): PRECISIONS,
    ("training", "on_nonfinite"): ("stop", "skip"),
    ("fewstep", "method"): FEW_STEP_METHODS,
}


def choices() -> dict:
    """Every key whose value must come from a fixed set, with that set; the registries' names read
    when a config is checked (importing them here, at the top, would import this module in a circle)."""
    from .models import MODELS
    from .objectives import OBJECTIVES
    from .samplers import SAMPLERS
    from .schedules import PATHS

    return {**_CHOICES,
            ("model", "architecture"): (*MODELS, "vae"),  # vae: latent diffusion's autoencoder (vae_training.py)
            ("diffusion", "target"): tuple(OBJECTIVES),
            ("diffusion", "schedule"): tuple(PATHS),
            ("sampling", "sampler"): tuple(SAMPLERS)}


def _check_type(value: Any, hint: Any) -> bool:
    """True if `value` fits the type annotation `hint` (the few kinds used above)."""
    origin = typing.get_origin(hint)
    if origin is Union:
        return any(_check_type(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # an int is a fine float
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is list:
        return isinstance(value, list)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Union:
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _accepts_float(hint: Any) -> bool:
    return hint is float or float in typing.get_args(hint)


def _shown(key: Any) -> str:
    """A key as the one-line message shows it: as typed, or quoted when it holds a newline or is no string."""
    return key if isinstance(key, str) and key.isprintable() else repr(key)


def _yaml_float(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def _build_section(section: str, values: Any, source: str):
    cls = _SECTION_CLASSES[section]
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {section}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key in hints and isinstance(value, str) and _accepts_float(hints[key]):
            value = values[key] = _yaml_float(value)  # YAML 1.1 reads 3e-4 as a string
        if key not in hints:
            known = ", ".join(hints)
            raise ConfigError(f"{source}: {section}.{_shown(key)}: unknown key (known: {known})")
        if not _check_type(value, hints[key]):
            raise ConfigError(
                f"{source}: {section}.{key}: expected {_type_name(hints[key])}, got {value!r}"
            )
        if _accepts_float(hints[key]) and isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 1e308 else math.inf  # float(10**400) would raise
            if not math.isfinite(number):
                raise ConfigError(f"{source}: {section}.{key}: expected a finite number, got {value!r}")
            if hints[key] is float:
                values[key] = number
    return cls(**values)


def parse_override(text: str) -> tuple[str, str, Any]:
    """'training.lr=1e-3' -> ('training', 'lr', 0.001). Values are parsed as YAML."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    section, name = key.split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except (yaml.YAMLError, ValueError, RecursionError):  # PyYAML raises ValueError for `!!int abc`
        value = raw
    return section, name, value


def config_from_dict(raw: Any, source: str = "<dict>", name: Optional[str] = None) -> Config:
    """Build and validate a Config from a plain dict (a YAML file's contents)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    cfg_name = raw.pop("name", name or "experiment")
    if not isinstance(cfg_name, str) or cfg_name in ("", ".", "..") or "/" in cfg_name or "\0" in cfg_name:
        raise ConfigError(f"{source}: name: expected a folder name, got {cfg_name!r}")
    sections = {}
    for key, values in raw.items():
        if key not in _SECTION_CLASSES:
            known = ", ".join(["name", *_SECTION_CLASSES])
            raise ConfigError(f"{source}: {_shown(key)}: unknown section (known: {known})")
        sections[key] = _build_section(key, values, source)
    cfg = Config(name=cfg_name, **sections)
    validate(cfg, source, choices())
    return cfg


def load_config(path: Union[str, Path], overrides: Optional[list] = None) -> Config:
    """Read a YAML config, apply `section.key=value` overrides, validate everything."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"{source}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}") from None
    except (ValueError, RecursionError) as e:  # `!!int abc`, a 5000-digit number, nesting too deep
        raise ConfigError(f"{source}: not valid YAML ({type(e).__name__}: {str(e).splitlines()[0][:100]})") from None
    if raw is None or raw == {}:  # silently training on every default is never what was meant
        raise ConfigError(f"{source}: the file is empty; start from one of the configs in configs/")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    raw.setdefault("name", path.stem)
    for text in overrides or []:
        section, key, value = parse_override(text)
        if section not in _SECTION_CLASSES:
            raise ConfigError(f"{source}: override {text!r}: unknown section {section!r}")
        if not isinstance(raw.get(section, {}), dict):
            raise ConfigError(f"{source}: {section}: expected a mapping of keys")
        raw.setdefault(section, {})
        raw[section] = {**raw[section], key: value}
    return config_from_dict(raw, source)
