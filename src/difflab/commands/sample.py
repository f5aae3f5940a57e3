"""Sample a grid of digits from a checkpoint: python sample.py --checkpoint PATH [--sampler heun --steps 20 ...]

A model trained on prompts (configs/prompt/) takes them too, a row per prompt:
    python sample.py --checkpoint PATH --prompt "a thin 3" --prompt "a thick, right-slanted 3"
DALL-E 2 (configs/unclip/): the prior's embeddings drawn by a decoder, or a decoder's variations of real digits:
    python sample.py --checkpoint PRIOR --set sampling.decoder=DECODER --prompt "a thin 3"
    python sample.py --checkpoint DECODER --variations --digits 37     (a real test digit, then --n variations)
Imagen's cascade (configs/cascade/): the base stage draws 14x14, the super-resolution stage 28x28; --stages shows both:
    python sample.py --checkpoint experiments/sr_28/checkpoints/last.pt --stages
A video DiT (configs/video/): a row of frames per clip in the PNG, and the clips playing in a GIF beside it:
    python sample.py --checkpoint experiments/sora_moving_mnist/checkpoints/last.pt --prompt "a 7 moving left quickly"
"""

import argparse
import io
from pathlib import Path


from difflab.commands.common import STEPS_HELP, check_at_most, check_sampling_args, check_steps, sampler_help
from difflab.infra.failures import fail, usage

# --n, like --steps, has a bound: 1,000 images per digit is 10,000 for all ten, the size of a FID sample
# set (evaluate.py --samples); far more is hours of sampling and a grid PNG too wide to look at
# (--n images a row), and a million ends in an allocator traceback (the starting noise alone is 31 GB).
MAX_N = 1000
MAX_IMAGES = 10_000  # --n x the digits or prompts asked for


def check_args(args) -> list:
    """Refuse wrong command-line values before anything is loaded (exit code 2); return the digits."""
    from difflab.infra.untrusted import shown
    from difflab.visualize import image_format

    check_sampling_args(args)
    if args.n < 1:
        usage("--n: expected a positive integer")
    check_at_most(args.n, MAX_N, "--n", "images per digit or prompt; 10,000 for all ten digits is a FID sample set")
    if args.framing is not None:
        args.framing = parse_framing(args.framing)
    if args.variations and args.prompt:
        usage("--variations draws from real digits' CLIP embeddings, --prompt from words: one or the other")
    for text in args.prompt:  # unknown words fail here, before the checkpoint is loaded
        from difflab.moving_mnist import parse_prompt
        from difflab.prompts import PromptError, tokenize

        try:
            parse_prompt(text)  # a clip's "a 7 moving left quickly"
            continue
        except ValueError:
            pass
        try:
            tokenize(text)
        except PromptError as e:
            usage(f"--prompt: {e}")
    digits = [int(d) for d in args.digits.replace(",", "") if d.isdigit()]
    if not digits or len(digits) != len(args.digits.replace(",", "")):
        usage(f"--digits: expected digits 0-9 such as 0123456789 or 3,7, got {shown(args.digits)}")
    rows = len(args.prompt) or len(digits)
    check_at_most(args.n * rows, MAX_IMAGES, f"--n x {rows} {'prompts' if args.prompt else 'digits'}",
                  "images in one run; a FID sample set is 10,000")
    if args.out and not Path(args.out).is_dir():  # a folder: check_output_file says so, more plainly
        try:
            image_format(args.out)
        except ValueError:
            usage(f"--out: expected an image file name such as grid.png, got {args.out!r}")
    return digits


def parse_framing(text: str) -> tuple[int, int, int]:
    """--framing SIZE,TOP,LEFT: three integers within what the reframed training digits had (difflab.microcond)."""
    from difflab.microcond import SIZE, SIZE_MAX, SIZE_MIN

    try:
        size, top, left = (int(v) for v in text.split(","))
    except ValueError:
        usage(f"--framing: expected three integers SIZE,TOP,LEFT such as 28,0,0, got {text[:40]!r}")
    lo, hi = round(SIZE * SIZE_MIN), round(SIZE * SIZE_MAX)
    slack = range(0, size - SIZE + 1) if size >= SIZE else range(size - SIZE, 1)
    if not lo <= size <= hi or top not in slack or left not in slack:
        usage(f"--framing: SIZE in {lo}..{hi}, and TOP and LEFT in {slack.start}..{slack.stop - 1} for that size "
              f"(the framings the model was trained on), got {text[:40]!r}")
    return size, top, left


def npz_bytes(result, texts=None, digits=None) -> bytes:
    """x (uint8 N x 28 x 28) and y (the digits asked for) as the bytes of an .npz file; with prompts,
    y is the digit each prompt names (10 if none) and `prompts` holds the texts. `digits`: y when the model was
    given more than a label per image (an unCLIP decoder's embeddings, SDXL's micro-conditions)."""
    import numpy as np

    from difflab.data import tensor_to_uint8
    from difflab.models import NULL_CLASS
    from difflab.prompts import parse

    buffer = io.BytesIO()  # np.savez on a path would append ".npz" to a name without it
    if texts is None:
        y = result.labels if digits is None else digits
        np.savez(buffer, x=tensor_to_uint8(result.images), y=y.numpy().astype(np.int64))
    else:
        digits = [NULL_CLASS if parse(t)[0] is None else parse(t)[0] for t in texts]
        np.savez(buffer, x=tensor_to_uint8(result.images), y=np.array(digits, np.int64), prompts=np.array(texts))
    return buffer.getvalue()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", default="sd1",
                   help="a checkpoint (.pt) or an export (.safetensors), or a model shipped in weights/: sd1, sd2 or "
                        "sd3 (default: sd1, so a fresh clone samples before training anything)")
    p.add_argument("--sampler", default=None, help=sampler_help())
    p.add_argument("--steps", type=int, default=None,
                   help=STEPS_HELP)
    p.add_argument("--cfg-scale", type=float, default=None, help="guidance scale, finite and >= 0; 1 = no guidance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=8,
                   help=f"images per digit (or per prompt), 1 to {MAX_N}; at most {MAX_IMAGES:,} in all")
    p.add_argument("--digits", default="0123456789", help="which digits, e.g. 3 or 0,1,7")
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help='a model trained on prompts: a row of --n images per prompt, e.g. "a thin 3" (repeatable)')
    p.add_argument("--variations", action="store_true",
                   help="an unCLIP decoder (configs/unclip/decoder.yaml): a row per digit, a real test image of it "
                        "then --n images drawn from its CLIP embedding")
    p.add_argument("--framing", default=None, metavar="SIZE,TOP,LEFT",
                   help="a model told SDXL's micro-conditions (configs/microcond/sdxl_microcond.yaml): the digit's "
                        "canvas size (14-45) and crop corner to ask for (default 28,0,0: MNIST's own framing)")
    p.add_argument("--stages", action="store_true",
                   help="a cascade's super-resolution stage (configs/cascade/): for each digit a row of what the base "
                        "drew (14x14, shown enlarged), then a row of what this stage drew from it")
    p.add_argument("--out", default=None, help="PNG path (default: beside the experiment's samples)")
    p.add_argument("--save-npz", default=None, metavar="PATH", help="also write x (uint8 N x 28 x 28) and y")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per batch (default: 32 on a CPU, 8 for a transformer; 500 on a GPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--set", action="append", default=[], metavar="sampling.KEY=VALUE", dest="sampling",
                   help="change how the checkpoint samples, e.g. --set sampling.clip_x0=true (repeatable)")
    args = p.parse_args(argv)
    digits = check_args(args)

    import torch
    from tqdm import tqdm

    from difflab.infra.outputs import check_output_file, write_bytes_atomic, writing
    from difflab.pipeline import Pipeline
    from difflab.visualize import save_grid

    from difflab.infra.weights import SHIPPED, checkpoint_path

    ckpt = checkpoint_path(args.checkpoint)
    pipe = Pipeline.from_checkpoint(ckpt, args.device, use_ema=not args.no_ema, sampling=args.sampling)
    texts = None
    video = pipe.cfg.model.architecture == "video_dit"
    if video and args.save_npz:
        fail(f"--save-npz: images only ({pipe.cfg.name} draws clips: its PNG and GIF are what it writes)")
    if video and args.prompt:  # a clip's prompt: (digit, direction, speed)
        from difflab.moving_mnist import parse_prompt

        try:
            labels = torch.tensor([parse_prompt(text) for text in args.prompt for _ in range(args.n)])
        except ValueError as e:
            fail(f"--prompt: {e}")
    elif args.prompt:
        if not pipe.reads_prompts:
            fail(f"--prompt: {args.checkpoint} was trained on class labels ({pipe.cfg.name}); use --digits, "
                 "or a checkpoint of a config in configs/prompt/")
        texts = [text for text in args.prompt for _ in range(args.n)]
        labels = pipe.prompts(texts)
    elif args.variations:
        if pipe.cfg.model.conditioning != "clip_image":
            fail(f"--variations: {args.checkpoint} does not draw from CLIP image embeddings ({pipe.cfg.name}); "
                 "use a checkpoint of configs/unclip/decoder.yaml")
        from difflab.unclip import image_embeddings_of, test_images_of

        originals = test_images_of(digits)
        labels = image_embeddings_of(originals).repeat_interleave(args.n, dim=0)
    else:
        labels = pipe.default_labels(digits, args.n)
    if args.framing is not None:
        if not getattr(pipe.cfg.model.net, "micro_conditioning", False):
            fail(f"--framing: {args.checkpoint} was not told digits' sizes and crops ({pipe.cfg.name}); use a "
                 "checkpoint of configs/microcond/sdxl_microcond.yaml")
        labels = pipe.framed(labels[:, 0], args.framing)
    if args.stages and not pipe.super_resolves(pipe.cfg):
        fail(f"--stages: {args.checkpoint} is not a cascade's super-resolution stage ({pipe.cfg.name}); use a "
             "checkpoint of configs/cascade/sr_28.yaml")
    run = pipe.settings(args.sampler, args.steps, args.cfg_scale, args.batch_size)
    check_steps(run.steps, "sampling.steps (the checkpoint's, or --set)")
    beside = Path("samples") if args.checkpoint in SHIPPED else ckpt.parent.parent / "samples"  # not into weights/
    default_out = beside / f"sample_{ckpt.stem}_{run.sampler}_{run.steps}.png"
    out = Path(args.out) if args.out else default_out
    # Every file this run writes is tried now: a path that cannot be written fails before the sampling.
    check_output_file(out, "--out")
    if args.save_npz:
        check_output_file(args.save_npz, "--save-npz")

    with tqdm(total=pipe.callbacks(len(labels), run), unit="step", desc=f"{run.sampler} x{run.steps}") as bar:
        result = pipe.generate(labels, sampler=run.sampler, steps=run.steps, cfg_scale=run.cfg_scale,
                               seed=args.seed, batch_size=run.batch_size, callback=lambda *a: bar.update(1))
    images, nrow = result.images, args.n
    if args.variations:  # each row: the real digit, then what the decoder drew from its embedding
        images = torch.cat([torch.cat([o[None], result.images[i * args.n: (i + 1) * args.n]])
                            for i, o in enumerate(originals)])
        nrow = args.n + 1
    if args.stages:  # each digit: a row of the base's drawings (enlarged, blocky: 14x14 pixels), then the cascade's
        from difflab.cascade import IMAGE_SIZE

        small = torch.nn.functional.interpolate(result.low_res, size=IMAGE_SIZE, mode="nearest")
        images = torch.cat([torch.cat([small[i: i + args.n], images[i: i + args.n]])
                            for i in range(0, len(images), args.n)])
    if video:  # clips: a row of frames per clip in the PNG, and the clips playing side by side in a GIF
        from difflab.visualize import clip_gif, frames_of

        gif = out.with_suffix(".gif")
        check_output_file(gif, "--out (its .gif)")
        with writing(gif):
            write_bytes_atomic(gif, clip_gif(images, nrow=min(len(images), args.n)))
        images, nrow = frames_of(images), images.shape[2]
        print(f"wrote {gif} ({len(labels)} clips playing)")
    with writing(out):  # a disk that filled meanwhile: one line with the free space, no half PNG
        save_grid(images, out, nrow=nrow)
    print(f"wrote {out} ({len(labels)} {'clips' if video else 'images'}, {result.nfe} model evaluations, "
          f"{result.seconds:.1f} s)")
    if args.save_npz:
        with writing(args.save_npz, kept=f"{out} was written"):
            asked = None if texts or labels.ndim == 1 else torch.tensor([d for d in digits for _ in range(args.n)])
            write_bytes_atomic(args.save_npz, npz_bytes(result, texts, asked))
        print(f"wrote {args.save_npz}")
    return 0

