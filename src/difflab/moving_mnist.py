"""Moving MNIST made here (issue 49): short clips of one MNIST digit gliding across a small canvas, for the video DiT.

Srivastava et al. 2015 (arXiv 1502.04681) made Moving MNIST for video prediction: digits bouncing inside a 64x64
frame. This is a smaller, conditioned version, built from the checked MNIST arrays (data.py), nothing downloaded:

    a clip = FRAMES frames of CANVAS x CANVAS pixels; the digit's ink, cut to its bounding box (never more than
    20x20 in MNIST), centred on a TILE x TILE tile, starts at (y0, x0) and moves SPEEDS[s] pixels per frame in
    DIRECTIONS[d], bouncing off the walls (a reflection: the tile never leaves the canvas);
    its prompt names the digit and the motion: "a 7 moving left quickly".

A clip is fully described by one row of integers, its *motion* (digit index, direction, speed, y0, x0): a split is
such a table, drawn once from a fixed seed and checked by SHA-256 like the data, and render() turns rows into clips,
so 60,000 training clips cost a few kilobytes on disk. The held-out clips are the test digits'. Each clip's start
leaves two frames of travel before any bounce, so the first frames show the asked direction, and motion_of()
reads direction and speed back from the ink's centroid track: on real clips it recovers every motion (a test).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

FRAMES = 8  # frames per clip
CANVAS = 32  # the frame's side, in pixels
TILE = 20  # MNIST's digits fit a 20x20 box (their bounding boxes are at most 20 x 20)
ROOM = CANVAS - TILE  # how far the tile can move along each axis: positions 0..ROOM
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (dy, dx)
SPEEDS = {"slowly": 1, "quickly": 2}  # pixels per frame; quickly travels 14 pixels in 8 frames: it bounces
CLEAR = 2  # frames of travel before the first bounce, so the start shows the direction asked
SPLITS = {"train": (60_000, 1049), "test": (1_000, 2049)}  # clips in each split, and the seed of its motions
# motion columns
DIGIT, DIRECTION, SPEED, Y0, X0 = range(5)
# SHA-256 of each split's motion table (int64, C order), as motions() draws it: a change of the draw is caught
MOTION_SHA256 = {"train": "497b5822e13e35b7bb0248285937ec48837b91a242575004eb42caf50b5546f8",
                 "test": "740bdf7429b5ec54569b67c67e6d622042ed49e9ceca5081fc3a7de56d8b3476"}


def tiles(images: np.ndarray) -> np.ndarray:
    """MNIST images (N, 28, 28) uint8 -> (N, TILE, TILE): each digit's bounding box of ink, centred on a tile."""
    out = np.zeros((len(images), TILE, TILE), dtype=np.uint8)
    for i, image in enumerate(images):
        rows, cols = np.flatnonzero(image.any(1)), np.flatnonzero(image.any(0))
        if len(rows) == 0:
            continue  # a blank image stays a blank tile
        box = image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1][:TILE, :TILE]
        top, left = (TILE - box.shape[0]) // 2, (TILE - box.shape[1]) // 2
        out[i, top:top + box.shape[0], left:left + box.shape[1]] = box
    return out


def reflect(p: np.ndarray) -> np.ndarray:
    """Positions on an unbounded line folded into [0, ROOM]: a tile moving past a wall comes back off it."""
    p = np.mod(p, 2 * ROOM)
    return np.where(p > ROOM, 2 * ROOM - p, p)


def positions(motion: np.ndarray) -> np.ndarray:
    """(N, 5) motions -> (N, FRAMES, 2) top-left corners (y, x) of the tile in each frame."""
    step = np.array([DIRECTIONS[d] for d in DIRECTIONS])[motion[:, DIRECTION]]  # (N, 2)
    speed = np.array(list(SPEEDS.values()))[motion[:, SPEED]]  # (N,)
    f = np.arange(FRAMES)
    start = motion[:, [Y0, X0]]  # (N, 2)
    return reflect(start[:, None, :] + step[:, None, :] * speed[:, None, None] * f[None, :, None])


def motions(split: str, labels: np.ndarray) -> np.ndarray:
    """A split's motion table (N, 5) int64, one clip per digit of the split in order (the test split: its first
    SPLITS['test'] digits), each with a direction, a speed and a start drawn from the split's fixed seed. The start
    leaves CLEAR frames of travel towards the direction before a wall; across it, any position."""
    n, seed = SPLITS[split]
    if len(labels) < n:
        raise ValueError(f"the {split} split has {len(labels)} digits, fewer than its {n} clips")
    rng = np.random.default_rng(seed)
    direction = rng.integers(0, len(DIRECTIONS), n)
    speed = rng.integers(0, len(SPEEDS), n)
    travel = np.array(list(SPEEDS.values()))[speed] * CLEAR  # pixels the first CLEAR frames move
    along = rng.integers(0, ROOM + 1 - travel)  # (n,) room ahead >= travel: distance from the wall it moves to
    across = rng.integers(0, ROOM + 1, n)
    step = np.array(list(DIRECTIONS.values()))[direction]  # (n, 2)
    forwards = step.sum(1) > 0  # right or down: the room ahead of a start p is ROOM - p; left or up, p
    along = np.where(forwards, along, ROOM - along)
    vertical = step[:, 0] != 0
    y0, x0 = np.where(vertical, along, across), np.where(vertical, across, along)
    return np.stack([np.arange(n), direction, speed, y0, x0], axis=1).astype(np.int64)


def motion_sha256(motion: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(motion, dtype=np.int64).tobytes()).hexdigest()


def load_split(split: str = "train", data_dir=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A split of Moving MNIST from the checked MNIST file: (tiles (N, TILE, TILE) uint8, motions (N, 5), labels
    (N,)), its motion table checked against MOTION_SHA256; render(tiles, motions[i:j]) draws a batch of clips."""
    from .data import DataError, load_arrays

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    arrays = load_arrays("mnist", data_dir)
    n = SPLITS[split][0]
    motion = motions(split, arrays[f"y_{split}"])
    if motion_sha256(motion) != MOTION_SHA256[split]:
        raise DataError(f"Moving MNIST's {split} motions differ from the ones published (SHA-256): this NumPy draws "
                        "other numbers from the same seed")
    return tiles(arrays[f"x_{split}"][:n]), motion, arrays[f"y_{split}"][:n].astype(np.int64)


def render(digit_tiles: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """Clips (N, FRAMES, CANVAS, CANVAS) uint8 for motion rows (N, 5), whose DIGIT column indexes digit_tiles."""
    n = len(motion)
    pos = positions(motion)  # (N, F, 2)
    clips = np.zeros((n, FRAMES, CANVAS, CANVAS), dtype=np.uint8)
    i = np.arange(TILE)
    rows = pos[..., 0, None] + i  # (N, F, TILE)
    cols = pos[..., 1, None] + i
    clips[np.arange(n)[:, None, None, None], np.arange(FRAMES)[None, :, None, None],
          rows[..., :, None], cols[..., None, :]] = digit_tiles[motion[:, DIGIT]][:, None]
    return clips


def training_clips(data_dir=None, limit=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split as the video DiT trains on it: clips (N, 1, FRAMES, CANVAS, CANVAS) uint8 (60,000 clips
    are 0.5 GB as bytes, four times that as floats: the training loop converts each batch) and conditions (N, 3),
    (digit, direction, speed); `limit`: the first clips only."""
    digit_tiles, motion, labels = load_split("train", data_dir)
    motion, labels = motion[:limit], labels[:limit]
    clips = torch.from_numpy(render(digit_tiles, motion))[:, None]
    return clips, torch.from_numpy(np.stack([labels, motion[:, DIRECTION], motion[:, SPEED]], axis=1))


def conditions(digits, n_per_digit: int) -> torch.Tensor:
    """(N, 3) conditions for a grid: n_per_digit clips of each digit, cycling through the directions and speeds."""
    motions = [(d, s) for s in range(len(SPEEDS)) for d in range(len(DIRECTIONS))]
    rows = [(digit, *motions[(i + k) % len(motions)]) for i, digit in enumerate(digits) for k in range(n_per_digit)]
    return torch.tensor(rows, dtype=torch.long)


def first_frames(digits, data_dir=None) -> torch.Tensor:
    """Image-to-video's given frames (N, 1, CANVAS, CANVAS) in [-1, 1]: for each digit asked, the first frame of a
    held-out clip of it (the k-th time a digit is asked, its k-th held-out clip: the same frames every time)."""
    digit_tiles, motion, labels = load_split("test", data_dir)
    seen: dict = {}
    picks = []
    for d in (int(d) for d in digits):
        of_digit = np.flatnonzero(labels == d)
        picks.append(of_digit[seen.get(d, 0) % len(of_digit)])
        seen[d] = seen.get(d, 0) + 1
    frames = render(digit_tiles, motion[np.array(picks, dtype=np.int64)])[:, :1]  # (N, 1, CANVAS, CANVAS)
    return torch.from_numpy(frames).float() / 127.5 - 1


def prompt(digit: int, direction: int, speed: int) -> str:
    """What a clip is asked for: 'a 7 moving left quickly'."""
    return f"a {digit} moving {list(DIRECTIONS)[direction]} {list(SPEEDS)[speed]}"


PROMPT_FORM = f"a <digit> moving <{'|'.join(DIRECTIONS)}> <{'|'.join(SPEEDS)}>"


def parse_prompt(text: str) -> tuple[int, int, int]:
    """'a 7 moving left quickly' -> (7, 0, 1): a clip's prompt back to its (digit, direction, speed); ValueError
    naming the form for anything else (the prompts have one form, so reading them takes no trained encoder)."""
    words = text.lower().replace(",", " ").split()
    if (len(words) != 5 or words[0] != "a" or not (len(words[1]) == 1 and words[1].isdigit())
            or words[2] != "moving" or words[3] not in DIRECTIONS or words[4] not in SPEEDS):
        raise ValueError(f"{text!r} is not a clip's prompt: {PROMPT_FORM}, e.g. 'a 7 moving left quickly'")
    return int(words[1]), list(DIRECTIONS).index(words[3]), list(SPEEDS).index(words[4])


def centroids(clips: torch.Tensor) -> torch.Tensor:
    """(N, F, H, W) clips in [-1, 1] (or uint8) -> (N, F, 2) centres of mass (y, x) of their ink; a blank frame's
    centre is the canvas's."""
    ink = clips.float()
    ink = (ink / 255.0 if clips.dtype == torch.uint8 else (ink + 1) / 2).clamp(0, 1)
    mass = ink.sum((-2, -1)).clamp(min=1e-6)  # (N, F)
    coords = torch.arange(ink.shape[-1], dtype=torch.float32)
    y = (ink.sum(-1) * coords).sum(-1) / mass
    x = (ink.sum(-2) * coords).sum(-1) / mass
    blank = ink.sum((-2, -1)) < 1e-6
    centre = (ink.shape[-1] - 1) / 2
    return torch.stack([torch.where(blank, centre, y), torch.where(blank, centre, x)], -1)


def judge_view(clips: torch.Tensor) -> torch.Tensor:
    """Clips (N, 1, F, H, W) in [-1, 1] -> their frames as the MNIST judge reads digits, (N F, 1, 28, 28): a 28x28
    window centred on each frame's centroid of ink (MNIST centres its digits by their centre of mass), the canvas
    continued with background where the window leaves it."""
    frames = clips[:, 0].flatten(0, 1)  # (N F, H, W)
    centre = centroids(frames[:, None])[:, 0].round().long()  # (N F, 2)
    pad = 14
    padded = torch.nn.functional.pad(frames, (pad, pad, pad, pad), value=-1.0)
    return torch.stack([padded[i, y:y + 28, x:x + 28] for i, (y, x) in enumerate(centre.tolist())])[:, None]


def motion_of(clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Direction and speed (indices into DIRECTIONS and SPEEDS) read back from each clip's centroid track: the
    direction of the displacement over the first CLEAR frames, and the speed nearest its median step."""
    track = centroids(clips)  # (N, F, 2)
    first = track[:, CLEAR] - track[:, 0]  # (N, 2): before any bounce
    steps = torch.tensor(list(DIRECTIONS.values()), dtype=torch.float32)  # (4, 2)
    direction = (first @ steps.T).argmax(1)  # the direction it moved furthest along
    pace = (track[:, 1:] - track[:, :-1]).abs().amax(-1).median(1).values  # pixels per frame
    speeds = torch.tensor(list(SPEEDS.values()), dtype=torch.float32)
    speed = (pace[:, None] - speeds).abs().argmin(1)
    return direction, speed
