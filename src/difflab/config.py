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

ARCHITECTURES = ("unet", "dit", "mmdit", "vae")
TARGETS = ("eps", "x0", "v", "flow")
SCHEDULES = ("linear", "scaled_linear", "cosine", "flow")
T_SAMPLINGS = ("uniform_discrete", "uniform", "logit_normal")
SAMPLERS = ("ddpm", "ddim", "euler", "heun", "dpm++2m")
SPACINGS = ("leading", "trailing")
POS_EMBEDS = ("sincos", "rope")
DATASETS = ("mnist", "fashion_mnist")
PRECISIONS = ("fp32", "bf16")
CONDITIONINGS = ("class", "prompt")


class ConfigError(ValueError):
    """A config problem, reported as one line: `file: key: what was expected`."""


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
    # What the model is conditioned on: "class" (one label per image) or "prompt" (a sentence about
    # the image, difflab.prompts, read by a tiny text encoder trained with the model; issue 26)
    conditioning: str = "class"
    text_dim: int = 64  # the text encoder's width, depth and heads (models/text.py)
    text_depth: int = 2
    text_heads: int = 4
    cross_attention_levels: list = field(default_factory=lambda: [2])  # U-Net levels that read the prompt
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
class Config:
    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "name"}
_SECTION_CLASSES = {
    "data": DataConfig,
    "model": ModelConfig,
    "diffusion": DiffusionConfig,
    "training": TrainingConfig,
    "sampling": SamplingConfig,
}

# Values that must come from a fixed set.
_CHOICES = {
    ("data", "dataset"): DATASETS,
    ("model", "architecture"): ARCHITECTURES,
    ("model", "pos_embed"): POS_EMBEDS,
    ("model", "conditioning"): CONDITIONINGS,
    ("diffusion", "target"): TARGETS,
    ("diffusion", "schedule"): SCHEDULES,
    ("diffusion", "t_sampling"): T_SAMPLINGS,
    ("sampling", "sampler"): SAMPLERS,
    ("sampling", "spacing"): SPACINGS,
    ("training", "precision"): PRECISIONS,
    ("training", "on_nonfinite"): ("stop", "skip"),
}


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


def _validate(cfg: Config, source: str) -> None:
    """Range checks: the impossible values a typo produces."""

    def bad(key: str, expected: str):
        section, name = key.split(".")
        got = getattr(getattr(cfg, section), name)
        raise ConfigError(f"{source}: {key}: expected {expected}, got {got!r}")

    for (section, key), choices in _CHOICES.items():
        if getattr(getattr(cfg, section), key) not in choices:
            bad(f"{section}.{key}", "one of " + ", ".join(choices))
    m, d, t, s = cfg.model, cfg.diffusion, cfg.training, cfg.sampling
    positive = {
        "model.channels": m.channels, "model.hidden_size": m.hidden_size, "model.depth": m.depth,
        "model.num_heads": m.num_heads, "model.patch_size": m.patch_size,
        "model.mlp_ratio": m.mlp_ratio, "model.cond_tokens": m.cond_tokens,
        "model.latent_channels": m.latent_channels,
        "diffusion.num_timesteps": d.num_timesteps, "diffusion.beta_start": d.beta_start,
        "diffusion.logit_std": d.logit_std, "training.epochs": t.epochs,
        "training.max_batch_size": t.max_batch_size, "training.lr": t.lr,
        "training.log_every": t.log_every, "training.checkpoint_every": t.checkpoint_every,
        "sampling.steps": s.steps, "sampling.shift": s.shift, "sampling.n_per_class": s.n_per_class,
    }
    for key, value in positive.items():
        if not value > 0:
            bad(key, "a number > 0")
    if not m.channel_mult or not all(isinstance(c, int) and c > 0 for c in m.channel_mult):
        bad("model.channel_mult", "a non-empty list of positive integers")
    if not all(isinstance(a, int) and 0 <= a < len(m.channel_mult) for a in m.attention_levels):
        bad("model.attention_levels", f"indices in 0..{len(m.channel_mult) - 1}")
    if not (isinstance(m.single_depth, int) and m.single_depth >= 0):
        bad("model.single_depth", "an integer >= 0")
    if m.num_res_blocks < 1:
        bad("model.num_res_blocks", "an integer >= 1")
    if m.architecture == "unet":  # U-Net attention splits each attended width (and the middle's) into heads
        for width in {m.channels * m.channel_mult[a] for a in [*m.attention_levels, -1]}:
            if width % m.num_heads:
                bad("model.num_heads", f"a divisor of every attended U-Net width (here {width})")
    if m.hidden_size % m.num_heads:
        bad("model.hidden_size", f"a multiple of model.num_heads ({m.num_heads})")
    if not d.beta_start < d.beta_end < 1:
        bad("diffusion.beta_end", f"a number in (beta_start={d.beta_start}, 1)")
    if isinstance(t.batch_size, str) and t.batch_size != "auto":
        bad("training.batch_size", 'a positive integer or "auto"')
    if isinstance(t.batch_size, int) and t.batch_size < 1:
        bad("training.batch_size", 'a positive integer or "auto"')
    for key, value in {
        "model.dropout": m.dropout,
        "training.cfg_dropout_prob": t.cfg_dropout_prob,
        "training.ema_decay": t.ema_decay,
        "sampling.eta": s.eta,
        "sampling.cfg_rescale": s.cfg_rescale,
    }.items():
        if not 0 <= value <= 1:
            bad(key, "a number in [0, 1]")
    if not 0 <= t.adam_beta2 < 1:
        bad("training.adam_beta2", "a number in [0, 1)")
    for key, value in {
        "training.weight_decay": t.weight_decay, "training.warmup_steps": t.warmup_steps,
        "training.grad_clip": t.grad_clip, "training.sample_every": t.sample_every,
        "training.keep_last": t.keep_last, "sampling.cfg_scale": s.cfg_scale,
        "model.kl_weight": m.kl_weight,
    }.items():
        if value < 0:
            bad(key, "a number >= 0")
    if cfg.data.limit is not None and cfg.data.limit < 1:
        bad("data.limit", "a positive integer or null")
    if t.threads is not None and t.threads < 1:
        bad("training.threads", "a positive integer or null")
    if t.max_steps is not None and t.max_steps < 1:
        bad("training.max_steps", "a positive integer or null")
    if t.max_images is not None and t.max_images < 1:
        bad("training.max_images", "a positive integer or null")
    if t.min_snr_gamma is not None and not t.min_snr_gamma > 0:
        bad("training.min_snr_gamma", "a number > 0 or null")
    gi = s.guidance_interval
    if not (len(gi) == 2 and all(isinstance(v, (int, float)) for v in gi) and 0 <= gi[0] <= gi[1] <= 1):
        bad("sampling.guidance_interval", "[lo, hi] with 0 <= lo <= hi <= 1")
    if s.clip_x0 and cfg.data.vae_checkpoint:
        bad("sampling.clip_x0", "false for latent diffusion (latents are not bounded to [-1, 1])")
    _validate_prompt_model(m, bad)


def _validate_prompt_model(m: ModelConfig, bad) -> None:
    """The text encoder's sizes and where the U-Net reads the prompt (model.conditioning: prompt)."""
    if m.conditioning != "prompt":
        return
    for key, value in {"model.text_dim": m.text_dim, "model.text_depth": m.text_depth,
                       "model.text_heads": m.text_heads}.items():
        if not (isinstance(value, int) and value > 0):
            bad(key, "a positive integer")
    if m.text_dim % m.text_heads:
        bad("model.text_dim", f"a multiple of model.text_heads ({m.text_heads})")
    if m.architecture == "unet":
        levels = m.cross_attention_levels
        if not levels or not all(isinstance(a, int) and 0 <= a < len(m.channel_mult) for a in levels):
            bad("model.cross_attention_levels", f"a non-empty list of indices in 0..{len(m.channel_mult) - 1}")
        for width in {m.channels * m.channel_mult[a] for a in levels}:
            if width % m.num_heads:
                bad("model.num_heads", f"a divisor of every U-Net width that reads the prompt (here {width})")
    elif m.architecture == "dit":
        bad("model.conditioning", "class for the DiT (prompts: the U-Net's cross-attention or the MMDiT's joint attention)")


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
    _validate(cfg, source)
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
