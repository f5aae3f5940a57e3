"""DALL-E 2's decoder (difflab.unclip, model.conditioning: clip_image): a U-Net drawing from a CLIP image embedding."""

import pytest
import torch

from difflab import unclip
from difflab.config import ConfigError
from difflab.models.text import IMAGE_EMBED_DIM, ImageEmbeddingCondition, drop_condition, null_condition
from difflab.training import Trainer

from conftest import synthetic_split, tiny_config, tiny_data

TINY_DECODER = {"conditioning": "clip_image", "text_dim": 16, "text_heads": 2, "cross_attention_levels": [1],
                "pooled_text": True}


def embeddings_of(y: torch.Tensor) -> torch.Tensor:
    """Stand-ins for CLIP embeddings: a unit vector per digit."""
    return torch.nn.functional.normalize(torch.eye(10, IMAGE_EMBED_DIM)[y] + 0.1, dim=-1)


def test_an_embedding_is_read_as_four_tokens_and_its_null_is_zero():
    condition = ImageEmbeddingCondition(dim=16)
    z = embeddings_of(torch.tensor([3, 7]))
    context, mask, pooled = condition(z)
    assert context.shape == (2, 4, 16) and mask.all() and pooled.shape == (2, 16)
    assert torch.equal(null_condition(z), torch.zeros_like(z))  # guidance's "no condition"
    dropped = drop_condition(z, torch.tensor([True, False]))
    assert torch.equal(dropped[0], torch.zeros(IMAGE_EMBED_DIM)) and torch.equal(dropped[1], z[1])
    labels = torch.tensor([3, 7])
    assert torch.equal(null_condition(labels), torch.tensor([10, 10]))  # class labels keep their null class


def test_a_decoder_trains_on_embeddings_and_draws_what_it_is_given(tmp_path, monkeypatch):
    x, y = tiny_data(64)
    cfg = tiny_config(tmp_path, model=TINY_DECODER, training={"max_steps": 3})
    trainer = Trainer(cfg, data=(x, embeddings_of(y)), quiet=True)
    assert trainer.model.label_embed is None and isinstance(trainer.model.text, ImageEmbeddingCondition)
    trainer.fit()
    pipe = trainer.pipeline()
    z = embeddings_of(torch.tensor([1, 1, 8]))
    out = pipe.generate(z, steps=3, seed=0, cfg_scale=2.0).images
    assert out.shape == (3, 1, 28, 28) and torch.isfinite(out).all()
    other = pipe.generate(embeddings_of(torch.tensor([4, 1, 8])), steps=3, seed=0, cfg_scale=2.0).images
    assert not torch.allclose(out[0], other[0]) and torch.allclose(out[1:], other[1:], atol=1e-5)  # per image
    # scored and shown with real test digits' embeddings, the k-th seven being the k-th test seven
    monkeypatch.setattr(unclip, "load_split", synthetic_split)
    monkeypatch.setattr(unclip, "image_embeddings_of", lambda x, *a, **k: x.flatten(1)[:, :IMAGE_EMBED_DIM])
    images = unclip.test_images_of([7, 7, 2])
    _, ty = synthetic_split("test")
    assert not torch.equal(images[0], images[1])
    sevens = (ty == 7).nonzero().flatten()
    assert torch.equal(images[1], synthetic_split("test")[0][sevens[1]])
    assert pipe.default_labels([7, 2], 2).shape == (4, IMAGE_EMBED_DIM)


def test_image_embeddings_need_a_network_that_reads_a_sequence(tmp_path):
    with pytest.raises(ConfigError, match="model.conditioning"):
        tiny_config(tmp_path, model={"architecture": "dit", "conditioning": "clip_image", "num_heads": 2,
                                     "patch_size": 4, "hidden_size": 32, "depth": 1})
    with pytest.raises(ConfigError, match="model.text_encoder"):
        tiny_config(tmp_path, model={**TINY_DECODER, "text_encoder": "clip"})  # no text to encode
