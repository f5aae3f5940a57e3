"""What two configs of the study differ in, said in words, for the generated "X -> Y" sentences.

A step of the history is named after one idea (eps -> v), but its two configs may differ in more (the learning rate,
the guidance scale): `config_changes` names every setting, so no FID change is credited to the idea alone.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

from ..config import load_config

REPO = Path(__file__).resolve().parents[3]  # this file is src/difflab/study/config_diff.py


def flat(settings: dict, prefix: str = "") -> dict:
    """A config's to_dict() as dotted keys: {"training": {"lr": 0.002}} -> {"training.lr": 0.002}."""
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@functools.lru_cache(maxsize=None)
def config_settings(name: str) -> Optional[tuple]:
    """The settings of configs/**/<name>.yaml as sorted (dotted key, value) pairs; None if there is no such config."""
    found = sorted(REPO.glob(f"configs/**/{name}.yaml"))
    if not found:
        return None
    return tuple(sorted((k, repr(v)) for k, v in flat(load_config(found[0]).to_dict()).items() if k != "name"))


def config_changes(a: str, b: str) -> Optional[str]:
    """Every setting in which the configs named `a` and `b` differ, "key (old -> new)", or None without both configs.

    A step of the history is named after one idea, but its two configs may differ in more (eps -> v also
    changes the learning rate and the guidance scale): the sentence names them all, so no FID change is
    credited to the idea alone. Where the backbone changes, the settings only one of the two backbones has
    are one entry, "model.architecture"; those both have (depth, positions, ...) are listed as usual.
    """
    sa, sb = config_settings(a), config_settings(b)
    if sa is None or sb is None:
        return None
    da, db = dict(sa), dict(sb)
    keys = sorted(k for k in da.keys() | db.keys() if da.get(k) != db.get(k))
    if da.get("model.architecture") != db.get("model.architecture"):
        one_sided = {k for k in keys if k.startswith("model.") and "None" in (da.get(k, "None"), db.get(k, "None"))}
        keys = [k for k in keys if k not in one_sided or k == "model.architecture"]
    changes = []
    for k in keys:
        old, new = (d.get(k, "None").strip("'").replace("None", "unset") for d in (da, db))
        changes.append(f"{k} ({old} -> {new}{', with its own settings' if k == 'model.architecture' else ''})")
    if not changes:
        return "The two configs differ in nothing but the name."
    listed = changes[0] if len(changes) == 1 else ", ".join(changes[:-1]) + " and " + changes[-1]
    return f"The two configs differ in {listed}."
