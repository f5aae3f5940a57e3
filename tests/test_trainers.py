"""Every trainer is the one loop (loop.py) with a loss handed to it; TRAINERS names them; old configs and
checkpoints (model.architecture: vae) still load and still pick the VAE's trainer."""

from pathlib import Path

import pytest
import torch

from conftest import tiny_config, tiny_data
from difflab import latent
from difflab.infra.checkpoint import save_checkpoint
from difflab.config import FEW_STEP_METHODS, config_from_dict, load_config
from difflab.fewstep import ConsistencyTrainer, ShortcutTrainer
from difflab.loop import Draws, TrainingLoop
from difflab.trainers import TRAINERS, trainer_name
from difflab.models.text import drop_condition
from difflab.models.vae import build_vae
from difflab.objectives import diffusion_loss
from difflab.pipeline import Pipeline
from difflab.schedules import sample_training_t
from difflab.training import Trainer
from difflab.vae_training import VAETrainer

ROOT = Path(__file__).resolve().parent.parent
VAE_MODEL = {"architecture": "vae", "channels": 8, "channel_mult": [1, 2, 2], "latent_channels": 4}
SHORTCUT = dict(model={"architecture": "mmdit", "hidden_size": 32, "depth": 1, "num_heads": 2, "patch_size": 4,
                       "step_conditioning": True},
                diffusion={"target": "flow", "schedule": "flow", "t_sampling": "logit_normal"},
                fewstep={"method": "shortcut", "steps": 8},
                sampling={"sampler": "euler", "steps": 2, "spacing": "trailing", "cfg_scale": 1.0})

# The config a VAE checkpoint stored before issue 43 (item 3), as written by Config.to_dict() then.
VAE_KEYS = {"architecture", "conditioning", "text_dim", "text_depth", "text_heads", "channels", "channel_mult",
            "num_res_blocks", "latent_channels", "kl_weight",
            "text_encoder"}  # shared by every architecture since issue 47 (an old config gets the default, joint)
STORED_VAE_CONFIG = {
    "name": "tiny",
    "data": {"dataset": "mnist", "data_dir": None, "vae_checkpoint": None, "vae_config": None, "limit": None},
    "model": {"architecture": "vae", "channels": 8, "channel_mult": [1, 2, 2], "num_res_blocks": 1,
              "attention_levels": [1],
              "dropout": 0.0, "hidden_size": 192, "depth": 6, "num_heads": 2, "patch_size": 4, "mlp_ratio": 4.0,
              "cond_tokens": 4, "qk_norm": False, "pos_embed": "sincos", "single_depth": 0, "step_conditioning": False,
              "conditioning": "class", "text_dim": 64, "text_depth": 2, "text_heads": 4, "cross_attention_levels": [2],
              "pooled_text": False, "latent_channels": 4, "kl_weight": 0.0001},
    "diffusion": {"target": "eps", "schedule": "linear", "num_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
                  "zero_terminal_snr": False, "t_sampling": "uniform_discrete", "logit_mean": 0.0, "logit_std": 1.0},
    "training": {"epochs": 1, "batch_size": 16, "max_batch_size": 512, "lr": 0.002, "text_lr_scale": 1.0,
                 "weight_decay": 0.0, "adam_beta2": 0.999, "warmup_steps": 5, "grad_clip": 1.0, "ema_decay": 0.999,
                 "cfg_dropout_prob": 0.1, "min_snr_gamma": None, "seed": 0, "max_steps": 2, "max_images": None,
                 "log_every": 5, "sample_every": 0, "checkpoint_every": 1, "keep_last": 0, "device": "cpu",
                 "output_dir": "experiments", "compile": None, "precision": "fp32", "threads": None,
                 "on_nonfinite": "stop", "tensorboard": False},
    "sampling": {"sampler": "ddim", "steps": 4, "cfg_scale": 2.0, "eta": 0.0, "spacing": "leading", "shift": 1.0,
                 "guidance_interval": [0.0, 1.0], "cfg_rescale": 0.0, "clip_x0": False, "n_per_class": 1},
    "fewstep": {"method": "none", "teacher": None, "teacher_config": None, "steps": 20, "teacher_cfg_scale": 1.0,
                "target_ema": 0.95, "huber_c": None},
}


def trainers(tmp_path):
    """One of each trainer on the tiny data (the consistency trainer without a teacher)."""
    ct = tiny_config(tmp_path / "ct", fewstep={"method": "consistency_training", "steps": 4})
    vae = tiny_config(tmp_path / "vae", model=VAE_MODEL)
    return [Trainer(tiny_config(tmp_path / "d"), data=tiny_data(32), quiet=True),
            ConsistencyTrainer(ct, data=tiny_data(32), quiet=True),
            ShortcutTrainer(tiny_config(tmp_path / "sc", **SHORTCUT), data=tiny_data(32), quiet=True),
            VAETrainer(vae, data=tiny_data(32), quiet=True)]


def test_every_trainer_is_the_one_loop_with_a_loss_function(tmp_path):
    """No trainer copies the step or the loop: what differs is the function handed to prepare()."""
    for trainer in trainers(tmp_path):
        cls = type(trainer)
        for name in ("train_step", "fit", "batch", "draws", "state", "load_state"):
            assert getattr(cls, name) is getattr(TrainingLoop, name), f"{cls.__name__} overrides {name}"
        x, y = trainer.batch(0)
        loss, logged = trainer.loss(x, y, trainer.draws())  # one batch and its draws -> (loss, logs)
        assert loss.ndim == 0 and loss.requires_grad and torch.isfinite(loss)
        assert "loss" in logged and all(not v.requires_grad for v in logged.values())


def test_trainers_names_every_trainer_and_a_config_picks_one(tmp_path, monkeypatch):
    assert set(TRAINERS) == {"diffusion", "vae", *FEW_STEP_METHODS} - {"none"}
    assert trainer_name(tiny_config(tmp_path)) == "diffusion"
    for method in set(FEW_STEP_METHODS) - {"none"}:
        cfg = tiny_config(tmp_path)
        cfg.fewstep.method = method  # (the name alone: a valid distillation config also needs its teacher)
        assert trainer_name(cfg) == method
    # latent diffusion's stage one, as its config has always said it (model.architecture: vae)
    assert trainer_name(load_config(ROOT / "configs/reference/vae_mnist.yaml", [])) == "vae"
    from difflab.commands.train import make_trainer  # train.py builds what TRAINERS names, nothing else

    monkeypatch.setitem(TRAINERS, "vae", lambda cfg: ("built", cfg.name))
    assert make_trainer(config_from_dict(STORED_VAE_CONFIG, stored=True)) == ("built", "tiny")


def test_ranks_draw_their_share_of_one_global_batch():
    """Two ranks' draws, side by side, are the one-process draws of the double batch (same seed)."""
    def draws(rank, world, b=4):
        g = torch.Generator().manual_seed(7)
        return Draws(g, b * world, slice(rank * b, (rank + 1) * b), torch.device("cpu"))

    for ask in (lambda d: d.randn(1, 2, 2), lambda d: d.rand(), lambda d: d.randint(5), lambda d: d.index()):
        torch.testing.assert_close(torch.cat([ask(draws(0, 2)), ask(draws(1, 2))]), ask(draws(0, 1, b=8)))


def test_the_diffusion_loss_draws_as_it_always_did(tmp_path):
    """Bit-identity of training: t, eps and the label dropout are drawn in the order and sizes of
    before issue 43, so a seed gives the same run (the published numbers depend on it)."""
    cfg = tiny_config(tmp_path, training={"cfg_dropout_prob": 0.5})
    trainer = Trainer(cfg, data=tiny_data(32), quiet=True)
    x0, y = trainer.batch(0)
    with torch.no_grad():
        loss, logged = trainer.loss(x0, y, trainer.draws())
        g, n = torch.Generator().manual_seed(cfg.training.seed + 1), len(x0)  # the code before, written out
        t = sample_training_t(cfg.diffusion, n, g, "cpu")
        eps = torch.randn((n, *x0.shape[1:]), generator=g)
        drop = torch.rand(n, generator=g) < cfg.training.cfg_dropout_prob
        y = drop_condition(y, drop)
        expected, _ = diffusion_loss(trainer.forward, trainer.path, trainer.objective, x0, y, t, eps)
    assert torch.equal(loss, expected)
    assert torch.equal(trainer.noise_gen.get_state(), g.get_state())  # and nothing more was drawn


def test_old_vae_configs_and_checkpoints_still_load(tmp_path):
    """model.architecture: vae keeps naming latent diffusion's autoencoder, in YAML and in stored checkpoints."""
    cfg = load_config(ROOT / "configs/reference/vae_mnist.yaml", [])
    assert cfg.model.architecture == "vae"
    stored = config_from_dict(STORED_VAE_CONFIG, stored=True)
    # Stored again, the model section keeps the VAE's own keys with their values (the other architectures'
    # keys, stored by every checkpoint before issue 43, are dropped); every other section is as it was.
    again = stored.to_dict()
    assert again["model"] == {**{k: v for k, v in STORED_VAE_CONFIG["model"].items() if k in VAE_KEYS},
                              "text_encoder": "joint"}
    for section, values in STORED_VAE_CONFIG.items():  # settings added since (sampling.midpoint) take defaults
        if section != "model":
            assert {k: again[section][k] for k in values} == values if isinstance(values, dict) else \
                again[section] == values
    vae = build_vae(stored.model)
    path = save_checkpoint({"config": STORED_VAE_CONFIG, "model": vae.state_dict(), "step": 2, "scale_factor": 1.5},
                           tmp_path / "vae" / "checkpoints" / "last.pt")
    loaded = latent.load_vae(path, "cpu")
    assert loaded.scale_factor == 1.5
    for a, b in zip(loaded.state_dict().values(), vae.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoints_written_now_hold_the_config_as_before_and_load(tmp_path):
    vae = VAETrainer(config_from_dict(stored=True, raw={**STORED_VAE_CONFIG, "training": {
        **STORED_VAE_CONFIG["training"], "output_dir": str(tmp_path / "experiments")}}), data=tiny_data(32), quiet=True)
    vae.fit()
    path = vae.out_dir / "checkpoints" / "last.pt"
    # The VAE's own keys: a subset of what checkpoints stored before issue 43, which that code read too.
    assert set(torch.load(path, weights_only=False)["config"]["model"]) == VAE_KEYS
    assert latent.load_vae(path, "cpu").scale_factor == pytest.approx(vae.model.scale_factor)
    diffusion = Trainer(tiny_config(tmp_path / "d", training={"max_steps": 2}), data=tiny_data(32), quiet=True)
    diffusion.fit()
    pipe = Pipeline.from_checkpoint(diffusion.out_dir / "checkpoints" / "last.pt", "cpu")
    added = {"cascade"}  # sections added since (issue 48: a cascade's super-resolution stage, difflab.cascade)
    assert pipe.cfg.to_dict().keys() == STORED_VAE_CONFIG.keys() | added
