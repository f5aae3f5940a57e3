"""Wrong configs: generated ones either load or raise ConfigError with one line (in process, hundreds of
examples), and a handful through `train.py --dry-run` exit 0, or 2 with one line naming the problem."""

import collections
import random
import subprocess
import sys
import typing

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from difflab.config import ConfigError, choices, config_from_dict, load_config, yaml_keys

from ._support import ROOT, entry_main, env, record

FIELDS = yaml_keys()
WORDS = sorted({w for names in choices().values() for w in names} | {"auto", "null", "1e-3", "3e999", ".nan", ""})
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))

# Values of every YAML-able type, small and absurd: what a typo or a confused edit produces.
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 64), st.integers(), st.integers(-(2**1100), 2**1100),
    st.floats(-2, 8), st.floats(), st.sampled_from(WORDS), st.text(max_size=6),
)
values = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                      max_leaves=8)
junk = st.one_of(st.text(max_size=8), st.integers(), st.none(), st.booleans(),
                st.sampled_from(["lr\n", "a\nb", " lr", "LR", "training.lr", "ep0chs", "\t", "\x00"]))


def _typed(hint):
    """A value of the field's own type (so validation, not the type check, has to catch it)."""
    options = []
    for kind in typing.get_args(hint) or (hint,):
        options += {int: [st.integers(-3, 64), st.integers(-(2**70), 2**70)],
                    float: [st.floats(-2, 50), st.floats(), st.integers(-(2**1100), 2**1100)],
                    bool: [st.booleans()], str: [st.sampled_from(WORDS), st.text(max_size=6)],
                    list: [st.lists(st.one_of(st.integers(-2, 8), st.floats(-1, 2), st.booleans()), max_size=4)],
                    type(None): [st.none()]}[kind]
    return st.one_of(options)


@st.composite
def sections(draw):
    """One section: real keys (with values of their type or of any type) mixed with junk keys."""
    name = draw(st.sampled_from(list(FIELDS)))
    body = {}
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.integers(0, 3)) == 0:
            body[draw(junk)] = draw(values)
        else:
            key = draw(st.sampled_from(list(FIELDS[name])))
            body[key] = draw(_typed(FIELDS[name][key]) if draw(st.booleans()) else values)
    return name, body


@st.composite
def config_dicts(draw):
    raw = dict(draw(st.lists(sections(), max_size=4)))
    if draw(st.integers(0, 4)) == 0:
        raw[draw(st.one_of(junk, st.just("name")))] = draw(values)  # a junk section, or a junk name
    if draw(st.integers(0, 9)) == 0:
        raw[draw(st.sampled_from(list(FIELDS)))] = draw(values)  # a section that is not a mapping
    return raw if draw(st.integers(0, 19)) else draw(values)  # now and then not a mapping at all


overrides = st.builds(lambda s, k, v: f"{s}.{k}={v}",
                      st.one_of(st.sampled_from(list(FIELDS)), st.text(max_size=4)),
                      st.one_of(st.sampled_from(sorted({k for f in FIELDS.values() for k in f})), st.text(max_size=4)),
                      st.one_of(st.sampled_from(WORDS + ["[", "{a: 1", "!!int abc", "1" * 5000, "a\nb"]),
                                st.text(max_size=8)))


def _check(load, seen: collections.Counter) -> None:
    try:
        load()
    except ConfigError as e:
        assert "\n" not in str(e), str(e)
        seen["refused"] += 1
    else:
        seen["loaded"] += 1


def test_generated_config_dicts_load_or_raise_config_error():
    seen = collections.Counter()

    @SETTINGS
    @given(raw=config_dicts())
    def check(raw):
        _check(lambda: config_from_dict(raw, source="fuzz.yaml"), seen)

    check()
    total = sum(seen.values())
    record("generated configs (dicts): junk keys, wrong types, absurd values", total, total,
           f"{seen['loaded']} loaded, {seen['refused']} raised a one-line ConfigError, 0 crashed")


def test_generated_yaml_files_and_overrides_load_or_raise_config_error(tmp_path_factory):
    folder, seen = tmp_path_factory.mktemp("fuzz_yaml"), collections.Counter()

    @settings(SETTINGS, max_examples=150)
    @given(raw=config_dicts(), extra=st.lists(overrides, max_size=3), text=st.sampled_from(
        ["", "{", "a: [1", "training: {lr: !!float x}", "model: !!int abc", "x: " + "9" * 5000,
         "!!python/object/apply:os.system [true]", "- 1\n- 2", "training:\n  lr: 1\n lr: 2", "? [a]\n: 1",
         "training: {seed: 2001-13-45}", None, None, None, None, None, None]))
    def check(raw, extra, text):
        path = folder / "fuzz.yaml"
        path.write_text(text if text is not None else yaml.safe_dump(raw))
        _check(lambda: load_config(path, extra), seen)

    check()
    deep = folder / "deep.yaml"  # nesting too deep for PyYAML: once here, it takes a second or so
    deep.write_text("[" * 3000)
    _check(lambda: load_config(deep, ["training.lr=" + "[" * 3000]), seen)
    _check(lambda: load_config(folder / "fuzz.yaml", ["training.lr=" + "[" * 3000]), seen)
    total = sum(seen.values())
    record("generated YAML files and `section.key=value` overrides", total, total,
           f"{seen['loaded']} loaded, {seen['refused']} raised a one-line ConfigError, 0 crashed")


def _dry_run_cases(rng: random.Random, n_random: int) -> dict:
    """YAML texts for train.py --dry-run: hand-picked traps, then seeded random one-key mutations."""
    base = {"model": {"architecture": "unet", "channels": 8, "channel_mult": [1, 2], "attention_levels": [1],
                      "num_heads": 2}}
    cases = {
        "valid": yaml.safe_dump(base),
        "!!int of a word": "training:\n  epochs: !!int many\n",
        "GroupNorm cannot split 12 channels in 8 groups": yaml.safe_dump({"model": {**base["model"], "channels": 12}}),
        "not YAML": "model: {architecture: unet\n",
        "DiT patches do not tile 28": yaml.safe_dump({"model": {"architecture": "dit", "patch_size": 3}}),
        "U-Net levels do not halve 28 evenly": yaml.safe_dump({"model": {**base["model"],
                                                                         "channel_mult": [1, 1, 1, 1]}}),
        "heads do not split the attended width": yaml.safe_dump({"model": {**base["model"], "num_heads": 3}}),
    }
    for _ in range(n_random):  # values stay small enough that a valid-looking model builds in milliseconds
        section = rng.choice([s for s in FIELDS if s != "data"])  # data.vae_checkpoint would name a file
        key = rng.choice(list(FIELDS[section]))
        value = rng.choice([-1, 0, 1, 3, 7, 0.5, 2**80, 1e308 * 10, "fast", "", [1, "x"], [], {"a": None}, True, None])
        cases[f"random: {section}.{key} = {value!r}"] = yaml.safe_dump(
            {**base, section: {**base.get(section, {}), key: value}})
    return cases


def _clean(code, out, err) -> bool:
    lines = err.strip().splitlines()
    return (code == 0 and out.startswith("{")) or (
        code == 2 and len(lines) == 1 and lines[0].startswith("config error:") and "Traceback" not in err)


def test_train_dry_run_exits_0_or_2_with_one_line(tmp_path, capsys):
    cases = _dry_run_cases(random.Random(10), n_random=24)
    results = {}
    for i, (what, text) in enumerate(cases.items()):  # each through train.py's main() and run_main, in process
        (tmp_path / f"case{i}.yaml").write_text(text)
        code = entry_main("train.py", ["--config", tmp_path / f"case{i}.yaml", "--dry-run"])
        results[what] = (code, *capsys.readouterr())
    children = list(cases)[:3]  # and the first three as real child processes, in parallel
    procs = {what: subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--config", f"case{i}.yaml", "--dry-run"],
                                    cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, what in enumerate(children)}
    for what, proc in procs.items():
        results[f"{what} (child process)"] = (proc.wait(timeout=120), *proc.communicate())
    ok = {what: _clean(*result) for what, result in results.items()}
    codes = collections.Counter(r[0] for r in results.values())
    record("`train.py --dry-run` on broken configs", len(ok), sum(ok.values()),
           f"exit 0 ({codes[0]}) or 2 with one line ({codes[2]}), never a traceback; "
           f"{len(results) - len(procs)} in process, {len(procs)} as child processes")
    assert all(ok.values()), {w: r for w, r in results.items() if not ok[w]}
    assert all(results[w][0] == (0 if w.startswith("valid") else 2) for w in results if not w.startswith("random"))


def test_train_py_refuses_a_device_name_it_cannot_parse(tmp_path, capsys):
    (tmp_path / "device.yaml").write_text("training: {device: gpu}\n")  # torch.device("gpu") raises RuntimeError
    code = entry_main("train.py", ["--config", tmp_path / "device.yaml"])
    err = capsys.readouterr().err.strip().splitlines()
    ok = code == 2 and len(err) == 1 and "training.device" in err[0]
    record("`train.py` with training.device: gpu (a name torch cannot parse)", 1, int(ok),
           "exit code 2, one line, before any data is read")
    assert ok, (code, err)
