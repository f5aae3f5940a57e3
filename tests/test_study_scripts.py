"""benchmarks/lib.sh, the helpers every study script sources: on a new clone a study restores the rows it has
already published instead of measuring them again, and restores nothing that was measured another way."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "benchmarks" / "lib.sh"


def bash(script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"set -euo pipefail; PYTHON={sys.executable}; source {LIB}; {script}"],
                          cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def published(tmp_path):
    row = {"fid": 12.5, "fid_floor": 2.38, "accuracy": 0.9, "sampler": "ddim", "steps": 50, "cfg_scale": 1.5}
    rows = [{"label": "a, seed 0", **row, "n": 1000}, {"label": "b, seed 0", **row, "n": 20},
            {"label": "c, seed 0", **row, "n": 1000}]
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "demo.json").write_text(json.dumps({"kind": "evaluations", "rows": rows}))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "c.json").write_text('{"fid": 99}')  # measured here: kept as it is
    return tmp_path, {r["label"]: r for r in rows}


def test_restore_published_writes_back_only_missing_rows_scored_at_the_same_n(published):
    root, rows = published
    done = bash('restore_published demo 1000 "a, seed 0=out/a.json" "b, seed 0=out/b.json" '
                '"c, seed 0=out/c.json" "d, seed 0=out/d.json"', root)
    assert done.returncode == 0, done.stderr
    restored = json.loads((root / "out" / "a.json").read_text())
    assert restored == {k: v for k, v in rows["a, seed 0"].items() if k != "label"}
    assert not (root / "out" / "b.json").exists()  # published at n = 20, asked at 1000: measured again
    assert json.loads((root / "out" / "c.json").read_text()) == {"fid": 99}
    assert not (root / "out" / "d.json").exists()  # never published
    assert "a, seed 0: restored" in done.stdout and "b, seed 0" not in done.stdout


@pytest.mark.parametrize("call", ['restore_published "" 1000', "RESTORE=0 restore_published demo 1000"])
def test_restore_published_without_a_name_or_with_restore_0_restores_nothing(published, call):
    root, _ = published
    done = bash(f'{call} "a, seed 0=out/a.json"', root)
    assert done.returncode == 0, done.stderr
    assert not (root / "out" / "a.json").exists()


def test_missing_is_true_while_any_file_is_absent_or_empty(tmp_path):
    (tmp_path / "full").write_text("{}")
    (tmp_path / "empty").write_text("")
    answers = {case: bash(f"missing {case}", tmp_path).returncode
               for case in ("full", "full empty", "full absent")}
    assert answers == {"full": 1, "full empty": 0, "full absent": 0}


def test_the_unclip_study_reuses_the_encoder_studys_published_sd1_runs(tmp_path):
    """Issue 47: unCLIP is compared with the encoder study's prompted SD1 ("joint") runs; on a new clone those are
    restored from docs/results/encoder_study.json, so the unCLIP study trains only the prior and the decoder."""
    repo = LIB.parents[1]
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "encoder_study.json").write_bytes(
        (repo / "docs" / "results" / "encoder_study.json").read_bytes())
    (tmp_path / "benchmarks" / "unclip_study.sh").write_bytes((repo / "benchmarks" / "unclip_study.sh").read_bytes())
    # the real helpers, with training, scoring and publishing replaced by a line saying what would run
    (tmp_path / "benchmarks" / "lib.sh").write_text(
        f"source {LIB}\nPYTHON={sys.executable}\n"
        'train_once() { echo "TRAIN $1"; }\nscore_once() { echo "SCORE $1"; }\npublish() { :; }\n')
    done = subprocess.run(["bash", "benchmarks/unclip_study.sh"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "SEEDS": "2"})
    assert done.returncode == 0, done.stderr
    for seed in (0, 1):
        restored = tmp_path / f"experiments/encoder_study/seed{seed}/sd1_unet_crossattn.json"
        assert json.loads(restored.read_text())["n"] == 1000
        assert f"TRAIN SD1, seed {seed}" not in done.stdout
        assert f"TRAIN unCLIP decoder, seed {seed}" in done.stdout and f"TRAIN unCLIP prior, seed {seed}" in done.stdout


@pytest.mark.parametrize("probe_published", [False, True])
def test_the_unclip_probe_retrains_seed_0_on_a_new_clone_only_while_its_score_is_unpublished(tmp_path,
                                                                                          probe_published):
    """The prior-guidance probe needs seed 0's prior and decoder; a new clone restores every seed's scores and
    trains nothing for them, so the probe trains seed 0 itself, unless its own row is published too."""
    repo = LIB.parents[1]
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "docs" / "results").mkdir(parents=True)
    for name in ("encoder_study", "unclip_study", "unclip_decoder"):
        (tmp_path / "docs" / "results" / f"{name}.json").write_bytes(
            (repo / "docs" / "results" / f"{name}.json").read_bytes())
    if probe_published:
        row = {"fid": 20.0, "accuracy": 0.99, "n": 1000}
        rows = [{"label": "unCLIP, prior guided at 1.5 (as configured), seed 0", **row},
                {"label": "unCLIP, prior not guided (cfg 1.0), seed 0", **row}]
        (tmp_path / "docs" / "results" / "unclip_prior_guidance.json").write_text(
            json.dumps({"kind": "evaluations", "rows": rows}))
    (tmp_path / "benchmarks" / "unclip_study.sh").write_bytes((repo / "benchmarks" / "unclip_study.sh").read_bytes())
    (tmp_path / "benchmarks" / "lib.sh").write_text(
        f"source {LIB}\nPYTHON={sys.executable}\n"
        'train_once() { echo "TRAIN $1"; }\nscore_once() { [ -s "$2" ] || echo "SCORE $1"; }\npublish() { :; }\n')
    done = subprocess.run(["bash", "benchmarks/unclip_study.sh"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert not [line for line in lines if line.startswith("TRAIN") and "seed 0" not in line]  # seeds 1, 2: restored
    trained = [line for line in lines if line.startswith(("TRAIN", "SCORE"))]
    if probe_published:
        assert trained == []
    else:
        assert trained == ["TRAIN unCLIP decoder, seed 0", "TRAIN unCLIP prior, seed 0",
                           "SCORE unCLIP, prior not guided, seed 0"]
