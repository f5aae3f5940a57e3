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
