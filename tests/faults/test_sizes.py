"""Sizes with no bound used to end in allocator tracebacks (issue 42, item 6): a batch larger than the data,
10^10 diffusion timesteps (in a config, or in a checkpoint's stored config), a sample grid of 10^6 per digit,
`sample.py --n 1000000`, `evaluate.py --n 1000000000`, a batch of 60,000, a 420M-parameter model. Each is now
refused in one line with its bound and the reason, exit code 2 (1 for a checkpoint), before data is read or
anything is sampled or trained.

Every command runs in one child process under an address-space limit (`ulimit -v`: what it had after
importing torch, plus 5 GiB), each with a timeout of its own: the code before the fix allocated until the
limit stopped it, or sampled for hours. The limit is also what makes the memory estimate's answer the same
on every machine: the 420M model needs ~8 GiB for its weights, gradients, AdamW's moments and the EMA.
"""

import json
import subprocess
import sys

import pytest

from ._support import ROOT, env, quick_trainer, record, tiny_data, tiny_yaml

HEADROOM = 5 << 30  # bytes of address space the child may add to what importing torch took
CASE_SECONDS = 60

# The child: run each command through the entry points' own run_main, in one process (torch is imported
# once); report exit code and stderr, or the exception that escaped (a traceback for the user).
CHILD = r"""
import contextlib, io, json, resource, signal, sys
sys.path[:0] = [{root!r}, {src!r}]
import torch
from tests.faults._support import entry_main
with open("/proc/self/status") as f:
    size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + {headroom}, size + {headroom}))

def alarm(*_):
    raise TimeoutError("still running after {seconds} s")

signal.signal(signal.SIGALRM, alarm)
results = {{}}
for name, (script, argv) in json.loads(sys.argv[1]).items():
    err, out = io.StringIO(), io.StringIO()
    signal.alarm({seconds})
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = entry_main(script, argv)
    except SystemExit as e:
        code = e.code
    except BaseException as e:
        code, err = None, io.StringIO(f"Traceback: {{type(e).__name__}}: {{str(e)[:300]}}")
    finally:
        signal.alarm(0)
    results[name] = {{"code": code, "stderr": err.getvalue()[-2000:], "stdout": out.getvalue()[-2000:]}}
print(json.dumps(results))
"""


def run_in_child(cases: dict) -> dict:
    """{name: (script, argv)} -> {name: {code, stderr, stdout}}, all in one memory-limited child."""
    code = CHILD.format(root=str(ROOT), src=str(ROOT / "src"), headroom=HEADROOM, seconds=CASE_SECONDS)
    argv = json.dumps({k: (script, [str(a) for a in args]) for k, (script, args) in cases.items()})
    try:
        done = subprocess.run([sys.executable, "-c", code, argv], cwd=ROOT, env=env(), capture_output=True,
                              text=True, timeout=CASE_SECONDS * len(cases) + 60)
    except subprocess.TimeoutExpired:
        return {k: {"code": "timed out", "stderr": "", "stdout": ""} for k in cases}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        crash = f"child crashed (exit {done.returncode}): {done.stderr[-300:]}"
        return {k: {"code": "crashed", "stderr": crash, "stdout": ""} for k in cases}


def one_line(result: dict, code: int, *words) -> bool:
    """Exit `code`, exactly one line on stderr (no traceback, no progress bar) holding every one of `words`."""
    lines = result["stderr"].strip().splitlines()
    return (result["code"] == code and len(lines) == 1 and "Traceback" not in result["stderr"]
            and all(w in lines[0] for w in words))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every command of this file, run once in the child."""
    tmp = tmp_path_factory.mktemp("sizes")
    from difflab.infra.checkpoint import save_checkpoint

    trainer = quick_trainer(tmp / "ckpt")  # a tiny U-Net, never trained: its checkpoint is only loaded
    good = save_checkpoint(trainer.state(), tmp / "good.pt")
    state = trainer.state()
    state["config"]["diffusion"]["num_timesteps"] = 10**10
    huge_t = save_checkpoint(state, tmp / "timesteps.pt")
    dit_420m = {"architecture": "dit", "hidden_size": 1792, "depth": 7, "num_heads": 16, "patch_size": 4}

    def train(name, dry=False, **sections):
        (tmp / name).mkdir()
        path = tiny_yaml(tmp / name, name=name, **sections)
        return "train.py", ["--config", path, *(["--dry-run"] if dry else [])]

    sample = ["--checkpoint", good, "--device", "cpu", "--out", tmp / "grid.png"]
    evaluate = ["--checkpoint", good, "--device", "cpu", "--data-dir", tmp / "no_data"]
    cases = {
        "batch above data.limit": train("limit", training={"batch_size": 16}),
        "batch above the dataset": train("dataset", data={"limit": None}, training={"batch_size": 100_000}),
        "batch of 60,000": train("batch60k", data={"limit": None}, training={"batch_size": 60_000}),
        "420M-parameter model": train("dit420m", model=dit_420m),
        "420M-parameter model, --dry-run": train("dit420m_dry", dry=True, model=dit_420m),
        "num_timesteps 10^10": train("timesteps", diffusion={"num_timesteps": 10**10}),
        "num_timesteps 10^10, --dry-run": train("timesteps_dry", dry=True, diffusion={"num_timesteps": 10**10}),
        "n_per_class 10^6": train("grid", sampling={"n_per_class": 10**6}),
        "checkpoint with num_timesteps 10^10": ("sample.py", ["--checkpoint", huge_t, "--device", "cpu",
                                                              "--out", tmp / "t.png"]),
        "sample.py --n 1000000": ("sample.py", [*sample, "--n", 1_000_000]),
        "sample.py --n 100000": ("sample.py", [*sample, "--n", 100_000]),
        "sample.py --n 1000 --prompt x 20": ("sample.py", [*sample, "--n", 1000, *["--prompt", "a 7"] * 20]),
        "evaluate.py --n 1000000000": ("evaluate.py", [*evaluate, "--n", 1_000_000_000]),
        "evaluate.py --adherence-per-prompt 1000000000": ("evaluate.py", [*evaluate, "--n", 8,
                                                                         "--adherence-per-prompt", 10**9]),
    }
    return run_in_child(cases)


def test_a_batch_larger_than_the_training_images_is_refused(results):
    ok = {"limit": one_line(results["batch above data.limit"], 2, "training.batch_size", "data.limit = 8"),
          "dataset": one_line(results["batch above the dataset"], 2, "training.batch_size", "60,000")}
    record("training.batch_size above data.limit, or above the 60,000 training images", len(ok), sum(ok.values()),
           "config error, exit code 2, one line naming the bound, before the data is read")
    assert all(ok.values()), {k: results[k] for k in results if k.startswith("batch above")}


def test_a_batch_larger_than_the_data_given_to_a_trainer_is_refused(tmp_path):
    """The same bound where the data is handed in (tests, latents): 16 images, batches of 32."""
    from difflab.config import ConfigError

    try:
        trainer = quick_trainer(tmp_path, data=tiny_data(16), batch_size=32)
        trainer.fit(stop_after=1)
        outcome = "trained"
    except ConfigError as e:
        outcome = str(e)
    except Exception as e:  # noqa: BLE001 -- the crash at step 1 being tested for
        outcome = f"{type(e).__name__}: {e}"
    ok = outcome.startswith("training.batch_size: at most the 16 training images")
    record("a Trainer given fewer images than one batch", 1, int(ok), "ConfigError naming the bound, before step 1")
    assert ok, outcome


@pytest.mark.parametrize("case", ["batch of 60,000", "420M-parameter model", "420M-parameter model, --dry-run"])
def test_training_that_cannot_fit_in_memory_is_refused_with_the_estimate(results, case):
    ok = one_line(results[case], 2, "config error: dit420m" if "420M" in case else "config error: batch60k",
                  "training needs at least", "GiB", "more than the",
                  "lower training.batch_size")
    record("a batch of 60,000, or a 420M-parameter model (train.py and --dry-run)", 1, int(ok),
           "config error, exit code 2: the estimate, the memory available and what to lower")
    assert ok, results[case]


@pytest.mark.parametrize("case", ["num_timesteps 10^10", "num_timesteps 10^10, --dry-run", "n_per_class 10^6"])
def test_sizes_in_a_config_are_bounded(results, case):
    key = "diffusion.num_timesteps" if "timesteps" in case else "sampling.n_per_class"
    ok = one_line(results[case], 2, f"config error: {ROOT.anchor}", key, "at most")
    record("diffusion.num_timesteps 10^10, sampling.n_per_class 10^6 (train.py and --dry-run)", 1, int(ok),
           "config error, exit code 2, one line with the bound and why")
    assert ok, results[case]


def test_a_checkpoint_whose_config_has_10_10_timesteps_is_refused_at_load(results):
    result = results["checkpoint with num_timesteps 10^10"]
    ok = one_line(result, 1, "error:", "timesteps.pt", "diffusion.num_timesteps", "at most 10,000")
    record("a checkpoint whose stored config has num_timesteps 10^10", 1, int(ok),
           "exit code 1, one line naming the file and the bound")
    assert ok, result


def test_sample_py_n_is_bounded_and_the_bound_is_in_help(results, capsys):
    from ._support import entry_main

    ok = {case: one_line(results[case], 2, "usage error: --n", "at most") for case in
          ("sample.py --n 1000000", "sample.py --n 100000", "sample.py --n 1000 --prompt x 20")}
    with pytest.raises(SystemExit):
        entry_main("sample.py", ["--help"])
    ok["--help"] = "per prompt), 1 to 1000" in " ".join(capsys.readouterr().out.split())
    record("`sample.py --n` of 100,000 and 1,000,000 per digit, or 20 prompts x 1000", len(ok), sum(ok.values()),
           "usage error, exit code 2, one line, before the checkpoint is loaded; the bound in --help")
    assert all(ok.values()), {k: results.get(k) for k in ok}


def test_evaluate_py_n_is_bounded(results, capsys):
    from ._support import entry_main

    ok = {case: one_line(results[case], 2, "usage error: --", "at most") for case in
          ("evaluate.py --n 1000000000", "evaluate.py --adherence-per-prompt 1000000000")}
    with pytest.raises(SystemExit):
        entry_main("evaluate.py", ["--help"])
    ok["--help"] = "4 to 10,000" in " ".join(capsys.readouterr().out.split())
    record("`evaluate.py --n 1000000000` (and --adherence-per-prompt)", len(ok), sum(ok.values()),
           "usage error, exit code 2, one line naming the 10,000-image test set, before the checkpoint is loaded")
    assert all(ok.values()), {k: results.get(k) for k in ok}
