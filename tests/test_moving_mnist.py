"""Moving MNIST made here (issue 49, difflab.moving_mnist): clips drawn from a checked table of motions."""

import numpy as np
import pytest
import torch

from difflab import moving_mnist as mm


def blobs(n: int, seed: int = 0) -> np.ndarray:
    """(n, 28, 28) uint8 stand-ins for digits: a bright rectangle of random size and place, at most 20x20."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        h, w = rng.integers(6, 21, 2)
        top, left = rng.integers(0, 29 - h), rng.integers(0, 29 - w)
        out[i, top:top + h, left:left + w] = rng.integers(100, 256)
    return out


def test_each_splits_motions_are_the_published_ones_and_start_with_room_to_show_their_direction():
    for split, (n, _) in mm.SPLITS.items():
        motion = mm.motions(split, np.zeros(n + 5))  # only how many digits the split has matters
        assert motion.shape == (n, 5) and mm.motion_sha256(motion) == mm.MOTION_SHA256[split]
        assert np.array_equal(motion[:, mm.DIGIT], np.arange(n))
        pos = mm.positions(motion)
        assert pos.min() >= 0 and pos.max() <= mm.ROOM  # the tile never leaves the canvas
        step = np.array(list(mm.DIRECTIONS.values()))[motion[:, mm.DIRECTION]]
        speed = np.array(list(mm.SPEEDS.values()))[motion[:, mm.SPEED]]
        for f in range(1, mm.CLEAR + 1):  # no bounce in the first CLEAR frames
            assert np.array_equal(pos[:, f] - pos[:, 0], step * speed[:, None] * f)
        bounced = np.abs(np.diff(pos, axis=1)).sum(-1) < speed[:, None]  # a step shortened by a wall
        assert bounced.any() and not bounced.all()
        assert len(np.unique(motion[:, mm.DIRECTION])) == 4 and len(np.unique(motion[:, mm.SPEED])) == 2
    with pytest.raises(ValueError, match="fewer than"):
        mm.motions("test", np.zeros(10))


def test_a_clip_carries_its_digit_whole_in_every_frame_and_its_motion_reads_back():
    digits = blobs(64)
    tiles = mm.tiles(digits)
    assert np.array_equal(tiles.astype(int).sum((1, 2)), digits.astype(int).sum((1, 2)))  # all the ink, moved
    motion = mm.motions("test", np.zeros(1000))[:64]
    clips = mm.render(tiles, motion)
    assert clips.shape == (64, mm.FRAMES, mm.CANVAS, mm.CANVAS)
    ink = clips.astype(int).sum((2, 3))
    assert np.array_equal(ink, np.repeat(tiles.astype(int).sum((1, 2))[:, None], mm.FRAMES, 1))
    y, x = mm.positions(motion)[5, 3]
    assert np.array_equal(clips[5, 3, y:y + mm.TILE, x:x + mm.TILE], tiles[5])  # where positions() says
    direction, speed = mm.motion_of(torch.from_numpy(clips))
    assert torch.equal(direction, torch.from_numpy(motion[:, mm.DIRECTION]))
    assert torch.equal(speed, torch.from_numpy(motion[:, mm.SPEED]))
    still = torch.from_numpy(np.repeat(clips[:, :1], mm.FRAMES, 1))  # a digit that does not move: slow at best
    assert (mm.motion_of(still)[1] == 0).all()
    assert mm.prompt(7, 0, 1) == "a 7 moving left quickly"
