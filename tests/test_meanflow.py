"""MeanFlow (meanflow.py, Geng et al. 2025): the identity's target, its derivative, guidance, and the trainer."""

import pytest
import torch

from conftest import tiny_config, tiny_data
from difflab.config import ConfigError, config_from_dict
from difflab import meanflow
from difflab.meanflow import MeanFlowTrainer, mean_velocity_target, meanflow_loss
from difflab.models.layers import NULL_CLASS


def meanflow_config(tmp_path, **fewstep):
    return tiny_config(tmp_path, model={"architecture": "mmdit", "hidden_size": 32, "depth": 1, "num_heads": 2,
                                        "patch_size": 4, "step_conditioning": True},
                       diffusion={"target": "flow", "schedule": "flow", "t_sampling": "logit_normal"},
                       fewstep={"method": "meanflow", **fewstep}, training={"max_steps": 3},
                       sampling={"sampler": "euler", "steps": 2, "spacing": "trailing", "cfg_scale": 1.0})


def test_towards_one_data_point_the_straight_path_satisfies_the_identity_exactly(tmp_path):
    """With every x0 the same point c, every path is a straight line with velocity (z - c) / t, so the average
    velocity over any [r, t] is that too: the exact network must meet its own target, error 0 at every pair.
    A tangent that forgot z's motion (v) or t's (1) leaves a residual of (t - r) times the missing term."""
    trainer = MeanFlowTrainer(meanflow_config(tmp_path), data=tiny_data(32), quiet=True)
    c = torch.randn(1, 1, 28, 28)
    x0, y = c.expand(16, -1, -1, -1).clone(), torch.arange(16) % 10

    def exact(z, t, y, d):  # t and d in [0, 1]; this network ignores d, as the true average velocity here does
        return (z - c) / t.view(-1, 1, 1, 1)

    def scaled(z, t, y, d):  # the same network as the loss calls the trained one: t and d in [0, 1000]
        return exact(z, t / 1000, y, d / 1000)

    _, error, _ = meanflow_loss(x0, y, trainer.draws(), model=scaled, net=exact, diffusion=trainer.cfg.diffusion,
                                cfg_scale=1.0, cfg_dropout_prob=0.1)
    assert error.max() < 1e-10
    # the same network is wrong as soon as the target reads a different velocity than the path's
    _, error, _ = meanflow_loss(x0, y, trainer.draws(), model=lambda z, t, y, d: scaled(z, t, y, d) + 0.1,
                                net=exact, diffusion=trainer.cfg.diffusion, cfg_scale=1.0, cfg_dropout_prob=0.1)
    assert error.min() > 1e-3


def test_the_target_is_v_less_d_times_the_total_derivative_along_the_path():
    """Eq. 6 against central differences in float64: move z with v, t by h, and d = t - r with t."""
    torch.manual_seed(0)
    w = torch.randn(1, 1, 5, 5, dtype=torch.float64)

    def net(z, t, y, d):  # a smooth network that reads all three, differently
        t, d = t.view(-1, 1, 1, 1), d.view(-1, 1, 1, 1)
        return torch.tanh(w * z * (1 + t) + 0.7 * d) + 0.3 * d * t

    z, v = torch.randn(4, 1, 5, 5, dtype=torch.float64), torch.randn(4, 1, 5, 5, dtype=torch.float64)
    t = torch.tensor([0.9, 0.6, 0.5, 0.3], dtype=torch.float64)
    r = torch.tensor([0.2, 0.6, 0.1, 0.0], dtype=torch.float64)  # the second row: r = t, the flow itself
    y, d, h = torch.arange(4), t - r, 1e-6
    total = (net(z + h * v, t + h, y, d + h) - net(z - h * v, t - h, y, d - h)) / (2 * h)
    expected = v - d.view(-1, 1, 1, 1) * total
    target = mean_velocity_target(net, z, t, r, y, v)
    torch.testing.assert_close(target.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(target[1].double(), v[1])  # r = t: plain flow matching
    assert not torch.allclose(target[0].double(), v[0])


def test_guidance_is_trained_in_with_the_models_own_unconditional_velocity(tmp_path, monkeypatch):
    """Sec. 4.2: rows that keep their label learn omega v + (1 - omega) u(z, t, t | null); dropped rows learn v."""
    trainer = MeanFlowTrainer(meanflow_config(tmp_path), data=tiny_data(32), quiet=True)
    null = NULL_CLASS
    seen = {}
    monkeypatch.setattr(meanflow, "mean_velocity_target",
                        lambda net, z, t, r, y, v: seen.update(v=v, y=y, z=z) or v.float())

    def unconditional(z, t, y, d):  # stands in for the network: a velocity only the null label gets
        assert (y == null).all() and (d == 0).all()
        return torch.full_like(z, 5.0)

    x0, y = tiny_data(16)
    args = dict(model=lambda z, t, y, d: torch.zeros_like(z), net=unconditional, diffusion=trainer.cfg.diffusion,
                cfg_dropout_prob=0.5)
    meanflow_loss(x0, y, trainer.draws(), cfg_scale=2.0, **args)
    guided, kept, moved = seen["v"], seen["y"] != null, seen["z"] - x0  # z - x0 = t v on the flow path

    assert 0 < kept.sum() < 16
    def along(m, v):  # whether m = t v for one number t per row (z - x0 = t v: v is the path's velocity)
        t = (m * v).flatten(1).sum(1) / v.pow(2).flatten(1).sum(1)
        return torch.allclose(m, t.view(-1, 1, 1, 1) * v, atol=1e-5)

    assert along(moved[~kept], guided[~kept])  # dropped rows: the plain v
    assert along(moved[kept], (guided[kept] + 5.0) / 2)  # kept: omega v + (1 - omega) 5 = 2 v - 5, undone
    assert not along(moved[kept], guided[kept])


def test_meanflow_trains_and_samples_in_one_call_a_step(tmp_path):
    trainer = MeanFlowTrainer(meanflow_config(tmp_path, teacher_cfg_scale=1.5), data=tiny_data(64), quiet=True)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    result = trainer.pipeline().generate(torch.arange(3), steps=1)
    assert result.images.shape == (3, 1, 28, 28) and torch.isfinite(result.images).all()
    assert result.nfe == 1


@pytest.mark.parametrize("change,key", [({"diffusion": {"target": "eps", "schedule": "linear"}}, "diffusion.target"),
                                        ({"model": {"step_conditioning": False}}, "model.step_conditioning")])
def test_impossible_meanflow_configs_are_refused(tmp_path, change, key):
    cfg = meanflow_config(tmp_path).to_dict()
    for section, values in change.items():
        cfg[section].update(values)
    with pytest.raises(ConfigError, match=key):
        config_from_dict(cfg)
