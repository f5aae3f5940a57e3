"""Typed configuration: YAML files -> dataclasses, with `section.key=value` overrides.

Every config file has the sections below. A key that is not a field, a value of
the wrong type or an impossible value raises `ConfigError`, which the entry
points turn into one line on stderr and exit code 2 (see `exit_on_config_error`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .settings import (CascadeConfig, Config, DataConfig, DiffusionConfig, FewStepConfig, ModelConfig, SamplingConfig,
                       TrainingConfig)
from .infra.untrusted import StructureError, check_structure, shown
from .infra.validation import ConfigError, validate

# A config is a few kilobytes, a few hundred values and 4 levels deep (the file, a section, a key, a
# list). The bounds below are far above any real one, and far below what hurts: YAML's anchors and
# aliases let a 400-byte file stand for a billion values ("billion laughs"), and an error message that
# printed them, or a check that walked them, would fill the memory or run for hours.
MAX_CONFIG_BYTES = 1 << 20  # 1 MiB; every config in configs/ is under 4 KiB
MAX_CONFIG_NODES = 10_000  # values, keys included, counted as often as aliases repeat them
MAX_CONFIG_DEPTH = 8

# Names with code behind them come from the dicts that map them to it (models.MODELS,
# objectives.OBJECTIVES, schedules.PATHS, samplers.SAMPLERS; see choices()): adding a sampler is
# one function and one entry there. The names below select a branch inside one function.
T_SAMPLINGS = ("uniform_discrete", "uniform", "logit_normal")
SPACINGS = ("leading", "trailing")
DATASETS = ("mnist", "fashion_mnist", "moving_mnist")  # the last: clips made from MNIST (moving_mnist.py)
PRECISIONS = ("fp32", "bf16")
CONDITIONINGS = ("class", "prompt", "clip_image")
TEXT_ENCODERS = ("joint", "clip", "mlm")  # difflab.encoders
FEW_STEP_METHODS = ("none", "consistency_distillation", "consistency_training", "shortcut", "progressive_distillation",
                    "meanflow")


_SECTION_CLASSES = {
    "data": DataConfig,
    "model": ModelConfig,
    "diffusion": DiffusionConfig,
    "training": TrainingConfig,
    "sampling": SamplingConfig,
    "fewstep": FewStepConfig,
    "cascade": CascadeConfig,
}

# Values that must come from a fixed set.
_CHOICES = {
    ("data", "dataset"): DATASETS,
    ("model", "conditioning"): CONDITIONINGS,
    ("model", "text_encoder"): TEXT_ENCODERS,
    ("diffusion", "t_sampling"): T_SAMPLINGS,
    ("sampling", "spacing"): SPACINGS,
    ("training", "precision"): PRECISIONS,
    ("training", "on_nonfinite"): ("stop", "skip"),
    ("fewstep", "method"): FEW_STEP_METHODS,
    ("sampling", "low_res_from"): ("base", "real"),
    ("fewstep", "schedule"): ("grid", "ect"),
    ("fewstep", "weighting"): ("uniform", "snr"),
}


def choices() -> dict:
    """Every key whose value must come from a fixed set, with that set; the registries' names read
    when a config is checked (importing them here, at the top, would import this module in a circle)."""
    from .models import ARCHITECTURES
    from .objectives import OBJECTIVES
    from .samplers import SAMPLERS
    from .schedules import PATHS

    return {**_CHOICES,
            ("model", "architecture"): tuple(ARCHITECTURES),
            ("diffusion", "target"): tuple(OBJECTIVES),
            ("diffusion", "schedule"): tuple(PATHS),
            ("sampling", "sampler"): tuple(SAMPLERS)}


def yaml_keys() -> dict[str, dict[str, Any]]:
    """Every key a config file may hold, by section, with its type: model's holds every architecture's own."""
    from .models import ARCHITECTURES

    keys = {section: typing.get_type_hints(cls) for section, cls in _SECTION_CLASSES.items()}
    del keys["model"]["net"]
    for arch in ARCHITECTURES.values():
        hints = typing.get_type_hints(arch.settings)
        keys["model"].update({f.name: hints[f.name] for f in dataclasses.fields(arch.settings)})
    return keys


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
    """A key as the one-line message shows it: as typed, or quoted (and shortened) when it holds a
    newline, is long or is no string."""
    return key if isinstance(key, str) and key.isprintable() and len(key) <= 60 else shown(key)


class _BoundedLoader(yaml.SafeLoader):
    """yaml.safe_load that counts the document before building it.

    PyYAML composes a graph of nodes first, where an alias is one more reference to a node, which
    is cheap; building Python objects from it is not always: a merge key (`<<: [*a, *a, ...]`)
    copies the merged entries, so nine merges a level for a dozen levels take hours. Counting the
    nodes as a walk would visit them (each alias as often as it is used) bounds both.
    """

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        _check_nodes(node)
        return self.construct_document(node)


def _yaml_children(node: yaml.Node) -> list:
    """What a YAML node holds: a sequence's items, a mapping's keys and values (an alias is the same node again)."""
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    return []


def _check_nodes(root: yaml.Node) -> None:
    """Raise StructureError if the YAML node graph, unfolded, has too many nodes or levels."""
    check_structure(root, MAX_CONFIG_NODES, MAX_CONFIG_DEPTH, children=_yaml_children, why="anchors and aliases")


def _safe_load(text: Union[str, bytes]) -> Any:
    """yaml.safe_load, bounded in nodes and depth (see _BoundedLoader)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _check_structure(raw: Any, source: str) -> None:
    """A config's nested values, bounded before anything walks or prints them (a file or a checkpoint's dict)."""
    try:
        check_structure(raw, max_nodes=MAX_CONFIG_NODES, max_depth=MAX_CONFIG_DEPTH)
    except StructureError as e:
        raise ConfigError(f"{source}: {e}; a config is a few hundred values, 4 levels deep") from None


def _yaml_float(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def _build_section(section: str, values: Any, source: str, stored: bool = False):
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {section}: expected a mapping of keys, got {shown(values)}")
    if section == "model":
        return _build_model(values, source, stored)
    return _build_dataclass(_SECTION_CLASSES[section], section, values, source)


def _build_model(values: dict, source: str, stored: bool) -> ModelConfig:
    """`model:` in two parts: the keys every model has (ModelConfig) and its architecture's own (the NetConfig
    dataclass that models.ARCHITECTURES names). A key of another architecture is refused, as a typo is: it
    would change nothing. A checkpoint's stored config is the exception: before issue 43 every checkpoint
    stored every architecture's keys, unused but the network's own; those are dropped (`stored`)."""
    from .models import ARCHITECTURES, model_keys

    architecture = values.get("architecture", "unet")
    if not isinstance(architecture, str) or architecture not in ARCHITECTURES:
        raise ConfigError(f"{source}: model.architecture: expected one of {', '.join(ARCHITECTURES)}, "
                          f"got {shown(architecture)}")
    settings = ARCHITECTURES[architecture].settings
    known, own = model_keys(architecture), [f.name for f in dataclasses.fields(settings)]
    for key in values:
        if key in known:
            continue
        others = [name for name in ARCHITECTURES if key in model_keys(name)]
        if not others:
            raise ConfigError(f"{source}: model.{_shown(key)}: unknown key (known for {architecture}: "
                              f"{', '.join(known)})")
        if not stored:
            listed = " and ".join([", ".join(others[:-1]), others[-1]] if len(others) > 1 else others)
            raise ConfigError(f"{source}: model.{key}: a setting of {listed}, not of {architecture} "
                              f"(its own: {', '.join(own)})")
    model = _build_dataclass(ModelConfig, "model", {k: v for k, v in values.items() if k in known and k not in own},
                             source)
    model.net = _build_dataclass(settings, "model", {k: v for k, v in values.items() if k in own}, source)
    return model


def _build_dataclass(cls: type, section: str, values: dict, source: str):
    """cls(**values), each value checked against the field's type first (YAML 1.1's 3e-4 read as a float)."""
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key in hints and isinstance(value, str) and _accepts_float(hints[key]):
            value = values[key] = _yaml_float(value)  # YAML 1.1 reads 3e-4 as a string
        if key not in hints:
            known = ", ".join(hints)
            raise ConfigError(f"{source}: {section}.{_shown(key)}: unknown key (known: {known})")
        if not _check_type(value, hints[key]):
            raise ConfigError(
                f"{source}: {section}.{_shown(key)}: expected {_type_name(hints[key])}, got {shown(value)}"
            )
        if _accepts_float(hints[key]) and isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 1e308 else math.inf  # float(10**400) would raise
            if not math.isfinite(number):
                raise ConfigError(f"{source}: {section}.{key}: expected a finite number, got {shown(value)}")
            if hints[key] is float:
                values[key] = number
    return cls(**values)


def parse_override(text: str) -> tuple[str, str, Any]:
    """'training.lr=1e-3' -> ('training', 'lr', 0.001). Values are parsed as YAML."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {shown(text)}: expected section.key=value")
    key, raw = text.split("=", 1)
    section, name = key.split(".", 1)
    try:
        value = _safe_load(raw) if raw != "" else None
    except StructureError as e:
        raise ConfigError(f"override {shown(text)}: {e}") from None
    except (yaml.YAMLError, ValueError, RecursionError):  # PyYAML raises ValueError for `!!int abc`
        value = raw
    return section, name, value


def config_from_dict(raw: Any, source: str = "<dict>", name: Optional[str] = None, stored: bool = False) -> Config:
    """Build and validate a Config from a plain dict (a YAML file's contents, or a checkpoint's stored config:
    bounded first, as a file someone else wrote may be). `stored`: the dict is a checkpoint's (see _build_model)."""
    _check_structure(raw, source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    cfg_name = raw.pop("name", name or "experiment")
    if not isinstance(cfg_name, str) or cfg_name in ("", ".", "..") or "/" in cfg_name or "\0" in cfg_name:
        raise ConfigError(f"{source}: name: expected a folder name, got {shown(cfg_name)}")
    sections = {}
    for key, values in raw.items():
        if key not in _SECTION_CLASSES:
            known = ", ".join(["name", *_SECTION_CLASSES])
            raise ConfigError(f"{source}: {_shown(key)}: unknown section (known: {known})")
        sections[key] = _build_section(key, values, source, stored)
    sections.setdefault("model", _build_model({}, source, stored))  # the default architecture's settings
    cfg = Config(name=cfg_name, **sections)
    validate(cfg, source, choices())
    return cfg


def _read_bounded(path: Path) -> bytes:
    """The bytes of a config file, refused past MAX_CONFIG_BYTES before it is read whole."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)  # the size on disk may lie (a pipe, a file still growing)
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; a config is a few kilobytes")
    return data


def load_config(path: Union[str, Path], overrides: Optional[list] = None) -> Config:
    """Read a YAML config, apply `section.key=value` overrides, validate everything."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"{source}: no such config file")
    text = _read_bounded(path)  # bytes: PyYAML finds the encoding, and says when it is none
    try:
        raw = _safe_load(text)
    except StructureError as e:
        raise ConfigError(f"{source}: {e}; a config is a few hundred values, 4 levels deep") from None
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
            raise ConfigError(f"{source}: override {shown(text)}: unknown section {shown(section)}")
        if not isinstance(raw.get(section, {}), dict):
            raise ConfigError(f"{source}: {section}: expected a mapping of keys")
        raw.setdefault(section, {})
        raw[section] = {**raw[section], key: value}
    return config_from_dict(raw, source)
