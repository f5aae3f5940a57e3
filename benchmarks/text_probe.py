"""Does a trained text encoder tell its words apart? Cosine similarities inside models of prompts.

    python benchmarks/text_probe.py experiments/prompt_study/sd1_unet_crossattn/checkpoints/model_epoch_1.pt \
        experiments/prompt_study/sd3_mmdit_joint/checkpoints/model_epoch_1.pt

For pairs of prompts that differ in one word ("a left-slanted 3" / "a right-slanted 3"), this prints
how alike the encoder's output vectors of that word are (cosine similarity, 1 = the same), how alike
the two words' input embeddings are, and how alike the pooled prompt vectors are. A denoiser can
only follow a word its encoder keeps apart from the others: an output similarity near 1 for two
opposite words means the word is lost before any attention in the denoiser sees it
(docs/lab/prompts.md, section 8). No sampling: a second per checkpoint.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from difflab.pipeline import Pipeline  # noqa: E402
from difflab.prompts import encode, words  # noqa: E402

# (prompt, prompt, the word position that differs: 0 is the start token, 1 the article)
PAIRS = [("a left-slanted 3", "a right-slanted 3"), ("a thin 3", "a thick 3"), ("a narrow 3", "a wide 3"),
         ("a left-slanted 7", "a right-slanted 7"), ("a 3", "a 7")]


def differing_position(a: str, b: str) -> int:
    wa, wb = words(a), words(b)
    return 1 + next(i for i, (x, y) in enumerate(zip(wa, wb)) if x != y)  # +1: the start token comes first


@torch.no_grad()
def probe(checkpoint: str) -> list[tuple[str, float, float, float]]:
    text = Pipeline.from_checkpoint(checkpoint, "cpu").model.text
    if text is None:
        raise SystemExit(f"{checkpoint}: a model of class labels, no text encoder to probe")
    rows = []
    for a, b in PAIRS:
        tokens = torch.as_tensor(encode([a, b]))
        out, _, pooled = text(tokens)
        i = differing_position(a, b)
        emb = text.embed(tokens[:, i])
        rows.append((f"{a!r} / {b!r}", F.cosine_similarity(out[0, i], out[1, i], dim=0).item(),
                     F.cosine_similarity(emb[0], emb[1], dim=0).item(),
                     F.cosine_similarity(pooled[0], pooled[1], dim=0).item()))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoints of models of prompts")
    args = p.parse_args()
    torch.set_num_threads(1)
    for ckpt in args.checkpoints:
        print(ckpt)
        print(f"  {'pair':<42} {'word out':>9} {'word in':>8} {'pooled':>7}")
        for pair, out, emb, pooled in probe(ckpt):
            print(f"  {pair:<42} {out:9.3f} {emb:8.3f} {pooled:7.3f}")


if __name__ == "__main__":
    main()
