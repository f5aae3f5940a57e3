"""Files someone else wrote, built to hurt: each is refused in one line, quickly, without opening
anything the file points at outside the user's own folders.

A checkpoint whose config shares one list along 40 levels (2^40 nodes for anything that walks it);
checkpoints and exports whose parts have the wrong type or dtype; an .npz whose header claims 10^12
elements; a classifier cache of the wrong type; a latent model's config pointing its VAE, or its
data folder, anywhere. What could hang or fill the memory runs in a child process with a timeout
and bounded memory (the original code walked the shared lists for hours).
"""

import json
import os
import resource
import subprocess
import sys
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.infra.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from difflab.config import ConfigError
from difflab.data import DataError
from difflab.pipeline import Pipeline

from ._support import ROOT, TESTS, entry_main, needs_mnist, quick_trainer, record, tiny_config, tiny_data, tiny_yaml

CHILD_TIMEOUT_S = 90


def shared_lists(depth: int = 40) -> list:
    """A list of two references to one list of two references to ...: 2^depth nodes to a walk, a few
    hundred bytes pickled (the pickle's memo keeps each list once)."""
    node: list = []
    for _ in range(depth):
        node = [node, node]
    return node


def limited_memory(gib: float):
    """A preexec_fn: the child may map at most `gib` GiB, so a blow-up ends in MemoryError, not swapping."""
    def apply():
        size = int(gib * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    return apply


CHILD = """
import contextlib, io, json, sys, time
sys.path[:0] = [{src!r}, {tests!r}]
from faults._support import entry_main
from difflab.commands.common import run_main
from difflab.infra.checkpoint import CheckpointError, load_checkpoint
from difflab.pipeline import Pipeline

def library(call):
    try:
        call()
    except (CheckpointError, ValueError) as e:
        sys.stderr.write("error: " + str(e) + "\\n")
        return 1
    return 0

def export(argv):
    from difflab.commands import export
    return run_main(lambda: export.main(argv))

calls = {calls}
for name, call in calls:
    err, start = io.StringIO(), time.monotonic()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = call()
        except BaseException as e:  # a traceback: what the user would have seen
            code, _ = "uncaught " + type(e).__name__, err.write("Traceback " + str(e)[:200])
    print(json.dumps([name, code, err.getvalue()[-2000:], round(time.monotonic() - start, 2)]), flush=True)
"""


def run_child(calls: str, tmp_path: Path) -> dict:
    """Run `calls` (Python source: a list of (name, callable)) in a child process with bounded time and
    memory; {name: (exit code, stderr, seconds)} of those that finished."""
    code = CHILD.format(src=str(ROOT / "src"), tests=str(TESTS), calls=calls)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT_S, preexec_fn=limited_memory(4))
        out = done.stdout
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    results = {}
    for line in out.splitlines():
        if line.startswith("["):
            name, code, err, seconds = json.loads(line)
            results[name] = (code, err, seconds)
    return results


def clean_refusal(result) -> bool:
    """Exit code 1 within 20 s, no traceback, the error in one short line (the last; compare_models.py
    says which checkpoints it compares before it)."""
    if result is None:
        return False
    code, err, seconds = result
    lines = err.strip().splitlines()
    return (code == 1 and lines and lines[-1].startswith("error: ") and len(lines[-1]) < 600
            and not any("error" in line for line in lines[:-1]) and "Traceback" not in err and seconds < 20)


def refused_in_one_line(call, *errors) -> tuple[bool, str]:
    """(refused with a one-line project error, the message or what happened instead)."""
    try:
        call()
    except (CheckpointError, ConfigError, DataError, *errors) as e:
        message = str(e)
        return "\n" not in message and len(message) < 600, message
    except Exception as e:  # a traceback for the user
        return False, f"{type(e).__name__}: {str(e)[:200]}"
    return False, "loaded without complaint"


def entry_refuses(name: str, argv: list, capsys) -> tuple[bool, str]:
    """`python NAME ARGV` in this process: exit code 1 and one line on stderr."""
    try:
        code = entry_main(name, argv)
    except Exception as e:
        capsys.readouterr()
        return False, f"traceback: {type(e).__name__}: {str(e)[:200]}"
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    return code == 1 and len(lines) == 1 and "Traceback" not in err, err


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """(a trainer, its last.pt, the folder): a tiny trained run to take broken copies of."""
    tmp = tmp_path_factory.mktemp("hostile")
    trainer = quick_trainer(tmp)
    trainer.fit(stop_after=1)
    return trainer, trainer.out_dir / "checkpoints" / "last.pt", tmp


def variant(good_path: Path, out: Path, change, digest: bool = True) -> Path:
    """A copy of a good checkpoint with `change(state)` applied; its SHA-256 valid when `digest`."""
    state = load_checkpoint(good_path)
    change(state)
    if digest:
        return save_checkpoint(state, out)
    torch.save(state, out)
    return out


# --------------------------------------------------------------------------- 1. shared references


@needs_mnist
@pytest.mark.parametrize("digest", [True, False], ids=["with a digest", "without a digest"])
def test_a_checkpoint_of_shared_lists_is_refused_at_once_by_every_loader(good, tmp_path, digest):
    """A 40-level tower of shared lists in the config: with a digest the original code hashed it for hours
    before comparing; without one, the config's error message repr()ed it. Both must be one line, fast."""
    _, good_path, _ = good
    path = tmp_path / "bomb.pt"

    def plant(state):
        state["config"]["model"]["channel_mult"] = shared_lists()
        if digest:
            state["sha256"] = "0" * 64  # any digest: the walk that computes the real one is the hang

    variant(good_path, path, plant, digest=False)
    assert path.stat().st_size < good_path.stat().st_size + 16 * 1024  # a few hundred bytes more than the good file
    yaml_path = tiny_yaml(tmp_path)
    calls = f"""[
        ("load_checkpoint", lambda: library(lambda: load_checkpoint({str(path)!r}))),
        ("Pipeline.from_checkpoint (the demo, compare)",
         lambda: library(lambda: Pipeline.from_checkpoint({str(path)!r}, "cpu"))),
        ("sample.py", lambda: entry_main("sample.py", ["--checkpoint", {str(path)!r}, "--device", "cpu",
                                                      "--out", {str(tmp_path / "s.png")!r}])),
        ("evaluate.py", lambda: entry_main("evaluate.py", ["--checkpoint", {str(path)!r}, "--n", "10",
                                                          "--device", "cpu"])),
        ("train.py --resume", lambda: entry_main("train.py", ["--config", {str(yaml_path)!r},
                                                             "--resume", {str(path)!r}])),
        ("compare_models.py", lambda: entry_main("compare_models.py", ["--checkpoints", {str(path)!r}, "--n", "10",
                                                                       "--out", {str(tmp_path / "cmp")!r}])),
        ("difflab export", lambda: export(["--checkpoint", {str(path)!r},
                                           "--out", {str(tmp_path / "x.safetensors")!r}])),
    ]"""
    results = run_child(calls, tmp_path)
    names = ["load_checkpoint", "Pipeline.from_checkpoint (the demo, compare)", "sample.py", "evaluate.py",
             "train.py --resume", "compare_models.py", "difflab export"]
    clean = {name: clean_refusal(results.get(name)) for name in names}
    which = "with" if digest else "without"
    record(f"checkpoint of shared lists 40 levels deep ({which} a digest): library, sample.py, evaluate.py, "
           f"--resume, compare, export", len(clean), sum(clean.values()),
           "exit code 1, one line within a second (before: hours hashing or a huge repr)")
    assert all(clean.values()), {name: results.get(name, "did not finish") for name in names}


# --------------------------------------------------------------------------- 7. parts of the wrong type


def test_checkpoint_parts_of_the_wrong_type_are_refused_in_one_line(good, tmp_path, capsys):
    trainer, good_path, _ = good
    changes = {
        "model a list": lambda s: s.update(model=[1, 2, 3]),
        "ema a string": lambda s: s.update(ema="not weights"),
        "model holding a non-tensor": lambda s: s["model"].update({next(iter(s["model"])): [0.5]}),
        "config a list": lambda s: s.update(config=["unet"]),
    }
    results = {}
    for name, change in changes.items():
        path = variant(good_path, tmp_path / f"{name.replace(' ', '_')}.pt", change)
        for how, call in [("sample", lambda: Pipeline.from_checkpoint(path, "cpu")),
                          ("resume", lambda: trainer.load_state(path))]:
            results[f"{name}, {how}"] = refused_in_one_line(call)
        results[f"{name}, sample.py"] = entry_refuses(
            "sample.py", ["--checkpoint", path, "--device", "cpu", "--out", tmp_path / "s.png"], capsys)
    ok = {k: v[0] for k, v in results.items()}
    record("checkpoint with model a list, ema a string, a non-tensor weight, config a list: sample, resume, "
           "sample.py", len(ok), sum(ok.values()), "one line naming the key and what it holds; exit code 1")
    assert all(ok.values()), {k: v for k, v in results.items() if not v[0]}


def rewrite_metadata(export: Path, out: Path, metadata: str) -> Path:
    """A copy of a .safetensors export with its difflab metadata replaced by `metadata`."""
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(export)), str(out), metadata={"difflab": metadata})
    return out


def test_safetensors_metadata_that_is_not_an_object_is_refused_in_one_line(good, tmp_path, capsys):
    from difflab.infra.weights import export_safetensors

    _, good_path, _ = good
    export = export_safetensors(load_checkpoint(good_path), tmp_path / "good.safetensors")
    results = {}
    for i, text in enumerate(["[1, 2, 3]", "42", "null", '"a string"', "[" * 100_000 + "]" * 100_000]):
        path = rewrite_metadata(export, tmp_path / f"meta_{i}.safetensors", text)
        results[text[:12]] = refused_in_one_line(lambda: Pipeline.from_checkpoint(path, "cpu"))
        if i == 0:
            results["sample.py"] = entry_refuses(
                "sample.py", ["--checkpoint", path, "--device", "cpu", "--out", tmp_path / "s.png"], capsys)
    ok = {k: v[0] for k, v in results.items()}
    record("safetensors export whose metadata is valid JSON but not an object (list, number, null, string, "
           "100,000 levels deep)", len(ok), sum(ok.values()), "one line; sample.py exit code 1")
    assert all(ok.values()), {k: v for k, v in results.items() if not v[0]}


def npz_claiming(path: Path, shape: tuple) -> Path:
    """An .npz whose x_train header claims `shape` but holds 1 KB; the other arrays are right."""
    from numpy.lib import format as npy

    with zipfile.ZipFile(path, "w") as z:
        with z.open("x_train.npy", "w") as f:
            npy.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
            f.write(b"\0" * 1024)
        for key, n in [("y_train", 60000), ("x_test", 10000), ("y_test", 10000)]:
            with z.open(f"{key}.npy", "w") as f:
                np.lib.format.write_array(f, np.zeros((n, 28, 28) if key[0] == "x" else n, np.uint8))
    return path


NPZ_CHILD = """
import sys
sys.path.insert(0, {src!r})
from difflab.data import DataError, load_arrays
try:
    load_arrays("mnist", {folder!r})
except DataError as e:
    print("refused: " + str(e))
"""


def test_an_npz_whose_header_claims_a_terabyte_is_refused_before_reading(tmp_path):
    """np.load allocates what the header claims before reading the data: 10^12 bytes here. Run in a child
    with 2 GiB of address space, so that the original code's allocation fails there and not here."""
    results = {}
    for name, shape in [("10^12 elements", (1_275_510_205, 28, 28)), ("2^63 elements", (2**61, 2, 2)),
                        ("60000 x 28 x 29", (60000, 28, 29))]:
        folder = tmp_path / name.replace(" ", "_").replace("^", "")
        folder.mkdir()
        npz_claiming(folder / "mnist.npz", shape)
        done = subprocess.run([sys.executable, "-c", NPZ_CHILD.format(src=str(ROOT / "src"), folder=str(folder))],
                              capture_output=True, text=True, timeout=60, preexec_fn=limited_memory(2))
        lines = done.stdout.strip().splitlines()
        refused = (done.returncode == 0 and not done.stderr and len(lines) == 1
                   and lines[0].startswith("refused: ") and "setup_mnist.py" in lines[0])
        results[name] = (refused, done.stdout + done.stderr[-500:])
    ok = {k: v[0] for k, v in results.items()}
    record("MNIST .npz whose header claims 10^12 (or 2^63) elements, or the wrong shape", len(ok), sum(ok.values()),
           "one line naming the array, its claimed shape and setup_mnist.py; nothing allocated")
    assert all(ok.values()), results


@pytest.fixture
def classifier_cache(tmp_path):
    """(data folder, weights file, metadata file, the metadata): a valid cache of an untrained classifier."""
    from difflab import classifier as clf

    weights, meta_path = clf.classifier_paths(tmp_path)
    clf._save_classifier(clf.MNISTClassifier(), weights, meta_path, {"settings": asdict(clf.TrainSettings())})
    return tmp_path, weights, meta_path, json.loads(meta_path.read_text())


def test_a_classifier_cache_of_the_wrong_type_is_not_used(classifier_cache):
    from difflab import classifier as clf
    from difflab.data import sha256_file

    data_dir, weights, meta_path, meta = classifier_cache
    good = {k: v.clone() for k, v in torch.load(weights, weights_only=True).items()}

    def weights_file(content):
        def apply():
            torch.save(content, weights)
            meta_path.write_text(json.dumps({**meta, "sha256": sha256_file(weights)}))  # the hash matches
        return apply

    cases = {
        "metadata a list": lambda: meta_path.write_text("[1, 2]"),
        "metadata a string": lambda: meta_path.write_text('"cache"'),
        "metadata 100,000 levels deep": lambda: meta_path.write_text("[" * 100_000 + "]" * 100_000),
        "weights a list": weights_file([1, 2, 3]),
        "weights as int8": weights_file({k: v.to(torch.int8) if v.is_floating_point() else v for k, v in good.items()}),
    }
    results = {}
    for name, corrupt in cases.items():
        corrupt()
        results[name] = refused_in_one_line(lambda: clf.load_classifier(data_dir, train_if_missing=False),
                                            FileNotFoundError)
        torch.save(good, weights)  # back to the good cache for the next case
        meta_path.write_text(json.dumps({**meta, "sha256": sha256_file(weights)}))
    clf.load_classifier(data_dir, train_if_missing=False)  # the restored cache loads
    ok = {k: v[0] for k, v in results.items()}
    record("classifier cache of the wrong type (metadata not an object, weights a list or int8)", len(ok),
           sum(ok.values()), "not used: one line saying why (evaluate.py trains a new one)")
    assert all(ok.values()), results


# --------------------------------------------------------------------------- 8. dtypes


def test_weights_of_a_dtype_the_model_cannot_hold_are_refused_naming_the_tensor(good, tmp_path, capsys):
    """int8 weights were cast to float and sampled noise at exit code 0; bool and float64 were cast too."""
    from difflab.infra.weights import export_safetensors

    trainer, good_path, _ = good
    results = {}
    for dtype in (torch.int8, torch.bool, torch.float64, torch.int64):
        def cast(state, dtype=dtype):
            for key in ("model", "ema"):
                state[key] = {k: v.to(dtype) for k, v in state[key].items()}

        path = variant(good_path, tmp_path / f"{dtype}.pt", cast)
        name = str(dtype).removeprefix("torch.")
        results[f"{name} .pt, sample"] = refused_in_one_line(lambda: Pipeline.from_checkpoint(path, "cpu"))
        results[f"{name} .pt, raw weights"] = refused_in_one_line(
            lambda: Pipeline.from_checkpoint(path, "cpu", use_ema=False))
        results[f"{name} .pt, resume"] = refused_in_one_line(lambda: trainer.load_state(path))
        export = export_safetensors(load_checkpoint(path), tmp_path / f"{name}.safetensors")
        results[f"{name} .safetensors"] = refused_in_one_line(lambda: Pipeline.from_checkpoint(export, "cpu"))
        for key in [k for k in results if k.startswith(name)]:
            ok, message = results[key]
            results[key] = (ok and name in message and "tensor" in message, message)
    path = tmp_path / "torch.int8.pt"
    results["int8, sample.py"] = entry_refuses("sample.py", ["--checkpoint", path, "--device", "cpu",
                                                             "--out", tmp_path / "s.png"], capsys)
    ok = {k: v[0] for k, v in results.items()}
    record("weights stored as int8, bool, float64 or int64 (.pt to sample and resume, .safetensors, sample.py)",
           len(ok), sum(ok.values()), "one line naming the tensor and its dtype; exit code 1; nothing sampled")
    assert all(ok.values()), {k: v for k, v in results.items() if not v[0]}
    assert not (tmp_path / "s.png").exists()


def test_half_precision_weights_still_load(good, tmp_path):
    """float16 and bfloat16 hold the same weights, rounded: they load into the float32 model."""
    _, good_path, _ = good
    for dtype in (torch.float16, torch.bfloat16):
        path = variant(good_path, tmp_path / f"{dtype}.pt",
                       lambda s: s.update(ema={k: v.to(dtype) for k, v in s["ema"].items()}))
        pipe = Pipeline.from_checkpoint(path, "cpu")
        assert next(pipe.model.parameters()).dtype == torch.float32


# --------------------------------------------------------------------------- 9. paths chosen by the file


@pytest.fixture(scope="module")
def latent_runs(tmp_path_factory):
    """(ldm checkpoint, its state, the VAE's file): a tiny VAE and a latent model trained on its latents,
    each in its own folder (as a VAE from somewhere else would be)."""
    from difflab.training import Trainer
    from difflab.vae_training import VAETrainer

    tmp = tmp_path_factory.mktemp("latent")
    vae_cfg = tiny_config(tmp / "a", model={"architecture": "vae", "channels": 8, "channel_mult": [1, 2, 2],
                                            "latent_channels": 4}, training={"epochs": 1, "batch_size": 16})
    vae = VAETrainer(vae_cfg, data=tiny_data(32), quiet=True)
    vae.fit()
    vae_file = vae.out_dir / "checkpoints" / "last.pt"
    cfg = tiny_config(tmp / "b", data={"vae_checkpoint": str(vae_file)},
                      model={"channels": 16, "channel_mult": [1], "attention_levels": [], "num_heads": 2})
    ldm = Trainer(cfg, data=(torch.randn(16, 4, 7, 7), torch.arange(16) % 10), quiet=True).save("last.pt")
    return ldm, load_checkpoint(ldm), vae_file


def with_vae(latent_runs, out: Path, stored: str) -> Path:
    """The latent model's checkpoint, saved at `out` with data.vae_checkpoint set to `stored`."""
    _, state, _ = latent_runs
    state = {**state, "config": {**state["config"], "data": {**state["config"]["data"], "vae_checkpoint": stored}}}
    return save_checkpoint(state, out)


def test_a_checkpoint_cannot_make_the_reader_open_files_outside_its_folders(latent_runs, tmp_path):
    """The VAE a checkpoint names is looked for in the user's folders only; whether a file exists
    outside them, and what it is, never shows in the message."""
    ldm, _, real_vae = latent_runs
    run = tmp_path / "experiments" / "ldm" / "checkpoints"
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.pt"
    link = tmp_path / "experiments" / "linked" / "checkpoints"
    link.mkdir(parents=True)
    (link / "last.pt").symlink_to(secret)  # inside the run's folder, pointing out of it
    results = {}

    def attempt(stored):
        return refused_in_one_line(lambda: Pipeline.from_checkpoint(with_vae(latent_runs, run / "last.pt", stored),
                                                                    "cpu"))

    torch.save({"anything": torch.zeros(2)}, secret)  # a foreign .pt outside the user's folders
    present = {stored: attempt(stored) for stored in (str(secret), "../../../outside/secret.pt", str(link / "last.pt"))}
    secret.unlink()
    absent = {stored: attempt(stored) for stored in present}
    for stored in present:
        same = present[stored][1] == absent[stored][1]  # the message says nothing about the file
        results[f"{stored[-40:]} (exists and missing)"] = (present[stored][0] and absent[stored][0] and same,
                                                           f"{present[stored][1]} | {absent[stored][1]}")
    for stored in ("/etc/passwd", "/dev/zero", str(real_vae)):  # not a checkpoint name; a real VAE elsewhere
        ok, message = attempt(stored)
        results[stored[-40:]] = (ok and "PyTorch" not in message and "not a difflab" not in message, message)
    ok = {k: v[0] for k, v in results.items()}
    record("checkpoint whose data.vae_checkpoint points outside the user's folders (absolute, ../, a symlink, "
           "/etc/passwd, /dev/zero, a real VAE elsewhere)", len(ok), sum(ok.values()),
           "one line, the same whether the file exists or not; nothing outside is opened")
    assert all(ok.values()), {k: v for k, v in results.items() if not v[0]}


def test_a_checkpoints_vae_is_found_in_its_own_run_folder(latent_runs, tmp_path):
    """The usual cases still work: the VAE beside the latent run, by its absolute path, and after the
    whole experiments folder was moved (the stored path is stale; its last three parts still fit)."""
    import shutil

    _, _, real_vae = latent_runs
    experiments = tmp_path / "experiments"
    vae_copy = experiments / "vae_run" / "checkpoints" / "last.pt"
    vae_copy.parent.mkdir(parents=True)
    shutil.copy(real_vae, vae_copy)
    ldm_path = experiments / "ldm" / "checkpoints" / "last.pt"
    for stored in (str(vae_copy), "/machine/that/trained/it/experiments/vae_run/checkpoints/last.pt"):
        pipe = Pipeline.from_checkpoint(with_vae(latent_runs, ldm_path, stored), "cpu")
        assert pipe.vae is not None and Path(pipe.cfg.data.vae_checkpoint) == vae_copy.resolve()


def test_a_checkpoints_data_folder_is_not_used(good, tmp_path, monkeypatch, capsys):
    """evaluate.py reads the data, and trains and writes the classifier cache, in the data folder: the
    user's ($DIFFLAB_DATA here, else ./data), never one a checkpoint names."""
    _, good_path, _ = good
    theirs, mine = tmp_path / "theirs", tmp_path / "mine"
    theirs.mkdir()
    mine.mkdir()
    path = variant(good_path, tmp_path / "data_dir.pt", lambda s: s["config"]["data"].update(data_dir=str(theirs)))
    monkeypatch.setenv("DIFFLAB_DATA", str(mine))
    code = entry_main("evaluate.py", ["--checkpoint", path, "--n", "10", "--steps", "1", "--device", "cpu"])
    err = capsys.readouterr().err  # no MNIST in either folder: the error names the folder it looked in
    last = err.strip().splitlines()[-1]  # (before it: the classifier's progress, which evaluate.py sends to stderr)
    used_mine = (code == 1 and "Traceback" not in err and last.startswith("error: ") and str(mine) in last
                 and str(theirs) not in err and not list(theirs.iterdir()))
    from difflab import classifier as clf

    escape = refused_in_one_line(lambda: clf.classifier_paths(tmp_path, "../../escape"))
    results = {"evaluate.py with data.data_dir set by the checkpoint": (used_mine, err),
               "a dataset name that climbs out of the data folder": escape}
    ok = {k: v[0] for k, v in results.items()}
    record("checkpoint whose data.data_dir (or dataset name) points elsewhere: evaluate.py", len(ok), sum(ok.values()),
           "the user's data folder is used; the checkpoint's is never read or written")
    assert all(ok.values()), results


SAMPLES_CHILD = """
import sys
sys.path[:0] = [{src!r}, {tests!r}]
from faults._support import entry_main
sys.exit(entry_main("evaluate.py", ["--samples", {path!r}]))
"""


def test_evaluate_samples_whose_header_claims_a_terabyte_is_refused_before_reading(tmp_path):
    """`evaluate.py --samples FILE.npz` reads a file someone may have handed over: its headers are
    checked (dtype, shape, at most evaluate.py's 10,000 images) before numpy allocates what they claim."""
    from numpy.lib import format as npy

    results = {}
    for name, shape in [("10^12 elements", (1_275_510_205, 28, 28)), ("2^63 elements", (2**61, 2, 2)),
                        ("10,001 images", (10_001, 28, 28))]:
        path = tmp_path / f"{name.replace(' ', '_').replace('^', '').replace(',', '')}.npz"
        with zipfile.ZipFile(path, "w") as z:
            with z.open("x.npy", "w") as f:
                npy.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
                f.write(b"\0" * 1024)
            with z.open("y.npy", "w") as f:
                npy.write_array(f, np.zeros(8, np.int64))
        done = subprocess.run([sys.executable, "-c", SAMPLES_CHILD.format(src=str(ROOT / "src"), tests=str(TESTS),
                                                                          path=str(path))],
                              capture_output=True, text=True, timeout=60, preexec_fn=limited_memory(2))
        lines = done.stderr.strip().splitlines()
        refused = (done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: --samples: x claims")
                   and "Traceback" not in done.stderr)
        results[name] = (refused, done.stderr[-500:])
    ok = {k: v[0] for k, v in results.items()}
    record("`evaluate.py --samples` .npz whose header claims 10^12 (or 2^63) elements, or over 10,000 images",
           len(ok), sum(ok.values()), "exit code 1, one line naming the claimed shape and the bound; nothing allocated")
    assert all(ok.values()), results


def test_the_studys_latent_model_finds_the_vae_its_config_names_from_the_folder_it_runs_in(latent_runs, tmp_path,
                                                                                          monkeypatch):
    """`make compare-all` trains the latent model in experiments/compare/ and its VAE where the config says,
    experiments/vae_mnist/ (relative to the folder the command runs in): a folder of the user's own."""
    import shutil

    _, _, real_vae = latent_runs
    monkeypatch.chdir(tmp_path)
    vae_copy = tmp_path / "experiments" / "vae_mnist" / "checkpoints" / "last.pt"
    vae_copy.parent.mkdir(parents=True)
    shutil.copy(real_vae, vae_copy)
    ldm_path = tmp_path / "experiments" / "compare" / "ldm_latent" / "checkpoints" / "model_epoch_1.pt"
    pipe = Pipeline.from_checkpoint(with_vae(latent_runs, ldm_path, "experiments/vae_mnist/checkpoints/last.pt"), "cpu")
    assert pipe.vae is not None and Path(pipe.cfg.data.vae_checkpoint) == vae_copy.resolve()
