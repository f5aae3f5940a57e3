"""sample.py and evaluate.py refuse what cannot work, in one line, before the sampling starts: NaN or inf
arguments, too many steps, a checkpoint whose weights are not finite, an output path that cannot be
written; and a disk that fills while they write says what, where and how much space is left."""

import json
import sys

import numpy as np
import pytest

from difflab import classifier as clf
from difflab import evaluation as ev
from difflab.infra.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from difflab.pipeline import Pipeline
from difflab.infra.validation import MAX_STEPS

from ._support import entry_main, fill, quick_trainer, record, small_tmpfs, synthetic_split

TOOLS = ("sample.py", "evaluate.py")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny U-Net after one training step (the config samples with 1 DDIM step)."""
    trainer = quick_trainer(tmp_path_factory.mktemp("sampling_faults"))
    trainer.fit(stop_after=1)
    return trainer.out_dir / "checkpoints" / "last.pt"


@pytest.fixture
def generate_calls(monkeypatch):
    """The steps of every Pipeline.generate call; more than MAX_STEPS stops the run at once
    (the code before the fix would sample for minutes)."""
    calls, real = [], Pipeline.generate

    def spy(self, labels, **options):
        calls.append(options.get("steps"))
        if (options.get("steps") or 0) > MAX_STEPS:
            raise RuntimeError(f"sampling started with {options['steps']} steps")
        return real(self, labels, **{**options, "steps": 1})  # the work itself is not under test

    monkeypatch.setattr(Pipeline, "generate", spy)
    return calls


def run(tool, argv, capsys):
    """(exit code, stdout, stderr) of `python TOOL ARGV` in this process; an escaped exception is
    what the user would see as a traceback (exit code None)."""
    try:
        code = entry_main(tool, ["--device", "cpu", *argv])
    except Exception as e:  # noqa: BLE001 -- the bug being tested for
        code = None
        print(f"Traceback: {type(e).__name__}: {e}", file=sys.stderr)
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str, prefix: str) -> bool:
    """stderr is one line (no traceback, no progress bar) starting with `prefix`."""
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err


def ends_with_one_error(err: str, prefix: str) -> bool:
    """After a progress bar, the last line starts with `prefix`, and it is the only error line."""
    lines = [line.split("\r")[-1] for line in err.strip().splitlines()]
    errors = [line for line in lines if line.startswith(("error", "usage error", "Traceback"))]
    return "Traceback" not in err and errors == lines[-1:] and lines[-1].startswith(prefix)


def says_full(line: str) -> bool:
    """The line says the disk is full and how much space is left ("... (24.0 KiB free)")."""
    return ("No space left on device" in line or "the disk is full" in line) and " free)" in line


def source(tool, checkpoint):
    return ["--checkpoint", checkpoint] + (["--n", "4"] if tool == "evaluate.py" else [])


# --------------------------------------------------------------------------
# 1. NaN and inf arguments
# --------------------------------------------------------------------------


def test_nan_and_inf_guidance_scales_are_usage_errors(checkpoint, fake_mnist, generate_calls, tmp_path, capsys):
    results = {}
    for tool in TOOLS:
        for value in ("nan", "inf", "-inf", "NaN"):
            out = tmp_path / f"{tool}_{value}.{'png' if tool == 'sample.py' else 'json'}"
            # `--cfg-scale=-inf`: written apart, argparse would take "-inf" for an option
            code, _, err = run(tool, [*source(tool, checkpoint), f"--cfg-scale={value}", "--out", out], capsys)
            refused = one_line(err, "usage error: --cfg-scale: expected a finite number >= 0, got ")
            results[f"{tool} --cfg-scale {value}"] = code == 2 and refused and not out.exists()
        # The same value through --set meets the config's own check.
        code, _, err = run(tool, [*source(tool, checkpoint), "--set", "sampling.cfg_scale=.nan"], capsys)
        results[f"{tool} --set sampling.cfg_scale=.nan"] = code == 2 and one_line(err, "config error: ")
    record("`sample.py`/`evaluate.py` given a NaN or infinite guidance scale", len(results), sum(results.values()),
           "usage error, exit code 2, one line, nothing sampled or written")
    assert all(results.values()) and not generate_calls, results


# --------------------------------------------------------------------------
# 2. A checkpoint whose weights are not finite
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nonfinite(checkpoint, tmp_path_factory):
    """{name: path}: EMA weights with a NaN (raw ones finite), raw weights with an inf (EMA ones finite)."""
    tmp = tmp_path_factory.mktemp("nonfinite")
    files = {}
    for name, key, value in [("nan EMA", "ema", float("nan")), ("inf raw", "model", float("inf"))]:
        state = load_checkpoint(checkpoint)
        first = next(k for k, w in state[key].items() if w.is_floating_point())
        state[key][first].view(-1)[0] = value
        files[name] = save_checkpoint(state, tmp / f"{name.replace(' ', '_')}.pt")  # a valid SHA-256: loads
    return files


def test_nonfinite_weights_are_refused_when_loaded(nonfinite, fake_mnist, generate_calls, tmp_path, capsys):
    refused = {}
    for name, path, extra, what in [("nan EMA", nonfinite["nan EMA"], [], "the EMA weights hold NaN or inf"),
                                    ("inf raw", nonfinite["inf raw"], ["--no-ema"], "the raw (non-EMA) weights")]:
        with pytest.raises(CheckpointError) as e:
            Pipeline.from_checkpoint(path, "cpu", use_ema=not extra)
        refused[f"Pipeline.from_checkpoint, {name}"] = "\n" not in str(e.value) and str(path) in str(e.value)
        for tool, never in zip(TOOLS, ("never.png", "never.json")):
            code, out, err = run(tool, [*source(tool, path), *extra, "--out", tmp_path / never], capsys)
            refused[f"{tool}, {name}"] = code == 1 and one_line(err, f"error: {path}: {what}") and out == ""
    assert not generate_calls
    # The weights that are finite still sample: the check reads only the weights it is going to use.
    code, _, err = run("sample.py", ["--checkpoint", nonfinite["nan EMA"], "--no-ema", "--out", tmp_path / "ok.png"],
                       capsys)
    usable = code == 0 and (tmp_path / "ok.png").stat().st_size > 0
    record("checkpoint with NaN/inf weights, loaded to sample (library, sample.py, evaluate.py)", len(refused),
           sum(refused.values()), "refused at load with one line naming the file; exit code 1")
    assert all(refused.values()) and usable, (refused, err)


# --------------------------------------------------------------------------
# 3. Output paths that cannot be written: refused before the sampling
# --------------------------------------------------------------------------


def test_unwritable_outputs_are_refused_before_the_sampling(checkpoint, fake_mnist, generate_calls, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "a_folder").mkdir()
    png = tmp_path / "grid.png"
    cases = {  # name: (tool, extra arguments, the start of the one line)
        "--out in /proc": ("sample.py", ["--out", "/proc/x.png"], "error: --out /proc/x.png: cannot be written"),
        "--out an existing folder": ("sample.py", ["--out", tmp_path / "a_folder"], "error: --out "),
        "--out below a regular file": ("sample.py", ["--out", tmp_path / "a_file" / "x.png"], "error: --out "),
        "--save-npz in /proc": ("sample.py", ["--out", png, "--save-npz", "/proc/y.npz"],
                                "error: --save-npz /proc/y.npz: cannot be written"),
        "--save-npz an existing folder": ("sample.py", ["--out", png, "--save-npz", tmp_path / "a_folder"],
                                          "error: --save-npz "),
        "--out not an image name": ("sample.py", ["--out", tmp_path / "grid.txt"], "usage error: --out: expected "),
        "evaluate.py --out in /proc": ("evaluate.py", ["--out", "/proc/e.json"], "error: --out /proc/e.json: cannot"),
        "evaluate.py --out an existing folder": ("evaluate.py", ["--out", tmp_path / "a_folder"], "error: --out "),
    }
    results = {}
    for name, (tool, extra, start) in cases.items():
        code, out, err = run(tool, [*source(tool, checkpoint), *extra], capsys)
        results[name] = code == (2 if start.startswith("usage") else 1) and one_line(err, start) and out == ""
    clean = results and not generate_calls and not png.exists() and list((tmp_path / "a_folder").iterdir()) == []
    record("`sample.py`/`evaluate.py` with an output path that cannot be written", len(results), sum(results.values()),
           "one line, exit code 1, before any sampling; no PNG left when only the .npz path is bad")
    assert all(results.values()) and clean, (results, generate_calls, capsys.readouterr())


# --------------------------------------------------------------------------
# 4. A disk that fills: the real thing, on a tiny tmpfs
# --------------------------------------------------------------------------


def leftovers(folder):
    """Files under `folder` other than the filler: half-written outputs or temporaries."""
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and p.name != ".filler")


def test_a_disk_too_full_for_the_png_is_one_line(checkpoint, tmp_path, capsys):
    """The probe's one page fits; the 80 KB grid does not. Nothing is left under the disk's PNG name."""
    with small_tmpfs(tmp_path, 512) as disk:
        fill(disk, leave_kib=24)
        code, _, err = run("sample.py", ["--checkpoint", checkpoint, "--out", disk / "grid.png"], capsys)
        left = leftovers(disk)
    ok = code == 1 and ends_with_one_error(err, f"error: could not write {disk / 'grid.png'}: ") and says_full(err)
    record("disk full while `sample.py` writes its PNG (real tmpfs)", 1, int(ok and not left),
           "one line naming the file, the full disk and the free space; no partial PNG")
    assert ok and not left, (code, err[-600:], left)


def test_a_disk_too_full_for_the_npz_keeps_the_png(checkpoint, tmp_path, capsys):
    """The probe passes, the PNG (another disk) is written, then the 64 KB .npz does not fit."""
    png = tmp_path / "grid.png"
    with small_tmpfs(tmp_path, 512) as disk:
        fill(disk, leave_kib=24)
        code, out, err = run("sample.py", ["--checkpoint", checkpoint, "--out", png, "--save-npz", disk / "s.npz"],
                             capsys)
        left = leftovers(disk)
    ok = (code == 1 and ends_with_one_error(err, f"error: could not write {disk / 's.npz'}: ") and says_full(err)
          and err.rstrip().endswith(f"; {png} was written") and f"wrote {png}" in out and png.stat().st_size > 0)
    record("disk full while `sample.py --save-npz` writes the .npz (real tmpfs)", 1, int(ok and not left),
           "one line with the free space; the PNG written before it is kept; no partial .npz")
    assert ok and not left, (code, err[-600:], left)


def test_a_disk_that_fills_during_evaluation_keeps_the_scores_on_stdout(checkpoint, fake_mnist, monkeypatch,
                                                                         tmp_path, capsys):
    """--out passes the probe; the disk fills while the judge is loaded; the JSON write then fails."""
    with small_tmpfs(tmp_path, 256) as disk:

        def judge_while_the_disk_fills(*args, **kwargs):
            fill(disk)
            return fake_mnist

        monkeypatch.setattr(clf, "load_classifier", judge_while_the_disk_fills)
        code, out, err = run("evaluate.py", [*source("evaluate.py", checkpoint), "--steps", "1",
                                             "--out", disk / "e.json"], capsys)
        left = leftovers(disk)
    ok = (code == 1 and ends_with_one_error(err, f"error: could not write {disk / 'e.json'}: ") and says_full(err)
          and "the scores are on stdout" in err and json.loads(out)["n"] == 4)
    record("disk full while `evaluate.py --out` writes the JSON (real tmpfs)", 1, int(ok and not left),
           "one line with the free space; the scores still printed on stdout; no partial file")
    assert ok and not left, (code, err[-600:], left)


def test_a_full_disk_for_the_classifier_cache_costs_one_line_not_the_scores(monkeypatch, tmp_path, capsys):
    """The judge is trained (a stand-in, instantly), then its 400 KB cache does not fit: the scores come anyway."""
    monkeypatch.setattr(clf, "load_split", synthetic_split)
    monkeypatch.setattr(ev, "load_split", synthetic_split)
    monkeypatch.setattr(clf, "train_classifier", lambda *a, **k: clf.MNISTClassifier().eval())
    rng = np.random.default_rng(0)
    samples = tmp_path / "samples.npz"
    np.savez(samples, x=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), y=np.arange(20) % 10)
    with small_tmpfs(tmp_path, 256) as disk:
        fill(disk, leave_kib=64)
        code, out, err = run("evaluate.py", ["--samples", samples, "--data-dir", disk], capsys)
        left = leftovers(disk)
    cache = disk / "classifier" / "mnist_cnn.pt"
    warnings = [line for line in err.splitlines() if "could not write" in line]
    ok = (code == 0 and json.loads(out)["n"] == 20 and "Traceback" not in err and len(warnings) == 1
          and warnings[0].startswith(f"difflab: could not write {cache}: ") and says_full(warnings[0])
          and "not cached" in warnings[0])
    record("disk full while caching the trained MNIST classifier (real tmpfs)", 1, int(ok and not left),
           "one line with the free space, the scores still computed; no partial cache file")
    assert ok and not left, (code, err[-600:], left)


# --------------------------------------------------------------------------
# 5. A bound on the work
# --------------------------------------------------------------------------


def test_more_steps_than_the_training_discretisation_are_refused(checkpoint, fake_mnist, generate_calls,
                                                                 tmp_path, capsys):
    results = {}
    for tool in TOOLS:
        for argv in (["--steps", "100000"], ["--steps", str(MAX_STEPS + 1)], ["--set", "sampling.steps=5000"]):
            code, _, err = run(tool, [*source(tool, checkpoint), *argv], capsys)
            start = "usage error: --steps: at most" if argv[0] == "--steps" else "usage error: sampling.steps"
            results[f"{tool} {' '.join(argv)}"] = code == 2 and one_line(err, start) and f"at most {MAX_STEPS}" in err
        try:  # the bound is in --help
            entry_main(tool, ["--help"])
        except SystemExit:
            pass
        results[f"{tool} --help"] = f"1 to {MAX_STEPS}" in " ".join(capsys.readouterr().out.split())
    refused_before_sampling = not generate_calls
    code, _, _ = run("sample.py", ["--checkpoint", checkpoint, "--steps", MAX_STEPS, "--out", tmp_path / "max.png"],
                     capsys)
    accepted = code == 0 and generate_calls == [MAX_STEPS]  # the bound itself is allowed
    record("`sample.py`/`evaluate.py` asked for more than 1000 sampling steps", len(results), sum(results.values()),
           "usage error, exit code 2, one line, before sampling; the limit shown in --help")
    assert all(results.values()) and refused_before_sampling and accepted, (results, generate_calls)
