"""The demo's generation function, without a browser: it samples reproducibly, refuses bad values
with a message, compares two models from the same noise, and survives many requests at once."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_config, tiny_data
from difflab.demo.session import (MAX_WORK, DemoInputError, check_request, few_steps_hint, find_checkpoints, generate,
                          load_models, max_steps)
from difflab.training import Trainer

ROOT = Path(__file__).resolve().parent.parent
FAST = dict(digit=3, cfg_scale=2.0, steps=3, sampler="ddim", seed=0, n_images=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A conditional model trained for an epoch, and an unconditional one straight from initialisation."""
    tmp = tmp_path_factory.mktemp("demo")
    Trainer(tiny_config(tmp / "a"), data=tiny_data(64), quiet=True).fit()
    other = Trainer(tiny_config(tmp / "b", training={"cfg_dropout_prob": 1.0, "seed": 1}), quiet=True,
                    data=tiny_data(16)).save("untrained.pt")
    trained = tmp / "a" / "experiments" / "tiny" / "checkpoints" / "model_epoch_1.pt"
    return load_models([trained, other], "cpu")


def first(models):
    return next(iter(models))


def run(models, **changes):
    return generate(models, **{"model": first(models), **FAST, **changes})


def cell(picture: np.ndarray, row: int = 0, col: int = 0) -> np.ndarray:
    """One 28x28 image of a grid_array picture drawn at scale 3 with 2-pixel gaps."""
    top, left = 3 * (2 + 30 * row), 3 * (2 + 30 * col)
    return picture[top : top + 84, left : left + 84]


def test_a_request_gives_images_a_trajectory_and_its_cost(models):
    (panel,) = run(models, n_images=10, steps=4)
    assert panel.grid.dtype == np.uint8 and panel.grid.shape == (3 * (2 * 30 + 2), 3 * (8 * 30 + 2))  # 8 per row
    assert panel.strip.shape[0] == 3 * (2 * 30 + 2)  # x_t above, predicted x0 below
    assert panel.gif.startswith(b"GIF89a")
    assert panel.nfe == 4 and panel.seconds > 0
    assert "digit 3" in panel.summary() and "4 model evaluations" in panel.summary()
    # The strip starts from pure noise: the first x_t is the seed's noise, not an image in [-1, 1] clamped flat.
    assert cell(panel.strip).std() > 40


def test_the_same_seed_gives_the_same_images_and_another_seed_others(models):
    a, b, c = (run(models, seed=s)[0].grid for s in (7, 7, 8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    ancestral = [run(models, seed=5, sampler="ddpm")[0].grid for _ in range(2)]
    assert np.array_equal(*ancestral)


def test_side_by_side_runs_two_models_from_the_same_noise(models):
    name_a, name_b = list(models)
    panels = generate(models, model=name_a, compare_with=name_b, **FAST)
    assert [p.model for p in panels] == [name_a, name_b]
    # Step 0 shows x_t = the starting noise: identical; the models then make different images.
    assert np.array_equal(cell(panels[0].strip), cell(panels[1].strip))
    assert not np.array_equal(panels[0].grid, panels[1].grid)
    assert "unconditional" in panels[1].summary() and "guidance 1," in panels[1].summary()


@pytest.mark.parametrize("changes, message", [
    ({"digit": 12}, "digit: expected a whole number from 0 to 9, got 12"),
    ({"digit": 2.5}, "digit: expected a whole number"),
    ({"digit": None}, "digit: expected a whole number from 0 to 9, got nothing"),
    ({"digit": "seven"}, "digit: .* got 'seven'"),
    ({"steps": 100_000}, "steps: expected a whole number from 1 to 1000, got 100000"),
    ({"steps": 0}, "steps: expected"),
    ({"steps": "1e400"}, "steps: expected .* got inf"),
    ({"cfg_scale": -1}, "guidance scale: expected a number from 0 to 20"),
    ({"cfg_scale": float("nan")}, "guidance scale: .* got nan"),
    ({"seed": -3}, "seed: expected a whole number from 0 to 2147483647, got -3"),
    ({"n_images": 65}, "images: expected a whole number from 1 to 64"),
    ({"sampler": "plms"}, "sampler: expected one of ddpm, ddim, euler, heun, dpm\\+\\+2m, consistency, got 'plms'"),
    ({"model": "nope"}, "model: expected one of"),
    ({"compare_with": "nope"}, "compare with: expected one of"),
    ({"steps": 1000, "n_images": 64},
     f"too much work .* 64 images x 1000 steps = 64000 image evaluations, more than the {MAX_WORK}"),
    ({"steps": 600, "n_images": 4, "sampler": "heun"}, "too much work .* x 2 \\(Heun"),
])
def test_bad_values_are_refused_with_a_message_before_any_work(models, changes, message):
    with pytest.raises(DemoInputError, match=message) as e:
        run(models, **changes)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("sampler", ["ddim", "heun"])
@pytest.mark.parametrize("n_images", [1, 4, 5, 8, 64])
def test_the_steps_limit_the_page_states_is_the_one_applied(models, sampler, n_images):
    limit = max_steps(n_images, sampler)
    check_request(models, **{**FAST, "model": first(models), "steps": limit, "n_images": n_images, "sampler": sampler})
    with pytest.raises(DemoInputError, match=f"at most {limit} steps" if limit < 1000 else "from 1 to 1000"):
        check_request(models, **{**FAST, "model": first(models), "steps": limit + 1, "n_images": n_images,
                                 "sampler": sampler})


def test_a_hint_explains_noise_only_where_sampling_starts_below_pure_noise(models, monkeypatch):
    pipe = models[first(models)]  # leading spacing: 1 step starts at t = 0.001, 2 steps at t = 0.501
    assert "at least 2 steps" in few_steps_hint(pipe, 1) and few_steps_hint(pipe, 2) == ""
    assert "at least 2 steps" in run(models, steps=1)[0].summary()
    monkeypatch.setattr(pipe.cfg.sampling, "spacing", "trailing")  # 1 step starts at t = 1: no hint
    assert few_steps_hint(pipe, 1) == ""


def test_every_problem_is_named_at_once_and_text_numbers_are_read(models):
    with pytest.raises(DemoInputError) as e:
        run(models, digit=-1, steps=2.5, seed="x")
    assert [p.split(":")[0] for p in str(e.value).split("; ")] == ["digit", "steps", "seed"]
    assert "digit 4" in run(models, digit="4", steps="3", seed=" 2 ")[0].summary()  # what an API client may send


def test_twenty_requests_at_once_all_complete_with_their_own_images(models):
    expected = {seed: run(models, seed=seed, n_images=1, steps=2)[0].grid for seed in (0, 1)}
    with ThreadPoolExecutor(max_workers=20) as pool:
        futures = [pool.submit(run, models, seed=k % 2, n_images=1, steps=2) for k in range(20)]
        results = [f.result(timeout=120) for f in futures]
    for k, (panel,) in enumerate(results):
        assert np.array_equal(panel.grid, expected[k % 2]), k


def test_models_are_named_by_run_and_epoch_short_enough_to_read_whole(models):
    assert list(models) == ["tiny/epoch 1", "tiny/untrained"]


def test_the_newest_checkpoint_of_each_run_is_found(tmp_path):
    for name in ["a/checkpoints/model_epoch_2.pt", "a/checkpoints/model_epoch_10.pt", "a/checkpoints/last.pt",
                 "b/checkpoints/last.pt", "c/checkpoints/notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    found = [p.relative_to(tmp_path).as_posix() for p in find_checkpoints(tmp_path)]
    assert found == ["a/checkpoints/model_epoch_10.pt", "b/checkpoints/last.pt"]  # 10 > 2, not "10" < "2"


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "missing.pt"], "no such checkpoint"),
    (["--experiments", "."], "no run in . has"),
])
def test_the_command_refuses_bad_input_with_one_line(tmp_path, args, message):
    r = subprocess.run([sys.executable, str(ROOT / "interactive_demo.py"), *args], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_a_prompt_model_draws_the_prompt_and_a_label_model_its_digit(models, tmp_path):
    from difflab import prompts

    cfg = tiny_config(tmp_path, model={"conditioning": "prompt", "text_dim": 16, "text_heads": 2,
                                       "cross_attention_levels": [1]},
                      training={"max_steps": 10, "ema_decay": 0.0, "warmup_steps": 1})  # the raw weights: the
    x, y = tiny_data(32)                                                                # prompt has a say already
    trainer = Trainer(cfg, data=(x, prompts.encode([prompts.write(int(d), {"thickness": 0}) for d in y])), quiet=True)
    trainer.fit()
    both = {**load_models([trainer.out_dir / "checkpoints" / "last.pt"], "cpu"), **models}
    prompt_model, label_model = list(both)[:2]
    a, b = generate(both, model=prompt_model, compare_with=label_model, **{**FAST, "digit": 1},
                    prompt="a thin, wide 7")
    assert 'prompt "a thin, wide 7"' in a.summary()
    assert "digit 7 (this model reads class labels, not prompts)" in b.summary()  # the prompt's digit, not the box's
    other = generate(both, model=prompt_model, **FAST, prompt="a thick 7")[0]
    assert not np.array_equal(other.grid, a.grid)  # one word changed the images
    with pytest.raises(DemoInputError, match="prompt: unknown word 'bold'"):
        generate(both, model=prompt_model, **FAST, prompt="a bold 7")


def test_an_unclip_decoder_shows_a_real_digit_and_its_variations(tmp_path, monkeypatch):
    """Issue 47: a model of CLIP image embeddings draws variations of one real test digit, shown first; the seed
    picks which digit."""
    import torch

    from conftest import synthetic_split
    from difflab import unclip
    from difflab.data import tensor_to_uint8

    monkeypatch.setattr(unclip, "load_split", synthetic_split)
    monkeypatch.setattr(unclip, "image_embeddings_of", lambda x, *a, **k: torch.nn.functional.normalize(
        x.flatten(1)[:, 100:164] + 1.0, dim=-1))  # a stand-in for the tiny CLIP's image tower
    x, y = tiny_data(32)
    cfg = tiny_config(tmp_path, model={"conditioning": "clip_image", "text_dim": 16, "text_heads": 2,
                                       "cross_attention_levels": [1], "pooled_text": True},
                      training={"max_steps": 3})
    trainer = Trainer(cfg, data=(x, unclip.image_embeddings_of(x)), quiet=True)
    trainer.fit()
    decoder = load_models([trainer.out_dir / "checkpoints" / "last.pt"], "cpu")
    panel = generate(decoder, model=first(decoder), **{**FAST, "digit": 3, "n_images": 3})[0]
    assert "variations of a real test 3" in panel.summary()
    real = np.kron(tensor_to_uint8(unclip.test_images_of([3]))[0], np.ones((3, 3), np.uint8))
    assert np.array_equal(cell(panel.grid, 0, 0), real)  # the first image is the real digit
    assert panel.grid.shape[1] == 3 * (2 + 30 * 4)  # then the 3 variations
    other = generate(decoder, model=first(decoder), **{**FAST, "digit": 3, "n_images": 3, "seed": 1})[0]
    assert not np.array_equal(cell(other.grid, 0, 0), real)  # another seed, another real 3
