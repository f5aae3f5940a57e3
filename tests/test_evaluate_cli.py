"""evaluate.py and benchmarks/sampler_quality.py: real images score like real images, a tiny
checkpoint gives a complete JSON answer, bad input gives one line and exit code 1."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config, tiny_data
from difflab import classifier as clf
from difflab import evaluation as ev
from difflab.commands.common import run_main
from difflab.data import images_to_tensor
from difflab.models import NULL_CLASS, build_model
from difflab.pipeline import Pipeline
from difflab.training import Trainer

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


def _load_script(name: str, path: Path):
    """Import an entry-point script (not a package module) by its path."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


evaluate = _load_script("evaluate", ROOT / "evaluate.py")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A one-epoch tiny U-Net checkpoint, trained once for the module."""
    cfg = tiny_config(tmp_path_factory.mktemp("ckpt"))
    Trainer(cfg, data=tiny_data(64), quiet=True).fit()
    return Path(cfg.training.output_dir) / "tiny" / "checkpoints" / "model_epoch_1.pt"





# --------------------------------------------------------------------------
# Real images through the real classifier (when data/ holds both)
# --------------------------------------------------------------------------


def test_real_test_images_score_like_real_images(tmp_path, monkeypatch, capsys):
    if not (DATA / "mnist.npz").is_file() or not clf.classifier_paths(DATA)[0].is_file():
        pytest.skip(f"needs {DATA}/mnist.npz and the cached classifier in {DATA}/classifier (run evaluate.py once)")
    classifier = clf.load_classifier(DATA, train_if_missing=False)
    monkeypatch.setattr(clf, "load_classifier", lambda *a, **k: classifier)  # one feature cache for both runs
    arrays = np.load(DATA / "mnist.npz")
    # A random subset: MNIST's test set is ordered (its first half is the cleaner writers).
    pick = np.random.default_rng(0).permutation(10_000)[:1000]
    x, y = arrays["x_test"][pick], arrays["y_test"][pick].astype(np.int64)
    npz = tmp_path / "real.npz"
    np.savez(npz, x=x, y=y)

    assert evaluate.main(["--samples", str(npz), "--data-dir", str(DATA), "--out", str(tmp_path / "s.json")]) == 0
    scores = json.loads(capsys.readouterr().out)
    expected, per_digit = ev.conditional_accuracy(classifier, images_to_tensor(x), torch.from_numpy(y))
    assert scores["accuracy"] == pytest.approx(expected, abs=1e-12) and scores["accuracy"] > 0.97
    assert scores["per_digit_accuracy"] == pytest.approx({str(d): a for d, a in per_digit.items()})
    assert scores["n"] == 1000 and scores["checkpoint"] is None
    assert 0 < scores["fid"] < 1.25 * scores["fid_floor"], scores  # real images: about the floor
    assert scores["precision"] > 0.8 and scores["recall"] > 0.8
    assert json.loads((tmp_path / "s.json").read_text()) == scores

    # The floor's own images (the same fixed subset of the training set) score exactly the floor.
    train = ev._fixed_subset(torch.arange(60_000), 1000).numpy()
    np.savez(npz, x=arrays["x_train"][train], y=arrays["y_train"][train].astype(np.int64))
    assert evaluate.main(["--samples", str(npz), "--data-dir", str(DATA)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["fid"] == pytest.approx(again["fid_floor"], rel=1e-9)


# --------------------------------------------------------------------------
# A tiny checkpoint, end to end, with a stand-in classifier
# --------------------------------------------------------------------------


def test_checkpoint_evaluation_prints_one_complete_json(tiny_checkpoint, fake_mnist, capsys):
    argv = ["--checkpoint", str(tiny_checkpoint), "--n", "20", "--steps", "2", "--batch-size", "8", "--device", "cpu"]
    assert evaluate.main(argv) == 0
    out, err = capsys.readouterr()
    scores = json.loads(out)  # stdout holds the JSON and nothing else
    assert list(scores) == list(evaluate.KEYS)
    assert scores["n"] == 20 and scores["steps"] == 2 and scores["nfe"] == 2
    assert scores["sampler"] == "ddim" and scores["cfg_scale"] == 2.0  # the tiny config's
    assert scores["config"] == "tiny" and scores["checkpoint"] == str(tiny_checkpoint) and scores["device"] == "cpu"
    assert list(scores["per_digit_accuracy"]) == [str(d) for d in range(10)]  # 20 images: 2 of each digit
    for key in ("fid", "fid_floor", "accuracy", "precision", "recall", "seconds"):
        assert isinstance(scores[key], float) and scores[key] >= 0, key
    assert "ddim x2" in err  # the progress bar went to stderr


def test_overrides_reach_the_sampler(tiny_checkpoint, fake_mnist):
    scores = evaluate.evaluate_checkpoint(tiny_checkpoint, fake_mnist, n=10, sampler="heun", steps=3,
                                          cfg_scale=1.0, device="cpu", progress=False)  # fmt: skip
    assert (scores["sampler"], scores["steps"], scores["nfe"], scores["cfg_scale"]) == ("heun", 3, 5, 1.0)


def test_set_changes_how_a_checkpoint_samples_and_nothing_else(tiny_checkpoint, fake_mnist, capsys):
    pipe = Pipeline.from_checkpoint(tiny_checkpoint, "cpu", sampling=["sampling.clip_x0=true", "sampling.steps=3"])
    assert pipe.cfg.sampling.clip_x0 is True and pipe.cfg.sampling.steps == 3
    run = lambda *extra: evaluate.evaluate_checkpoint(tiny_checkpoint, fake_mnist, n=10, device="cpu",  # noqa: E731
                                                      progress=False, sampling=list(extra))  # fmt: skip
    plain, clipped = run(), run("sampling.clip_x0=true")
    assert plain["steps"] == 4 and plain["fid"] != clipped["fid"]  # the tiny model's x0_hat leaves [-1, 1]
    for bad, code in {"training.lr=1": 2, "sampling.cfg_scale=-1": 2, "sampling.nope=1": 2}.items():
        argv = ["--checkpoint", str(tiny_checkpoint), "--n", "10", "--set", bad]
        assert run_main(lambda: evaluate.main(argv)) == code, bad
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("config error: "), (bad, err)


def test_same_seed_same_scores_other_seed_other_scores(tiny_checkpoint, fake_mnist):
    run = lambda seed: evaluate.evaluate_checkpoint(tiny_checkpoint, fake_mnist, n=10, steps=2, seed=seed,  # noqa: E731
                                                    device="cpu", progress=False)  # fmt: skip
    a, b, c = run(0), run(0), run(1)
    assert a["fid"] == b["fid"] and a["fid"] != c["fid"]


def test_unconditional_model_has_no_accuracy(tmp_path, fake_mnist):
    cfg = tiny_config(tmp_path, training={"cfg_dropout_prob": 1.0})
    pipe = Pipeline(build_model(cfg.model), cfg, torch.device("cpu"))
    asked, generate = [], pipe.generate

    def spy(labels, **options):  # record the labels the model was asked for
        asked.append(labels)
        return generate(labels, **options)

    pipe.generate = spy
    scores = evaluate.tidy(ev.evaluate_pipeline(pipe, fake_mnist, 12, steps=2, progress=False))
    assert len(asked) == 1 and (asked[0] == NULL_CLASS).all()
    assert scores["accuracy"] is None and "per_digit_accuracy" not in scores
    assert scores["cfg_scale"] == 1.0 and scores["fid"] is not None


def test_balanced_labels_are_even_over_the_digits():
    counts = torch.bincount(ev.balanced_labels(5003), minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 5003


# --------------------------------------------------------------------------
# Bad input: one line on stderr, exit code 1, nothing on stdout
# --------------------------------------------------------------------------


def _bad_inputs(tmp_path) -> dict:
    files = {}
    files["missing"] = tmp_path / "missing.npz"
    files["no y"] = tmp_path / "no_y.npz"
    np.savez(files["no y"], x=np.zeros((8, 28, 28), np.uint8))
    files["wrong shape"] = tmp_path / "shape.npz"
    np.savez(files["wrong shape"], x=np.zeros((8, 32, 32), np.uint8), y=np.zeros(8, np.int64))
    files["floats"] = tmp_path / "floats.npz"
    np.savez(files["floats"], x=np.zeros((8, 28, 28), np.float32), y=np.zeros(8, np.int64))
    files["labels"] = tmp_path / "labels.npz"
    np.savez(files["labels"], x=np.zeros((8, 28, 28), np.uint8), y=np.arange(8) + 5)  # mixes digits and 10+
    files["too few"] = tmp_path / "empty.npz"
    np.savez(files["too few"], x=np.zeros((0, 28, 28), np.uint8), y=np.zeros(0, np.int64))
    files["not npz"] = tmp_path / "text.npz"
    files["not npz"].write_text("hello")
    return files


def test_bad_npz_fails_with_one_line_and_exit_code_1(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--samples", str(tmp_path / "missing.npz")],
                       capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 1 and r.stdout == "", r
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "no such file" in r.stderr


def test_every_kind_of_bad_input_is_one_line(tmp_path, tiny_checkpoint, capsys):
    cases = {name: ["--samples", str(path)] for name, path in _bad_inputs(tmp_path).items()}
    cases["n < 1"] = ["--checkpoint", str(tiny_checkpoint), "--n", "0"]
    cases["bad sampler"] = ["--checkpoint", str(tiny_checkpoint), "--sampler", "rk4"]
    cases["missing checkpoint"] = ["--checkpoint", str(tmp_path / "nope.pt")]
    usage = {"n < 1", "bad sampler"}  # a wrong value on the command line: exit 2, as argparse's own errors
    for name, argv in cases.items():
        code = run_main(lambda: evaluate.main(argv + ["--data-dir", str(tmp_path)]))
        out, err = capsys.readouterr()
        assert code == (2 if name in usage else 1) and out == "", name
        prefix = "usage error: " if name in usage else "error: "
        assert len(err.strip().splitlines()) == 1 and err.startswith(prefix), (name, err)


# --------------------------------------------------------------------------
# The benchmark, on the tiny checkpoint
# --------------------------------------------------------------------------


def test_sampler_benchmark_writes_table_plot_and_json(tiny_checkpoint, fake_mnist, tmp_path, capsys):
    bench = _load_script("sampler_quality", ROOT / "benchmarks" / "sampler_quality.py")
    assert [bench.steps_for("heun", n) for n in (1, 4, 8, 16)] == [1, 2, 4, 8]
    argv = ["--checkpoint", str(tiny_checkpoint), "--n", "10", "--nfe", "2,4", "--reference-steps", "8",
            "--device", "cpu", "--out-dir", str(tmp_path / "out")]  # fmt: skip
    assert bench.main(argv) == 0
    table = capsys.readouterr().out
    for sampler in ("ddpm", "ddim", "euler", "heun", "dpm++2m"):
        assert table.count(f"| {sampler} |") == 2, sampler
    assert "| ddim (reference) | - | 8 | 8 |" in table
    assert "Best deterministic second-order sampler at NFE <= 16" in table and "Within 10%" in table
    summary = json.loads((tmp_path / "out" / "sampler_quality.json").read_text())
    heun = [r for r in summary["rows"] if r["sampler"] == "heun"]
    assert [(r["nfe_budget"], r["steps"], r["nfe"]) for r in heun] == [(2, 1, 1), (4, 2, 3)]
    assert all(r["nfe"] <= r["nfe_budget"] for r in summary["rows"])
    assert summary["verdict"]["best"]["sampler"] in ("heun", "dpm++2m")
    assert (tmp_path / "out" / "sampler_quality.png").stat().st_size > 10_000


def test_fid_sensitivity_spoilers_do_what_their_names_say():
    bench = _load_script("fid_sensitivity", ROOT / "benchmarks" / "fid_sensitivity.py")
    g = torch.Generator().manual_seed(0)
    x = torch.full((2, 1, 28, 28), -1.0)
    x[:, :, 10:18, 13:15] = 1.0  # a vertical stroke two pixels wide
    spoil = bench.spoilers(g)
    assert torch.equal(spoil["real digits, untouched"](x), x)
    thick, thin = spoil["strokes thicker (3x3 max filter)"](x), spoil["strokes thinner (3x3 min filter)"](x)
    assert (thick == 1).sum() > (x == 1).sum() > (thin == 1).sum()  # one pixel wider / narrower each side
    noisy = spoil["noise std 0.1"](x)
    assert noisy.min() >= -1 and noisy.max() <= 1 and 0.02 < (noisy - x).abs().mean() < 0.1
    blocks = spoil["4x4 blocks (patch means)"](x)
    assert torch.equal(blocks[..., :4, :4], blocks[..., :1, :1].expand(-1, -1, 4, 4))  # constant per patch


def test_sampler_verdict_judges_the_distance_to_the_reference_not_the_lowest_fid():
    bench = _load_script("sampler_quality", ROOT / "benchmarks" / "sampler_quality.py")
    rows = [{"sampler": "heun", "nfe": 3, "steps": 2, "fid": 50.0},  # far below: not converged
            {"sampler": "dpm++2m", "nfe": 16, "steps": 16, "fid": 95.0},
            {"sampler": "euler", "nfe": 16, "steps": 16, "fid": 96.0},  # first order: not a candidate
            {"sampler": "heun", "nfe": 31, "steps": 16, "fid": 96.5}]  # over the NFE budget
    result = bench.verdict(rows, {"sampler": "euler", "steps": 200, "fid": 96.6}, max_nfe=16)
    assert result["best"]["sampler"] == "dpm++2m" and result["within_10_percent"]
    assert result["relative_gap"] == pytest.approx(95.0 / 96.6 - 1)
    far = bench.verdict(rows[:1], {"sampler": "euler", "steps": 200, "fid": 96.6}, max_nfe=16)
    assert not far["within_10_percent"]  # 48% below the reference is a miss, not a win
    assert bench.verdict(rows, {}, max_nfe=16)["best"]["fid"] == 50.0  # no reference: the lowest FID
