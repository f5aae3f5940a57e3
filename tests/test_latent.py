"""Latent diffusion: the VAE round-trips, its scale factor whitens the latents, both stages run end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_config, tiny_data
from faults._support import entry_main, needs_mnist
from difflab import latent
from difflab.infra.checkpoint import CheckpointError, load_checkpoint
from difflab.config import ConfigError, load_config
from difflab.commands.dryrun import describe
from difflab.models import build_model, count_parameters, model_config
from difflab.models.vae import build_vae
from difflab.pipeline import Pipeline
from difflab.training import Trainer
from difflab.vae_training import VAETrainer

ROOT = Path(__file__).resolve().parent.parent
VAE_MODEL = {"architecture": "vae", "channels": 8, "channel_mult": [1, 2, 2], "latent_channels": 4}
LDM_MODEL = {"architecture": "unet", "channels": 16, "channel_mult": [1], "attention_levels": [], "num_heads": 2}
CPU = torch.device("cpu")


def train_vae(folder: Path, epochs: int = 3, **model) -> VAETrainer:
    """A tiny VAE trained for a few dozen steps on the synthetic squares; its checkpoint is saved."""
    cfg = tiny_config(folder, model={**VAE_MODEL, **model}, training={"epochs": epochs, "lr": 3e-3, "log_every": 16})
    trainer = VAETrainer(cfg, data=tiny_data(256), quiet=True)
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> VAETrainer:
    return train_vae(tmp_path_factory.mktemp("vae"))


def vae_path(trainer: VAETrainer) -> Path:
    return trainer.out_dir / "checkpoints" / "last.pt"


def test_vae_round_trip_shapes():
    vae = build_vae(model_config(**VAE_MODEL))
    x = tiny_data(3)[0]  # (3, 1, 28, 28)
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (3, 4, 7, 7) and vae.latent_shape == (4, 7, 7)
    x_hat, _, _ = vae(x)
    assert x_hat.shape == x.shape
    z = vae.encode_latents(x)
    assert z.shape == (3, *vae.latent_shape)
    images = vae.decode_latents(z)
    assert images.shape == x.shape and images.min() >= -1 and images.max() <= 1
    assert build_vae(model_config(**{**VAE_MODEL, "channel_mult": [1, 2]})).latent_shape == (4, 14, 14)
    with pytest.raises(ConfigError, match="channel_mult"):  # factor 8 does not divide 28
        build_vae(model_config(**{**VAE_MODEL, "channel_mult": [1, 1, 1, 1]}))


def test_vae_training_improves_reconstructions(tiny_vae):
    lines = (tiny_vae.out_dir / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "psnr" in r]
    assert records[-1]["psnr"] > records[0]["psnr"] + 3, records
    assert (tiny_vae.out_dir / "reconstructions" / "epoch_003.png").exists()
    assert tiny_vae.final["psnr"] > records[0]["psnr"]


def test_stored_scale_factor_gives_unit_variance_latents(tiny_vae):
    state = load_checkpoint(vae_path(tiny_vae))
    vae = latent.load_vae(vae_path(tiny_vae), CPU)
    assert vae.scale_factor == state["scale_factor"]
    x = tiny_data(128, seed=1)[0]  # a batch the scale was not measured on
    raw = vae.encode(x)[0]
    assert abs(raw.std().item() - 1) > 0.05  # the VAE alone does not give unit variance...
    assert vae.encode_latents(x).std().item() == pytest.approx(1.0, abs=0.04)  # ...its scale factor does
    assert torch.allclose(vae.decode_latents(vae.encode_latents(x)), vae.decode(raw).clamp(-1, 1), atol=1e-5)


def test_latent_diffusion_end_to_end(tiny_vae, tmp_path, monkeypatch):
    """Stage two via Trainer(cfg) alone: it encodes (and caches) the data, trains, and samples decode to pixels."""
    monkeypatch.setattr(latent, "load_split", lambda split, **kw: tiny_data(128))
    cfg = tiny_config(tmp_path, data={"vae_checkpoint": str(vae_path(tiny_vae))}, model=LDM_MODEL,
                      training={"epochs": 2})
    trainer = Trainer(cfg, quiet=True)
    assert trainer.x.shape == (128, 4, 7, 7) and trainer.vae is not None
    trainer.fit()
    assert (trainer.out_dir / "samples" / "epoch_002.png").exists()

    # the VAE lives in another test's folder: named here, as a user names one they chose (vae_path)
    pipe = Pipeline.from_checkpoint(trainer.out_dir / "checkpoints" / "last.pt", "cpu", vae_path=vae_path(tiny_vae))
    assert pipe.vae.scale_factor == trainer.vae.scale_factor
    # the compare table shows the VAE's training images beside the latent model's: 3 epochs of 256 squares
    assert pipe.vae.images_seen == tiny_vae.step * tiny_vae.batch_size == 3 * 256
    result = pipe.generate(torch.arange(10), steps=3, seed=0)
    assert result.images.shape == (10, 1, 28, 28)
    assert result.images.min() >= -1 and result.images.max() <= 1
    info = describe(cfg)
    assert info["params"] == trainer.params and info["vae_params"] == count_parameters(pipe.vae)


def test_latents_are_cached_beside_the_vae(tiny_vae, tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, data={"vae_checkpoint": str(vae_path(tiny_vae))}, model=LDM_MODEL)
    monkeypatch.setattr(latent, "load_split", lambda split, **kw: tiny_data(64))
    (first, _), _ = latent.load_training_data(cfg, CPU)
    assert list(vae_path(tiny_vae).parent.glob("latents_mnist_*.pt"))

    def no_encoding(*args):
        raise AssertionError("encoded again")

    monkeypatch.setattr(latent, "encode_dataset", no_encoding)
    (again, _), _ = latent.load_training_data(cfg, CPU)
    assert torch.equal(first, again)
    monkeypatch.setattr(latent, "load_split", lambda split, **kw: tiny_data(64, seed=7))  # other images
    with pytest.raises(AssertionError, match="encoded again"):
        latent.load_training_data(cfg, CPU)


def test_missing_vae_names_the_command_that_trains_it(tmp_path):
    missing = tmp_path / "experiments" / "vae_mnist" / "checkpoints" / "last.pt"
    cfg = tiny_config(tmp_path, data={"vae_checkpoint": str(missing)}, model=LDM_MODEL)
    command = f"python train.py --config configs/reference/vae_mnist.yaml training.output_dir={missing.parents[2]}"
    with pytest.raises(CheckpointError) as e:
        latent.load_training_data(cfg, CPU)
    assert "\n" not in str(e.value) and "python train.py --config" in str(e.value)
    r = subprocess.run([sys.executable, "train.py", "--config", "configs/reference/ldm_latent.yaml",
                        f"data.vae_checkpoint={missing}", "data.vae_config=null"],  # null: nothing trains it
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert command in r.stderr and "Traceback" not in r.stderr


def test_a_vae_that_does_not_match_is_refused(tiny_vae, tmp_path):
    # a diffusion checkpoint where a VAE should be
    pixel = Trainer(tiny_config(tmp_path / "pixel"), data=tiny_data(32), quiet=True).save("pixel.pt")
    with pytest.raises(CheckpointError, match="not a VAE checkpoint"):
        latent.load_vae(pixel, CPU)
    with pytest.raises(ConfigError, match="not a denoiser"):  # and a VAE where a denoiser should be
        Pipeline.from_checkpoint(vae_path(tiny_vae), "cpu")
    # a latent model trained on 4-channel latents, decoded by a VAE with 2 latent channels
    cfg = tiny_config(tmp_path / "ldm", data={"vae_checkpoint": str(vae_path(tiny_vae))}, model=LDM_MODEL)
    ldm = Trainer(cfg, data=(torch.randn(32, 4, 7, 7), torch.arange(32) % 10), quiet=True).save("ldm.pt")
    other = train_vae(tmp_path / "vae2", epochs=1, latent_channels=2)
    state = load_checkpoint(ldm)
    state["config"]["data"]["vae_checkpoint"] = str(vae_path(other))
    torch.save(state, ldm)
    with pytest.raises(CheckpointError, match="another VAE"):  # its scale factor differs
        Pipeline.from_checkpoint(ldm, "cpu", vae_path=vae_path(other))
    state["vae_scale_factor"] = None  # an older checkpoint without the fingerprint: the shapes decide
    torch.save(state, ldm)
    with pytest.raises(CheckpointError, match="do not match"):
        Pipeline.from_checkpoint(ldm, "cpu", vae_path=vae_path(other))


def test_shipped_configs_size_both_stages():
    vae_cfg = load_config(ROOT / "configs/reference/vae_mnist.yaml")
    assert build_vae(vae_cfg.model).latent_shape == (4, 7, 7)
    assert describe(vae_cfg)["architecture"] == "vae"
    ldm = load_config(ROOT / "configs/reference/ldm_latent.yaml")
    params = count_parameters(build_model(ldm.model, in_channels=4, image_size=7))
    assert abs(params / 1.7e6 - 1) < 0.05, params


def test_vae_resume_equals_an_uninterrupted_run(tmp_path):
    data = tiny_data(64)

    def make(folder):
        return VAETrainer(tiny_config(folder, model=VAE_MODEL, training={"epochs": 2}), data=data, quiet=True)

    straight = make(tmp_path / "a")
    straight.fit()
    first = make(tmp_path / "b")
    first.fit(stop_after=3)  # mid-epoch (4 steps per epoch)
    resumed = make(tmp_path / "b")
    resumed.load_state(first.out_dir / "checkpoints" / "last.pt")
    assert resumed.step == 3
    resumed.fit()
    for (name, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6), name
    assert resumed.model.scale_factor == pytest.approx(straight.model.scale_factor, rel=1e-6)


def _latent_yamls(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny VAE config, and a latent-diffusion config whose VAE (trained by it) does not exist yet."""
    data = {"data_dir": str(ROOT / "data"), "limit": 64}
    run = {"epochs": 1, "batch_size": 32, "lr": 3e-3, "warmup_steps": 1, "log_every": 1, "device": "cpu",
           "threads": 1, "seed": 0}
    vae_yaml = tmp_path / "vae_tiny.yaml"
    vae_yaml.write_text(yaml.safe_dump({"data": data, "model": VAE_MODEL, "training": run}))
    vae = tmp_path / "experiments" / "vae_tiny" / "checkpoints" / "last.pt"
    ldm_yaml = tmp_path / "ldm_tiny.yaml"
    ldm_yaml.write_text(yaml.safe_dump({
        "data": {**data, "vae_checkpoint": str(vae), "vae_config": str(vae_yaml)},
        "model": LDM_MODEL, "diffusion": {"target": "eps", "schedule": "linear"},
        "training": {**run, "output_dir": str(tmp_path / "experiments")},
        "sampling": {"sampler": "ddim", "steps": 2, "n_per_class": 1}}))
    return ldm_yaml, vae


@needs_mnist
def test_the_latent_config_trains_its_vae_first_and_dry_run_needs_none(tmp_path, capsys):
    ldm_yaml, vae = _latent_yamls(tmp_path)
    assert entry_main("train.py", ["--config", ldm_yaml, "--dry-run"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["vae_trained"] is False and before["latent_shape"] == [4, 7, 7] and not vae.exists()
    assert entry_main("train.py", ["--config", ldm_yaml]) == 0
    out = capsys.readouterr().out
    assert f"no VAE at {vae} yet: training it first" in out and vae.is_file()
    state = load_checkpoint(tmp_path / "experiments" / "ldm_tiny" / "checkpoints" / "last.pt")
    assert state["vae_scale_factor"] == load_checkpoint(vae)["scale_factor"]  # trained on that VAE's latents
    assert entry_main("train.py", ["--config", ldm_yaml, "--dry-run"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after == {**before, "vae_trained": True}  # the untrained VAE's shapes were the trained one's
