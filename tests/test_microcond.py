"""SDXL's micro-conditioning, the data side (difflab.microcond): framings drawn, applied, and measured back."""

from pathlib import Path

import pytest
import torch

from difflab import microcond
from difflab.data import load_split, tensor_to_uint8

DATA = Path(__file__).resolve().parents[1] / "data"


def a_digit() -> torch.Tensor:
    """A 20-row bar in MNIST's framing: rows 4-23, columns 12-15."""
    x = torch.full((1, 1, 28, 28), -1.0)
    x[0, 0, 4:24, 12:16] = 1.0
    return x


def test_the_centred_full_size_framing_is_mnists_own():
    x = a_digit()
    assert torch.equal(microcond.apply_framings(x, torch.tensor([microcond.CENTRED])), x)
    measured = microcond.framing(tensor_to_uint8(x))
    assert measured["height"][0] == 20 and not measured["cut_off"][0] and not measured["tiny"][0]


def test_a_big_crop_cuts_the_digit_off_and_a_small_paste_makes_it_tiny_and_moves_it():
    x = a_digit()
    big = microcond.apply_framings(x, torch.tensor([[56, 28, 14]]))  # twice the size, the window's top at row 28
    small = microcond.apply_framings(x, torch.tensor([[14, -14, 0]]))  # half the size, pasted at row 14, column 0
    m = microcond.framing(tensor_to_uint8(torch.cat([big, small])))
    assert m["cut_off"].tolist() == [True, False] and m["tiny"].tolist() == [False, True]
    assert 8 <= m["height"][1] <= 11 and m["centre_row"][1] > 14 + 4 and m["centre_col"][1] < 14


def test_drawn_framings_stay_in_range_and_are_reproducible():
    g = torch.Generator().manual_seed(0)
    f = microcond.draw_framings(5000, g)
    size, top, left = f.T
    assert size.min() >= round(28 * microcond.SIZE_MIN) and size.max() <= round(28 * microcond.SIZE_MAX)
    big = size >= 28
    for offset in (top, left):
        assert (offset[big] >= 0).all() and (offset[big] <= size[big] - 28).all()
        assert (offset[~big] <= 0).all() and (offset[~big] >= size[~big] - 28).all()
    assert (size < 28).float().mean() > 0.3 and (size > 28).float().mean() > 0.3  # both problems are common
    assert torch.equal(f, microcond.draw_framings(5000, torch.Generator().manual_seed(0)))


def test_reframed_mnist_has_the_problem_sdxl_had_and_its_own_framing_does_not():
    if not (DATA / "mnist.npz").is_file():
        pytest.skip(f"needs {DATA}/mnist.npz (python setup_mnist.py)")
    x, _ = load_split("test", data_dir=DATA)
    real = microcond.framing(tensor_to_uint8(x[:2000]))
    framed, conditions = microcond.framed_training_set(x[:2000], seed=0)
    seen = microcond.framing(tensor_to_uint8(framed))
    assert real["cut_off"].mean() < 0.01 and real["tiny"].mean() < 0.01
    assert seen["cut_off"].mean() > 0.2 and seen["tiny"].mean() > 0.1
    told_small = conditions[:, 0].numpy() < 16  # a 20-row digit at 16/28 of its size: about 11 rows
    told_big = conditions[:, 0].numpy() > 36
    assert seen["tiny"][told_small].mean() > 0.9 and seen["cut_off"][told_big].mean() > 0.9  # told and seen agree


def test_a_model_told_the_framing_reads_it_and_guidance_keeps_it(tmp_path, monkeypatch):
    from conftest import synthetic_split, tiny_config

    from difflab import latent
    from difflab.config import ConfigError
    from difflab.models.text import drop_condition, null_condition
    from difflab.training import Trainer

    framed = torch.tensor([[3, 28, 0, 0], [7, 40, 5, 9]])
    assert torch.equal(null_condition(framed), torch.tensor([[10, 28, 0, 0], [10, 40, 5, 9]]))  # the size stays
    assert torch.equal(drop_condition(framed, torch.tensor([False, True]))[1], torch.tensor([10, 40, 5, 9]))

    monkeypatch.setattr(latent, "load_split", synthetic_split)
    told = tiny_config(tmp_path, data={"reframe": True}, model={"micro_conditioning": True},
                       training={"max_steps": 4, "warmup_steps": 1})
    (x, y), _ = latent.load_training_data(told, torch.device("cpu"))
    plain_x, plain_y = synthetic_split("train")
    assert y.shape == (len(plain_y), 4) and torch.equal(y[:, 0], plain_y) and not torch.equal(x, plain_x)
    assert torch.equal(x, microcond.framed_training_set(plain_x)[0])  # the same framings every time
    untold = tiny_config(tmp_path / "u", data={"reframe": True})
    assert latent.load_training_data(untold, torch.device("cpu"))[0][1].shape == plain_y.shape

    trainer = Trainer(told, data=(x, y), quiet=True)
    trainer.fit()
    pipe = trainer.pipeline()
    assert torch.equal(pipe.default_labels([3], 1), torch.tensor([[3, 28, 0, 0]]))  # asked: centred, full size
    model, t = trainer.ema.model, torch.full((2,), 500.0)
    noise = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        a = model(noise, t, torch.tensor([[3, 28, 0, 0], [3, 28, 0, 0]]))
        b = model(noise, t, torch.tensor([[3, 28, 0, 0], [3, 44, 10, 3]]))
    assert torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])  # the framing reaches the output

    with pytest.raises(ConfigError, match="model.micro_conditioning"):
        tiny_config(tmp_path, model={"micro_conditioning": True})  # nothing to tell without reframed data
    with pytest.raises(ConfigError, match="data.reframe"):
        tiny_config(tmp_path, data={"reframe": True}, model={"conditioning": "prompt", "text_dim": 16,
                                                             "text_heads": 2, "cross_attention_levels": [1]})


def test_evaluate_and_sample_speak_of_framing(tmp_path, monkeypatch, fake_mnist):
    from conftest import tiny_config, tiny_data

    from difflab import evaluation
    from difflab.commands import sample
    from difflab.infra.failures import UsageError
    from difflab.training import Trainer

    x, y = tiny_data(32)
    framings = microcond.draw_framings(32, torch.Generator().manual_seed(0))
    cfg = tiny_config(tmp_path, data={"reframe": True}, model={"micro_conditioning": True},
                      training={"max_steps": 2})
    trainer = Trainer(cfg, data=(x, torch.cat([y[:, None], framings], 1)), quiet=True)
    trainer.fit()
    scores = evaluation.evaluate_pipeline(trainer.pipeline(), fake_mnist, 10, steps=2)
    assert set(scores["framing"]) == {"cut_off", "tiny"} and 0 <= scores["framing"]["tiny"] <= 1
    out = tmp_path / "big.png"
    ckpt = str(trainer.out_dir / "checkpoints" / "last.pt")
    npz = tmp_path / "big.npz"
    assert sample.main(["--checkpoint", ckpt, "--framing", "40,6,12", "--digits", "3", "--n", "2", "--steps", "2",
                        "--out", str(out), "--save-npz", str(npz), "--device", "cpu"]) == 0
    import numpy as np

    assert np.load(npz)["y"].tolist() == [3, 3]  # the digits asked for, not the framing
    for bad in ("40,0", "50,0,0", "20,3,0", "40,13,0"):  # a crop of a 40-pixel canvas starts at 0..12
        with pytest.raises(UsageError, match="--framing"):
            sample.main(["--checkpoint", ckpt, "--framing", bad])
