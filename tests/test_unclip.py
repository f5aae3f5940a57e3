"""DALL-E 2's decoder (difflab.unclip, model.conditioning: clip_image): a U-Net drawing from a CLIP image embedding."""

import pytest
import torch

from difflab import unclip
from difflab.config import ConfigError
from difflab.infra.failures import InputError, UsageError
from difflab.models.text import IMAGE_EMBED_DIM, ImageEmbeddingCondition, drop_condition, null_condition
from difflab.training import Trainer

from conftest import synthetic_split, tiny_config, tiny_data

TINY_DECODER = {"conditioning": "clip_image", "text_dim": 16, "text_heads": 2, "cross_attention_levels": [1],
                "pooled_text": True}


@pytest.fixture(autouse=True)
def no_real_clip(monkeypatch):
    """Never the cached tiny CLIP (a new checkout has none: it would train for minutes): synthetic test digits,
    and their pixels as their "embeddings". Training a decoder draws its grid from these too."""
    monkeypatch.setattr(unclip, "load_split", synthetic_split)
    monkeypatch.setattr(unclip, "image_embeddings_of", lambda x, *a, **k: x.flatten(1)[:, :IMAGE_EMBED_DIM])


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


TINY_PRIOR = {"architecture": "prior", "hidden_size": 32, "depth": 1, "num_heads": 2, "conditioning": "prompt",
              "text_dim": 16, "text_heads": 2}


def test_unclip_chains_a_prior_of_embeddings_and_a_decoder_of_images(tmp_path):
    """The prior trains on (E, 1, 1) embeddings from prompts; with sampling.decoder its samples become images,
    given at sampling time only: a decoder named in a stored config is never loaded."""
    from difflab import prompts
    from difflab.pipeline import Pipeline

    x, y = tiny_data(64)
    decoder = Trainer(tiny_config(tmp_path / "d", model=TINY_DECODER, training={"max_steps": 2}),
                      data=(x, embeddings_of(y)), quiet=True)
    decoder.fit()
    decoder_ckpt = decoder.out_dir / "checkpoints" / "last.pt"
    tokens = prompts.encode([prompts.write(int(d), {}) for d in y])
    z = unclip.embeddings_from_prior(embeddings_of(y)[:, :, None, None]) * IMAGE_EMBED_DIM ** 0.5
    prior_cfg = tiny_config(tmp_path / "p", model=TINY_PRIOR, diffusion={"target": "x0"},
                            sampling={"clip_x0": False}, training={"max_steps": 2})
    prior = Trainer(prior_cfg, data=(z[:, :, None, None], tokens), quiet=True)
    prior.fit()
    prior_ckpt = prior.out_dir / "checkpoints" / "last.pt"

    alone = Pipeline.from_checkpoint(prior_ckpt, "cpu")
    drawn = alone.generate(alone.prompts(["a 3", "a 5"]), steps=2, seed=0).images
    assert drawn.shape == (2, IMAGE_EMBED_DIM, 1, 1)  # embeddings, unclamped
    chained = Pipeline.from_checkpoint(prior_ckpt, "cpu", sampling=[f"sampling.decoder={decoder_ckpt}"])
    result = chained.generate(chained.prompts(["a 3", "a 5"]), steps=2, seed=0)
    assert result.images.shape == (2, 1, 28, 28) and torch.isfinite(result.images).all()
    assert result.nfe > 2  # the prior's calls and the decoder's
    expected = chained.decoder.generate(unclip.embeddings_from_prior(drawn), seed=0).images
    assert torch.equal(result.images, expected)  # the decoder draws exactly the prior's samples
    from difflab.evaluation import how_sampled
    from difflab.study.page_tables import sampling_text

    said = how_sampled(chained, chained.settings(steps=2), result)  # what evaluate.py writes beside the scores
    d = chained.decoder.cfg.sampling
    assert said["decoder"] == {"checkpoint": str(decoder_ckpt), "sampler": d.sampler, "steps": d.steps,
                               "cfg_scale": d.cfg_scale}
    assert sampling_text(said).endswith(f", decoder {d.sampler} x{d.steps}, CFG {d.cfg_scale:g}")
    assert "decoder" not in how_sampled(alone, alone.settings(steps=2), result)

    state = torch.load(prior_ckpt, weights_only=False)
    state["config"]["sampling"]["decoder"] = str(tmp_path / "someone-elses.pt")
    del state["sha256"]
    from difflab.infra.checkpoint import save_checkpoint

    stored = save_checkpoint(state, tmp_path / "stored" / "checkpoints" / "last.pt")
    assert Pipeline.from_checkpoint(stored, "cpu").decoder is None  # a stored path is never opened
    with pytest.raises(ConfigError, match="only a prior"):
        Pipeline.from_checkpoint(decoder_ckpt, "cpu", sampling=[f"sampling.decoder={decoder_ckpt}"])
    with pytest.raises(ConfigError, match="clip_image"):
        Pipeline.from_checkpoint(prior_ckpt, "cpu", sampling=[f"sampling.decoder={prior_ckpt}"])
    from difflab import evaluation

    with pytest.raises(ValueError, match="sampling.decoder"):
        evaluation.evaluate_pipeline(alone, None, 10)
    with pytest.raises(ConfigError, match="sampling.clip_x0"):
        tiny_config(tmp_path, model=TINY_PRIOR, sampling={"clip_x0": True})


def test_sample_py_draws_variations_of_real_digits_beside_them(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from difflab.commands import sample
    from difflab.data import tensor_to_uint8

    x, y = tiny_data(64)
    trainer = Trainer(tiny_config(tmp_path, model=TINY_DECODER, training={"max_steps": 2}),
                      data=(x, embeddings_of(y)), quiet=True)
    trainer.fit()
    out = tmp_path / "variations.png"
    ckpt = str(trainer.out_dir / "checkpoints" / "last.pt")
    assert sample.main(["--checkpoint", ckpt, "--variations", "--digits", "37", "--n", "2", "--steps", "2",
                        "--out", str(out), "--device", "cpu"]) == 0
    grid = np.asarray(Image.open(out))[::2, ::2]  # saved at scale 2
    assert grid.shape == (2 * 30 + 2, 3 * 30 + 2)  # a row per digit: the original and 2 variations
    originals = tensor_to_uint8(unclip.test_images_of([3, 7]))
    assert np.array_equal(grid[2:30, 2:30], originals[0]) and np.array_equal(grid[32:60, 2:30], originals[1])
    with pytest.raises(UsageError, match="one or the other"):
        sample.main(["--checkpoint", ckpt, "--variations", "--prompt", "a 3"])
    labels_ckpt = Trainer(tiny_config(tmp_path / "labels", training={"max_steps": 1}), data=tiny_data(16), quiet=True)
    labels_ckpt.fit()
    with pytest.raises(InputError, match="configs/unclip/decoder.yaml"):
        sample.main(["--checkpoint", str(labels_ckpt.out_dir / "checkpoints" / "last.pt"), "--variations",
                     "--out", str(tmp_path / "no.png"), "--device", "cpu"])
