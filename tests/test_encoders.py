"""Frozen, pretrained text encoders (difflab.encoders): the masked language model, and a diffusion model that
reads a frozen encoder without ever changing it."""

from pathlib import Path

import pytest
import torch

from difflab import encoders, prompts
from difflab.config import ConfigError
from difflab.data import load_split
from difflab.pipeline import Pipeline
from difflab.training import Trainer

from conftest import tiny_config, tiny_data

DATA = Path(__file__).resolve().parents[1] / "data"
TINY_PROMPTED = {"conditioning": "prompt", "text_dim": 16, "text_heads": 2, "cross_attention_levels": [1]}


def test_hidden_words_are_words_and_every_prompt_hides_one():
    tokens = prompts.encode(["a 7", "the digit seven, thin and wide", "", "a thick, right-slanted 3"] * 50)
    hidden = encoders.choose_hidden(tokens, 0.15, torch.Generator().manual_seed(0))
    words = (tokens != prompts.TOKEN[prompts.PAD]) & (tokens != prompts.TOKEN[prompts.START])
    assert not (hidden & ~words).any()  # never the padding, never the start token
    has_words = words.any(1)
    assert hidden[has_words].any(1).all() and not hidden[~has_words].any()  # "" has nothing to hide
    long = tokens[3::4]  # 7 words each: about 15% hidden, one at least
    assert 0.1 < hidden[3::4].sum().item() / words[3::4].sum().item() < 0.3 and len(long) == 50


def test_the_masked_language_model_learns_which_words_fit():
    """After a short training the hidden words of unseen prompts are named far more often than by always
    guessing the commonest word."""
    if not (DATA / "mnist.npz").is_file():
        pytest.skip(f"needs {DATA}/mnist.npz (python setup_mnist.py)")
    x, y = load_split("train", data_dir=DATA)
    torch.set_num_threads(2)
    model = encoders.train_mlm(x, y, encoders.MLMSettings(epochs=2, train_subset=4096))
    xt, yt = load_split("test", data_dir=DATA)
    tokens = encoders.corpus(*encoders.bins_of(xt[:2000], yt[:2000]), seed=5)
    hidden = encoders.choose_hidden(tokens, 0.15, torch.Generator().manual_seed(0))
    truth = tokens[hidden]
    commonest = truth.bincount().max().item() / len(truth)
    with torch.no_grad():
        accuracy = (model(tokens, hidden).argmax(-1)[hidden] == truth).float().mean().item()
    assert accuracy > commonest + 0.15, (accuracy, commonest)


@pytest.mark.parametrize("kind", encoders.FROZEN)
def test_a_frozen_encoder_is_copied_in_never_trained_and_travels_in_the_checkpoint(tmp_path, monkeypatch, kind):
    torch.manual_seed(3)
    pretrained = encoders.MaskedLM(dim=16, depth=2, num_heads=2).eval()  # stands in for the cached encoder
    monkeypatch.setattr(encoders, "load_mlm", lambda *a, **k: pretrained)
    monkeypatch.setattr("difflab.clip.load_clip", lambda *a, **k: pretrained)
    x, y = tiny_data(64)
    cfg = tiny_config(tmp_path, model={**TINY_PROMPTED, "text_encoder": kind}, training={"max_steps": 3})
    trainer = Trainer(cfg, data=(x, prompts.encode([prompts.write(int(d), {}) for d in y])), quiet=True)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    for name, value in pretrained.text.state_dict().items():
        assert torch.equal(after[f"text.{name}"], value), name  # the pretrained weights, untouched by 3 steps
    assert any(not torch.equal(before[k], after[k]) for k in after if not k.startswith("text."))  # the U-Net learnt
    monkeypatch.setattr(encoders, "load_mlm", lambda *a, **k: pytest.fail("sampling loaded the cached encoder"))
    monkeypatch.setattr("difflab.clip.load_clip", lambda *a, **k: pytest.fail("sampling loaded the cached encoder"))
    pipe = Pipeline.from_checkpoint(trainer.out_dir / "checkpoints" / "last.pt", device="cpu")  # no cache needed
    for name, value in pretrained.text.state_dict().items():
        assert torch.equal(pipe.model.text.state_dict()[name], value), name


def test_a_frozen_encoder_needs_prompts_and_its_own_sizes(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="model.text_encoder"):
        tiny_config(tmp_path, model={"text_encoder": "clip"})  # class labels have no text to read
    with pytest.raises(ConfigError, match="model.text_encoder"):
        tiny_config(tmp_path, model={**TINY_PROMPTED, "text_encoder": "t5"})
    monkeypatch.setattr(encoders, "load_mlm", lambda *a, **k: encoders.MaskedLM(dim=32, depth=2, num_heads=2))
    cfg = tiny_config(tmp_path, model={**TINY_PROMPTED, "text_encoder": "mlm"}, training={"max_steps": 1})
    x, y = tiny_data(16)
    with pytest.raises(Exception, match="masked language model weights"):  # 32 wide, the config says 16
        Trainer(cfg, data=(x, prompts.encode(["a 1"] * 16)), quiet=True)
