"""The tiny CLIP (difflab.clip): its loss, that it learns digits from prompts alone, and its cache."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from difflab import clip, prompts
from difflab.data import load_split

DATA = Path(__file__).resolve().parents[1] / "data"


def real_data():
    if not (DATA / "mnist.npz").is_file():
        pytest.skip(f"needs {DATA}/mnist.npz (python setup_mnist.py)")
    return load_split("train", data_dir=DATA), load_split("test", data_dir=DATA)


def test_with_distinct_captions_the_loss_is_the_papers():
    """Radford et al. 2021, Fig. 3: labels = arange(n), cross-entropy over rows and over columns, averaged."""
    torch.manual_seed(0)
    logits = torch.randn(6, 6) * 3
    tokens = prompts.encode([f"a {d}" for d in range(6)])
    labels = torch.arange(6)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert torch.allclose(clip.contrastive_loss(logits, tokens), expected)
    assert math.isclose(clip.contrastive_loss(torch.zeros(6, 6), tokens).item(), math.log(6), rel_tol=1e-6)


def test_identical_captions_answer_for_each_other():
    """Two images captioned "a 7": either caption is right for either image, so which column scores which
    does not matter, and matching both scores better, where the paper's one-hot target prefers one."""
    torch.manual_seed(1)
    tokens = prompts.encode(["a 7", "a 7", "a thin 3", "the digit one"])
    logits = torch.randn(4, 4) * 2
    swapped = logits[:, [1, 0, 2, 3]]
    assert torch.allclose(clip.contrastive_loss(logits, tokens), clip.contrastive_loss(swapped, tokens))
    both = torch.tensor([[5.0, 5, 0, 0], [5, 5, 0, 0], [0, 0, 5, 0], [0, 0, 0, 5]])  # each 7 matches both "a 7"
    own = torch.eye(4) * 5  # each 7 matches only its own "a 7"
    assert clip.contrastive_loss(both, tokens) < clip.contrastive_loss(own, tokens) - 0.1

    def papers(logits):  # one-hot targets: the other "a 7" is a negative
        return (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.T, torch.arange(4))) / 2

    assert papers(both) > papers(own) + 0.1


def test_a_short_training_reads_digits_from_prompts_alone():
    """Zero-shot classification (Sec. 3.1): 4,096 images seen twice, then the nearest ensemble of digit prompts
    names the digit of unseen test images far above chance (10%)."""
    (x, y), (xt, yt) = real_data()
    torch.set_num_threads(2)
    model = clip.train_clip(x, y, clip.CLIPSettings(epochs=2, train_subset=4096))
    assert not model.training
    accuracy = (clip.zero_shot_digits(model, xt[:1000]) == yt[:1000]).float().mean().item()
    assert accuracy > 0.6, accuracy
    # A real digit scores higher against its own prompt than against another digit's.
    right = clip.clip_score(model, xt[:200], [f"a {d}" for d in yt[:200].tolist()])
    wrong = clip.clip_score(model, xt[:200], [f"a {(d + 1) % 10}" for d in yt[:200].tolist()])
    assert right > wrong + 5, (right, wrong)


def test_the_clip_is_cached_with_its_hash_and_retrained_when_changed(tmp_path, monkeypatch, capsys):
    real_data()
    (tmp_path / "mnist.npz").symlink_to(DATA / "mnist.npz")
    tiny = clip.CLIPSettings(epochs=1, train_subset=512)
    first = clip.load_clip(tmp_path, settings=tiny)
    weights, meta_path = clip.clip_paths(tmp_path)
    meta = json.loads(meta_path.read_text())
    assert meta["settings"]["train_subset"] == 512 and 0 <= meta["zero_shot_digit_accuracy"] <= 1
    assert set(meta["attribute_accuracy"]) == set(prompts.BINS)

    def no_training(*args, **kwargs):
        raise AssertionError("should have loaded the cache")

    with monkeypatch.context() as mp:
        mp.setattr(clip, "train_clip", no_training)
        again = clip.load_clip(tmp_path, settings=tiny)
        for (name, a), b in zip(first.state_dict().items(), again.state_dict().values()):
            assert torch.equal(a, b), name
        with pytest.raises(FileNotFoundError, match="other settings"):
            clip.load_clip(tmp_path, settings=clip.CLIPSettings(epochs=2, train_subset=512), train_if_missing=False)
        state = torch.load(weights, weights_only=True)
        state["logit_scale"] += 1.0  # plausible, but not what was trained
        torch.save(state, weights)
        with pytest.raises(FileNotFoundError, match="SHA-256"):
            clip.load_clip(tmp_path, settings=tiny, train_if_missing=False)
