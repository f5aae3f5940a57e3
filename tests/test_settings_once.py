"""Every sampling setting is resolved once (Pipeline.settings), every sampling value has one range rule
(validation.steps_ok, validation.cfg_scale_ok), and classifier-free guidance is mixed in one place
(guidance.cfg_mix), bit for bit as before (issue 43, item 2)."""

import dataclasses
import math
import re
import types
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from difflab import fewstep
from difflab import evaluation as ev
from difflab.demo import session as demo
from difflab.commands.common import check_cfg_scale, check_steps
from difflab.infra.failures import UsageError
from difflab.config import ConfigError
from difflab.fewstep import ConsistencyTrainer
from difflab.guidance import Denoiser, cfg_mix
from difflab.models import build_model
from difflab.models.text import null_condition
from difflab.objectives import broadcast, build_objective
from difflab.pipeline import Pipeline, SamplingSettings, sampling_batch_size
from difflab.schedules import build_path
from difflab.infra.validation import MAX_STEPS, cfg_scale_ok, steps_ok

SRC = Path(__file__).resolve().parent.parent / "src" / "difflab"
OWN = {"sampler": "euler", "steps": 3, "cfg_scale": 4.5}  # the config's own sampling, unlike any default


def tiny_model(cfg) -> torch.nn.Module:
    """A tiny U-Net whose output layers are not zero (an untrained one would hide what guidance does)."""
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def tiny_pipe(tmp_path, **training) -> Pipeline:
    cfg = tiny_config(tmp_path, sampling=OWN, training=training)
    return Pipeline(tiny_model(cfg), cfg, torch.device("cpu"))


# --- one resolver --------------------------------------------------------------------------------


def test_the_settings_are_what_was_asked_else_the_configs(tmp_path):
    pipe = tiny_pipe(tmp_path)
    assert pipe.settings() == SamplingSettings("euler", 3, 4.5, sampling_batch_size("cpu", "unet"))
    assert pipe.settings("ddim", 2, 0.0, 5) == SamplingSettings("ddim", 2, 0.0, 5)  # w = 0 is asked, not unset
    unconditional = tiny_pipe(tmp_path, cfg_dropout_prob=1.0)
    assert unconditional.settings().cfg_scale == 1.0 and unconditional.settings(cfg_scale=3.0).cfg_scale == 1.0


@pytest.fixture
def generate_calls(monkeypatch):
    """The settings of every Pipeline.generate call, which then samples as usual."""
    calls, real = [], Pipeline.generate

    def spy(self, labels, **kw):
        calls.append({k: kw.get(k) for k in ("sampler", "steps", "cfg_scale", "batch_size")})
        return real(self, labels, **kw)

    monkeypatch.setattr(Pipeline, "generate", spy)
    return calls


@pytest.mark.parametrize("unconditional", [False, True])
def test_every_caller_samples_with_the_one_resolvers_settings(tmp_path, monkeypatch, generate_calls, unconditional):
    """Evaluation and the demo, asked for nothing, sample with Pipeline.settings(); the demo shows those values."""
    pipe = tiny_pipe(tmp_path, cfg_dropout_prob=1.0 if unconditional else 0.1)
    want = dataclasses.asdict(pipe.settings())
    monkeypatch.setattr(ev, "judged_dataset", lambda classifier: "mnist")
    monkeypatch.setattr(ev, "evaluate_images", lambda *a, **k: {})  # the FID is not what is tested here
    scores = ev.evaluate_pipeline(pipe, None, 2, progress=False)
    assert generate_calls.pop() == want
    keys = ("sampler", "steps", "cfg_scale")
    assert {k: scores[k] for k in keys} == {k: want[k] for k in keys}
    shown = demo.model_defaults(pipe)
    assert shown == {k: want[k] for k in keys}
    (panel,) = demo.generate({"m": pipe}, model="m", digit=3, seed=0, n_images=1, **shown)
    assert generate_calls.pop() == want
    assert f"guidance {want['cfg_scale']:g}," in panel.settings


def test_only_the_pipeline_works_out_a_sampling_default():
    """No module but pipeline.py reads the config's sampler, steps or guidance scale to sample with, or picks a
    batch size (validation.py reads them to check their range)."""
    picks = re.compile(r"\.sampling\.(sampler|steps|cfg_scale)\b|\bs\.(sampler|steps|cfg_scale)\b"
                       r"|sampling_batch_size\(")
    found = [f"{path.relative_to(SRC)}:{i}" for path in sorted(SRC.rglob("*.py"))
             if path.name not in ("pipeline.py", "validation.py")
             for i, line in enumerate(path.read_text().splitlines(), 1) if picks.search(line.split("#")[0])]
    assert not found, found


# --- one range rule ------------------------------------------------------------------------------

SCALES = [-1.0, -1e-9, 0.0, 0.5, 1.0, 7.5, demo.MAX_CFG, demo.MAX_CFG + 0.5, 1e9, math.nan, math.inf, -math.inf]


def refused(call, error) -> bool:
    try:
        call()
    except error:
        return True
    return False


def demo_request(**changes):
    values = {"model": "m", "digit": 3, "cfg_scale": 2.0, "steps": 2, "sampler": "ddim", "seed": 0, "n_images": 1}
    return lambda: demo.check_request({"m": None}, **{**values, **changes})


@pytest.mark.parametrize("w", SCALES)
def test_a_config_a_command_line_and_the_demo_take_a_guidance_scale_by_one_rule(tmp_path, w):
    ok = cfg_scale_ok(w)
    assert refused(lambda: check_cfg_scale(w), UsageError) == (not ok)
    assert refused(lambda: tiny_config(tmp_path, sampling={"cfg_scale": w}), ConfigError) == (not ok)
    distil = {"method": "consistency_distillation", "teacher": "teacher.pt", "teacher_cfg_scale": w}
    assert refused(lambda: tiny_config(tmp_path, fewstep=distil), ConfigError) == (not ok)
    assert refused(demo_request(cfg_scale=w), demo.DemoInputError) == (not cfg_scale_ok(w, most=demo.MAX_CFG))
    assert ok == (math.isfinite(w) and w >= 0)  # the rule itself: finite (NaN slips through `w < 0`), >= 0


@pytest.mark.parametrize("steps", [0, 1, 2, MAX_STEPS, MAX_STEPS + 1, 10**6, 2.5, math.inf, math.nan])
def test_a_config_a_command_line_and_the_demo_take_steps_by_one_rule(tmp_path, steps):
    ok = steps_ok(steps)
    if isinstance(steps, int):  # argparse and a config give whole numbers
        assert refused(lambda: check_steps(steps), UsageError) == (not ok)
        # A config may name more than MAX_STEPS (it is refused when it samples): the same rule, no upper bound.
        assert refused(lambda: tiny_config(tmp_path, sampling={"steps": steps}), ConfigError) == (steps < 1)
        assert steps_ok(steps, most=None) == (steps >= 1)
    assert refused(demo_request(steps=steps), demo.DemoInputError) == (not ok)
    assert ok == (math.isfinite(steps) and steps == int(steps) and 1 <= steps <= MAX_STEPS)


# --- one CFG mix, bit for bit as before -----------------------------------------------------------

TARGETS = [("eps", "linear"), ("v", "scaled_linear"), ("flow", "flow")]


def teacher_of(cfg, w: float):
    """What ConsistencyTrainer.teacher_step reads of its trainer: the teacher, the path, the objective, fewstep."""
    return types.SimpleNamespace(teacher=tiny_model(cfg), path=build_path(cfg.diffusion),
                                 objective=build_objective(cfg.diffusion.target),
                                 cfg=types.SimpleNamespace(fewstep=types.SimpleNamespace(teacher_cfg_scale=w)))


def inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(3, 1, 28, 28, generator=g), torch.tensor([0.75, 0.5, 0.25]), torch.tensor([0.5, 0.25, 0.0]),
            torch.tensor([1, 4, 10]))


@pytest.mark.parametrize("target,schedule", TARGETS)
@pytest.mark.parametrize("w", [2.0, 1.0, 0.0])
def test_the_distillation_teacher_guides_with_the_guidance_modules_mix_bit_for_bit(tmp_path, monkeypatch,
                                                                                  target, schedule, w):
    cfg = tiny_config(tmp_path, diffusion={"target": target, "schedule": schedule})
    me = teacher_of(cfg, w)
    x_t, t, s, y = inputs()
    # The teacher's step as fewstep.py wrote it out before issue 43.
    with torch.no_grad():
        a_t, s_t = broadcast(me.path.alpha(t), x_t), broadcast(me.path.sigma(t), x_t)
        out = me.teacher(torch.cat([x_t, x_t]), torch.cat([t, t]) * 1000, torch.cat([y, null_condition(y)]))
        cond, uncond = out.float().chunk(2)
        x0, eps = me.objective.to_x0_eps(uncond + w * (cond - uncond), x_t, a_t, s_t)
        before = broadcast(me.path.alpha(s), x_t) * x0 + broadcast(me.path.sigma(s), x_t) * eps
    mixes = []
    monkeypatch.setattr(fewstep, "cfg_mix", lambda c, u, scale: mixes.append(scale) or cfg_mix(c, u, scale))
    assert torch.equal(ConsistencyTrainer.teacher_step(me, x_t, t, s, y), before)
    assert mixes == [w]  # guidance.cfg_mix, not a formula of its own


@pytest.mark.parametrize("target,schedule", TARGETS)
def test_the_samplers_denoiser_mixes_as_before_bit_for_bit(tmp_path, target, schedule):
    cfg = tiny_config(tmp_path, diffusion={"target": target, "schedule": schedule})
    model, path, objective = tiny_model(cfg), build_path(cfg.diffusion), build_objective(target)
    x, _, _, y = inputs()
    w, t = 3.0, 0.6
    with torch.no_grad():  # Denoiser._predict as guidance.py wrote it out before issue 43
        tt = torch.full((3,), t)
        out = model(torch.cat([x, x]), torch.cat([tt, tt]) * 1000, torch.cat([y, null_condition(y)]))
        out_c, out_u = out.float().chunk(2)
        a, s = broadcast(path.alpha(tt), x), broadcast(path.sigma(tt), x)
        (x0_c, eps_c), (x0_u, eps_u) = objective.to_x0_eps(out_c, x, a, s), objective.to_x0_eps(out_u, x, a, s)
        before = (x0_u + w * (x0_c - x0_u), eps_u + w * (eps_c - eps_u))
        after = Denoiser(model, objective, path, y, cfg_scale=w)(x, t)
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
