"""A local web page to play with trained models: python interactive_demo.py [--checkpoint CKPT]

Pick a digit, a sampler, the steps and the guidance, and watch the noise turn into a digit.
Several models: repeat --checkpoint, or --experiments DIR for the newest checkpoint of every run
there; the page then offers a model picker and a side-by-side mode (two models, the same noise).
With neither, it serves the models shipped in weights/ (SD1, SD2, SD3 and the two distilled few-step students):
nothing to train first.
Needs Gradio: pip install -r requirements-demo.txt
"""

import argparse
import sys
from pathlib import Path


from difflab.infra.failures import fail, usage


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", default=[], metavar="CKPT",
                   help="a model_epoch_<N>.pt, last.pt, .safetensors or a shipped model (sd1, sd2, sd3, "
                        "sd3_distilled, sd2_distilled); repeatable")
    p.add_argument("--experiments", default=None, metavar="DIR",
                   help="offer the newest checkpoint of each run in DIR (e.g. experiments/)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default: this machine only; 0.0.0.0 opens it to your network, "
                        "with no password)")
    p.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    args = p.parse_args(argv)

    from difflab.demo.session import find_checkpoints, load_models
    from difflab.demo.guard import exposure_warning
    from difflab.demo.page import launch

    if args.port is not None and not 1 <= args.port <= 65535:
        usage(f"--port: expected a number from 1 to 65535, got {args.port}")
    from difflab.infra.weights import SHIPPED, checkpoint_path

    paths = [checkpoint_path(c) for c in args.checkpoint]
    if args.experiments is not None:
        if not Path(args.experiments).is_dir():
            fail(f"--experiments: {args.experiments} is not a folder")
        found = find_checkpoints(Path(args.experiments))
        if not found:
            fail(f"--experiments: no run in {args.experiments} has checkpoints/model_epoch_<N>.pt or last.pt")
        paths += found
    if not paths:  # nothing named: the shipped models, so the page works right after installing
        paths = [checkpoint_path(name) for name in SHIPPED]
    models = load_models(paths, args.device)  # a bad checkpoint stops here, with one line
    try:
        import gradio  # noqa: F401
    except ImportError:
        fail("the demo needs Gradio: pip install -r requirements-demo.txt")
    if exposure_warning(args.host):  # the page has no password: say so before anyone else can reach it
        print(exposure_warning(args.host), file=sys.stderr, flush=True)
    launch(models, host=args.host, port=args.port)
    return 0

