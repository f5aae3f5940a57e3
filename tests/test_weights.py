"""safetensors exports (weights.py): exact round trip, the same images, refusals with one line."""

import pytest
import torch

from conftest import tiny_config, tiny_data
from difflab.infra.checkpoint import CheckpointError, load_checkpoint
from difflab.pipeline import Pipeline
from difflab.training import Trainer
from difflab.infra.weights import export_safetensors


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("export"), training={"max_steps": 4})
    trainer = Trainer(cfg, data=tiny_data(64), quiet=True)
    trainer.fit()
    return trainer.out_dir / "checkpoints" / "last.pt"


def test_an_export_holds_the_ema_weights_exactly_and_samples_the_same_images(checkpoint, tmp_path):
    state = load_checkpoint(checkpoint)
    out = export_safetensors(state, tmp_path / "tiny.safetensors")
    back = load_checkpoint(out)
    assert back["config"] == state["config"] and back["exported"] == "ema" and back["step"] == state["step"]
    assert back["model"].keys() == state["ema"].keys()
    for k, v in state["ema"].items():
        assert torch.equal(back["model"][k], v), k
    assert not all(torch.equal(state["model"][k], v) for k, v in state["ema"].items())  # EMA, not the raw weights
    labels = torch.arange(4)
    a = Pipeline.from_checkpoint(checkpoint, "cpu").generate(labels, steps=3, seed=1).images
    b = Pipeline.from_checkpoint(out, "cpu").generate(labels, steps=3, seed=1).images
    assert torch.equal(a, b)


def test_an_export_whose_tensors_do_not_fit_its_config_is_refused(checkpoint, tmp_path):
    state = load_checkpoint(checkpoint)
    state["config"]["model"]["channels"] = 16  # the weights are an 8-channel U-Net's
    out = export_safetensors(state, tmp_path / "wrong.safetensors")
    with pytest.raises(CheckpointError, match="do not match the architecture in its config"):
        Pipeline.from_checkpoint(out, "cpu")


def test_a_damaged_or_foreign_safetensors_file_is_refused_in_one_line(checkpoint, tmp_path):
    from safetensors.torch import save_file

    out = export_safetensors(load_checkpoint(checkpoint), tmp_path / "tiny.safetensors")
    data = bytearray(out.read_bytes())
    data[-3] ^= 0xFF  # a flipped byte in the last tensor
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match their SHA-256"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="without difflab's metadata"):
        load_checkpoint(foreign)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path / "junk.safetensors")


def test_an_export_cannot_be_resumed(checkpoint, tmp_path):
    out = export_safetensors(load_checkpoint(checkpoint), tmp_path / "tiny.safetensors")
    cfg = tiny_config(tmp_path, training={"max_steps": 4})
    trainer = Trainer(cfg, data=tiny_data(64), quiet=True)
    with pytest.raises(CheckpointError, match="optimizer"):
        trainer.load_state(out)


def test_the_export_command_writes_beside_the_checkpoint(checkpoint, capsys):
    from difflab.commands.export import main

    assert main(["--checkpoint", str(checkpoint)]) == 0
    out = checkpoint.with_suffix(".safetensors")
    assert str(out) in capsys.readouterr().out
    assert load_checkpoint(out)["config"] == load_checkpoint(checkpoint)["config"]  # readable back


def test_a_float16_export_is_half_the_size_and_loads_into_the_float32_model(checkpoint, tmp_path):
    state = load_checkpoint(checkpoint)
    full = export_safetensors(state, tmp_path / "full.safetensors")
    half = export_safetensors(state, tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    back = load_checkpoint(half)
    for k, v in state["ema"].items():
        assert back["model"][k].dtype == torch.float16
        assert torch.allclose(back["model"][k].float(), v, rtol=1e-3, atol=1e-4), k  # float16: 11 significant bits
    pipe = Pipeline.from_checkpoint(half, "cpu")
    assert all(p.dtype == torch.float32 for p in pipe.model.parameters())
    labels = torch.arange(4)
    a = Pipeline.from_checkpoint(full, "cpu").generate(labels, steps=3, seed=1).images
    b = pipe.generate(labels, steps=3, seed=1).images
    assert (a - b).abs().max() < 0.05  # rounding the weights moves the pixels by little


def test_a_value_beyond_float16_is_refused_rather_than_shipped_as_inf(checkpoint, tmp_path):
    state = load_checkpoint(checkpoint)
    name = next(iter(state["ema"]))
    state["ema"] = {**state["ema"], name: state["ema"][name] + 1e6}
    with pytest.raises(CheckpointError, match="beyond float16's range"):
        export_safetensors(state, tmp_path / "half.safetensors", half=True)
    assert not (tmp_path / "half.safetensors").exists()
