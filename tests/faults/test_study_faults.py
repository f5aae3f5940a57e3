"""The study's own machinery under faults: the score cache, two comparisons at once, and --publish.

Scores are filed under the digest of the bytes that were loaded (a checkpoint rewritten or deleted
mid-comparison keeps its own score); one comparison at a time per folder, and score-cache saves that
merge instead of overwriting; --publish checks and renders everything before writing, then writes
all files together; a score-cache entry or a run's config.json of the wrong shape is one line at most.

Scoring is stubbed (each model gets a FID of its own, so a score on the wrong model shows), and the
figures are skipped: the whole file runs in seconds on two tiny trained checkpoints.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from difflab import classifier as clf
from difflab.study import compare
from difflab.study.score_cache import ScoreCache
from ._support import entry_main, env, record, tiny_config, tiny_data

FID = {"a": 1.0, "b": 2.0}  # the stub's score of each model: a score on the wrong model shows


# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny checkpoints, models 'a' and 'b', trained once for the whole file."""
    from difflab.training import Trainer

    root = tmp_path_factory.mktemp("trained")
    paths = {}
    for seed, name in enumerate(("a", "b")):
        cfg = tiny_config(root, model={"attention_levels": []}, sampling={"steps": 1},
                          training={"batch_size": 8, "epochs": 1, "seed": seed})
        cfg.name = name
        Trainer(cfg, data=tiny_data(16), quiet=True).fit()
        paths[name] = root / "experiments" / name / "checkpoints" / "model_epoch_1.pt"
    return paths


def copies(trained, folder: Path) -> tuple[Path, Path]:
    """This test's own copies of the two checkpoints (a test may rewrite or delete them)."""
    out = []
    for name in ("a", "b"):
        path = folder / "experiments" / name / "checkpoints" / "model_epoch_1.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trained[name], path)
        out.append(path)
    return tuple(out)


SCORE = {"fid": 1.0, "fid_floor": 0.5, "accuracy": 0.9, "precision": 0.5, "recall": 0.5,
         "sampler": "ddim", "steps": 1, "cfg_scale": 1.0, "nfe": 1, "seconds": 0.01, "device": "cpu"}


def fake_score(pipe, classifier, n, seed=0, progress=True, **options) -> dict:
    """evaluate_pipeline's output, with a FID that names the model that was scored."""
    return {**SCORE, "fid": FID[pipe.cfg.name]}


@pytest.fixture
def stubbed(monkeypatch):
    """Scoring stubbed, figures skipped; returns the judge."""
    monkeypatch.setattr(compare, "evaluate_pipeline", fake_score)
    for figure in ("same_noise_grid", "trajectories", "loss_curves"):
        monkeypatch.setattr(compare, figure, lambda *args, **kwargs: None)
    judge = clf.MNISTClassifier().eval()
    monkeypatch.setattr(clf, "load_classifier", lambda *args, **kwargs: judge)  # for the command
    return judge


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def replace_with(path: Path, data: bytes) -> None:
    """Rewrite `path` as save_checkpoint does: a new file renamed over it."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def stored(out: Path) -> list[tuple[str, dict]]:
    """(checkpoint digest, score) of every entry of out/scores.json."""
    path = out / "scores.json"
    if not path.is_file():
        return []
    return [(json.loads(key)[0], entry) for key, entry in json.loads(path.read_text()).items()]


def compare_once(checkpoints, out, judge) -> dict:
    return compare.run_comparison(list(checkpoints), out, judge, n=4, steps_list=(), scales=())


# ------------------------------------------------------------------ 3. scores on the right checkpoint


def test_a_checkpoint_rewritten_during_a_comparison_keeps_its_own_score(trained, stubbed, tmp_path, monkeypatch):
    """Every stored score is filed under the digest of the model that earned it, however the file changed."""
    a, b = copies(trained, tmp_path)
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    earned = {sha(a_bytes): FID["a"], sha(b_bytes): FID["b"]}

    # 1. rewritten after loading, before scoring (a training run saving again while the figures are drawn)
    out1 = tmp_path / "after"
    monkeypatch.setattr(compare, "same_noise_grid", lambda *args, **kwargs: replace_with(a, b_bytes))
    compare_once([a], out1, stubbed)
    monkeypatch.setattr(compare, "same_noise_grid", lambda *args, **kwargs: None)
    then_b = compare_once([b], out1, stubbed)["rows"][0]["fid"]  # must be b's own score, not a's
    after = stored(out1)
    ok_after = bool(after) and all(earned.get(d) == e["fid"] for d, e in after) and then_b == FID["b"]

    # 2. rewritten while it loads: what loaded is not what is on disk afterwards
    replace_with(a, a_bytes)
    out2 = tmp_path / "during"
    real = compare.Pipeline.from_checkpoint
    calls = []

    def rewritten_while_loading(path, *args, **kwargs):
        pipe = real(path, *args, **kwargs)
        if not calls:
            replace_with(Path(path), b_bytes)
        calls.append(path)
        return pipe

    monkeypatch.setattr(compare.Pipeline, "from_checkpoint", rewritten_while_loading)
    row = compare_once([a], out2, stubbed)["rows"][0]
    during = stored(out2)
    ok_during = bool(during) and all(earned.get(d) == e["fid"] for d, e in during) and row["fid"] == FID[row["model"]]

    record("a checkpoint rewritten during a comparison (after loading; while loading)", 2,
           int(ok_after) + int(ok_during),
           "each score filed under the digest of the bytes that were loaded; "
           "a file changed while loading is loaded again")
    assert ok_after and ok_during, (after, then_b, during, row, calls)


def test_a_checkpoint_deleted_after_loading_is_scored_and_cached(trained, stubbed, tmp_path, monkeypatch):
    a, _ = copies(trained, tmp_path)
    digest = sha(a.read_bytes())
    monkeypatch.setattr(compare, "same_noise_grid", lambda *args, **kwargs: a.unlink())
    out = tmp_path / "results"
    row = compare_once([a], out, stubbed)["rows"][0]
    kept = stored(out)
    ok = row["fid"] == FID["a"] and [(d, e["fid"]) for d, e in kept] == [(digest, FID["a"])]
    record("a checkpoint deleted after it was loaded, before its score is saved", 1, int(ok),
           "scored, and the score cached under the digest of what was loaded")
    assert ok, (row, kept)


# ------------------------------------------------------------------ 4. one comparison at a time


HOLD = ("import fcntl, os, sys, time\n"
        "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.seek(0); f.truncate()\n"
        "f.write(str(os.getpid())); f.flush(); print('held', flush=True); time.sleep(120)\n")


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
def test_a_second_live_comparison_in_one_folder_is_refused_and_a_killed_one_leaves_no_lock(
        trained, stubbed, tmp_path, capsys):
    """A live comparison holds out/.lock as runs.lock_folder does; a second is refused, naming its pid."""
    a, _ = copies(trained, tmp_path)
    out = tmp_path / "results"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out / ".lock")], stdout=subprocess.PIPE, text=True,
                              env=env())
    argv = ["--checkpoints", a, "--out", out, "--n", "4", "--steps-list", "", "--scales", ""]
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        code = entry_main("compare_models.py", argv)
        err = capsys.readouterr().err.strip().splitlines()
        refused = (code == 1 and len(err) == 1 and f"pid {holder.pid}" in err[0] and "Traceback" not in err[0]
                   and not (out / "results.json").exists())
    finally:
        holder.kill()
        holder.wait(timeout=30)
    code_after = entry_main("compare_models.py", argv)  # the lock died with its holder
    ok = refused and code_after == 0 and (out / "results.json").is_file()
    record("a second live compare_models.py in the same --out folder; then the first is killed", 1, int(ok),
           "refused with one line naming the live run's pid, exit code 1; after the kill the folder is free")
    assert ok, (code, err, code_after)


def test_concurrent_score_cache_saves_keep_every_score(tmp_path):
    """Four writers saving into one scores.json at once: no error, no mixed file, no score lost."""
    path = tmp_path / "scores.json"
    caches = [ScoreCache(path) for _ in range(4)]  # each started before the others saved anything
    errors, start = [], threading.Barrier(len(caches))

    def writer(k: int, cache: ScoreCache) -> None:
        start.wait()
        try:
            for i in range(10):
                cache.scores[f"writer {k}, score {i}"] = SCORE
                cache.save()
        except Exception as e:  # noqa: BLE001 - the property: none at all
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=writer, args=(k, c)) for k, c in enumerate(caches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    on_disk = json.loads(path.read_text())
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    ok = not errors and len(on_disk) == 40 and not leftovers
    record("four writers saving one score cache at once (40 saves)", 1, int(ok),
           "every score kept (saves merge under a lock), no error, no temporary left")
    assert ok, (errors[:3], len(on_disk), leftovers)


# ------------------------------------------------------------------ 5. --publish: validated, then atomic


def row(model, fid, floor=2.0):
    """A study row, as compare.run_comparison writes it (one seed)."""
    return {"model": model, "params": 1_600_000, "images_seen": 60_000, "train_images_per_s": 150.0,
            "fid": fid, "fid_floor": floor, "accuracy": 0.97, "precision": 0.8, "recall": 0.8,
            "sampler": "ddim", "steps": 50, "cfg_scale": 1.5, "seconds_per_1000": 200.0}


OLD = {"rows": [row("unified_sd1_unet_eps", 6.0), row("unified_sd2_unet_v", 4.0)], "seconds": {}}
NEW = {"rows": [row("unified_sd1_unet_eps", 5.0), row("unified_sd2_unet_v", 3.0)], "seconds": {}}
BLOCK = "<!-- generated from docs/results/study.json: {} -->\nstale\n<!-- end of generated block -->\n"


def repository(root: Path) -> Path:
    """A README and two docs pages with blocks generated from docs/results/study.json (published from OLD)."""
    from difflab.study import report

    (root / "docs" / "results").mkdir(parents=True)
    (root / "README.md").write_text("# x\n" + BLOCK.format("table") + "\ntext\n" + BLOCK.format("orderings"))
    (root / "docs" / "sd2.md").write_text("# SD2\n" + BLOCK.format("effect unified_sd2_unet_v"))
    (root / "docs" / "plain.md").write_text("no blocks\n")
    report.publish(OLD, "study", root)
    return root


def snapshot(root: Path) -> dict:
    """Every file under root, by its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def publish_main(argv, capsys) -> tuple:
    """(exit code, stderr lines) of compare_models.py; an exception that escapes is a traceback."""
    capsys.readouterr()
    try:
        code = entry_main("compare_models.py", argv)
    except Exception as e:  # noqa: BLE001 - what the user would see as a traceback
        code = f"traceback: {type(e).__name__}"
    return code, capsys.readouterr().err.strip().splitlines()


def test_publish_refuses_malformed_or_incomplete_results_and_changes_no_page(tmp_path, monkeypatch, capsys):
    root = repository(tmp_path / "repo")
    monkeypatch.chdir(root)
    bad = {
        "not JSON": "{",
        "a list": "[1, 2]",
        "rows a string": json.dumps({"rows": "abc"}),
        "rows of numbers": json.dumps({"rows": [1, 2]}),
        "a row without its fields": json.dumps({"rows": [{"model": "unified_sd2_unet_v"}]}),
        "a FID that is text": json.dumps({"rows": [{**row("unified_sd1_unet_eps", 5.0), "fid": "low"},
                                                   row("unified_sd2_unet_v", 3.0)]}),
        "no row for a page's effect block": json.dumps({"rows": [row("unified_sd1_unet_eps", 5.0)], "seconds": {}}),
    }
    before = snapshot(root)
    failed = []
    for what, text in bad.items():
        results = tmp_path / "results.json"
        results.write_text(text)
        code, err = publish_main(["--publish", results, "--as", "study"], capsys)
        if not (code == 1 and len(err) == 1 and snapshot(root) == before):
            failed.append((what, code, err[-1:]))
            shutil.rmtree(root)
            repository(root)  # start the next case from the old pages
            monkeypatch.chdir(root)
    ok = len(bad) - len(failed)
    record("--publish given malformed or incomplete results (7 kinds)", len(bad), ok,
           "exit code 1, one line naming the results or the block; every page and study.json byte-identical")
    assert not failed, failed


def test_publish_as_must_be_a_plain_name(tmp_path, monkeypatch, capsys):
    root = repository(tmp_path / "outside" / "repo")
    (tmp_path / "results.json").write_text(json.dumps(NEW))
    evaluation = {k: v for k, v in row("x", 5.0).items() if k != "model"}
    (tmp_path / "eval.json").write_text(json.dumps({**evaluation, "n": 500}))  # an evaluate.py --out file
    monkeypatch.chdir(root)
    names = ["../../../x", "../x", "a/b", "..", str(tmp_path / "abs"), ""]
    before = snapshot(tmp_path)
    failed = []
    for name in names:
        for argv in (["--publish", tmp_path / "results.json"], ["--evaluations", f"x={tmp_path / 'eval.json'}"]):
            code, err = publish_main([*argv, "--as", name], capsys)
            if not (code == 2 and len(err) == 1 and snapshot(tmp_path) == before):
                failed.append((name, argv[0], code, err[-1:]))
    record("--publish/--evaluations --as a path ('../../../x', 'a/b', '..', absolute, empty)", 2 * len(names),
           2 * len(names) - len(failed), "usage error, exit code 2, one line; nothing written anywhere")
    assert not failed, failed


def test_ctrl_c_while_publishing_leaves_every_page_whole_and_all_old_or_all_new(tmp_path, monkeypatch, capsys):
    """A real SIGINT, sent right after the k-th file is opened for writing, or the k-th rename over a
    file: pages are never mixed or cut short."""
    expected_new = repository(tmp_path / "new")
    (tmp_path / "results.json").write_text(json.dumps(NEW))
    monkeypatch.chdir(expected_new)
    assert entry_main("compare_models.py", ["--publish", tmp_path / "results.json", "--as", "study"]) == 0
    new = snapshot(expected_new)
    old = snapshot(repository(tmp_path / "old"))
    assert new != old
    real_open, real_io_open, real_replace = builtins.open, io.open, os.replace
    # Ctrl-C as a user's terminal sends it: Python's own handler, even where this process was started with SIGINT
    # ignored (a background job of a non-interactive shell inherits SIG_IGN, and then no Ctrl-C arrives at all).
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    results = []
    # Three files change: study.json, README.md, docs/sd2.md. Ctrl-C after the k-th is opened to be
    # written, or after the k-th rename over one (publish may write in place, or rename temporaries).
    for when, k in [("open", 1), ("open", 2), ("open", 3), ("replace", 1), ("replace", 2)]:
        root = repository(tmp_path / f"{when}{k}")
        seen = []

        def interrupt_at(name: str) -> None:
            seen.append(name)
            if seen.count(when) == k:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, now: handled at Python's next check

        def opening(file, mode="r", *args, _root=str(root), **kwargs):
            handle = real_io_open(file, mode, *args, **kwargs)
            if any(c in mode for c in "wax") and str(file).startswith(_root):
                interrupt_at("open")
            return handle

        def replacing(src, dst, *args, _root=str(root), **kwargs):
            real_replace(src, dst, *args, **kwargs)
            if str(dst).startswith(_root):
                interrupt_at("replace")

        monkeypatch.chdir(root)
        monkeypatch.setattr(builtins, "open", opening)
        monkeypatch.setattr(io, "open", opening)
        monkeypatch.setattr(os, "replace", replacing)
        try:
            code, _ = publish_main(["--publish", tmp_path / "results.json", "--as", "study"], capsys)
        except KeyboardInterrupt:  # escaped everything: as bad as a traceback
            code = "KeyboardInterrupt escaped"
        finally:
            monkeypatch.setattr(builtins, "open", real_open)
            monkeypatch.setattr(io, "open", real_io_open)
            monkeypatch.setattr(os, "replace", real_replace)
        now = snapshot(root)
        whole = now in (old, new)  # also: no temporary left, no page cut short
        results.append((when, k, code, whole, [n for n in now if old.get(n) != now[n] and new.get(n) != now[n]]))
    signal.signal(signal.SIGINT, previous_handler)
    ok = sum(1 for _, _, code, whole, _ in results if code == 130 and whole)
    record("Ctrl-C while --publish writes (after the 1st-3rd file opened, after the 1st-2nd rename)", len(results),
           ok, "exit code 130; every page and study.json all old or all new, each whole with its block markers")
    assert ok == len(results), results


# ------------------------------------------------------------------ 7. files of the wrong shape


def test_a_score_cache_entry_of_the_wrong_type_is_scored_again(trained, stubbed, tmp_path):
    a, _ = copies(trained, tmp_path)
    pipes, _ = compare.load_pipelines([a], "cpu")
    key = ScoreCache(None).key(pipes["a"], stubbed, n=4, seed=0)
    good = fake_score(pipes["a"], stubbed, 4)
    poisons = {
        "a list": [1, 2],
        "an entry that is a string": {key: "fast"},
        "an entry that is a list": {key: [1, 2]},
        "an entry that is null": {key: None},
        "an entry without its fields": {key: {}},
        "an entry with a FID that is text": {key: {**good, "fid": "low"}},
        "an entry with accuracy a dict": {key: {**good, "accuracy": {"x": 1}}},
    }
    failed = []
    for what, content in poisons.items():
        out = tmp_path / what.replace(" ", "_")
        out.mkdir()
        (out / "scores.json").write_text(json.dumps(content))
        try:
            fid = compare_once([a], out, stubbed)["rows"][0]["fid"]
        except Exception as e:  # noqa: BLE001 - a traceback for the user
            fid = f"{type(e).__name__}: {e}"
        rescored = fid == FID["a"] and json.loads((out / "scores.json").read_text()).get(key) == good
        if not rescored:
            failed.append((what, fid))
    record("a score-cache (scores.json) entry of the wrong type (7 kinds)", len(poisons), len(poisons) - len(failed),
           "ignored and scored again, then rewritten; never a traceback")
    assert not failed, failed


def test_a_run_folder_whose_config_json_is_broken_is_skipped_with_a_warning(trained, tmp_path, capsys):
    experiments = tmp_path / "experiments"
    broken = {"cut": "{", "list": "[]", "model_a_string": json.dumps({"model": "vae"}),
              "deep": "[" * 100_000 + "]" * 100_000}
    for name in [*broken, "good"]:
        (experiments / name / "checkpoints").mkdir(parents=True)
        shutil.copyfile(trained["a"], experiments / name / "checkpoints" / "last.pt")
        good = json.dumps({"model": {"architecture": "unet"}})
        (experiments / name / "config.json").write_text(broken.get(name, good))
    capsys.readouterr()
    try:
        found = compare.newest_checkpoints(experiments)
    except Exception as e:  # noqa: BLE001 - a traceback for the user
        found = f"{type(e).__name__}"
    err = capsys.readouterr().err.strip().splitlines()
    warned = len(err) == len(broken) and all(f"{name}/config.json" in line and line.startswith("warning:")
                                             for name, line in zip(sorted(broken), err))
    ok = found == [experiments / "good" / "checkpoints" / "last.pt"] and warned
    record("a run folder whose config.json is '{', a list, a config without its model section, or 100,000 levels deep",
           len(broken), len(broken) * int(ok), "left out of the comparison with one warning line naming the file")
    assert ok, (found, err)
