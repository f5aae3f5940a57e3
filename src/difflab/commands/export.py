"""A checkpoint's EMA weights as .safetensors, with its config: difflab export --checkpoint CKPT [--out FILE]

The file is what to share: sample.py, evaluate.py and the demo load it like a checkpoint, and opening it
runs no code. It cannot resume training (no optimiser state); keep the .pt for that.
"""

import argparse
from pathlib import Path

from difflab.infra.failures import usage


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a model_epoch_<N>.pt or last.pt")
    p.add_argument("--out", default=None, help="the .safetensors to write (default: beside the checkpoint)")
    p.add_argument("--fp16", action="store_true", help="store the weights as float16: half the size (weights/)")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".safetensors")
    if out.suffix != ".safetensors":
        usage(f"--out: expected a file name ending in .safetensors, got {out}")

    from difflab.infra.checkpoint import load_checkpoint
    from difflab.config import config_from_dict
    from difflab.pipeline import Pipeline
    from difflab.infra.weights import export_safetensors

    state = load_checkpoint(args.checkpoint)
    config_from_dict(state["config"], source=f"{args.checkpoint} (stored config)", stored=True)  # loads today
    Pipeline.from_checkpoint(args.checkpoint, "cpu")  # and weights that fit it: refused here, not when shared
    export_safetensors(state, out, source=Path(args.checkpoint).name, half=args.fp16)
    size = out.stat().st_size / 2**20
    kind = f"{'EMA' if state.get('ema') is not None else 'raw'}{' float16' if args.fp16 else ''}"
    print(f"wrote {out} ({size:.1f} MiB, {kind} weights and the config)")
    return 0
