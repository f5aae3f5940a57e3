"""Consistency models (fewstep.py): the boundary condition, the teacher's step, the sampler, the checks, resume."""

import math
from functools import partial

import pytest
import torch

from conftest import tiny_config, tiny_data
from difflab.config import ConfigError, config_from_dict
from difflab.settings import DiffusionConfig
from difflab import fewstep
from difflab.fewstep import (ConsistencyTrainer, ShortcutTrainer, consistency_loss, ect_pairs, grid_pairs,
                             pseudo_huber, shortcut_loss, two_jumps)
from difflab.guidance import make_denoiser
from difflab.pipeline import Pipeline
from difflab.samplers import sample_consistency, sample_ddim
from difflab.schedules import build_path
from difflab.training import Trainer

CD = {"method": "consistency_distillation", "steps": 4, "teacher_cfg_scale": 2.0}


def teacher_checkpoint(tmp_path, target="v", schedule="scaled_linear"):
    """A tiny trained diffusion model: the teacher of the tests below."""
    cfg = tiny_config(tmp_path, diffusion={"target": target, "schedule": schedule}, training={"max_steps": 8})
    teacher = Trainer(cfg, data=tiny_data(128), quiet=True)
    teacher.fit()
    return teacher, teacher.out_dir / "checkpoints" / "last.pt"


def student_config(tmp_path, teacher_path, target="v", schedule="scaled_linear", **distill):
    cfg = tiny_config(tmp_path, diffusion={"target": target, "schedule": schedule},
                      fewstep={**CD, "teacher": str(teacher_path), **distill},
                      training={"max_steps": 6, "cfg_dropout_prob": 0.0},
                      sampling={"sampler": "consistency", "steps": 2, "spacing": "trailing", "cfg_scale": 1.0})
    cfg.name = "student"  # its own folder beside the teacher's
    return cfg


@pytest.mark.parametrize("target,schedule", [("eps", "linear"), ("v", "scaled_linear"), ("flow", "flow")])
def test_the_consistency_function_is_the_identity_at_t_0_whatever_the_network_says(tmp_path, target, schedule):
    """Song et al. 2023, Eq. 5: c_skip(0) = 1 and c_out(0) = 0, so f(x, 0) = x by construction."""
    _, ckpt = teacher_checkpoint(tmp_path, target, schedule)
    trainer = ConsistencyTrainer(student_config(tmp_path, ckpt, target, schedule), data=tiny_data(64), quiet=True)
    x, y = torch.randn(4, 1, 28, 28), torch.arange(4)
    with torch.no_grad():
        torch.nn.init.normal_(next(trainer.model.parameters()))  # any network, trained or not
        at_zero = trainer.consistency(trainer.model, x, torch.zeros(4), y)
        later = trainer.consistency(trainer.model, x, torch.full((4,), 0.5), y)
    torch.testing.assert_close(at_zero, x)
    assert not torch.allclose(later, x)


def test_the_student_starts_as_its_teacher_and_the_teacher_step_is_a_guided_ddim_step(tmp_path):
    teacher, ckpt = teacher_checkpoint(tmp_path)
    student = ConsistencyTrainer(student_config(tmp_path, ckpt), data=tiny_data(64), quiet=True)
    for a, b in zip(student.model.state_dict().values(), teacher.ema.model.state_dict().values()):
        torch.testing.assert_close(a, b)
    # One step of the sampling pipeline's guided DDIM from t = 0.75 to 0.5 is the teacher's step.
    pipe = Pipeline(teacher.ema.model, teacher.cfg, torch.device("cpu"))
    x, y = torch.randn(3, 1, 28, 28), torch.tensor([1, 4, 7])
    denoiser = make_denoiser(pipe.model, pipe.objective, pipe.path, y, teacher.cfg.sampling, 2.0)
    expected = sample_ddim(denoiser, x, [0.75, 0.5], pipe.path)
    got = student.teacher_step(x, torch.full((3,), 0.75), torch.full((3,), 0.5), y)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_consistency_training_targets_x0_itself_at_the_first_grid_step(tmp_path):
    """With no teacher, x_{t_0} = x0 exactly, and f(x0, 0) = x0: the chain is anchored to the data."""
    cfg = tiny_config(tmp_path, diffusion={"target": "v", "schedule": "scaled_linear"},
                      fewstep={"method": "consistency_training", "steps": 1, "target_ema": 0.0},
                      training={"cfg_dropout_prob": 0.0})
    trainer = ConsistencyTrainer(cfg, data=tiny_data(64), quiet=True)
    x0, y = tiny_data(16)  # one batch
    with torch.no_grad():  # with N = 1 every pair is (t, s) = (1, 0): the loss is ||f(x_1, 1) - x0||
        f = partial(trainer.consistency, trainer.model)
        _, per_sample, t = consistency_loss(x0, y, trainer.draws(), f=f, f_target=f, teacher_step=None,
                                            path=trainer.path, pairs=partial(grid_pairs, steps=1),
                                            huber_c=trainer.huber_c)
    assert (t == 1).all()
    trainer.noise_gen.manual_seed(cfg.training.seed + 1)  # the same draws again, to rebuild x_1
    torch.randint(0, 1, (16,), generator=trainer.noise_gen)
    eps = torch.randn((16, 1, 28, 28), generator=trainer.noise_gen)
    path = build_path(cfg.diffusion)
    x1 = path.alpha(torch.ones(1)) * x0 + path.sigma(torch.ones(1)) * eps
    with torch.no_grad():
        f = trainer.consistency(trainer.model, x1, torch.ones(16), y)
    torch.testing.assert_close(per_sample, pseudo_huber(f - x0, trainer.huber_c))


def test_multistep_consistency_sampling_returns_the_last_jump_and_noises_in_between():
    path = build_path(DiffusionConfig(target="flow", schedule="flow"))
    seen = []

    def denoiser(x, t):
        seen.append((t, x.clone()))
        return torch.full_like(x, t), torch.zeros_like(x)  # "x0" = t, to tell the calls apart

    x = torch.randn(2, 1, 4, 4)
    out = sample_consistency(denoiser, x, [1.0, 0.5, 0.0], path, generator=torch.Generator().manual_seed(0))
    assert [t for t, _ in seen] == [1.0, 0.5]
    torch.testing.assert_close(out, torch.full_like(x, 0.5))  # the last jump, not noised again
    between = seen[1][1]  # x at t = 0.5: 0.5 * x0_hat(=1) + 0.5 * fresh noise
    assert not torch.allclose(between, torch.full_like(x, 0.5)) and abs((between - 0.5).std() - 0.5) < 0.3


def test_a_missing_teacher_names_the_command_that_makes_it(tmp_path):
    cfg = student_config(tmp_path, tmp_path / "nope.pt", teacher_config="configs/unified_sd2_unet_v.yaml")
    with pytest.raises(ConfigError, match="python train.py --config configs/unified_sd2_unet_v.yaml"):
        ConsistencyTrainer(cfg, data=tiny_data(32), quiet=True)


def test_a_teacher_of_another_architecture_is_refused(tmp_path):
    _, ckpt = teacher_checkpoint(tmp_path)
    cfg = student_config(tmp_path, ckpt)
    cfg.model.net.channels = 16
    with pytest.raises(ConfigError, match="'model' section differs from the teacher's"):
        ConsistencyTrainer(cfg, data=tiny_data(32), quiet=True)


def test_x0_prediction_cannot_be_a_consistency_model(tmp_path):
    with pytest.raises(ConfigError, match="diffusion.target"):
        tiny_config(tmp_path, diffusion={"target": "x0"}, fewstep={"method": "consistency_training"})


def test_resume_restores_the_target_network(tmp_path):
    _, ckpt = teacher_checkpoint(tmp_path)
    data = tiny_data(64)
    first = ConsistencyTrainer(student_config(tmp_path, ckpt), data=data, quiet=True)
    first.fit(stop_after=3)
    again = ConsistencyTrainer(student_config(tmp_path, ckpt), data=data, quiet=True)
    again.load_state(first.out_dir / "checkpoints" / "last.pt")
    for a, b in zip(again.target.state_dict().values(), first.target.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(first.target.state_dict().values(),
                                                      first.model.state_dict().values()))  # mu = 0.95 lags
    first.fit()
    again.fit()
    for a, b in zip(again.model.state_dict().values(), first.model.state_dict().values()):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- shortcut models (Frans et al. 2024)

def shortcut_config(tmp_path, **fewstep):
    return tiny_config(tmp_path, model={"architecture": "mmdit", "hidden_size": 32, "depth": 1, "num_heads": 2,
                                        "patch_size": 4, "step_conditioning": True},
                       diffusion={"target": "flow", "schedule": "flow", "t_sampling": "logit_normal"},
                       fewstep={"method": "shortcut", "steps": 8, **fewstep},
                       sampling={"sampler": "euler", "steps": 2, "spacing": "trailing", "cfg_scale": 1.0})


def test_two_jumps_of_d_follow_a_straight_path_exactly(tmp_path):
    """Towards a single data point every path is straight, its velocity (x_t - x0) / t constant along it:
    the mean of two jumps must be that velocity again (a sign or time error in the middle point breaks it)."""
    trainer = ShortcutTrainer(shortcut_config(tmp_path), data=tiny_data(32), quiet=True)
    x0 = torch.randn(1, 1, 28, 28)
    asked = []

    def exact(x_t, t, y, d):  # t and d arrive scaled to [0, 1000]
        asked.append(d.clone())
        return (x_t - x0) / (t / 1000).view(-1, 1, 1, 1)

    t, d = torch.tensor([1.0, 0.5, 0.25]), torch.tensor([0.5, 0.125, 0.125])
    x_t = x0 + t.view(-1, 1, 1, 1) * torch.randn(3, 1, 28, 28)  # (1 - t) x0 + t eps, rearranged
    target = two_jumps(exact, x_t, t, torch.arange(3), d, trainer.cfg.fewstep.steps)
    torch.testing.assert_close(target, (x_t - x0) / t.view(-1, 1, 1, 1))
    assert asked[0].tolist() == [500.0, 0.0, 0.0]  # the smallest jump (1/8) asks the flow itself, d = 0


def test_the_shortcut_quarter_of_a_batch_jumps_2d_from_a_time_on_that_grid(tmp_path, monkeypatch):
    trainer = ShortcutTrainer(shortcut_config(tmp_path), data=tiny_data(32), quiet=True)
    seen = {}

    def record(x_t, t, y, d):
        seen.update(t=t / 1000, d=d / 1000, y=y)
        return torch.zeros_like(x_t)

    monkeypatch.setattr(fewstep, "two_jumps", lambda model, x_t, t, y, d, steps: torch.zeros_like(x_t))
    x0, y = tiny_data(16)
    cfg = trainer.cfg
    shortcut_loss(x0, y, trainer.draws(), model=record, diffusion=cfg.diffusion, steps=cfg.fewstep.steps,
                  cfg_dropout_prob=cfg.training.cfg_dropout_prob)
    jump, t = seen["d"], seen["t"]
    m = int(16 * fewstep.SELF_CONSISTENT_SHARE)
    assert (jump[m:] == 0).all() and (jump[:m] > 0).all()  # flow matching, then shortcuts
    assert set(jump[:m].tolist()) <= {2 ** k / 8 for k in range(1, 4)}  # 2d for d = 1/8 ... 1/2
    assert (t[:m] >= jump[:m] - 1e-6).all()  # the jump stays inside [0, 1]
    torch.testing.assert_close(t[:m] / jump[:m], (t[:m] / jump[:m]).round())  # on the grid of 2d


def test_a_shortcut_model_is_told_the_jump_it_samples_with(tmp_path):
    trainer = ShortcutTrainer(shortcut_config(tmp_path), data=tiny_data(32), quiet=True)
    pipe = trainer.pipeline()
    seen = []
    real = pipe.model.forward
    pipe.model.forward = lambda x, t, y, d=None: seen.append(d) or real(x, t, y, d)
    pipe.generate(torch.arange(2), steps=4)
    assert seen == [250.0] * 4  # 1000 / steps, scaled like t
    # The jump's embedding starts at zero (the plain flow model), and once trained it matters.
    x, t, y = torch.randn(2, 1, 28, 28), torch.full((2,), 500.0), torch.arange(2)
    with torch.no_grad():
        torch.testing.assert_close(real(x, t, y, d=0.0), real(x, t, y, d=500.0))
        for p in pipe.model.parameters():  # stands in for training: every zero-initialised layer moves
            torch.nn.init.normal_(p, std=0.2)
        assert not torch.allclose(real(x, t, y, d=0.0), real(x, t, y, d=500.0))


@pytest.mark.parametrize("change,key", [({"diffusion": {"target": "eps", "schedule": "linear"}}, "diffusion.target"),
                                        ({"fewstep": {"steps": 6}}, "fewstep.steps"),
                                        ({"model": {"step_conditioning": False}}, "model.step_conditioning"),
                                        ({"sampling": {"spacing": "leading"}}, "sampling.spacing")])
def test_impossible_shortcut_configs_are_refused(tmp_path, change, key):
    cfg = shortcut_config(tmp_path).to_dict()
    for section, values in change.items():
        cfg[section].update(values)
    with pytest.raises(ConfigError, match=key):
        config_from_dict(cfg)


# --- ECT: consistency tuning from the teacher (Geng et al. 2024) ------------------------------------------------
from difflab.loop import Draws  # noqa: E402
from difflab.schedules import time_at_ratio  # noqa: E402


@pytest.mark.parametrize("diffusion", [{"target": "v", "schedule": "scaled_linear", "beta_start": 0.00085,
                                        "beta_end": 0.012}, {"target": "flow", "schedule": "flow"}])
def test_the_time_of_a_noise_ratio_inverts_the_ratio(diffusion):
    path = build_path(DiffusionConfig(**diffusion))
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    back = time_at_ratio(path, fewstep.noise_ratio(path, t))
    torch.testing.assert_close(back, t, atol=2e-4, rtol=0)
    ends = time_at_ratio(path, torch.tensor([0.0, 1e9], dtype=torch.float64))
    assert ends[0] == 0 and ends[1] > 0.999  # a ratio beyond the path's last (inf where alpha(1) = 0): t near 1


def ect_draws(n=4096, seed=0):
    return Draws(torch.Generator().manual_seed(seed), n, slice(0, n), torch.device("cpu"))


def test_ect_starts_near_diffusion_training_and_halves_the_gap_each_stage():
    path = build_path(DiffusionConfig(target="v", schedule="scaled_linear", beta_start=0.00085, beta_end=0.012))
    kw = dict(stages=4, noise_mean=-1.1, noise_std=2.0)
    rho = torch.exp(-1.1 + 2.0 * torch.randn(4096, generator=torch.Generator().manual_seed(0)))  # the same draws
    inside = rho < 0.9 * float(fewstep.noise_ratio(path, torch.ones(1)))  # away from the clamp at t = 1
    t, r = ect_pairs(ect_draws(), path, 0.0, **kw)
    torch.testing.assert_close(t[inside], time_at_ratio(path, rho[inside]).float(), atol=1e-5, rtol=0)
    assert (r[rho < 0.5] == 0).all()  # stage 0, low noise: the gap reaches the data, the target is x0 itself
    high = inside & (rho > 8)  # there n(rho) is about 1: half the ratio
    half = fewstep.noise_ratio(path, r[high]).double() / rho[high].double()
    assert half.min().item() == pytest.approx(0.5, abs=0.01) and half.max().item() == pytest.approx(0.5, abs=0.01)
    gaps, rs = [], []
    for progress in (0.5, 0.99):  # stages 2 and 3
        t, r = ect_pairs(ect_draws(), path, progress, **kw)
        assert (r <= t).all()
        gaps.append(fewstep.noise_ratio(path, t) - fewstep.noise_ratio(path, r))
        rs.append(r)
    both = inside & (rs[0] > 0) & (rs[1] > 0)  # neither gap clamped at r = 0
    ratio = gaps[1][both] / gaps[0][both]
    assert ratio.median().item() == pytest.approx(0.5, rel=0.02)  # the same draws, half the gap a stage later


def test_both_calls_of_a_consistency_loss_draw_the_same_dropout_masks():
    drop = torch.nn.Dropout(0.5)
    x = torch.ones(1000)
    with fewstep.same_dropout(x):
        first = drop(x)
    assert torch.equal(drop(x), first) and not torch.equal(drop(x), first)  # the next draws are new again


def test_snr_weighting_weighs_each_sample_by_its_snr_plus_k(tmp_path):
    cfg = tiny_config(tmp_path, diffusion={"target": "v", "schedule": "scaled_linear"},
                      fewstep={"method": "consistency_training", "schedule": "ect", "target_ema": 0.0,
                               "weighting": "snr"})
    trainer = ConsistencyTrainer(cfg, data=tiny_data(64), quiet=True)
    x0, y = tiny_data(16)
    f = partial(trainer.consistency, trainer.model)
    pairs = partial(ect_pairs, path=trainer.path, progress=0.9, stages=8, noise_mean=-1.1, noise_std=2.0)
    with torch.no_grad():
        kw = dict(f=f, f_target=f, teacher_step=None, path=trainer.path, pairs=pairs, huber_c=trainer.huber_c)
        loss, per_sample, t = consistency_loss(x0, y, ect_draws(16), weighting="snr", **kw)
        plain, same, _ = consistency_loss(x0, y, ect_draws(16), **kw)
    torch.testing.assert_close(per_sample, same)
    w = 1 / fewstep.noise_ratio(trainer.path, t) ** 2 + 4
    torch.testing.assert_close(loss, (per_sample * w / w.mean()).mean())
    assert not torch.isclose(loss, plain)


def test_consistency_tuning_starts_from_a_shipped_teacher_whose_dropout_it_may_change(tmp_path):
    """ECT's student: the shipped SD2 named as `teacher: sd2`, dropout added, its weights the teacher's."""
    from difflab.config import load_config
    from difflab.infra.checkpoint import load_checkpoint
    from difflab.infra.weights import shipped

    raw = load_config("configs/unified_sd2_unet_v.yaml").to_dict()
    raw["model"]["dropout"] = 0.1
    raw["fewstep"] = {"method": "consistency_training", "teacher": "sd2", "schedule": "ect", "target_ema": 0.0}
    raw["training"].update(output_dir=str(tmp_path), device="cpu")
    trainer = ConsistencyTrainer(config_from_dict(raw), data=tiny_data(64), quiet=True)
    assert trainer.teacher is None  # consistency training only starts from it
    want = load_checkpoint(shipped("sd2"))["model"]
    got = trainer.model.state_dict()
    assert all(torch.equal(got[k], want[k].float()) for k in want)


# --- progressive distillation (Salimans & Ho 2022) ------------------------------------------------------------------
from difflab.fewstep import ProgressiveTrainer, guided_ddim_step, progressive_loss, two_step_target  # noqa: E402
from difflab.objectives import build_objective  # noqa: E402


@pytest.mark.parametrize("target,schedule", [("eps", "linear"), ("v", "scaled_linear"), ("flow", "flow")])
def test_one_student_step_with_the_target_lands_where_two_teacher_steps_did(tmp_path, target, schedule):
    """The regression target is exact: a network that outputs it takes x_t to the teacher's x_end in one step."""
    teacher, _ = teacher_checkpoint(tmp_path, target, schedule)
    path, objective = teacher.path, build_objective(teacher.cfg.diffusion.target)
    x0, y = tiny_data(6)
    t, end = torch.full((6,), 0.75), torch.full((6,), 0.25)
    x_t = path.alpha(t)[0] * x0 + path.sigma(t)[0] * torch.randn_like(x0)
    step = partial(guided_ddim_step, teacher.ema.model, objective, path, 2.0)
    x_end = step(step(x_t, t, torch.full((6,), 0.5), y), torch.full((6,), 0.5), end, y)
    x0_tilde, eps_tilde = two_step_target(x_t, x_end, t, end, path)
    a, s = path.alpha(t)[:, None, None, None], path.sigma(t)[:, None, None, None]
    raw = objective.target(x0_tilde, eps_tilde, a, s)  # what a perfect student outputs
    x0_hat, eps_hat = objective.to_x0_eps(raw, x_t, a, s)
    one_step = path.alpha(end)[:, None, None, None] * x0_hat + path.sigma(end)[:, None, None, None] * eps_hat
    torch.testing.assert_close(one_step, x_end, atol=1e-4, rtol=1e-4)


def test_progressive_loss_asks_the_teacher_twice_on_the_students_grid(tmp_path):
    teacher, _ = teacher_checkpoint(tmp_path, "flow", "flow")
    calls = []

    def step(x, t, s, y):
        calls.append((t[0].item(), s[0].item()))
        return x

    draws = Draws(torch.Generator().manual_seed(0), 8, slice(0, 8), torch.device("cpu"))
    x0, y = tiny_data(8)
    _, _, t = progressive_loss(x0, y, draws, model=teacher.ema.model, teacher_step=step, path=teacher.path,
                               objective=build_objective(teacher.cfg.diffusion.target), steps=4)
    assert set(t.tolist()) <= {0.25, 0.5, 0.75, 1.0}
    (t1, m1), (m2, e2) = calls
    assert m1 == m2 and t1 - m1 == pytest.approx(0.125) and m2 - e2 == pytest.approx(0.125)


def test_a_progressive_student_starts_as_its_teacher_and_trains(tmp_path):
    teacher, ckpt = teacher_checkpoint(tmp_path, "flow", "flow")
    cfg = student_config(tmp_path, ckpt, "flow", "flow", method="progressive_distillation", steps=2,
                         teacher_cfg_scale=1.5)
    student = ProgressiveTrainer(cfg, data=tiny_data(64), quiet=True)
    for a, b in zip(student.model.state_dict().values(), teacher.ema.model.state_dict().values()):
        torch.testing.assert_close(a, b)
    record = student.fit()
    assert record["loss"] is not None and math.isfinite(record["loss"])
    with pytest.raises(ConfigError, match="fewstep.teacher"):
        config_from_dict({**cfg.to_dict(), "fewstep": {"method": "progressive_distillation"}})
