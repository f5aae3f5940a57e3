"""The demo in a real browser: start `interactive_demo.py`, drive headless Chromium, look at the page.

Needs Debian's Chromium (/usr/bin/chromium) and Playwright's Python package; Playwright's own
browser download is never used. Without them the test is skipped and says why.
It leaves a screenshot of the page in pytest's temporary folder, or at DIFFLAB_SCREENSHOT=PATH
when that is set: tests never write into the repository on their own.
"""

import os
import queue
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import pytest

from conftest import tiny_config, tiny_data

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 30_000


def missing_tools() -> str:
    """Why the test cannot run here, or '' if it can."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    for module, install in [("playwright", "pip install playwright"),
                            ("gradio", "pip install -r requirements-demo.txt")]:
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed ({install})"
    return ""


def skip_without_tools() -> None:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)


def train_tiny(folder: Path, name: str = "tiny") -> Path:
    """A tiny model trained here for one epoch, its config called `name`; returns the checkpoint."""
    from difflab.training import Trainer

    cfg = tiny_config(folder)
    cfg.name = name  # the model picker shows it
    Trainer(cfg, data=tiny_data(64), quiet=True).fit()
    return folder / "experiments" / name / "checkpoints" / "model_epoch_1.pt"


class Demo:
    """A running `interactive_demo.py`: its URL, and what it has printed (the server log)."""

    def __init__(self, url: str, log: list, lines: queue.Queue):
        self.url, self._log, self._lines = url, log, lines

    def log(self) -> str:
        while not self._lines.empty():
            self._log.append(self._lines.get())
        return "".join(self._log)


@contextmanager
def serve(checkpoints: list, tmp: Path) -> Iterator[Demo]:
    """`interactive_demo.py --checkpoint ...` on a free localhost port, stopped on leaving."""
    args = [a for ckpt in checkpoints for a in ("--checkpoint", str(ckpt))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_TEMP_DIR": str(tmp / "gradio")}
    proc = subprocess.Popen([sys.executable, str(ROOT / "interactive_demo.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    url, log, deadline = None, [], time.monotonic() + 60
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        log.append(line)
        if line.startswith("difflab demo: http://"):
            url = line.split()[2]
    if url is None:
        proc.kill()
        pytest.fail("the demo did not print its URL within 60 s:\n" + "".join(log))
    try:
        yield Demo(url, log, lines)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    """A demo server serving a tiny checkpoint trained here."""
    skip_without_tools()
    tmp = tmp_path_factory.mktemp("demo")
    with serve([train_tiny(tmp)], tmp) as demo:
        yield demo.url


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium, launched once for the tests of a module."""
    skip_without_tools()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, url: str):
    """A new tab at a laptop's size, on the demo once it has loaded."""
    page = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
    page.goto(url)
    page.wait_for_selector("#generate", timeout=TIMEOUT_MS)
    return page


def set_images(page, n: int) -> None:
    page.fill("#n-images input[type=number]", str(n))
    page.press("#n-images input[type=number]", "Enter")


def click_generate(page, *, digit=None, seed=None, steps=None, wait_for="summary-a") -> str:
    """Fill in the values given, press Generate, wait for this run's result; return the status text."""
    for elem_id, value in [("digit", digit), ("seed", seed), ("steps", steps)]:
        if value is not None:
            page.fill(f"#{elem_id} input", str(value))
    before = text(page, wait_for) + text(page, "status")
    page.click("#generate")
    # The summary names the seed, so each run below changes it (or the status shows an error).
    page.wait_for_function(f"before => {_JS_TEXT}({wait_for!r}) + {_JS_TEXT}('status') !== before",
                           arg=before, timeout=TIMEOUT_MS)
    return text(page, "status")


# The text of a gr.Markdown, without the progress tracker Gradio may overlay on it.
_JS_TEXT = "(id => document.querySelector(`#${id} [data-testid=markdown]`).innerText.trim())"


def text(page, elem_id: str) -> str:
    return page.evaluate(f"{_JS_TEXT}({elem_id!r})")


def image_bytes(page, elem_id: str) -> bytes:
    src = page.get_attribute(f"#{elem_id} img", "src", timeout=TIMEOUT_MS)
    return page.request.get(src).body()


def test_the_demo_page_generates_reproducibly_and_refuses_bad_values(demo_url, browser, tmp_path):
    host = urlparse(demo_url).netloc
    external = []  # every request that would leave this machine: recorded, then blocked

    def only_local(route):
        url = route.request.url
        if urlparse(url).scheme in ("data", "blob") or urlparse(url).netloc == host:
            route.continue_()
        else:
            external.append(url)
            route.abort()

    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.route("**/*", only_local)
    page = context.new_page()
    page.goto(demo_url)
    page.wait_for_selector("#generate", timeout=TIMEOUT_MS)
    set_images(page, 4)

    assert click_generate(page, digit=7, seed=1, steps=4) == ""
    assert "digit 7" in text(page, "summary-a") and "seed 1" in text(page, "summary-a")
    first = image_bytes(page, "grid-a")
    assert first.startswith(b"\x89PNG")
    assert page.locator("#strip-a img").count() == 1
    assert page.get_attribute("#gif-a img", "src").startswith("data:image/gif;base64,")
    screenshot = Path(os.environ.get("DIFFLAB_SCREENSHOT") or tmp_path / "demo.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot))
    assert screenshot.stat().st_size > 0

    click_generate(page, seed=2)
    assert "seed 2" in text(page, "summary-a")
    assert image_bytes(page, "grid-a") != first, "two seeds gave the same images"
    click_generate(page, seed=1)
    assert "seed 1" in text(page, "summary-a")
    assert image_bytes(page, "grid-a") == first, "the same seed gave other images"

    status = click_generate(page, steps=100000)
    assert "Not generated" in status and "steps" in status and "1000" in status, status
    # The last images stay, with the summary that describes them (the status says they are not new).
    assert image_bytes(page, "grid-a") == first and "seed 1" in text(page, "summary-a")
    assert "Traceback" not in page.content()
    context.close()
    assert external == [], f"the page asked for things outside localhost: {external}"


def test_several_tabs_generating_at_once_all_get_images(demo_url, browser):
    context = browser.new_context()
    pages = [context.new_page() for _ in range(3)]
    for page in pages:
        page.goto(demo_url, wait_until="commit")  # the three tabs load side by side
    for seed, page in enumerate(pages):
        page.wait_for_selector("#generate", timeout=TIMEOUT_MS)
        set_images(page, 2)
        page.fill("#steps input", "4")
        page.fill("#seed input", str(seed))
    for page in pages:  # all three clicks before any result is in
        page.click("#generate")
    for seed, page in enumerate(pages):
        page.wait_for_selector("#grid-a img", timeout=TIMEOUT_MS)
        assert f"seed {seed}" in text(page, "summary-a")
    context.close()


def test_the_prompt_box_reaches_a_model_of_prompts(browser, tmp_path):
    """Issue 26: a model trained on prompts gets a prompt box; its words reach the model, unknown words are refused."""
    skip_without_tools()
    from difflab import prompts
    from difflab.training import Trainer

    cfg = tiny_config(tmp_path, model={"conditioning": "prompt", "text_dim": 16, "text_heads": 2,
                                       "cross_attention_levels": [1]},
                      training={"max_steps": 10, "ema_decay": 0.0, "warmup_steps": 1})
    cfg.name = "tiny_prompts"
    x, y = tiny_data(32)
    trainer = Trainer(cfg, data=(x, prompts.encode([prompts.write(int(d), {"thickness": int(d) % 3}) for d in y])),
                      quiet=True)
    trainer.fit()
    with serve([trainer.out_dir / "checkpoints" / "last.pt"], tmp_path) as demo:
        page = open_page(browser, demo.url)
        set_images(page, 2)
        box = "#prompt textarea, #prompt input"
        page.fill(box, "a thin 7")
        assert click_generate(page, seed=1, steps=3) == ""
        assert 'prompt "a thin 7"' in text(page, "summary-a")
        thin = image_bytes(page, "grid-a")
        page.fill(box, "a thick 7")
        click_generate(page, seed=3, steps=3)
        page.fill(box, "a thick 7")
        click_generate(page, seed=1, steps=3)  # back to seed 1: only the word differs from the first request
        assert 'prompt "a thick 7"' in text(page, "summary-a")
        assert image_bytes(page, "grid-a") != thin, "thin and thick gave the same images"
        page.fill(box, "a bold 7")
        status = click_generate(page, seed=4, steps=3)
        assert "Not generated" in status and "unknown word 'bold'" in status, status
        page.context.close()


def test_picking_a_few_step_model_sets_its_own_sampler_and_steps(browser, tmp_path):
    """Issue 27: the demo offers the few-step models; picked, one samples as its config does (2 consistency steps)."""
    skip_without_tools()
    from difflab.fewstep import ConsistencyTrainer

    cfg = tiny_config(tmp_path, diffusion={"target": "v", "schedule": "scaled_linear"},
                      fewstep={"method": "consistency_training", "steps": 4, "target_ema": 0.0},
                      training={"max_steps": 6, "cfg_dropout_prob": 0.0},
                      sampling={"sampler": "consistency", "steps": 2, "spacing": "trailing", "cfg_scale": 1.0})
    cfg.name = "tiny_consistency"
    trainer = ConsistencyTrainer(cfg, data=tiny_data(32), quiet=True)
    trainer.fit()
    with serve([train_tiny(tmp_path), trainer.out_dir / "checkpoints" / "last.pt"], tmp_path) as demo:
        page = open_page(browser, demo.url)
        page.click("#model input")
        page.get_by_role("option", name="tiny_consistency/last").click()
        page.wait_for_function("() => document.querySelector('#sampler input').value === 'consistency'",
                               timeout=TIMEOUT_MS)
        assert page.input_value("#steps input") == "2"
        set_images(page, 2)
        assert click_generate(page, seed=5) == ""
        assert "consistency, 2 steps, guidance 1" in text(page, "summary-a"), text(page, "summary-a")
        page.context.close()


def test_an_unclip_decoder_draws_variations_of_a_real_digit(browser, tmp_path, monkeypatch):
    """Issue 47: served, a model of CLIP image embeddings shows a real test digit and what it draws from its
    embedding. The demo reads the data folder DIFFLAB_DATA names: the MNIST file, and a tiny CLIP cached there
    under the default settings (the real one takes minutes to train)."""
    skip_without_tools()
    import dataclasses

    import torch

    from difflab import clip
    from difflab.data import load_split
    from difflab.infra.model_cache import save_cached
    from difflab.training import Trainer

    data = ROOT / "data" / "mnist.npz"
    if not data.is_file():
        pytest.skip(f"needs {data} (python setup_mnist.py)")
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "mnist.npz").symlink_to(data)
    tiny_clip = clip.train_clip(*load_split("train", data_dir=folder), clip.CLIPSettings(epochs=1, train_subset=512))
    save_cached(tiny_clip, *clip.clip_paths(folder), clip.CACHE_FORMAT,
                {"settings": dataclasses.asdict(clip.CLIPSettings())})
    monkeypatch.setenv("DIFFLAB_DATA", str(folder))
    x, _ = tiny_data(32)
    cfg = tiny_config(tmp_path, model={"conditioning": "clip_image", "text_dim": 16, "text_heads": 2,
                                       "cross_attention_levels": [1], "pooled_text": True},
                      training={"max_steps": 3})
    cfg.name = "tiny_decoder"
    trainer = Trainer(cfg, data=(x, torch.nn.functional.normalize(torch.randn(32, 64), dim=-1)), quiet=True)
    trainer.fit()
    with serve([trainer.out_dir / "checkpoints" / "last.pt"], tmp_path) as demo:
        page = open_page(browser, demo.url)
        set_images(page, 2)
        assert click_generate(page, digit=4, seed=2, steps=3) == "", demo.log()
        assert "variations of a real test 4" in text(page, "summary-a"), text(page, "summary-a")
        page.context.close()


def test_a_cascade_shows_the_base_stages_drawings_above_what_it_enlarged_them_to(browser, tmp_path):
    """Issue 48: served, a super-resolution stage runs the whole cascade and shows both stages: a row of the base's
    14x14 drawings (enlarged) above the row of 28x28 images drawn from them, so two rows for two images."""
    skip_without_tools()
    import io

    from PIL import Image

    from test_cascade import train_stages

    base_ckpt, sr_ckpt = train_stages(tmp_path, steps=2)
    with serve([sr_ckpt, base_ckpt], tmp_path) as demo:
        page = open_page(browser, demo.url)
        set_images(page, 2)
        assert click_generate(page, digit=3, seed=4, steps=2) == "", demo.log()
        summary = text(page, "summary-a")
        assert "the base stage's 14x14 drawings" in summary, summary
        grid = Image.open(io.BytesIO(image_bytes(page, "grid-a")))
        assert grid.height > 1.5 * grid.width / 2, grid.size  # two rows of two: the base's, then the enlarged
        page.context.close()


def test_a_video_dit_plays_the_clips_its_prompt_asks_for(browser, tmp_path):
    """Issue 49: served, a video DiT reads a clip's prompt from the prompt box, shows a row of frames per clip and
    plays the clips (an animated GIF of as many frames as a clip has)."""
    skip_without_tools()
    import base64
    import io

    import numpy as np
    import torch
    from PIL import Image

    from difflab import moving_mnist
    from difflab.training import Trainer

    motion = moving_mnist.motions("test", np.zeros(1000))[:32]
    digits = np.zeros((32, 28, 28), dtype=np.uint8)
    digits[:, 8:20, 10:18] = 255
    clips = torch.from_numpy(moving_mnist.render(moving_mnist.tiles(digits), motion))[:, None]
    y = torch.from_numpy(np.stack([np.arange(32) % 10, motion[:, 1], motion[:, 2]], 1))
    cfg = tiny_config(tmp_path, data={"dataset": "moving_mnist"}, training={"max_steps": 2},
                      model={"architecture": "video_dit", "hidden_size": 32, "depth": 2, "num_heads": 2,
                             "patch_size": 8, "tubelet": 4},
                      diffusion={"target": "flow", "schedule": "flow"}, sampling={"sampler": "euler", "steps": 2})
    cfg.name = "tiny_video"
    trainer = Trainer(cfg, data=(clips, y), quiet=True)
    trainer.fit()
    with serve([trainer.out_dir / "checkpoints" / "last.pt"], tmp_path) as demo:
        page = open_page(browser, demo.url)
        set_images(page, 2)
        page.fill("#prompt textarea, #prompt input", "a 7 moving left quickly")
        assert click_generate(page, seed=1, steps=2) == "", demo.log()
        summary = text(page, "summary-a")
        assert 'prompt "a 7 moving left quickly"' in summary and "2 clips" in summary, summary
        assert page.get_attribute("#gif-a img", "alt") == "clips playing"
        src = page.get_attribute("#gif-a img", "src")
        gif = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert gif.n_frames == moving_mnist.FRAMES
        grid = Image.open(io.BytesIO(image_bytes(page, "grid-a")))
        assert grid.width > 3 * grid.height  # two clips: two rows of eight frames
        page.context.close()
