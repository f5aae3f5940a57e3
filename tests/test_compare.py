"""compare_models: every file is written, the table has a row per model, and models share their noise."""

import json
from pathlib import Path

import pytest
import torch

from conftest import synthetic_split, tiny_config, tiny_data
from difflab import classifier as clf
from difflab.study import compare
from difflab import evaluation as ev
from difflab.training import Trainer


def make_checkpoint(tmp_path, name, **sections):
    cfg = tiny_config(tmp_path, **sections)
    cfg.name = name
    Trainer(cfg, data=tiny_data(48), quiet=True).fit()
    return Path(cfg.training.output_dir) / name / "checkpoints" / "model_epoch_1.pt"


def test_every_file_and_a_row_per_model(tmp_path, monkeypatch):
    monkeypatch.setattr(ev, "load_split", synthetic_split)
    torch.manual_seed(0)
    classifier = clf.MNISTClassifier().eval()
    eps = make_checkpoint(tmp_path, "tiny_eps")
    flow = make_checkpoint(tmp_path, "tiny_flow", diffusion={"target": "flow", "schedule": "flow"},
                           sampling={"sampler": "euler", "spacing": "trailing"})
    assert compare.newest_checkpoints(tmp_path / "experiments") == [eps, flow]
    out = tmp_path / "results"
    result = compare.run_comparison([eps, flow], out, classifier, n=20, steps_list=(2, 4), scales=(1.0, 3.0),
                                    sweep_n=10)
    for name in ("grid.png", "trajectories.png", "trajectories.gif", "fid_vs_steps.png", "fid_vs_guidance.png",
                 "loss_curves.png", "RESULTS.md", "results.json"):
        assert (out / name).stat().st_size > 0, name
    table = (out / "RESULTS.md").read_text()
    assert "| tiny_eps |" in table and "| tiny_flow |" in table
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["tiny_eps", "tiny_flow"]
    for r in rows:
        assert r["fid"] >= 0 and 0 <= r["accuracy"] <= 1 and r["params"] > 0 and r["seconds_per_1000"] > 0
        assert r["images_seen"] == 48
    assert len(result["sweeps"]["steps"]["tiny_flow"]) == 2
    # a second run without the steps sweep leaves no plot of the first run's behind
    again = compare.run_comparison([eps, flow], out, classifier, n=20, steps_list=(), scales=(1.0,), sweep_n=10)
    assert not (out / "fid_vs_steps.png").exists() and "steps" not in again["sweeps"]
    assert (out / "fid_vs_guidance.png").stat().st_size > 0


def test_the_table_survives_a_failing_sweep(tmp_path, monkeypatch):
    """The sweeps come last and take longest: if one fails, the scored table is already on disk."""
    monkeypatch.setattr(ev, "load_split", synthetic_split)
    ckpt = make_checkpoint(tmp_path, "tiny_eps")

    def broken_sweep(*args, **kwargs):
        raise RuntimeError("killed during the sweep")

    monkeypatch.setattr(compare, "sweep", broken_sweep)
    out = tmp_path / "results"
    with pytest.raises(RuntimeError, match="killed"):
        compare.run_comparison([ckpt], out, clf.MNISTClassifier().eval(), n=20, steps_list=(2,), sweep_n=10)
    assert "| tiny_eps |" in (out / "RESULTS.md").read_text()
    saved = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in saved["rows"]] == ["tiny_eps"] and saved["sweeps"] == {}


def test_models_start_from_the_same_noise(tmp_path):
    a = make_checkpoint(tmp_path, "a")
    b = make_checkpoint(tmp_path, "b", diffusion={"target": "v"})
    pipes, _ = compare.load_pipelines([a, b], "cpu")
    seen = {}
    for name, pipe in pipes.items():
        pipe.generate(torch.arange(3), seed=5, callback=lambda i, t, x, x0, name=name: seen.setdefault(name, x.clone()))
    assert torch.equal(seen["a"], seen["b"])
    pipe = pipes["a"]
    assert not torch.equal(pipe.initial_noise(3, 5), pipe.initial_noise(3, 6))


def test_seeds_are_found_scored_and_summarised(tmp_path, monkeypatch):
    """make compare SEEDS=2: seed 0 in DIR, seed 1 in DIR/seed1; the table has each config's mean and spread."""
    monkeypatch.setattr(ev, "load_split", synthetic_split)
    torch.manual_seed(0)
    classifier = clf.MNISTClassifier().eval()
    first = make_checkpoint(tmp_path, "tiny_eps")
    second = make_checkpoint(tmp_path / "x", "tiny_eps",
                             training={"seed": 1, "output_dir": str(tmp_path / "experiments" / "seed1")})
    runs = compare.seed_runs(tmp_path / "experiments")
    assert runs == {0: [first], 1: [second]}
    result = compare.run_comparison(runs[0], tmp_path / "results", classifier, n=20, steps_list=(), scales=(),
                                    other_seeds=[runs[1]])
    row = result["rows"][0]
    alone = compare.evaluate_models(compare.load_pipelines([second], "cpu")[0], classifier, 20)[0]
    assert row["fid_seeds"] == [row["fid"], alone["fid"]] and row["fid"] != alone["fid"]  # two networks, two scores
    assert row["fid_mean"] == pytest.approx((row["fid"] + alone["fid"]) / 2)
    assert row["fid_spread"] == pytest.approx(abs(row["fid"] - alone["fid"]) / 2 ** 0.5)  # sample std of two
    table = (tmp_path / "results" / "RESULTS.md").read_text()
    assert f"| {row['fid_mean']:.2f} +- {row['fid_spread']:.2f} |" in table and "over 2 training seeds" in table


def test_a_second_run_reads_the_scores_it_already_has(tmp_path, monkeypatch):
    """make compare after a failure (or compare-all after compare) samples only what is new."""
    monkeypatch.setattr(ev, "load_split", synthetic_split)
    torch.manual_seed(0)
    classifier = clf.MNISTClassifier().eval()
    ckpt = make_checkpoint(tmp_path, "tiny_eps")
    out = tmp_path / "results"
    calls = []
    real = compare.evaluate_pipeline

    def counted(*args, **kwargs):
        calls.append(kwargs.get("cfg_scale"))
        return real(*args, **kwargs)

    monkeypatch.setattr(compare, "evaluate_pipeline", counted)
    first = compare.run_comparison([ckpt], out, classifier, n=20, steps_list=(), scales=(1.0, 3.0), sweep_n=10)
    assert len(calls) == 3  # the table, and two guidance scales
    again = compare.run_comparison([ckpt], out, classifier, n=20, steps_list=(), scales=(1.0, 3.0, 5.0), sweep_n=10)
    assert calls[3:] == [5.0]  # only the new scale was sampled
    assert again["rows"][0]["fid"] == first["rows"][0]["fid"]
    assert again["sweeps"]["cfg_scale"]["tiny_eps"][:2] == first["sweeps"]["cfg_scale"]["tiny_eps"]
    compare.run_comparison([ckpt], out, classifier, n=40, steps_list=(), scales=(), sweep_n=10)
    assert len(calls) == 5  # another n is another score
    (out / "scores.json").write_text("{damaged")
    compare.run_comparison([ckpt], out, classifier, n=20, steps_list=(), scales=(), sweep_n=10)
    assert len(calls) == 6  # a damaged store is scored again, not trusted
    other = clf.MNISTClassifier().eval()  # another judge: its own scores
    compare.run_comparison([ckpt], out, other, n=20, steps_list=(), scales=(), sweep_n=10)
    assert len(calls) == 7


def test_stored_scores_go_stale_with_the_sampling_code_not_with_the_training_code(tmp_path):
    import shutil

    from difflab.study import score_cache

    package = tmp_path / "difflab"
    shutil.copytree(Path(score_cache.__file__).parents[1], package, ignore=shutil.ignore_patterns("__pycache__"))

    def edit(name, old, new):
        path = package / name
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
        return score_cache.code_digest(package)

    before = score_cache.code_digest(package)
    with open(package / "loop.py", "a") as f:
        f.write("\nTRAINING_ONLY_CHANGE = 1\n")
    assert score_cache.code_digest(package) == before  # a module that only trains
    assert edit("samplers.py", "\nimport ", "\n\n# a comment, and a blank line\nimport ") == before  # layout, comments
    assert edit("settings.py", "class TrainingConfig:\n", "class TrainingConfig:\n    new_option: int = 1\n") == before
    after = edit("settings.py", "class SamplingConfig:\n", "class SamplingConfig:\n    new_option: int = 1\n")
    assert after != before  # a sampling setting
    assert edit("samplers.py", "\nimport ", "\nA_CHANGE_TO_A_SAMPLER = 1\nimport ") != after
