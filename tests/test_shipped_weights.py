"""The weights shipped in weights/ (weights/README.md): the files SHA256SUMS names, each loading as its milestone and
sampling; sample.py and the demo use them when nothing is named (a fresh clone, before any training)."""

import hashlib
from pathlib import Path

import pytest
import torch

from difflab.config import load_config
from difflab.infra.checkpoint import load_checkpoint
from difflab.infra.weights import SHIPPED, WEIGHTS_DIR, checkpoint_path
from difflab.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]
SUMS = dict(reversed(line.split()) for line in (WEIGHTS_DIR / "SHA256SUMS").read_text().splitlines())


def test_every_shipped_model_is_in_the_sums_and_the_files_are_what_they_say():
    assert sorted(SUMS) == sorted(SHIPPED.values())
    for file, digest in SUMS.items():
        assert hashlib.sha256((WEIGHTS_DIR / file).read_bytes()).hexdigest() == digest, file


@pytest.mark.parametrize("name", list(SHIPPED))
def test_a_shipped_model_is_float16_its_milestone_and_samples(name):
    path = checkpoint_path(name)
    state = load_checkpoint(path)
    assert path.stat().st_size < 4 * 2**20  # a few MB: float16 EMA weights, nothing to resume
    assert all(v.dtype == torch.float16 for v in state["model"].values() if v.is_floating_point())
    config, = (ROOT / "configs").rglob(f"{state['config']['name']}.yaml")  # trained from a config as it is now
    pipe = Pipeline.from_checkpoint(path, "cpu")
    assert pipe.cfg.model == load_config(config).model and pipe.cfg.diffusion == load_config(config).diffusion
    images = pipe.generate(torch.tensor([3, 7]), steps=4, seed=0).images
    assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all() and images.std() > 0.1


def test_sample_py_with_no_checkpoint_draws_from_the_shipped_sd1(tmp_path, capsys):
    from difflab.commands.sample import main

    out = tmp_path / "grid.png"
    assert main(["--digits", "3", "--n", "2", "--steps", "3", "--device", "cpu", "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and "2 images" in capsys.readouterr().out


def test_the_demo_with_no_model_named_serves_every_shipped_one(monkeypatch):
    pytest.importorskip("gradio")
    from difflab.commands import demo
    from difflab.demo import page

    served = {}
    monkeypatch.setattr(page, "launch", lambda models, host, port: served.update(models))
    assert demo.main(["--device", "cpu"]) == 0
    assert len(served) == len(SHIPPED)
