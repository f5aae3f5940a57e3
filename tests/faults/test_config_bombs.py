"""Configs built to explode (issue 42, item 1): YAML anchors and aliases ("billion laughs"), merge keys,
a checkpoint's stored config whose lists share references, a file of many megabytes, a huge key. Each is
refused with one short ConfigError line within seconds.

Each case runs in a child process under an address-space limit and a timeout: before the fix a 370-byte
file made the error message `repr()` a billion strings (a MemoryError, or a gigabyte "one-line" error),
and a merge-key file made yaml.safe_load itself run for hours.
"""

import json
import resource
import subprocess
import sys

import pytest
import yaml

from ._support import ROOT, env, record

LIMIT = 2 << 30  # bytes of address space a child may use: yaml and difflab.config need ~100 MB
TIMEOUT = 30
MAX_MESSAGE = 1000  # characters: one line (an unknown key lists the known ones, ~500)

# The child loads the config and reports what happened, never the value itself (it may be gigabytes).
CHILD = """
import json, sys, time
sys.path.insert(0, {src!r})
from difflab.config import ConfigError, config_from_dict, load_config
start = time.monotonic()
try:
    {call}
    kind, message = "loaded", ""
except ConfigError as e:
    kind, message = "ConfigError", str(e)
except BaseException as e:
    kind, message = type(e).__name__, str(e)
print(json.dumps({{"kind": kind, "length": len(message), "lines": len(message.splitlines()),
                  "head": message[:300], "seconds": round(time.monotonic() - start, 2)}}))
"""


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def in_child(call: str) -> dict:
    """Run `call` (Python, one line) in a child bounded in memory and time; what it raised."""
    code = CHILD.format(src=str(ROOT / "src"), call=call)
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True,
                              timeout=TIMEOUT, preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        return {"kind": f"timed out after {TIMEOUT} s"}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"kind": f"crashed (exit {done.returncode})", "stderr": done.stderr[-500:]}


def refused_cleanly(result: dict, *words) -> bool:
    """A ConfigError of one short line, quickly, naming `words`."""
    return (result.get("kind") == "ConfigError" and result["lines"] == 1 and result["length"] <= MAX_MESSAGE
            and result["seconds"] < 5 and all(w in result["head"] for w in words))


def laughs(levels: int, width: int = 9, indent: str = "    ") -> str:
    """The flow sequence of a billion-laughs document: each level `width` aliases of the one before."""
    rows = [f"[&a0 [{', '.join(['lol'] * width)}],"]
    rows += [f"{indent}&a{i} [{', '.join([f'*a{i - 1}'] * width)}]," for i in range(1, levels)]
    rows.append(f"{indent}[{', '.join([f'*a{levels - 1}'] * width)}]]")
    return "\n".join(rows)


BOMBS = {  # where the anchors go: each is a place an error message used to print the value whole
    "training.lr (a float field)": "training:\n  lr: " + laughs(9),
    "name (the run's folder name)": "name: " + laughs(9, indent="  "),
    "model.channel_mult (a list, checked in validation.py)": "model:\n  channel_mult: " + laughs(9),
}


@pytest.mark.parametrize("where", list(BOMBS))
def test_billion_laughs_is_refused_in_one_short_line(tmp_path, where):
    path = tmp_path / "laughs.yaml"
    path.write_text(BOMBS[where] + "\n")
    size = path.stat().st_size
    result = in_child(f"load_config({str(path)!r})")
    ok = refused_cleanly(result, str(path))
    record("a YAML config of anchors and aliases ('billion laughs')", 1, int(ok),
           f"one ConfigError line of at most {MAX_MESSAGE} characters; a {size}-byte file")
    assert ok, (where, result)


def test_yaml_merge_keys_are_bounded_before_they_are_built(tmp_path):
    """`<<: [*a, *a, ...]` copies the merged entries while PyYAML builds the dict: 9 merges a level for
    12 levels is hours inside yaml.safe_load, before any check after it could run."""
    rows = ["a0: &a0 {lr: 1, seed: 2}"]
    rows += [f"a{i}: &a{i} {{<<: [{', '.join([f'*a{i - 1}'] * 9)}]}}" for i in range(1, 12)]
    path = tmp_path / "merge.yaml"
    path.write_text("\n".join(rows) + "\ntraining: *a11\n")
    result = in_child(f"load_config({str(path)!r})")
    ok = refused_cleanly(result, "nested")
    record("a YAML config of merge keys (`<<: [*a, *a, ...]`) nested 12 levels", 1, int(ok),
           "one ConfigError line, before PyYAML builds it")
    assert ok, result


def test_an_override_of_anchors_is_refused(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"training": {"epochs": 1}}))
    override = "training.lr=" + laughs(9).replace("\n", " ")
    result = in_child(f"load_config({str(path)!r}, [{override!r}])")
    ok = refused_cleanly(result)
    record("a `section.key=value` override of anchors and aliases", 1, int(ok), "one ConfigError line")
    assert ok, result


@pytest.mark.parametrize("field", ["sampling.guidance_interval", "model.channel_mult", "training.lr"])
def test_a_stored_config_of_shared_references_is_refused(field):
    """A checkpoint's config is a dict from someone else's pickle: lists can share references 40 levels
    deep (2^40 leaves in a few hundred bytes). config_from_dict bounds it before validating or printing."""
    section, key = field.split(".")
    call = ("x = [0.5, 0.5]\n"
            "    for _ in range(40): x = [x, x]\n"
            f"    config_from_dict({{{section!r}: {{{key!r}: x}}}}, source='last.pt (stored config)')")
    result = in_child(call)
    ok = refused_cleanly(result, "last.pt (stored config)")
    record("a checkpoint's stored config whose lists share references 40 levels deep", 1, int(ok),
           "one ConfigError line (a CheckpointError where a checkpoint is loaded)")
    assert ok, (field, result)


def test_a_config_of_many_megabytes_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "w") as f:
        f.write("training:\n  lr: '")
        for _ in range(20):
            f.write("x" * (1 << 20))
        f.write("'\n")
    result = in_child(f"load_config({str(path)!r})")
    ok = refused_cleanly(result, "MiB")
    record("a config file of 20 MB (a value 20 million characters long)", 1, int(ok),
           "one ConfigError line: larger than 1 MiB, before it is parsed")
    assert ok, result


def test_a_huge_key_is_shortened_in_the_message(tmp_path):
    path = tmp_path / "key.yaml"
    path.write_text(yaml.safe_dump({"training": {"l" * 100_000: 1}}, width=10**7))
    result = in_child(f"load_config({str(path)!r})")
    ok = refused_cleanly(result, "unknown key")
    record("a config key 100,000 characters long", 1, int(ok), "one ConfigError line, the key shortened")
    assert ok, result
