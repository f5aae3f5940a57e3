"""The interactive demo: a local web page to play with trained models and watch diffusion happen.

Two layers, so that the part that matters can be tested without a browser:

- `generate(models, model=..., digit=..., ...)` is a plain function. It checks every value
  (anything can arrive from a web page), samples, and returns pictures and numbers.
- `build_app(models)` wraps it in a Gradio page; `launch(...)` serves that page locally.

The page must work with no internet: no analytics, and a theme that uses the fonts
already on the student's machine instead of fetching web fonts.
"""

from __future__ import annotations

import base64
import io
import math
import os
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .checkpoint import epoch_checkpoints
from .cli import UsageError
from .config import SAMPLERS
from .models import NULL_CLASS
from .pipeline import Pipeline, sample_shape
from .visualize import grid_array, trajectory_frames

# Set before Gradio is imported anywhere: no usage reports, no check for a newer version.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

# Limits that keep one request from occupying the server for minutes. The unit of work is one
# image through the model once: images x steps, doubled for Heun (two evaluations a step).
MAX_STEPS = 1000
MAX_IMAGES = 64
MAX_WORK = 4096  # e.g. 4 images x 1000 steps (DDPM), or 64 images x 64 steps
MAX_SEED = 2**31 - 1
MAX_CFG = 20.0
GIF_FRAMES = 40  # the animation keeps at most this many steps (1000 frames would be megabytes)
GIF_IMAGES = 8  # and shows the first 8 images
STRIP_COLUMNS = 10

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
    seconds: float  # sampling time (not the time spent waiting for another request)
    nfe: int  # model evaluations (a guided step counts once: both halves share a batch)
    settings: str  # the values used, one line
    note: str = ""

    def summary(self) -> str:
        text = f"**{self.model}**: {self.settings}. {self.nfe} model evaluations in {self.seconds:.2f} s."
        return f"{text} {self.note}".strip()


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


def load_models(paths: Sequence[Path], device: str = "auto") -> dict[str, Pipeline]:
    """Load every checkpoint once, named '<config name>/<file>' for the model picker."""
    models = {}
    for path in paths:
        pipe = Pipeline.from_checkpoint(path, device)
        name = f"{pipe.cfg.name}/{Path(path).stem}"
        base, k = name, 2
        while name in models:  # the same file twice, or two runs with one config name
            name, k = f"{base} ({k})", k + 1
        models[name] = pipe
    return models


# --- checking what a request asks for -------------------------------------------------------


def _show(x: float) -> str:
    """2147483647 rather than 2.14748e+09; 7.5 stays 7.5."""
    return str(int(x)) if math.isfinite(x) and x == int(x) else f"{x:g}"


def _number(raw, name: str, lo: float, hi: float, problems: list, whole: bool) -> Optional[float]:
    """`raw` as a number in [lo, hi]; a page or an API client may send None, text or 1e400."""
    kind = "a whole number" if whole else "a number"
    expected = f"{name}: expected {kind} from {_show(lo)} to {_show(hi)}"
    if isinstance(raw, str):
        raw = raw.strip()
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError):
        problems.append(f"{expected}, got {'nothing' if raw in (None, '') else repr(raw)}")
        return None
    if not math.isfinite(value) or (whole and value != round(value)) or not lo <= value <= hi:
        problems.append(f"{expected}, got {_show(value)}")
        return None
    return int(value) if whole else value


def _choice(raw, name: str, choices: Sequence[str], problems: list) -> Optional[str]:
    if raw not in choices:
        problems.append(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")
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


def check_request(models: dict, *, model, digit, cfg_scale, steps, sampler, seed, n_images,
                  compare_with=None) -> Request:
    """Every problem at once, in one message, so the student can fix them all in one go."""
    problems: list[str] = []
    names = list(models)
    model = _choice(model, "model", names, problems)
    if compare_with not in (None, ""):
        compare_with = _choice(compare_with, "compare with", names, problems)
    digit = _number(digit, "digit", 0, 9, problems, whole=True)
    cfg_scale = _number(cfg_scale, "guidance scale", 0, MAX_CFG, problems, whole=False)
    steps = _number(steps, "steps", 1, MAX_STEPS, problems, whole=True)
    sampler = _choice(sampler, "sampler", SAMPLERS, problems)
    seed = _number(seed, "seed", 0, MAX_SEED, problems, whole=True)
    n_images = _number(n_images, "images", 1, MAX_IMAGES, problems, whole=True)
    if steps is not None and n_images is not None and sampler is not None:
        # Refuse up front what would take too long, instead of timing out half-way.
        per_step = 2 if sampler == "heun" else 1
        work = n_images * steps * per_step
        if work > MAX_WORK:
            heun = " x 2 (Heun evaluates the model twice a step)" if per_step == 2 else ""
            problems.append(f"too much work for one request: {n_images} images x {steps} steps{heun} = "
                            f"{work} image evaluations, more than the {MAX_WORK} allowed: "
                            "ask for fewer steps or fewer images")
    if problems:
        raise DemoInputError("; ".join(problems))
    return Request(model, digit, cfg_scale, steps, sampler, seed, n_images, compare_with or None)


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
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:] + [frames[-1]] * 12,
                   duration=80, loop=0)
    return buf.getvalue()


def _sample(name: str, pipe: Pipeline, req: Request, noise: torch.Tensor, on_step: Callable[[int], None]) -> Panel:
    """Run one model and record the trajectory of the first images at a few steps only.

    Pipeline.generate(trajectory=True) would keep every step of every image: for 1000 steps
    x 64 images that is hundreds of megabytes, so the callback keeps just what is shown.
    """
    labels = pipe.default_labels([req.digit], req.n_images)
    keep, trajectory = _frames_to_keep(req.steps), []

    def callback(i, t, x_t, x0_hat):
        if i in keep:
            k = GIF_IMAGES
            trajectory.append((t, pipe.decode(x_t[:k]).cpu(), pipe.decode(x0_hat[:k]).clamp(-1, 1).cpu()))
        on_step(i)

    result = pipe.generate(labels, sampler=req.sampler, steps=req.steps, cfg_scale=req.cfg_scale,
                           seed=req.seed, noise=noise, callback=callback)
    trajectory.append((0.0, result.images[:GIF_IMAGES], result.images[:GIF_IMAGES]))
    unconditional = bool((labels == NULL_CLASS).all())
    settings = (f"{'any digit (unconditional model)' if unconditional else f'digit {req.digit}'}, "
                f"{req.sampler}, {req.steps} steps, guidance {1.0 if unconditional else req.cfg_scale:g}, "
                f"seed {req.seed}, {req.n_images} image{'s' if req.n_images > 1 else ''}")
    return Panel(name, grid_array(result.images, nrow=min(8, req.n_images), scale=3), _strip(trajectory),
                 _gif(trajectory), result.seconds, result.nfe, settings)


def generate(models: dict[str, Pipeline], *, model, digit, cfg_scale, steps, sampler, seed, n_images,
             compare_with=None, progress: Optional[Callable[[float, str], None]] = None) -> list[Panel]:
    """Check the values, then sample: one Panel, or two when `compare_with` names a second model.

    Raises DemoInputError (a message for the page) for any value it cannot use. Two models
    compared start from the same noise, so the difference you see is the models'.
    """
    req = check_request(models, model=model, digit=digit, cfg_scale=cfg_scale, steps=steps,
                        sampler=sampler, seed=seed, n_images=n_images, compare_with=compare_with)
    names = [req.model] + ([req.compare_with] if req.compare_with else [])
    noise = models[req.model].initial_noise(req.n_images, req.seed)
    panels = []
    with _SAMPLING_LOCK, torch.no_grad():
        for k, name in enumerate(names):
            pipe = models[name]
            same_shape = tuple(noise.shape[1:]) == sample_shape(pipe.cfg, pipe.vae)

            def on_step(i, k=k, name=name):
                if progress is not None:
                    progress((k + (i + 1) / req.steps) / len(names), f"{name}: step {i + 1} of {req.steps}")

            panel = _sample(name, pipe, req, noise if same_shape else None, on_step)
            if not same_shape:  # e.g. a latent model next to a pixel one
                panel.note = "(Its samples have another shape, so it starts from its own noise for this seed.)"
            panels.append(panel)
    return panels


# --- the web page -------------------------------------------------------------------------------

INTRO = """# difflab: watch diffusion happen
Pick a digit and press **Generate**. Below the images, the *trajectory* shows one sample on its
way from noise (left) to a digit (right): the top row is the noisy image x_t at each step, the bottom
row is the model's current guess of the clean image (the predicted x0). Try few steps against many,
guidance 1 (none) against 7.5, or two samplers with the same seed."""


def _gif_html(gif: bytes) -> str:
    """The animation inline as a data: URL, so no file has to be written or served."""
    return (f'<figure><img alt="denoising animation" src="data:image/gif;base64,{base64.b64encode(gif).decode()}">'
            f"<figcaption>Every step, animated (up to {GIF_IMAGES} images): x_t above, predicted x0 below"
            "</figcaption></figure>")


def _outputs(panel: Optional[Panel]) -> list:
    """The four outputs of one panel: images, summary, strip, animation (all empty for None)."""
    if panel is None:
        return [None, "", None, ""]
    return [panel.grid, panel.summary(), panel.strip, _gif_html(panel.gif)]


def build_app(models: dict[str, Pipeline]):
    """The Gradio page around `generate`. Returns (blocks, theme): Gradio 6 takes the theme at launch."""
    import gradio as gr

    names = list(models)
    first = models[names[0]].cfg.sampling
    # System fonts only: the default theme would ask for web fonts the page then waits for.
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Arial", "sans-serif"],
                              font_mono=["ui-monospace", "Consolas", "DejaVu Sans Mono", "monospace"])

    def picture(label: str, elem_id: str):
        # Grey PNGs, no label drawn over the picture, and no "share" button (it would upload).
        return gr.Image(label=label, show_label=False, type="numpy", format="png", image_mode="L",
                        buttons=["download", "fullscreen"], interactive=False, elem_id=elem_id)

    def panel_components(title: str, key: str):
        gr.Markdown(f"### {title}")
        grid = picture("Generated images", f"grid-{key}")
        summary = gr.Markdown(elem_id=f"summary-{key}")
        gr.Markdown("**Trajectory** of the first image, noise on the left: x_t above, predicted x0 below")
        return [grid, summary, picture("Trajectory", f"strip-{key}"), gr.HTML(elem_id=f"gif-{key}")]

    def on_generate(model, digit, cfg_scale, steps, sampler, seed, n_images, compare, model_b,
                    progress=gr.Progress()):
        try:
            panels = generate(models, model=model, digit=digit, cfg_scale=cfg_scale, steps=steps,
                              sampler=sampler, seed=seed, n_images=n_images,
                              compare_with=model_b if compare else None,
                              progress=lambda f, desc: progress(f, desc=desc))
            status = ""
        except DemoInputError as e:
            panels, status = [], f"**Not generated.** {e}."
        except Exception as e:  # a bug must not take the page down: say so, log the details
            traceback.print_exc()
            panels, status = [], f"**Something went wrong** ({type(e).__name__}); the server log has the details."
        panels += [None] * (2 - len(panels))
        return [status] + _outputs(panels[0]) + _outputs(panels[1])

    with gr.Blocks(title="difflab demo", analytics_enabled=False) as app:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                model = gr.Dropdown(names, value=names[0], label="Model", visible=len(names) > 1)
                digit = gr.Number(value=3, label="Digit (0-9)", elem_id="digit")
                cfg_scale = gr.Slider(0, MAX_CFG, value=min(first.cfg_scale, MAX_CFG), step=0.5, label="Guidance scale",
                                      info="1 = no guidance; higher = more like the digit, less varied",
                                      elem_id="cfg")
                steps = gr.Number(value=first.steps, label=f"Steps (1-{MAX_STEPS})", elem_id="steps")
                sampler = gr.Dropdown(list(SAMPLERS), value=first.sampler, label="Sampler", elem_id="sampler")
                seed = gr.Number(value=0, label="Seed", info="the same seed gives the same images",
                                 elem_id="seed")
                n_images = gr.Slider(1, MAX_IMAGES, value=8, step=1, label="Images", elem_id="n-images")
                compare = gr.Checkbox(False, label="Side by side: a second model from the same noise",
                                      visible=len(names) > 1, elem_id="compare")
                model_b = gr.Dropdown(names, value=names[-1], label="Second model", visible=False)
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=3):
                status = gr.Markdown(elem_id="status")
                with gr.Row():
                    with gr.Column():
                        outputs_a = panel_components("Model" if len(names) == 1 else "First model", "a")
                    with gr.Column(visible=False) as column_b:
                        outputs_b = panel_components("Second model", "b")
        compare.change(lambda on: [gr.update(visible=on), gr.update(visible=on)], compare, [model_b, column_b])
        button.click(on_generate, [model, digit, cfg_scale, steps, sampler, seed, n_images, compare, model_b],
                     [status] + outputs_a + outputs_b, show_progress_on=[outputs_a[0], outputs_b[0]],
                     concurrency_limit=1)  # one at a time, as `generate` would anyway (its lock)
    # Other tabs wait in Gradio's queue, and their pages show their place in it.
    app.queue(max_size=64)
    return app, theme


def free_port(host: str) -> int:
    """A port nobody listens on now (the OS picks it)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def launch(models: dict[str, Pipeline], host: str = "127.0.0.1", port: Optional[int] = None) -> None:
    """Serve the page until Ctrl-C, printing its URL once it answers (scripts and tests wait for that line)."""
    app, theme = build_app(models)
    port = port or free_port(host)
    try:
        app.launch(server_name=host, server_port=port, theme=theme, quiet=True, share=False, show_error=False,
                   ssr_mode=False, pwa=False, mcp_server=False, inbrowser=False, prevent_thread_lock=True)
    except OSError:  # the port is taken, or the host is not an address of this machine
        raise UsageError(f"cannot serve on {host}:{port}: the port is in use or the address is not this "
                         "machine's (leave out --port for a free one)") from None
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    print(f"difflab demo: {url} ({len(models)} model{'s' if len(models) > 1 else ''}; Ctrl-C to stop)", flush=True)
    app.block_thread()  # until Ctrl-C, which closes the server
