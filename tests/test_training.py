"""The training loop: loss falls, resume is exact, checkpoints round-trip and refuse bad files."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config, tiny_data
from difflab.infra.checkpoint import CheckpointError, load_checkpoint
from difflab.infra.failures import UsageError
from difflab.pipeline import Pipeline
from difflab.optim import lr_at
from difflab.training import Trainer, diffusion_batch_loss

ROOT = Path(__file__).resolve().parent.parent


def test_loss_falls_on_a_tiny_run(tmp_path):
    cfg = tiny_config(tmp_path, training={"epochs": 6, "log_every": 16})
    trainer = Trainer(cfg, data=tiny_data(256), quiet=True)
    first = trainer.fit(stop_after=16)["loss"]
    last = trainer.fit()["loss"]
    assert last < 0.7 * first, (first, last)
    assert (trainer.out_dir / "metrics.jsonl").exists()
    assert (trainer.out_dir / "samples" / "epoch_006.png").exists()
    assert sorted(p.name for p in (trainer.out_dir / "checkpoints").iterdir()) == sorted(
        ["last.pt"] + [f"model_epoch_{e}.pt" for e in range(1, 7)]
    )


def test_lr_schedule_warms_up_then_decays_to_zero():
    lrs = [lr_at(s, 1.0, 10, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(b <= a for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.01


def test_resume_equals_an_uninterrupted_run(tmp_path):
    """N + M steps in one run equal N steps, a checkpoint, a new process state, then M more."""
    data = tiny_data(128)
    cfg = tiny_config(tmp_path / "a", training={"epochs": 3})
    straight = Trainer(cfg, data=data, quiet=True)
    straight.fit()

    cfg_b = tiny_config(tmp_path / "b", training={"epochs": 3})
    first = Trainer(cfg_b, data=data, quiet=True)
    first.fit(stop_after=11)  # mid-epoch (8 steps per epoch)
    torch.manual_seed(1234)  # anything global that leaked would now differ
    resumed = Trainer(cfg_b, data=data, quiet=True)
    resumed.load_state(first.out_dir / "checkpoints" / "last.pt")
    assert resumed.step == 11
    resumed.fit()
    for (name, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6), name
    for p, q in zip(straight.ema.model.parameters(), resumed.ema.model.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_checkpoint_round_trip_and_sampling_determinism(tmp_path):
    cfg = tiny_config(tmp_path)
    trainer = Trainer(cfg, data=tiny_data(64), quiet=True)
    trainer.fit()
    path = trainer.out_dir / "checkpoints" / "model_epoch_1.pt"
    pipe = Pipeline.from_checkpoint(path, "cpu")
    for p, q in zip(pipe.model.parameters(), trainer.ema.model.parameters()):
        assert torch.equal(p, q)
    assert pipe.cfg == cfg
    labels = torch.arange(10)
    a = pipe.generate(labels, seed=3).images
    b = pipe.generate(labels, seed=3).images
    c = pipe.generate(labels, seed=4).images
    assert torch.equal(a, b) and not torch.equal(a, c)
    ancestral = [pipe.generate(labels, sampler="ddpm", seed=s).images for s in (5, 5)]
    assert torch.equal(*ancestral)
    # The batch is a speed setting only (pipeline.sampling_batch_size): every image keeps its noise.
    for batch_size in (3, 7):
        assert torch.allclose(pipe.generate(labels, seed=3, batch_size=batch_size).images, a, atol=1e-5)
    # Stochastic samplers too: each image draws its fresh noise from its own stream (image_generators).
    for sampler, options in (("ddpm", {}), ("ddim", {"eta": 1.0})):
        whole = pipe.generate(labels, sampler=sampler, seed=5, batch_size=10, **options).images
        for batch_size in (3, 7):
            split = pipe.generate(labels, sampler=sampler, seed=5, batch_size=batch_size, **options).images
            assert torch.allclose(split, whole, atol=1e-5), (sampler, batch_size)


def test_the_epoch_checkpoint_is_written_before_the_sample_grid(tmp_path, monkeypatch):
    def broken_grid(self, tag):
        raise RuntimeError("sampling failed")

    monkeypatch.setattr(Trainer, "save_samples", broken_grid)
    trainer = Trainer(tiny_config(tmp_path), data=tiny_data(32), quiet=True)
    with pytest.raises(RuntimeError, match="sampling failed"):
        trainer.fit()
    saved = load_checkpoint(trainer.out_dir / "checkpoints" / "model_epoch_1.pt")
    assert saved["step"] == trainer.total_steps


def test_bad_checkpoints_are_refused_with_one_line(tmp_path):
    cfg = tiny_config(tmp_path)
    trainer = Trainer(cfg, data=tiny_data(32), quiet=True)
    good = trainer.save("good.pt")
    raw = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(raw[: len(raw) // 2])
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    code = tmp_path / "code.pt"
    torch.save({"format": "difflab-checkpoint-v1", "config": {}, "model": Path("x")}, code)
    for path, reason in [(tmp_path / "missing.pt", "no such"), (truncated, "truncated or corrupted"),
                         (foreign, "not a difflab checkpoint"), (code, "refused")]:
        with pytest.raises(CheckpointError, match=reason) as e:
            load_checkpoint(path)
        assert "\n" not in str(e.value)
    # the wrong architecture for the weights
    state = load_checkpoint(good)
    state["config"]["model"]["channels"] = 16
    wrong = tmp_path / "wrong.pt"
    torch.save(state, wrong)
    with pytest.raises(CheckpointError, match="do not match the architecture"):
        Pipeline.from_checkpoint(wrong, "cpu")
    r = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--checkpoint", str(truncated)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_auto_batch_size_picks_a_measured_size_and_stops_at_out_of_memory(tmp_path, monkeypatch, capsys):
    from difflab.infra import speed

    cfg = tiny_config(tmp_path, training={"batch_size": "auto", "max_batch_size": 128})
    trainer = Trainer(cfg, data=tiny_data(256))
    assert trainer.batch_size in (32, 64, 128)
    assert "batch_size auto:" in capsys.readouterr().out

    # 32 and 64 fit (64 twice as fast), 128 runs out of memory: 64 is chosen, 128 never reported.
    def fake_probe(model, opt, x, y, size, autocast, device, steps=3):
        if size >= 128:
            raise RuntimeError("CUDA out of memory. Tried to allocate ...")
        return {32: 100.0, 64: 200.0}[size]

    monkeypatch.setattr(speed, "probe_speed", fake_probe)
    trainer = Trainer(cfg, data=tiny_data(256))
    assert trainer.batch_size == 64
    assert "128:" not in capsys.readouterr().out


@pytest.mark.parametrize("batch_size", [8, 16])
def test_max_images_is_a_budget_in_images_whatever_the_batch_size(tmp_path, batch_size):
    cfg = tiny_config(tmp_path, training={"epochs": 5, "batch_size": batch_size, "max_images": 96})
    trainer = Trainer(cfg, data=tiny_data(128), quiet=True)
    assert trainer.total_steps == 96 // batch_size
    trainer.fit()
    assert trainer.images_seen == 96


def test_min_snr_gamma_weights_the_loss_and_logs_the_plain_mse(tmp_path):
    from difflab.objectives import broadcast, min_snr_weight

    x0, y = tiny_data(16)
    plain = Trainer(tiny_config(tmp_path), data=(x0, y), quiet=True)
    weighted = Trainer(tiny_config(tmp_path, training={"min_snr_gamma": 5.0}), data=(x0, y), quiet=True)
    def batch_loss(trainer):
        return diffusion_batch_loss(x0, y, trainer.draws(), model=trainer.forward, path=trainer.path,
                                    objective=trainer.objective, cfg=trainer.cfg)

    loss_p, per_p, t = batch_loss(plain)
    loss_w, per_w, t_w = batch_loss(weighted)  # same seed: same t, noise and weights
    loss_p, loss_w = loss_p.item(), loss_w.item()
    assert torch.equal(t, t_w) and torch.allclose(per_p, per_w)
    a, s = broadcast(plain.path.alpha(t), x0), broadcast(plain.path.sigma(t), x0)
    w = min_snr_weight(plain.objective, a, s, 5.0).flatten()
    assert w.min() < 0.99  # some t in the batch is capped, so the two losses must differ
    assert loss_w == pytest.approx(float((w * per_p).mean()), rel=1e-5)
    assert loss_w < loss_p


def test_adam_beta2_reaches_the_optimiser(tmp_path):
    default = Trainer(tiny_config(tmp_path), data=tiny_data(32), quiet=True)
    changed = Trainer(tiny_config(tmp_path, training={"adam_beta2": 0.95}), data=tiny_data(32), quiet=True)
    assert default.opt.param_groups[0]["betas"] == (0.9, 0.999)
    assert changed.opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_tensorboard_shows_the_numbers_of_metrics_jsonl_and_the_sample_grids(tmp_path):
    """Issue 28: training.tensorboard writes the same scalars as metrics.jsonl, and each epoch's grid."""
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tmp_path, training={"epochs": 2, "log_every": 4, "tensorboard": True})
    trainer = Trainer(cfg, data=tiny_data(64), quiet=True)
    trainer.fit()
    events = EventAccumulator(str(trainer.out_dir / "tensorboard"))
    events.Reload()
    records = [json.loads(line) for line in (trainer.out_dir / "metrics.jsonl").read_text().splitlines()]
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert loss == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in records]
    assert ([e.step for e in events.Scalars("loss_by_t/0.0-0.1")]
            == [r["step"] for r in records if r["loss_by_t"][0] is not None])
    assert [e.step for e in events.Images("samples/samples")] == [4, 8]  # the grid of each of the 2 epochs


def test_tensorboard_without_its_package_is_one_clear_line(tmp_path, monkeypatch):
    from difflab.config import ConfigError

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    cfg = tiny_config(tmp_path, training={"max_steps": 2, "tensorboard": True})
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        Trainer(cfg, data=tiny_data(32), quiet=True).fit()


def test_until_epoch_trains_a_slice_that_resume_continues_on_the_same_schedule(tmp_path, monkeypatch, capsys):
    """train.py --until-epoch K stops after epoch K of the configured run (the LR schedule is the whole run's)
    and --resume continues it: the slices end where one uninterrupted run ends."""
    import yaml

    from difflab.commands import train as train_cmd

    data = tiny_data(64)  # 4 steps an epoch
    monkeypatch.setattr(train_cmd, "make_trainer", lambda cfg: Trainer(cfg, data=data, quiet=True))
    monkeypatch.setattr("difflab.commands.dryrun.check_memory", lambda cfg: None)
    cfg = tiny_config(tmp_path / "sliced", training={"epochs": 3})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    checkpoints = Path(cfg.training.output_dir) / "tiny" / "checkpoints"

    assert train_cmd.main(["--config", str(path), "--until-epoch", "1"]) == 0
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.pt", "model_epoch_1.pt"]
    state = load_checkpoint(checkpoints / "last.pt")
    assert state["step"] == 4
    assert "paused at the end of epoch 1 (step 4 of 12)" in capsys.readouterr().out
    assert train_cmd.main(["--config", str(path), "--until-epoch", "1", "--resume"]) == 0  # nothing left to do
    assert "nothing to do" in capsys.readouterr().out
    assert train_cmd.main(["--config", str(path), "--resume"]) == 0  # the rest of the run
    sliced = load_checkpoint(checkpoints / "model_epoch_3.pt")
    # training CPU time carries across the slices (benchmarks/curves.py plots quality against it)
    assert 0 < state["cpu_seconds"] < sliced["cpu_seconds"]

    straight = Trainer(tiny_config(tmp_path / "straight", training={"epochs": 3}), data=data, quiet=True)
    straight.fit()
    for (name, p), q in zip(straight.model.state_dict().items(), sliced["model"].values()):
        assert torch.allclose(p, q, atol=1e-6), name
    with pytest.raises(UsageError, match="--until-epoch must be 1 or more"):
        train_cmd.main(["--config", str(path), "--until-epoch", "0"])
