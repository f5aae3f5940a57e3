"""Prompts (issue 26): measured attributes, the tokenizer, the cached prompt set, and models that read prompts."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config, tiny_data

from difflab import attributes, prompts
from difflab.config import ConfigError
from difflab.models import build_model
from difflab.models.text import START_ID, drop_condition, null_condition
from difflab.training import Trainer

ROOT = Path(__file__).resolve().parent.parent


def canvas(*strokes):
    """A 28x28 uint8 image with ink along each stroke: (row0, col0, row1, col1, half-width)."""
    img = np.zeros((28, 28), np.uint8)
    rows, cols = np.mgrid[:28, :28]
    for r0, c0, r1, c1, hw in strokes:
        for f in np.linspace(0, 1, 60):
            r, c = r0 + f * (r1 - r0), c0 + f * (c1 - c0)
            img[(np.abs(rows - r) <= hw) & (np.abs(cols - c) <= hw)] = 255
    return img


def test_attributes_order_strokes_as_a_person_would():
    thin, thick = canvas((4, 14, 23, 14, 0.5)), canvas((4, 14, 23, 14, 2.5))
    right, left = canvas((4, 18, 23, 10, 1)), canvas((4, 10, 23, 18, 1))  # top to the right: leaning right
    narrow, wide = canvas((4, 12, 23, 12, 1), (4, 16, 23, 16, 1)), canvas((4, 6, 23, 6, 1), (4, 22, 23, 22, 1))
    m = attributes.measure(np.stack([thin, thick, right, left, narrow, wide]))
    assert m["thickness"][1] > m["thickness"][0] + 2  # a 6-pixel stroke against a 2-pixel one
    assert m["slant"][2] > 15 and m["slant"][3] < -15 and abs(m["slant"][0]) < 1
    assert m["width"][5] > m["width"][4] + 8  # the bars 16 pixels apart against 4
    # width is measured upright: leaning does not make a stroke wide
    assert abs(m["width"][2] - m["width"][0]) < 3


def test_words_in_and_out_of_the_tokenizer():
    tokens = prompts.encode(["a thick, right-slanted 7", ""])
    assert tokens.shape == (2, prompts.MAX_TOKENS)
    assert prompts.decode(tokens[0]) == "a thick right-slanted 7"
    assert tokens[1, 0] == START_ID and (tokens[1, 1:] == 0).all()  # the empty prompt: the start token alone
    with pytest.raises(prompts.PromptError, match=r"unknown word 'bold'.*thick"):
        prompts.tokenize("a bold 7")
    with pytest.raises(prompts.PromptError, match="at most"):
        prompts.tokenize("thin " * 20)


@pytest.mark.parametrize("phrasing", range(4))
def test_every_phrasing_says_what_it_was_asked(phrasing):
    for digit in range(10):
        asked = {"slant": 2, "thickness": 0, "width": 1}
        for k in range(4):
            sub = dict(list(asked.items())[:k])
            text = prompts.write(digit, sub, phrasing, digit_as_word=digit % 2 == 1)
            assert prompts.parse(text) == (digit, sub), text
            prompts.tokenize(text)  # every word is in the vocabulary and it fits


def test_the_prompt_set_is_cached_and_rebuilt_when_the_images_change(tmp_path):
    x, y = tiny_data(64)
    images = ((x[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    cache = tmp_path / "prompts.npz"
    first = prompts.prompt_data(images, y.numpy(), cache)
    assert cache.exists() and len(first.texts) == 64
    again = prompts.prompt_data(images, y.numpy(), cache)
    assert again.texts == first.texts and np.array_equal(again.tokens, first.tokens)
    for i, text in enumerate(first.texts):  # each prompt names its image's digit and bins
        digit, asked = prompts.parse(text)
        assert digit == y[i] and all(first.bins[name][i] == b for name, b in asked.items())
    images[0, 0, 0] = 255 - images[0, 0, 0]  # other images: the cache is not theirs
    other = prompts.prompt_data(images, y.numpy(), cache)
    assert other.thresholds.edges["thickness"] is not None
    cache.write_bytes(b"not an npz")  # damaged: rebuilt, not trusted
    assert prompts.prompt_data(images, y.numpy(), cache).texts == other.texts


def test_thresholds_split_each_attribute_in_thirds():
    rng = np.random.default_rng(0)
    measured = {name: rng.normal(size=3000) for name in prompts.BINS}
    digits = rng.integers(0, 10, 3000)
    bins = prompts.Thresholds.fit(measured, digits).bin(measured, digits)
    for name, b in bins.items():
        share = np.bincount(b, minlength=3) / len(b)
        assert np.allclose(share, 1 / 3, atol=0.02), (name, share)
        if name in prompts.PER_DIGIT:  # within every digit, too
            assert np.allclose(np.bincount(b[digits == 3], minlength=3) / (digits == 3).sum(), 1 / 3, atol=0.06)


def test_the_null_condition_is_the_empty_prompt():
    tokens = prompts.encode(["a thin 3", "wide 8"])
    assert (null_condition(tokens) == prompts.encode(["", ""])).all()
    dropped = drop_condition(tokens, torch.tensor([True, False]))
    assert (dropped[0] == prompts.encode([""])[0]).all() and (dropped[1] == tokens[1]).all()
    labels = torch.tensor([3, 8])
    assert drop_condition(labels, torch.tensor([False, True])).tolist() == [3, 10]


def prompt_model(architecture):
    if architecture == "unet":
        cfg = tiny_config(Path("/tmp"),
                          model={"conditioning": "prompt", "text_dim": 16, "text_heads": 2,
                                 "cross_attention_levels": [1]})
    else:
        cfg = tiny_config(Path("/tmp"),
                          model={"architecture": "mmdit", "hidden_size": 32, "depth": 2, "single_depth": 1,
                                 "num_heads": 2, "patch_size": 4, "conditioning": "prompt", "text_dim": 16,
                                 "text_heads": 2, "pos_embed": "rope"})
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    with torch.no_grad():  # leave the identity-at-init: every zero-initialised layer gets weights
        for p in model.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("architecture", ["unet", "mmdit"])
def test_a_prompt_model_reads_its_words_and_never_its_padding(architecture):
    model = prompt_model(architecture)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([300.0, 700.0])
    tokens = prompts.encode(["a thick 7", "the digit two, thin"])
    with torch.no_grad():
        out = model(x, t, tokens)
        other = model(x, t, prompts.encode(["a thin 7", "the digit two, thin"]))
        assert (out[0] - other[0]).abs().max() > 1e-4  # one word changed: the image's prediction too
        assert torch.allclose(out[1], other[1], atol=1e-5)  # the other prompt is untouched
        shorter = model(x, t, tokens[:, :6])  # the same words with less padding
        assert torch.allclose(out, shorter, atol=1e-5)


def test_prompt_models_train_and_guide(tmp_path):
    x, y = tiny_data(64)
    texts = [prompts.write(int(d), {}) for d in y]
    cfg = tiny_config(tmp_path, model={"conditioning": "prompt", "text_dim": 16, "text_heads": 2,
                                       "cross_attention_levels": [1]}, training={"epochs": 2})
    trainer = Trainer(cfg, data=(x, prompts.encode(texts)), quiet=True)
    assert trainer.model.text is not None and trainer.model.label_embed is None
    trainer.fit()
    pipe = trainer.pipeline()
    images = pipe.generate(pipe.prompts(["a 3", "an 8"]), seed=0).images
    assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all()
    assert pipe.default_labels([3], 2).shape == (2, prompts.MAX_TOKENS)


def test_prompt_configs_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="model.conditioning"):
        tiny_config(tmp_path, model={"architecture": "dit", "conditioning": "prompt"})
    with pytest.raises(ConfigError, match="model.cross_attention_levels"):
        tiny_config(tmp_path, model={"conditioning": "prompt", "cross_attention_levels": [5]})
    with pytest.raises(ConfigError, match="model.text_dim"):
        tiny_config(tmp_path, model={"conditioning": "prompt", "text_dim": 15, "text_heads": 2})


def test_adherence_compares_what_was_asked_with_what_was_drawn(tmp_path, monkeypatch, fake_mnist):
    """Held-out prompts cover every bin and a rare combination per digit; the scores are shares and chances."""
    from conftest import synthetic_split

    from difflab import adherence

    monkeypatch.setattr(prompts, "load_split", synthetic_split)
    monkeypatch.setattr("difflab.data.resolve_data_dir", lambda d=None: tmp_path / "no-such-folder")
    data = prompts.training_prompt_set()
    asks = adherence.held_out_prompts(data)
    assert len(asks) == 10 * adherence.PER_DIGIT
    for name in prompts.BINS:  # every bin of every attribute is asked for
        assert {a["asked"][name] for a in asks if a["kind"] == "single" and name in a["asked"]} == {0, 1, 2}
    counts = adherence.combination_counts(data)
    for a in asks:
        if a["kind"] == "rare":
            assert a["training_images"] == counts[a["digit"]].min()

    model_cfg = {"conditioning": "prompt", "text_dim": 16, "text_heads": 2, "cross_attention_levels": [1]}
    cfg = tiny_config(tmp_path, model=model_cfg, training={"max_steps": 2})
    x, y = tiny_data(32)
    trainer = Trainer(cfg, data=(x, prompts.encode([prompts.write(int(d), {}) for d in y])), quiet=True)
    trainer.fit()
    from difflab import clip

    monkeypatch.setattr(clip, "load_split", synthetic_split)
    result = adherence.prompt_adherence(trainer.pipeline(), fake_mnist, per_prompt=2, clip_model=clip.TinyCLIP())
    assert result["prompts"] == 50 and 0 <= result["accuracy"] <= 1
    c = result["clip"]  # CLIP score beside the hit rates: both scores in [0, 100], a correlation, a share
    assert 0 <= c["clip_score"] <= 100 and 0 <= c["real_images"] <= 100
    assert -1 <= c["correlation_over_prompts"] <= 1 and 0 <= c["all_asked_followed"] <= result["accuracy"]
    assert "CLIP score" in adherence.adherence_table(result)
    for r in result["attributes"].values():
        assert 0 <= r["hit_rate"] <= 1 and 0 < r["chance"] < 1 and -1 <= r["correlation"] <= 1
    assert "| thickness |" in adherence.adherence_table(result)

    # evaluate.py samples the held-out prompts as it sampled the FID's images: its sampler, steps, guidance
    pipe, seen = trainer.pipeline(), {}
    generate = pipe.generate
    pipe.generate = lambda cond, **kw: seen.update(kw) or generate(cond, **kw)
    adherence.prompt_adherence(pipe, fake_mnist, per_prompt=1, sampler="euler", steps=2, cfg_scale=3.0)
    assert (seen["sampler"], seen["steps"], seen["cfg_scale"]) == ("euler", 2, 3.0)

    # FID with real captions: training images' own prompts, their digits asked for, the same every time
    from difflab.evaluation import asked_for

    digits, texts = prompts.captions(40)
    again = prompts.captions(40)
    assert len(set(texts)) > 1 and np.array_equal(again[0], digits) and again[1] == texts
    for d, text in zip(digits, texts):
        assert prompts.parse(text)[0] == d
    labels, condition = asked_for(pipe, 40, "captions")
    assert labels.tolist() == digits.tolist() and torch.equal(condition, pipe.prompts(texts))
    labels, _ = asked_for(pipe, 40)  # the digit alone: balanced
    assert labels.tolist() == [i % 10 for i in range(40)]
    with pytest.raises(ValueError, match="captions"):
        asked_for(pipe, 40, "titles")


def test_sample_py_draws_a_row_per_prompt_and_refuses_what_it_cannot_read(tmp_path, capsys):
    from faults._support import entry_main

    model_cfg = {"conditioning": "prompt", "text_dim": 16, "text_heads": 2, "cross_attention_levels": [1]}
    trainer = Trainer(tiny_config(tmp_path, model=model_cfg, training={"max_steps": 1}),
                      data=(tiny_data(16)[0], prompts.encode(["a 3"] * 16)), quiet=True)
    trainer.fit()
    ckpt = trainer.out_dir / "checkpoints" / "last.pt"
    out, npz = tmp_path / "grid.png", tmp_path / "s.npz"
    argv = ["--checkpoint", ckpt, "--device", "cpu", "--n", 2, "--steps", 1, "--out", out, "--save-npz", npz]
    assert entry_main("sample.py", argv + ["--prompt", "a thin 3", "--prompt", "a wide eight"]) == 0
    saved = np.load(npz)
    assert saved["y"].tolist() == [3, 3, 8, 8] and saved["prompts"].tolist()[2] == "a wide eight"
    assert out.stat().st_size > 0
    capsys.readouterr()
    assert entry_main("sample.py", argv + ["--prompt", "a bold 3"]) == 2  # unknown word: before loading
    assert "unknown word 'bold'" in capsys.readouterr().err

    labels_cfg = tiny_config(tmp_path / "labels", training={"max_steps": 1})
    labels = Trainer(labels_cfg, data=tiny_data(16), quiet=True)
    labels.fit()
    argv[1] = labels.out_dir / "checkpoints" / "last.pt"
    assert entry_main("sample.py", argv + ["--prompt", "a thin 3"]) == 1
    assert "trained on class labels" in capsys.readouterr().err


def test_a_prompt_config_loads_its_prompts_from_the_cache_beside_the_data(tmp_path, monkeypatch):
    from conftest import synthetic_split

    from difflab import latent

    monkeypatch.setattr(latent, "load_split", synthetic_split)
    cfg = tiny_config(tmp_path, data={"data_dir": str(tmp_path)},
                      model={"conditioning": "prompt", "text_dim": 16, "text_heads": 2, "cross_attention_levels": [1]})
    trainer = Trainer(cfg, quiet=True)
    assert trainer.y.shape == (120, prompts.MAX_TOKENS) and trainer.y.dtype == torch.long
    cache = tmp_path / "mnist_prompts.npz"
    stamp = cache.stat().st_mtime_ns
    digits = synthetic_split("train")[1]
    assert [prompts.parse(prompts.decode(t))[0] for t in trainer.y] == digits.tolist()  # each names its digit
    again = Trainer(cfg, quiet=True)
    assert torch.equal(again.y, trainer.y) and cache.stat().st_mtime_ns == stamp  # read back, not rebuilt


def test_the_pooled_prompt_can_join_the_u_nets_time_embedding_as_in_sdxl():
    """model.pooled_text: the U-Net also adds the pooled prompt to the time embedding (Podell et al. 2023)."""
    from difflab.config import load_config
    from difflab.models import build_model, count_parameters

    plain = build_model(load_config(ROOT / "configs/prompt/sd1_unet_crossattn.yaml").model)
    cfg = load_config(ROOT / "configs/prompt/sd1_unet_crossattn.yaml", ["model.pooled_text=true"])
    model = build_model(cfg.model)
    emb = 4 * cfg.model.net.channels
    assert count_parameters(model) - count_parameters(plain) == cfg.model.text_dim * emb + emb
    for p in model.parameters():  # as after training: the zero-initialised layers have moved
        torch.nn.init.normal_(p, std=0.05)
    out = model(torch.randn(2, 1, 28, 28), torch.full((2,), 500.0), prompts.encode(["a thin 3", "a thick 7"]))
    out.square().mean().backward()
    assert model.pooled_embed.weight.grad.abs().sum() > 0  # the pooled vector reaches the output


def test_the_text_encoder_can_learn_at_a_share_of_the_lr(tmp_path):
    """training.text_lr_scale: the text encoder's parameter group follows the schedule at lr x the scale."""
    x, y = tiny_data(32)
    cfg = tiny_config(tmp_path, model={"conditioning": "prompt", "text_dim": 16, "text_heads": 2,
                                       "cross_attention_levels": [1]},
                      training={"max_steps": 3, "lr": 0.01, "warmup_steps": 0, "text_lr_scale": 0.25})
    trainer = Trainer(cfg, data=(x, prompts.encode([prompts.write(int(d), {}) for d in y])), quiet=True)
    main, text = trainer.opt.param_groups
    assert {id(p) for p in text["params"]} == {id(p) for p in trainer.model.text.parameters()}
    assert not {id(p) for p in main["params"]} & {id(p) for p in text["params"]}
    trainer.train_step(1)
    assert main["lr"] > 0 and text["lr"] == pytest.approx(0.25 * main["lr"])
    labels = Trainer(tiny_config(tmp_path / "labels", training={"max_steps": 1, "text_lr_scale": 0.25}),
                     data=tiny_data(16), quiet=True)
    assert len(labels.opt.param_groups) == 1  # no text encoder: one group, the scale has nothing to scale
    with pytest.raises(ConfigError, match="training.text_lr_scale"):
        tiny_config(tmp_path, training={"text_lr_scale": 0})
