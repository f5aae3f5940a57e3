"""The demo's web page: a Gradio page around the plain functions of session.py, served on this machine.

The page must work with no internet: no analytics, and a theme that uses the fonts already on the
student's machine instead of fetching web fonts. And it must keep what it shows honest:

- the Steps label states the limit check_request applies, which shrinks as the images grow;
- a refused request keeps the last images on the page and says why nothing new came;
- side by side, each panel is sampled by its own event, so each shows its own model's progress;
- the generate event reads the raw values (preprocess=False), so a bad value sent through the API
  gets check_request's message instead of a traceback in Gradio's own conversion.

Through the HTTP API, /generate returns the status and the first model's panel.

The server has no password, so it opens no more than the page needs (guard.py's `Guard`, and `serving`):
- only the POST routes the page and the HTTP API use, no body over guard.MAX_BODY bytes, nothing from
  another web site, and on a loopback address nothing for another host name (guard.py);
- at most MAX_WAITING requests wait in the queue, one samples at a time, and none skips the queue;
- Gradio's files (the PNGs it serves) live in a folder of the demo's own: files older than
  CACHE_CLEANUP[1] seconds are deleted, and the folder is removed when the server stops.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import tempfile
import threading
import traceback
from contextlib import contextmanager
from typing import Iterator, Optional

from ..infra.failures import UsageError, fail
from ..samplers import SAMPLERS
from .session import (GIF_IMAGES, MAX_CFG, MAX_IMAGES, MAX_WORK, DemoInputError, Panel, check_request,
                   evaluations_per_step, max_steps, model_defaults, plural, sample_panel)
from ..pipeline import Pipeline
from .guard import Guard, is_loopback
from ..infra.validation import MAX_STEPS

# Set before Gradio is imported anywhere: no usage reports, no check for a newer version.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

# Requests waiting for their turn (one samples at a time). The slowest request allowed (demo.MAX_WORK image
# evaluations) takes about 35 s on a laptop CPU, so one client can queue at most (4 + 1) x 35 s, about
# 3 minutes of work; the next request is told "Queue is full" (HTTP 503 through the API).
MAX_WAITING = 4
# (every, older than), in seconds: how often Gradio deletes the PNGs it wrote to serve, and how old they must
# be. One request writes 2 or 4 PNGs (tens of KB); a page fetches them at once, and 5 minutes still leave
# time to press a picture's download button.
CACHE_CLEANUP = (60, 300)
INTRO = """# difflab: watch diffusion happen
Pick a digit and press **Generate**. Below the images, the *trajectory* shows one sample on its
way from noise (left) to a digit (right): the top row is the noisy image x_t at each step, the bottom
row is the model's current guess of the clean image (the predicted x0). Try few steps against many,
guidance 1 (none) against 7.5, or two samplers with the same seed."""


def steps_label(n_images, sampler) -> str:
    """'Steps (1-512 for 8 images)': the limit check_request applies, so the label promises no more."""
    if (not isinstance(n_images, (int, float)) or not 1 <= n_images <= MAX_IMAGES or not isinstance(sampler, str)
            or sampler not in SAMPLERS):
        return f"Steps (1-{MAX_STEPS})"  # check_request will name the value that is wrong
    limit = max_steps(int(n_images), sampler)
    if limit == MAX_STEPS:
        return f"Steps (1-{MAX_STEPS})"
    return (f"Steps (1-{limit} for {plural(int(n_images), 'image')}"
            f"{f' with {sampler.capitalize()}' if evaluations_per_step(sampler) > 1 else ''})")


def _gif_html(panel: Panel) -> str:
    """The animation inline as a data: URL (no file to write or serve), its caption saying which steps it shows."""
    shown = ("Every step" if panel.gif_steps == panel.steps
             else f"{panel.gif_steps} of the {panel.steps} steps, evenly spaced")
    caption = panel.gif_caption or f"{shown}, animated (up to {GIF_IMAGES} images): x_t above, predicted x0 below"
    alt = "clips playing" if panel.gif_caption else "denoising animation"
    return (f'<figure><img alt="{alt}" '
            f'src="data:image/gif;base64,{base64.b64encode(panel.gif).decode()}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _outputs(panel: Optional[Panel]) -> list:
    """The four outputs of one panel: images, summary, strip, animation (all empty for None)."""
    if panel is None:
        return [None, "", None, ""]
    return [panel.grid, panel.summary(), panel.strip, _gif_html(panel)]


def _broken(e: Exception) -> str:
    """A bug must not take the page down: say so on the page, the details go to the server log."""
    traceback.print_exc()
    return f"**Something went wrong** ({type(e).__name__}); the server log has the details."


def handlers(models: dict[str, Pipeline]):
    """The two sampling events of the page: (on_generate, on_second)."""
    import gradio as gr

    keep = [gr.skip()] * 4  # a panel's outputs left as they are

    def on_generate(model, digit, cfg_scale, steps, sampler, seed, n_images, compare, model_b, prompt=None,
                    progress=gr.Progress()):
        """Check the request and sample the first panel; the second panel's event gets the checked request."""
        try:
            req = check_request(models, model=model, digit=digit, cfg_scale=cfg_scale, steps=steps,
                                sampler=sampler, seed=seed, n_images=n_images,
                                compare_with=model_b if compare else None, prompt=prompt)
            panel = sample_panel(models, req, 0, lambda f, desc: progress(f, desc=desc))
        except DemoInputError as e:
            return [f"**Not generated.** {e}. The images below, if any, are from an earlier request.", None] + keep
        except Exception as e:
            return [_broken(e), None] + keep
        return ["", req] + _outputs(panel)

    def on_second(req, progress=gr.Progress()):
        """The second model of a side-by-side request, sampled after the first from the same noise."""
        if req is None:  # refused or failed: leave the panel as it was
            return [gr.skip()] + keep
        if req.compare_with is None:  # no comparison: an empty panel, not one from an older request
            return [gr.skip()] + _outputs(None)
        try:
            return [gr.skip()] + _outputs(sample_panel(models, req, 1, lambda f, desc: progress(f, desc=desc)))
        except Exception as e:
            return [_broken(e)] + keep

    return on_generate, on_second


def _picture(label: str, elem_id: str):
    """A grey PNG, no label drawn over the picture, and no "share" button (it would upload)."""
    import gradio as gr

    return gr.Image(label=label, show_label=False, type="numpy", format="png", image_mode="L",
                    buttons=["download", "fullscreen"], interactive=False, elem_id=elem_id)


def _panel(title: str, key: str) -> list:
    """One model's outputs: the grid, its summary, the trajectory strip and its GIF."""
    import gradio as gr

    gr.Markdown(f"### {title}")
    grid = _picture("Generated images", f"grid-{key}")
    summary = gr.Markdown(elem_id=f"summary-{key}")
    gr.Markdown("**Trajectory** of the first image, noise on the left: x_t above, predicted x0 below")
    return [grid, summary, _picture("Trajectory", f"strip-{key}"), gr.HTML(elem_id=f"gif-{key}")]


def _controls(first: dict, any_prompts: bool) -> dict:
    """The request's inputs, in the left column, set to the first model's own sampling (demo.model_defaults)."""
    import gradio as gr

    default_steps = first["steps"]
    # 8 images, or fewer when the config's steps need it (DDPM's 1000 steps: 4), so the defaults are accepted.
    default_images = max(1, min(8, MAX_WORK // (default_steps * evaluations_per_step(first["sampler"]))))
    return dict(
        digit=gr.Number(value=3, label="Digit (0-9)", elem_id="digit"),
        prompt=gr.Textbox("", label="Prompt", elem_id="prompt", visible=any_prompts, max_lines=1,
                          placeholder="a thick, right-slanted 7",
                          info="for models trained on prompts (configs/prompt/), or a video DiT's clips "
                               "(configs/video/: 'a 7 moving left quickly'); it names the digit"),
        cfg_scale=gr.Slider(0, MAX_CFG, value=first["cfg_scale"], step=0.5, label="Guidance scale",
                            info="1 = no guidance; higher = more like the digit, less varied", elem_id="cfg"),
        steps=gr.Number(value=default_steps, label=steps_label(default_images, first["sampler"]),
                        info=f"images x steps at most {MAX_WORK} (x 2 for Heun)", elem_id="steps"),
        sampler=gr.Dropdown(list(SAMPLERS), value=first["sampler"], label="Sampler", elem_id="sampler"),
        seed=gr.Number(value=0, label="Seed", info="the same seed gives the same images", elem_id="seed"),
        n_images=gr.Slider(1, MAX_IMAGES, value=default_images, step=1, label="Images", elem_id="n-images"),
    )


def build_app(models: dict[str, Pipeline]):
    """The Gradio page around session.py. Returns (blocks, theme): Gradio 6 takes the theme at launch."""
    import gradio as gr

    names = list(models)
    # System fonts only: the default theme would ask for web fonts the page then waits for.
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Arial", "sans-serif"],
                              font_mono=["ui-monospace", "Consolas", "DejaVu Sans Mono", "monospace"])
    on_generate, on_second = handlers(models)
    with gr.Blocks(title="difflab demo", analytics_enabled=False, delete_cache=CACHE_CLEANUP) as app:
        gr.Markdown(INTRO)
        # The model pickers get the page's width: names like 'unified_sd3_mmdit_flow/epoch 12' are long.
        with gr.Row(visible=len(names) > 1, equal_height=True):
            model = gr.Dropdown(names, value=names[0], label="Model", scale=3, elem_id="model")
            compare = gr.Checkbox(False, label="Side by side: a second model from the same noise",
                                  elem_id="compare", scale=1, min_width=200)
            model_b = gr.Dropdown(names, value=names[-1], label="Second model", visible=False, scale=3)
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                prompted = any(p.reads_prompts or p.cfg.model.architecture == "video_dit" for p in models.values())
                c = _controls(model_defaults(models[names[0]]), prompted)
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=3):
                status = gr.Markdown(elem_id="status")
                with gr.Row():
                    with gr.Column():
                        outputs_a = _panel("Model" if len(names) == 1 else "First model", "a")
                    with gr.Column(visible=False) as column_b:
                        outputs_b = _panel("Second model", "b")
        request = gr.State(None)  # the checked request, handed from the first panel's event to the second's
        # The page's own small updates. Raw values (preprocess=False) as for /generate: a client can call these
        # too, and a list where a name belongs should change nothing rather than fail in Gradio's conversion.
        private = dict(api_visibility="private", queue=False, show_progress="hidden", preprocess=False)
        compare.change(lambda on: [gr.update(visible=on is True), gr.update(visible=on is True)], compare,
                       [model_b, column_b], **private)

        def own_sampling(name):
            """A model's own sampler, steps and guidance when it is picked; nothing for a name it does not know."""
            if not isinstance(name, str) or name not in models:
                return [gr.skip()] * 3
            return [gr.update(value=v) for v in model_defaults(models[name]).values()]

        model.change(own_sampling, model, [c["sampler"], c["steps"], c["cfg_scale"]], **private)
        for control in (c["n_images"], c["sampler"]):  # the label follows the limit
            control.change(lambda n, s: gr.update(label=steps_label(n, s)), [c["n_images"], c["sampler"]], c["steps"],
                           **private)
        # One sampling event at a time (as `sample_panel` would anyway, its lock); both events share the limit.
        sampling = dict(concurrency_id="sampling", concurrency_limit=1)
        inputs = [model, c["digit"], c["cfg_scale"], c["steps"], c["sampler"], c["seed"], c["n_images"], compare,
                  model_b, c["prompt"]]
        button.click(on_generate, inputs, [status, request] + outputs_a, show_progress_on=[outputs_a[0]],
                     preprocess=False, api_name="generate", **sampling
                     ).then(on_second, request, [status] + outputs_b, show_progress_on=[outputs_b[0]],
                            api_visibility="private", **sampling)
    # Other tabs wait in Gradio's queue, and their pages show their place in it; past MAX_WAITING, "Queue is full".
    # api_open=False: /generate only through the queue; Gradio's /run and /api routes would skip it.
    app.queue(max_size=MAX_WAITING, api_open=False)
    return app, theme


def free_port(host: str) -> int:
    """A port nobody listens on now (the OS picks it)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def serving(models: dict[str, Pipeline], host: str = "127.0.0.1", port: Optional[int] = None) -> Iterator[tuple]:
    """Serve the page in the background: yields (Gradio app, URL); on leaving, stops the server and removes
    the demo's temporary folder (every PNG Gradio wrote) with it."""
    from starlette.middleware import Middleware

    root = os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()
    try:
        os.makedirs(root, exist_ok=True)
        folder = tempfile.mkdtemp(prefix="difflab-demo-", dir=root)
    except OSError as e:
        fail(f"cannot create the demo's temporary folder in {root} ({e.strerror}); set GRADIO_TEMP_DIR to "
             "a folder you can write")
    before = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = folder  # Gradio's components and its file route read it as they are made
    try:
        app, theme = build_app(models)
        port = port or free_port(host)
        try:
            app.launch(server_name=host, server_port=port, theme=theme, quiet=True, share=False, show_error=False,
                       ssr_mode=False, pwa=False, mcp_server=False, inbrowser=False, prevent_thread_lock=True,
                       enable_monitoring=False, max_file_size="1kb",  # the page uploads nothing
                       app_kwargs={"middleware": [Middleware(Guard, loopback=is_loopback(host))]})
        except OSError:  # the port is taken, or the host is not an address of this machine
            raise UsageError(f"cannot serve on {host}:{port}: the port is in use or the address is not this "
                             "machine's (leave out --port for a free one)") from None
        try:
            yield app, f"http://{f'[{host}]' if ':' in host else host}:{port}/"
        finally:
            app.close(verbose=False)
    finally:
        if before is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = before
        shutil.rmtree(folder, ignore_errors=True)


def _stop_on_sigterm() -> None:
    """`kill` (SIGTERM) stops the server as Ctrl-C does, so its temporary folder is removed too."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def launch(models: dict[str, Pipeline], host: str = "127.0.0.1", port: Optional[int] = None) -> None:
    """Serve the page until Ctrl-C, printing its URL once it answers (scripts and tests wait for that line)."""
    _stop_on_sigterm()
    with serving(models, host, port) as (app, url):
        print(f"difflab demo: {url} ({plural(len(models), 'model')}; Ctrl-C to stop)", flush=True)
        app.block_thread()  # until Ctrl-C, which closes the server
