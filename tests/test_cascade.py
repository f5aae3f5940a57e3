"""Imagen's cascade (difflab.cascade): a base at 14x14, a super-resolution stage that reads its drawings."""

import json

import pytest
import torch

from conftest import synthetic_split, tiny_config, tiny_data

from difflab import cascade
from difflab.config import ConfigError
from difflab.schedules import build_path

SR = {"low_resolution": 14}


def test_shrinking_averages_blocks_and_augmentation_is_the_forward_process(tmp_path):
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(cascade.downsample(x, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))  # 2x2 means
    assert cascade.upsample(cascade.downsample(x, 2), 4).shape == x.shape
    path = build_path(tiny_config(tmp_path).diffusion)
    low, eps = torch.randn(3, 1, 14, 14), torch.randn(3, 1, 14, 14)
    s = torch.tensor([0.0, 0.3, 1.0])
    z = cascade.augment(low, s, eps, path)
    assert torch.equal(z[0], low[0])  # level 0: the image as it is
    a, sigma = path.alpha(s[1:2]).item(), path.sigma(s[1:2]).item()
    assert torch.allclose(z[1], a * low[1] + sigma * eps[1]) and sigma > 0.1
    assert (z[2] - eps[2]).abs().max() < 0.1  # the top of the path: (almost) pure noise


def test_training_noises_the_shrunk_batch_to_levels_it_tells_the_model(tmp_path):
    from difflab.loop import Draws

    cfg = tiny_config(tmp_path, model=SR, cascade={"noise_aug": 0.5})
    x0 = tiny_data(8)[0]
    draws = Draws(torch.Generator().manual_seed(0), 8, slice(0, 8), torch.device("cpu"))
    got = cascade.training_condition(x0, draws, cfg, build_path(cfg.diffusion))
    assert got["low"].shape == (8, 1, 14, 14) and (got["aug"] >= 0).all() and (got["aug"] <= 500).all()
    assert not torch.allclose(got["low"], cascade.downsample(x0, 14))
    plain = tiny_config(tmp_path, model=SR)  # cascade.noise_aug 0: the ablation, the real shrunk digits
    draws = Draws(torch.Generator().manual_seed(0), 8, slice(0, 8), torch.device("cpu"))
    got = cascade.training_condition(x0, draws, plain, build_path(plain.diffusion))
    assert torch.equal(got["low"], cascade.downsample(x0, 14)) and not got["aug"].any()


def test_the_configs_refuse_what_a_cascade_cannot_be(tmp_path):
    for sections, key in [
        ({"data": {"resolution": 10}}, "data.resolution"),
        ({"model": {"low_resolution": 28}}, "model.low_resolution"),
        ({"data": {"resolution": 14}, "model": {"low_resolution": 14}}, "model.low_resolution"),
        ({"cascade": {"noise_aug": 0.3}}, "cascade.noise_aug"),  # not a super-resolution stage
        ({"model": SR, "cascade": {"noise_aug": 1.5}}, "cascade.noise_aug"),
        ({"model": SR, "sampling": {"aug_level": -0.1}}, "sampling.aug_level"),
        ({"sampling": {"aug_level": 0.2}}, "sampling.aug_level"),
        ({"model": SR, "sampling": {"low_res_from": "elsewhere"}}, "sampling.low_res_from"),
        ({"cascade": {"refine_below": 1.0}}, "cascade.refine_below"),  # a refiner of every level is no expert
        ({"model": SR, "cascade": {"refine_below": 0.2}}, "cascade.refine_below"),
        ({"cascade": {"base": "b/checkpoints/last.pt"}}, "cascade.base"),  # neither a refiner nor a SR stage
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            tiny_config(tmp_path, **sections)


def test_the_network_reads_the_low_resolution_image_and_guidance_enlarges_the_same_one(tmp_path):
    from difflab.models import build_model

    cfg = tiny_config(tmp_path, model=SR)
    torch.manual_seed(0)
    net = build_model(cfg.model, in_channels=1, image_size=28).eval()
    for p in net.parameters():  # residual branches start at zero: give them weights, so the output shows its inputs
        if not p.any():
            torch.nn.init.normal_(p, std=0.1)
    x, t, y = torch.randn(2, 1, 28, 28), torch.full((2,), 400.0), torch.tensor([3, 10])
    low, aug = torch.randn(2, 1, 14, 14), torch.tensor([0.0, 200.0])
    with torch.no_grad():
        out = net(x, t, y, low=low, aug=aug)
        other = net(x, t, y, low=low + torch.randn_like(low), aug=aug)
        told = net(x, t, y, low=low, aug=aug + 300)
        doubled = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y]), low=low, aug=aug)  # as CFG calls it
    assert not torch.allclose(out, other) and not torch.allclose(out, told)  # both the image and its level count
    assert torch.allclose(doubled[:2], out, atol=1e-5) and torch.allclose(doubled[2:], out, atol=1e-5)
    with pytest.raises(ValueError, match="low-resolution"):
        net(x, t, y)


@pytest.fixture
def stages(tmp_path):
    return train_stages(tmp_path)


def train_stages(tmp_path, steps: int = 3):
    """A tiny base (14x14) and super-resolution stage (naming the base's checkpoint), trained a few steps each;
    their checkpoints (also the demo's browser test's)."""
    from difflab.training import Trainer

    x, y = tiny_data(48)
    base_cfg = tiny_config(tmp_path, data={"resolution": 14}, model={"channel_mult": [1, 2]},
                           training={"max_steps": steps})
    base_cfg.name = "base"
    base = Trainer(base_cfg, data=(cascade.downsample(x, 14), y), quiet=True)
    base.fit()
    base_ckpt = base.out_dir / "checkpoints" / "last.pt"
    sr_cfg = tiny_config(tmp_path, model=SR, cascade={"base": str(base_ckpt), "noise_aug": 0.5},
                         sampling={"aug_level": 0.2}, training={"max_steps": steps})
    sr_cfg.name = "sr"
    sr = Trainer(sr_cfg, data=(x, y), quiet=True)
    sr.fit()
    return base_ckpt, sr.out_dir / "checkpoints" / "last.pt"


def test_sampling_runs_the_whole_cascade_from_the_base_it_names(stages, monkeypatch):
    from difflab import unclip
    from difflab.pipeline import Pipeline

    base_ckpt, sr_ckpt = stages
    pipe = Pipeline.from_checkpoint(sr_ckpt, "cpu")
    base = Pipeline.from_checkpoint(base_ckpt, "cpu")
    assert pipe.base is not None and pipe.info["params"] == sum(pipe.info["stage_params"])
    labels = torch.tensor([1, 4, 4, 7])
    result = pipe.generate(labels, seed=3, steps=2, batch_size=4)
    assert result.images.shape == (4, 1, 28, 28) and result.low_res.shape == (4, 1, 14, 14)
    assert torch.equal(result.low_res, base.generate(labels, seed=3).images)  # stage 1 is the base's own sampling
    assert result.nfe == base.generate(labels, seed=3).nfe + 2
    assert torch.allclose(pipe.generate(labels, seed=3, steps=2, batch_size=3).images, result.images, atol=1e-5)
    assert pipe.callbacks(4, pipe.settings(steps=2, batch_size=3)) == 2 * 2 + base.settings().steps * 1

    monkeypatch.setattr(unclip, "load_split", synthetic_split)  # real test digits shrunk: a perfect base
    real = Pipeline.from_checkpoint(sr_ckpt, "cpu", sampling=["sampling.low_res_from=real"])
    assert real.base is None
    shrunk = real.generate(labels, seed=3, steps=2).low_res
    assert torch.equal(shrunk, cascade.real_low_res([1, 4, 4, 7], 14))


def test_a_missing_or_wrong_base_is_named(stages, tmp_path):
    from difflab.infra.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from difflab.pipeline import Pipeline

    base_ckpt, sr_ckpt = stages
    state = load_checkpoint(sr_ckpt)
    state["config"]["cascade"]["base"] = str(tmp_path / "elsewhere" / "checkpoints" / "last.pt")
    save_checkpoint(state, tmp_path / "moved.pt")
    with pytest.raises(CheckpointError, match="base stage"):
        Pipeline.from_checkpoint(tmp_path / "moved.pt", "cpu")
    state["config"]["cascade"]["base"] = str(sr_ckpt)  # a 28x28 model of its own kind is no base
    save_checkpoint(state, tmp_path / "selfish.pt")
    with pytest.raises(ConfigError, match="enlarges 14x14"):
        Pipeline.from_checkpoint(tmp_path / "selfish.pt", "cpu")


def test_evaluate_and_sample_show_both_stages(stages, tmp_path, fake_mnist):
    from PIL import Image

    from difflab import evaluation
    from difflab.commands import sample
    from difflab.pipeline import Pipeline

    base_ckpt, sr_ckpt = stages
    scores = evaluation.evaluate_pipeline(Pipeline.from_checkpoint(sr_ckpt, "cpu"), fake_mnist, 10, steps=2)
    assert scores["cascade"]["stage"] == "super-resolution" and scores["cascade"]["aug_level"] == 0.2
    alone = evaluation.evaluate_pipeline(Pipeline.from_checkpoint(base_ckpt, "cpu"), fake_mnist, 10, steps=2)
    assert alone["cascade"] == {"stage": "base", "resolution": 14, "scored": "enlarged bilinearly to 28x28"}
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    common = ["--checkpoint", str(sr_ckpt), "--digits", "37", "--n", "3", "--steps", "2", "--device", "cpu"]
    assert sample.main([*common, "--out", str(one)]) == 0
    assert sample.main([*common, "--stages", "--out", str(two)]) == 0
    (w1, h1), (w2, h2) = Image.open(one).size, Image.open(two).size
    assert w1 == w2 and h2 > 1.9 * h1  # a row of the base's drawings above each row of the cascade's


def test_train_py_trains_the_base_first_when_it_is_missing(tmp_path, monkeypatch):
    import yaml

    from difflab import latent
    from difflab.commands import train

    monkeypatch.setattr(latent, "load_split", synthetic_split)
    small = {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [1], "num_heads": 2}
    budget = {"epochs": 1, "batch_size": 8, "max_steps": 2, "warmup_steps": 1, "device": "cpu"}
    base_yaml = tmp_path / "base.yaml"
    base_yaml.write_text(yaml.safe_dump({"data": {"resolution": 14}, "model": small, "training": budget}))
    base = tmp_path / "runs" / "my_base" / "checkpoints" / "last.pt"
    sr_yaml = tmp_path / "sr.yaml"
    sr_yaml.write_text(yaml.safe_dump({"model": {**small, **SR}, "training": budget,
                                       "sampling": {"steps": 2, "n_per_class": 1},
                                       "cascade": {"base": str(base), "base_config": str(base_yaml)}}))
    assert train.main(["--config", str(sr_yaml), f"training.output_dir={tmp_path / 'runs'}", "training.max_steps=3",
                       "training.seed=5", "training.lr=0.5"]) == 0
    assert base.is_file() and (tmp_path / "runs" / "sr" / "checkpoints" / "last.pt").is_file()
    # the run's length and seed asked on the command line are the base's too; how the stage learns (lr) is not
    ran = json.loads((tmp_path / "runs" / "my_base" / "config.json").read_text())["training"]
    assert (ran["max_steps"], ran["seed"], ran["lr"]) == (3, 5, 2e-3)


# ---------------------------------------------------------------- SDXL's refiner: an expert of the low noise levels


def test_a_refiner_trains_only_below_its_level_and_takes_over_there():
    t = torch.arange(1, 1001).float() / 1000  # every level of a discrete draw k / T
    squeezed = cascade.refiner_times(t, 0.2, 1000, discrete=True)
    k = (squeezed * 1000).round()
    assert torch.allclose(squeezed * 1000, k, atol=1e-3) and k.min() == 1 and k.max() == 200  # on the grid, 1..200
    assert torch.equal(torch.bincount(k.long())[1:], torch.full((200,), 5))  # each as often: still uniform
    assert torch.allclose(cascade.refiner_times(torch.tensor([0.5, 1.0]), 0.2, 1000, discrete=False),
                          torch.tensor([0.1, 0.2]))

    def base(x, t, y):
        return torch.zeros_like(x)

    def refiner(x, t, y):
        return torch.ones_like(x)

    network = cascade.hand_over(base, refiner, 0.2)
    x = torch.randn(3, 1, 4, 4)
    assert network(x, torch.full((3,), 500.0), None).sum() == 0  # a noisy step: the base's
    assert network(x, torch.full((3,), 199.0), None).mean() == 1  # below 0.2 x 1000: the refiner's
    mixed = network(x, torch.tensor([500.0, 100.0, 200.0]), None)
    assert mixed[:, 0, 0, 0].tolist() == [0.0, 1.0, 0.0]  # image by image; 200 is the base's (t >= refine_below)


def test_a_refiners_training_draws_only_low_noise_levels(tmp_path):
    from difflab.loop import Draws
    from difflab.models import build_model
    from difflab.objectives import build_objective
    from difflab.training import diffusion_batch_loss

    cfg = tiny_config(tmp_path, cascade={"base": "b/checkpoints/last.pt", "refine_below": 0.1})
    x0, y = tiny_data(64)
    draws = Draws(torch.Generator().manual_seed(0), 64, slice(0, 64), torch.device("cpu"))
    net = build_model(cfg.model, in_channels=1, image_size=28)
    *_, t = diffusion_batch_loss(x0, y, draws, model=net, path=build_path(cfg.diffusion),
                                 objective=build_objective(cfg.diffusion.target), cfg=cfg)
    assert t.max() <= 0.1 and t.min() > 0 and len(t.unique()) > 20


@pytest.fixture
def refiner(tmp_path):
    """A tiny base and a refiner of the levels below 0.5 that names it, trained a few steps each."""
    from difflab.training import Trainer

    x, y = tiny_data(48)
    base_cfg = tiny_config(tmp_path, training={"max_steps": 2})
    base_cfg.name = "base"
    base = Trainer(base_cfg, data=(x, y), quiet=True)
    base.fit()
    base_ckpt = base.out_dir / "checkpoints" / "last.pt"
    cfg = tiny_config(tmp_path, cascade={"base": str(base_ckpt), "refine_below": 0.5}, training={"max_steps": 2})
    cfg.name = "refiner"
    trainer = Trainer(cfg, data=(x, y), quiet=True)
    trainer.fit()
    return base_ckpt, trainer.out_dir / "checkpoints" / "last.pt"


def test_sampling_a_refiner_runs_its_base_on_the_noisy_steps_and_itself_on_the_rest(refiner, tmp_path, fake_mnist):
    from difflab import evaluation
    from difflab.infra.checkpoint import load_checkpoint, save_checkpoint
    from difflab.pipeline import Pipeline

    base_ckpt, ref_ckpt = refiner
    pipe = Pipeline.from_checkpoint(ref_ckpt, "cpu")
    assert pipe.base is not None and pipe.info["params"] == sum(pipe.info["stage_params"])
    labels = torch.tensor([2, 5, 5, 9])
    images = pipe.generate(labels, seed=1, steps=4).images
    assert pipe.generate(labels, seed=1, steps=4).nfe == 4  # one network evaluation per step, whichever network
    assert pipe.callbacks(4, pipe.settings(steps=4, batch_size=4)) == 4  # the base's steps are the same steps
    for part in (pipe.base.model, pipe.model):  # both networks draw part of every image
        with torch.no_grad():
            saved = [p.clone() for p in part.parameters()]
            for p in part.parameters():
                p.add_(0.05 * torch.randn_like(p))
            assert not torch.allclose(pipe.generate(labels, seed=1, steps=4).images, images, atol=1e-4)
            for p, s in zip(part.parameters(), saved):
                p.copy_(s)
    assert torch.equal(pipe.generate(labels, seed=1, steps=4).images, images)
    scores = evaluation.evaluate_pipeline(pipe, fake_mnist, 10, steps=2)
    assert scores["cascade"]["stage"] == "refiner" and scores["cascade"]["refine_below"] == 0.5

    state = load_checkpoint(ref_ckpt)
    base_state = load_checkpoint(base_ckpt)
    base_state["config"]["diffusion"]["target"] = "v"  # another objective: its steps are not the refiner's to finish
    save_checkpoint(base_state, tmp_path / "v_base.pt")
    state["config"]["cascade"]["base"] = str(tmp_path / "v_base.pt")
    save_checkpoint(state, tmp_path / "mismatched.pt")
    with pytest.raises(ConfigError, match="diffusion section"):
        Pipeline.from_checkpoint(tmp_path / "mismatched.pt", "cpu")


def test_train_py_refuses_a_refiner_without_its_base(tmp_path):
    import yaml

    from difflab.commands import train

    path = tmp_path / "refiner.yaml"
    path.write_text(yaml.safe_dump({"cascade": {"base": str(tmp_path / "none" / "checkpoints" / "last.pt"),
                                                "refine_below": 0.2}}))
    with pytest.raises(ConfigError, match="is a refiner"):
        train.main(["--config", str(path), f"training.output_dir={tmp_path}"])
