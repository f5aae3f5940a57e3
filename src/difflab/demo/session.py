"""The interactive demo: a local web page to play with trained models and watch diffusion happen.

Two layers, so that the part that matters can be tested without a browser:

- this file: `generate(models, model=..., digit=..., ...)` is a plain function. It checks every
  value (anything can arrive from a web page), samples, and returns pictures and numbers;
- page.py: `build_app(models)` wraps it in a Gradio page; `launch(...)` serves that page locally.
"""

from __future__ import annotations

import io
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..infra.checkpoint import epoch_checkpoints
from ..samplers import SAMPLERS, TWO_EVALUATIONS
from ..models import NULL_CLASS
from ..moving_mnist import PROMPT_FORM, parse_prompt
from ..prompts import PromptError, parse, tokenize
from ..pipeline import Pipeline, sample_shape
from ..schedules import time_grid
from ..infra.untrusted import shown
from ..infra.validation import MAX_STEPS, cfg_scale_ok, steps_ok
from ..visualize import clip_gif, frames_of, grid_array, trajectory_frames

# Limits that keep one request from occupying the server for minutes (steps: validation.MAX_STEPS, as for
# the commands). The unit of work is one image through the model once: images x steps, doubled for Heun
# (two evaluations a step).
MAX_IMAGES = 64
MAX_WORK = 4096  # e.g. 4 images x 1000 steps (DDPM), or 64 images x 64 steps
MAX_SEED = 2**31 - 1
MAX_CFG = 20.0  # the slider's end; the rule for a guidance scale is validation.cfg_scale_ok's
GIF_FRAMES = 40  # the animation keeps at most this many steps (1000 frames would be megabytes)
GIF_IMAGES = 8  # and shows the first 8 images
GIF_MS, GIF_HOLD = 80, 12  # each frame shows 80 ms; the finished images stay 12 frames longer
STRIP_COLUMNS = 10
START_NOISE = 0.9  # if the first step assumes less noise than this, the summary says why the result is noisy
# The longest prompt the tokenizer takes is 15 words (prompts.MAX_TOKENS); 200 characters hold that with room
# to spare. Checked before the words are read, so a 10 MB "prompt" is refused without being echoed back.
MAX_PROMPT_CHARS = 200

# One request samples at a time: the model is shared and the CPU is the bottleneck anyway,
# so running two at once would only make both slower and their timings meaningless.
# Other requests wait here; Gradio's queue keeps their pages waiting, not failing.
_SAMPLING_LOCK = threading.Lock()


class DemoInputError(ValueError):
    """Values a request cannot be run with; the message says which and what is expected."""


@dataclass
class Panel:
    """What one model produced for one request."""

    model: str
    grid: np.ndarray  # (H, W) uint8: the images, 8 per row, scaled up 3x
    strip: np.ndarray  # (H, W) uint8: x_t (top row) and predicted x0 (bottom row), steps left to right
    gif: bytes  # the same steps, animated, for the first images
    steps: int  # the steps sampled
    gif_steps: int  # how many of them the animation shows (at most GIF_FRAMES)
    seconds: float  # sampling time (not the time spent waiting for another request)
    nfe: int  # model evaluations (a guided step counts once: both halves share a batch)
    settings: str  # the values used, one line
    note: str = ""
    gif_caption: str = ""  # what the animation shows, where it is not the denoising steps (a video model's clips)

    def summary(self) -> str:
        text = f"**{self.model}**: {self.settings}. {plural(self.nfe, 'model evaluation')} in {self.seconds:.2f} s."
        return f"{text} {self.note}".strip()


def plural(n: int, word: str) -> str:
    """'1 step', '2 steps': the summary reads as a sentence."""
    return f"{n} {word}{'' if n == 1 else 's'}"


# --- choosing checkpoints -----------------------------------------------------------------


def find_checkpoints(experiments: Path) -> list[Path]:
    """The newest checkpoint of each run in `experiments/<config>/checkpoints/`.

    Newest means the highest model_epoch_<N>.pt; a run with none (stopped mid-epoch) offers last.pt.
    """
    found = []
    for folder in sorted(Path(experiments).glob("*/checkpoints")):
        epochs = epoch_checkpoints(folder)
        if epochs:
            found.append(epochs[-1])
        elif (folder / "last.pt").is_file():
            found.append(folder / "last.pt")
    return found


def model_name(config_name: str, path: Path) -> str:
    """'unified_sd1_unet_eps/epoch 12' for model_epoch_12.pt: what tells two checkpoints apart, and short
    enough to read whole in the model picker."""
    stem = Path(path).stem
    epoch = stem.removeprefix("model_epoch_")
    return f"{config_name}/{f'epoch {epoch}' if epoch.isdigit() else stem}"


def load_models(paths: Sequence[Path], device: str = "auto") -> dict[str, Pipeline]:
    """Load every checkpoint once, named '<config name>/epoch <N>' (or '/last') for the model picker."""
    models = {}
    for path in paths:
        pipe = Pipeline.from_checkpoint(path, device)
        name = model_name(pipe.cfg.name, path)
        base, k = name, 2
        while name in models:  # the same file twice, or two runs with one config name
            name, k = f"{base} ({k})", k + 1
        models[name] = pipe
    return models


def model_defaults(pipe: Pipeline) -> dict:
    """How the model samples when nothing is asked (Pipeline.settings): what the controls show when it
    is picked (a few-step model's 2 consistency steps without guidance, SD3's 50 Euler steps at guidance
    1.5, ...), within what the page accepts."""
    run = pipe.settings()
    return {"sampler": run.sampler, "steps": min(run.steps, MAX_STEPS), "cfg_scale": min(run.cfg_scale, MAX_CFG)}


# --- checking what a request asks for -------------------------------------------------------


def _show(x: float) -> str:
    """2147483647 rather than 2.14748e+09; 7.5 stays 7.5."""
    return str(int(x)) if math.isfinite(x) and x == int(x) else f"{x:g}"


def _got(raw) -> str:
    """What a request sent, for a message: 'nothing', or its repr shortened to one line (an API client
    may send a 10 MB string, a list or a dict where a number or a name belongs)."""
    return "nothing" if raw is None or (isinstance(raw, str) and not raw) else shown(raw, 60)


def _number(raw, name: str, lo: float, hi: float, problems: list, whole: bool,
            ok: Optional[Callable[[float], bool]] = None) -> Optional[float]:
    """`raw` as a number in [lo, hi]; a page or an API client may send None, text or 1e400.
    `ok`: the value's own rule where it has one (validation.py's, as for a config or a command line)."""
    kind = "a whole number" if whole else "a number"
    expected = f"{name}: expected {kind} from {_show(lo)} to {_show(hi)}"
    if isinstance(raw, str):
        raw = raw.strip()
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError):
        problems.append(f"{expected}, got {_got(raw)}")
        return None
    fits = ok(value) if ok else (math.isfinite(value) and (not whole or value == round(value)) and lo <= value <= hi)
    if not fits:
        problems.append(f"{expected}, got {_show(value)}")
        return None
    return int(value) if whole else value


def _choice(raw, name: str, choices: Sequence[str], problems: list) -> Optional[str]:
    """`raw` if it is one of `choices`. Text only: a list or a dict cannot be looked up in a dict's keys."""
    if not isinstance(raw, str) or raw not in choices:
        problems.append(f"{name}: expected one of {', '.join(choices)}, got {_got(raw)}")
        return None
    return raw


@dataclass(frozen=True)
class Request:
    """A request whose values have all been checked."""

    model: str
    digit: int
    cfg_scale: float
    steps: int
    sampler: str
    seed: int
    n_images: int
    compare_with: Optional[str] = None
    prompt: str = ""  # for models trained on prompts; models of class labels draw its digit


def evaluations_per_step(sampler: str) -> int:
    return 2 if sampler in TWO_EVALUATIONS else 1  # Heun corrects each step with a second evaluation


def max_steps(n_images: int, sampler: str) -> int:
    """The most steps one request may ask for: MAX_WORK shared out over the images, at most MAX_STEPS.
    The page's Steps label shows this number, so what it promises is what is accepted."""
    return min(MAX_STEPS, MAX_WORK // (n_images * evaluations_per_step(sampler)))


def check_request(models: dict, *, model, digit, cfg_scale, steps, sampler, seed, n_images,
                  compare_with=None, prompt=None) -> Request:
    """Every problem at once, in one message, so the student can fix them all in one go."""
    problems: list[str] = []
    prompt = _prompt(prompt, problems)
    names = list(models)
    model = _choice(model, "model", names, problems)
    if compare_with not in (None, ""):
        compare_with = _choice(compare_with, "compare with", names, problems)
    digit = _number(digit, "digit", 0, 9, problems, whole=True)
    cfg_scale = _number(cfg_scale, "guidance scale", 0, MAX_CFG, problems, whole=False,
                        ok=lambda w: cfg_scale_ok(w, most=MAX_CFG))
    steps = _number(steps, "steps", 1, MAX_STEPS, problems, whole=True, ok=steps_ok)
    sampler = _choice(sampler, "sampler", SAMPLERS, problems)
    seed = _number(seed, "seed", 0, MAX_SEED, problems, whole=True)
    n_images = _number(n_images, "images", 1, MAX_IMAGES, problems, whole=True)
    if steps is not None and n_images is not None and sampler is not None and steps > max_steps(n_images, sampler):
        # Refuse up front what would take too long, instead of timing out half-way.
        heun = f" x 2 ({sampler.capitalize()} evaluates the model twice a step)" if sampler in TWO_EVALUATIONS else ""
        problems.append(f"too much work for one request: {n_images} images x {steps} steps{heun} = "
                        f"{n_images * steps * evaluations_per_step(sampler)} image evaluations, more than the "
                        f"{MAX_WORK} allowed: at {plural(n_images, 'image')} ask for at most "
                        f"{max_steps(n_images, sampler)} steps, or for fewer images")
    if problems:
        raise DemoInputError("; ".join(problems))
    if prompt and parse(prompt)[0] is not None:  # the prompt names the digit: class-label models draw that one
        digit = parse(prompt)[0]
    return Request(model, digit, cfg_scale, steps, sampler, seed, n_images, compare_with or None, prompt)


def _is_clip_prompt(text: str) -> bool:
    try:
        parse_prompt(text)
        return True
    except ValueError:
        return False


def _prompt(raw, problems: list) -> str:
    """The prompt box: empty, or at most MAX_PROMPT_CHARS of words the tokenizer knows (difflab.prompts)."""
    if raw is None or raw == "":
        return ""
    if not isinstance(raw, str):
        problems.append(f"prompt: expected text, got {_got(raw)}")
        return ""
    if len(raw) > MAX_PROMPT_CHARS:
        problems.append(f"prompt: expected at most {MAX_PROMPT_CHARS} characters, got {len(raw):,} ({_got(raw)})")
        return ""
    try:
        parse_prompt(raw)  # a clip's prompt, "a 7 moving left quickly" (difflab.moving_mnist)
        return raw.strip()
    except ValueError:
        pass
    try:
        tokenize(raw)
    except PromptError as e:
        problems.append(f"prompt: {e}")
    return raw.strip()


# --- sampling and pictures --------------------------------------------------------------------


def _frames_to_keep(steps: int) -> set[int]:
    """Evenly spaced step indices, first and last included: what the strip and GIF show."""
    return set(np.linspace(0, steps - 1, min(steps, GIF_FRAMES)).round().astype(int).tolist())


def _strip(trajectory: list) -> np.ndarray:
    """Up to 10 columns, noise on the left: x_t above, the model's guess of x0 below (first image)."""
    picks = np.unique(np.linspace(0, len(trajectory) - 1, min(STRIP_COLUMNS, len(trajectory))).round().astype(int))
    cols = [torch.cat([trajectory[i][1][:1], trajectory[i][2][:1]]) for i in picks]  # (2, C, H, W) each
    strip = torch.stack(cols, dim=1).flatten(0, 1)  # row 0: x_t, row 1: x0_hat
    return grid_array(strip, nrow=len(picks), scale=3)


def _gif(trajectory: list) -> bytes:
    """An animated GIF of the trajectory (x_t above, x0_hat below), held on the last frame."""
    frames = [Image.fromarray(f) for f in trajectory_frames(trajectory, n=GIF_IMAGES)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:] + [frames[-1]] * GIF_HOLD,
                   duration=GIF_MS, loop=0)
    return buf.getvalue()


def few_steps_hint(pipe: Pipeline, steps: int) -> str:
    """Why the result will still be noise, or '' when sampling starts from (nearly) pure noise.

    With 'leading' time spacing (SD1/SD2; schedules.time_grid) one step starts at t = 0.001: the
    model is told the picture is almost clean, so it removes almost none of the noise it is given.
    """
    t0, sigma = _start(pipe, steps)
    if sigma >= START_NOISE:
        return ""
    enough = next((n for n in range(steps + 1, MAX_STEPS + 1) if _start(pipe, n)[1] >= START_NOISE), None)
    return (f"Expect noise: with {plural(steps, 'step')} this sampler starts at t = {t0:.3g}, where the model "
            f"assumes noise level {sigma:.2f} but is given pure noise (1), so it removes "
            f"{'almost none' if sigma < 0.1 else 'only part'} of it; "
            f"{f'use at least {enough} steps' if enough else 'use more steps'}.")


def _start(pipe: Pipeline, steps: int) -> tuple[float, float]:
    """(t, sigma(t)) where `steps` steps of this model's time grid begin: the noise level the model assumes."""
    s = pipe.cfg.sampling
    t0 = time_grid(steps, s.spacing, s.shift, pipe.cfg.diffusion.num_timesteps)[:1].double()
    return float(t0), float(pipe.path.sigma(t0))


def variations_of(digit: int, seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(a real test image of `digit` (1, 1, 28, 28), its CLIP embedding n times): what an unCLIP decoder is given
    to draw variations from. The seed picks which test image, so each seed shows another real digit."""
    from ..unclip import image_embeddings_of, test_images_of

    original = test_images_of([digit] * (seed % 50 + 1))[-1:]  # the (seed mod 50)-th test image of the digit
    return original, image_embeddings_of(original).repeat(n, 1)


def stages_grid(low_res: torch.Tensor, images: torch.Tensor, nrow: int) -> torch.Tensor:
    """A cascade's two stages as one grid of rows of `nrow`: a row of the base's drawings (enlarged without smoothing,
    so their pixels show), then the row the super-resolution stage drew from them, and so on."""
    from ..cascade import IMAGE_SIZE

    small = torch.nn.functional.interpolate(low_res, size=IMAGE_SIZE, mode="nearest")
    return torch.cat([torch.cat([small[i: i + nrow], images[i: i + nrow]]) for i in range(0, len(images), nrow)])


def _sample(name: str, pipe: Pipeline, req: Request, noise: torch.Tensor, on_step: Callable[[int], None]) -> Panel:
    """Run one model and record the trajectory of the first images at a few steps only.

    Pipeline.generate(trajectory=True) would keep every step of every image: for 1000 steps
    x 64 images that is hundreds of megabytes, so the callback keeps just what is shown.
    """
    original, video = None, pipe.cfg.model.architecture == "video_dit"
    clip_prompt = video and bool(req.prompt) and _is_clip_prompt(req.prompt)
    if clip_prompt:  # a video DiT's prompt: (digit, direction, speed)
        labels = torch.tensor([parse_prompt(req.prompt)] * req.n_images)
    elif req.prompt and pipe.reads_prompts:
        labels = pipe.prompts([req.prompt] * req.n_images)
    elif pipe.cfg.model.conditioning == "clip_image":  # unCLIP's decoder: variations of one real test digit
        original, labels = variations_of(req.digit, req.seed, req.n_images)
    else:
        labels = pipe.default_labels([req.digit], req.n_images)
    keep, trajectory = _frames_to_keep(req.steps), []

    final_size = sample_shape(pipe.cfg, pipe.vae)[-1]

    def callback(i, t, x_t, x0_hat):
        if x_t.shape[-1] != final_size:  # a cascade's base stage, on its own steps: not this panel's trajectory
            return
        if i in keep:
            k = GIF_IMAGES
            if video:  # clips: the trajectory of their first frames
                x_t, x0_hat = x_t[:, :, 0], x0_hat[:, :, 0]
            trajectory.append((t, pipe.decode(x_t[:k]).cpu(), pipe.decode(x0_hat[:k]).clamp(-1, 1).cpu()))
        on_step(i)

    run = pipe.settings(req.sampler, req.steps, req.cfg_scale)
    result = pipe.generate(labels, sampler=run.sampler, steps=run.steps, cfg_scale=run.cfg_scale,
                           batch_size=run.batch_size, seed=req.seed, noise=noise, callback=callback)
    last = result.images[:GIF_IMAGES, :, 0] if video else result.images[:GIF_IMAGES]
    trajectory.append((0.0, last, last))
    unconditional = labels.ndim == 1 and bool((labels == NULL_CLASS).all())
    asked = f'prompt "{req.prompt}"' if req.prompt and (pipe.reads_prompts or clip_prompt) else f"digit {req.digit}"
    if video and not clip_prompt:
        asked += " moving each way in turn"
    if original is not None:
        asked = (f"variations of a real test {req.digit} (the first image; the seed picks which {req.digit}), "
                 "drawn from its CLIP embedding")
    if req.prompt and not (pipe.reads_prompts or clip_prompt) and not unconditional:
        asked += (f" (this model reads prompts of the form {PROMPT_FORM}, not that one)" if video
                  else " (this model reads class labels, not prompts)")
    shown, nrow = (result.images if original is None else torch.cat([original, result.images])), min(8, len(labels))
    if result.low_res is not None:  # Imagen's cascade: the base's 14x14 drawings above what this stage made of them
        shown = stages_grid(result.low_res, result.images, nrow)
        asked += (f"; top rows: the base stage's {result.low_res.shape[-1]}x{result.low_res.shape[-1]} drawings, "
                  "below each: the super-resolution stage's 28x28 image drawn from it")
    settings = (f"{'any digit (unconditional model)' if unconditional else asked}, "
                f"{run.sampler}, {plural(run.steps, 'step')}, guidance {run.cfg_scale:g}, "
                f"seed {req.seed}, {plural(req.n_images, 'clip' if video else 'image')}")
    if video:  # a row of frames per clip, and the clips playing instead of the denoising steps
        clips = result.images[:GIF_IMAGES]
        return Panel(name, grid_array(frames_of(result.images), nrow=result.images.shape[2], scale=3),
                     _strip(trajectory), clip_gif(clips, nrow=min(4, len(clips)), scale=3), steps=req.steps,
                     gif_steps=len(keep), seconds=result.seconds, nfe=result.nfe, settings=settings,
                     note=few_steps_hint(pipe, req.steps),
                     gif_caption=f"The first {plural(len(clips), 'clip')} playing, {result.images.shape[2]} frames "
                                 "each (the strip: their first frames' denoising)")
    return Panel(name, grid_array(shown, nrow=nrow if original is None else min(8, len(shown)), scale=3),
                 _strip(trajectory),
                 _gif(trajectory), steps=req.steps, gif_steps=len(keep), seconds=result.seconds, nfe=result.nfe,
                 settings=settings, note=few_steps_hint(pipe, req.steps))


def sample_panel(models: dict[str, Pipeline], req: Request, k: int,
                 progress: Optional[Callable[[float, str], None]] = None) -> Panel:
    """Panel k of a checked request: 0 for `req.model`, 1 for `req.compare_with`.

    Both panels start from the first model's noise for the seed, so the difference you see is the
    models'. The page samples each panel in its own event, so each shows its own progress.
    """
    name = req.compare_with if k == 1 else req.model
    pipe = models[name]
    noise = models[req.model].initial_noise(req.n_images, req.seed)
    same_shape = tuple(noise.shape[1:]) == sample_shape(pipe.cfg, pipe.vae)

    def on_step(i):
        if progress is not None:
            progress((i + 1) / req.steps, f"{name}: step {i + 1} of {req.steps}")

    with _SAMPLING_LOCK, torch.no_grad():
        panel = _sample(name, pipe, req, noise if same_shape else None, on_step)
    if not same_shape:  # e.g. a latent model next to a pixel one
        panel.note = f"(Its samples have another shape, so it starts from its own noise for this seed.) {panel.note}"
    return panel


def generate(models: dict[str, Pipeline], *, model, digit, cfg_scale, steps, sampler, seed, n_images,
             compare_with=None, prompt=None, progress: Optional[Callable[[float, str], None]] = None) -> list[Panel]:
    """Check the values, then sample: one Panel, or two when `compare_with` names a second model.

    Raises DemoInputError (a message for the page) for any value it cannot use. Two models
    compared start from the same noise, so the difference you see is the models'.
    """
    req = check_request(models, model=model, digit=digit, cfg_scale=cfg_scale, steps=steps,
                        sampler=sampler, seed=seed, n_images=n_images, compare_with=compare_with, prompt=prompt)
    n, panels = (2 if req.compare_with else 1), []
    for k in range(n):
        # Progress over the whole request: panel k covers the fraction from k / n to (k + 1) / n.
        part = None if progress is None else (lambda f, desc, k=k: progress((k + f) / n, desc))
        panels.append(sample_panel(models, req, k, part))
    return panels
