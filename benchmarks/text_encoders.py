"""The pretrained text encoders of issue 47, measured on their own (docs/encoders.md): the tiny CLIP's zero-shot
digit accuracy and attribute retrieval on the 10,000 test images, the masked language model's share of hidden words
named on the test images' prompts, their sizes and training times. Publishes docs/results/text_encoders.json.

    python benchmarks/text_encoders.py       # trains each encoder if it is not cached (about 5 minutes on 2 cores)

The numbers are the ones each cache recorded when it was trained (data/encoders/*.json): a cached encoder is
not measured again, so they always describe the weights in use.
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from difflab import clip, encoders  # noqa: E402


def recorded(meta_path: Path) -> dict:
    """What the cache's JSON says of the encoder, without the bookkeeping (file name, hash, format)."""
    meta = json.loads(meta_path.read_text())
    return {k: v for k, v in meta.items() if k not in ("format", "weights")}


def main() -> int:
    torch.set_num_threads(2)
    clip.load_clip()
    encoders.load_mlm()
    out = {"kind": "text encoders", "clip": recorded(clip.clip_paths()[1]), "mlm": recorded(encoders.mlm_paths()[1])}
    path = ROOT / "docs" / "results" / "text_encoders.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    c, m = out["clip"], out["mlm"]
    print(f"CLIP: zero-shot digit accuracy {100 * c['zero_shot_digit_accuracy']:.2f}%, attributes "
          + ", ".join(f"{k} {100 * v:.1f}%" for k, v in c["attribute_accuracy"].items())
          + f" (chance 33.3%); {c['parameters']:,} parameters, {c['train_seconds']:.0f} s")
    print(f"masked LM: {100 * m['masked_word_accuracy']:.1f}% of hidden words named (always the commonest word: "
          f"{100 * m['commonest_word_share']:.1f}%); {m['parameters']:,} parameters, {m['train_seconds']:.0f} s")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
