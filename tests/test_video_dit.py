"""The video DiT (issue 49, difflab.models.video_dit): spacetime patches, full or factorised attention."""

import pytest
import torch

from difflab import moving_mnist
from difflab.models import build_model, count_parameters, model_config
from difflab.models.text import drop_condition
from difflab.models.video_dit import DIRECTIONS, SPEEDS, unpatchify_3d


def video_dit(**settings):
    cfg = model_config("video_dit", **{"hidden_size": 32, "depth": 2, "num_heads": 2, **settings})
    return build_model(cfg, in_channels=1, image_size=16)


def randomised(model):
    """Every weight drawn afresh, so the zero-initialised gates let information through (a trained model's do)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    return model


def test_a_clip_goes_in_and_out_as_spacetime_patches_and_starts_at_zero():
    model = video_dit(frames=4, tubelet=2, patch_size=4)
    x, t, y = torch.randn(3, 1, 4, 16, 16), torch.rand(3) * 1000, torch.tensor([[7, 0, 1], [2, 3, 0], [10, 4, 2]])
    out = model(x, t, y)
    assert out.shape == x.shape and out.abs().max() == 0  # adaLN-Zero and a zeroed final layer: predicts 0
    # a token's values return to its own block of frames and pixels, in the order a Conv3d kernel reads them
    blocks = x.view(3, 1, 2, 2, 4, 4, 4, 4).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(3, 2 * 4 * 4, 2 * 4 * 4)
    assert torch.equal(unpatchify_3d(blocks, 1, 2, 4, 2, 4), x)
    kernel = model.patch_embed.weight.flatten(1)  # (D, C q p p)
    tokens = model.patch_embed(x).flatten(2).transpose(1, 2)
    assert torch.allclose(tokens, blocks @ kernel.T + model.patch_embed.bias, atol=1e-5)


def test_factorised_attention_mixes_within_a_frame_then_across_frames_and_full_attention_everywhere():
    t, y = torch.tensor([500.0]), torch.tensor([[3, 1, 0]])
    for attention in ("factorised", "full"):
        model = randomised(video_dit(frames=4, tubelet=1, patch_size=4, attention=attention))
        Ft, S = 4, 16
        h = torch.randn(1, Ft * S, 32)
        c = model.t_embed(t) + model.y_embed(y)
        poked = h.clone()
        poked[0, 1 * S + 5] += torch.randn(32)  # frame 1, position 5 (not a constant: LayerNorm removes one)
        with torch.no_grad():
            changed = [(model.attend(block, i, poked, c) - model.attend(block, i, h, c)).abs().sum(-1)[0]
                       .view(Ft, S) > 0 for i, block in enumerate(model.blocks)]
        if attention == "full":
            assert changed[0].all()
            continue
        spatial, temporal = changed
        assert spatial[1].all() and not spatial[[0, 2, 3]].any()  # block 0: within frame 1 only
        assert temporal[:, 5].all() and not temporal[:, [p for p in range(S) if p != 5]].any()  # block 1: position 5
    assert count_parameters(video_dit(attention="full")) == count_parameters(video_dit(attention="factorised"))


def test_a_clips_condition_is_its_digit_direction_and_speed_all_dropped_for_guidance():
    assert (DIRECTIONS, SPEEDS) == (len(moving_mnist.DIRECTIONS), len(moving_mnist.SPEEDS))
    y = torch.tensor([[7, 0, 1], [2, 3, 0]])
    dropped = drop_condition(y, torch.tensor([True, False]))
    assert dropped.tolist() == [[10, DIRECTIONS, SPEEDS], [2, 3, 0]]
    model = randomised(video_dit(frames=2, tubelet=1))
    x, t = torch.randn(2, 1, 2, 16, 16), torch.full((2,), 300.0)
    outs = [model(x, t, torch.tensor([[7, d, s]] * 2)) for d, s in ((0, 0), (1, 0), (0, 1))]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])  # each part is read


VIDEO = {"architecture": "video_dit", "frames": 8, "hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": 8,
         "tubelet": 4}


def synthetic_split(split, data_dir=None):
    """Stand-in for moving_mnist.load_split: blobs for digits, the split's own motions (the first 64)."""
    import numpy as np

    from test_moving_mnist import blobs

    motion = moving_mnist.motions(split, np.zeros(moving_mnist.SPLITS[split][0]))[:64]
    return moving_mnist.tiles(blobs(64)), motion, np.arange(64) % 10


def test_train_py_trains_a_video_dit_on_clips_and_the_pipeline_draws_clips(tmp_path, monkeypatch, fake_mnist):
    from PIL import Image

    from conftest import tiny_config
    from difflab.latent import load_training_data
    from difflab.pipeline import Pipeline
    from difflab.training import Trainer

    monkeypatch.setattr(moving_mnist, "load_split", synthetic_split)
    cfg = tiny_config(tmp_path, data={"dataset": "moving_mnist"}, model=VIDEO, training={"max_steps": 2},
                      diffusion={"target": "flow", "schedule": "flow"}, sampling={"sampler": "euler", "steps": 2})
    (x, y), _ = load_training_data(cfg, torch.device("cpu"))
    assert x.shape == (64, 1, 8, 32, 32) and x.dtype == torch.uint8  # bytes: a quarter of floats' memory
    assert y.shape == (64, 3) and torch.equal(y[:, 1], torch.from_numpy(synthetic_split("train")[1][:, 1]))
    trainer = Trainer(cfg, data=(x, y), quiet=True)
    batch, _ = trainer.batch(0)
    assert batch.dtype == torch.float32 and batch.min() >= -1 and batch.max() <= 1 and batch.max() > 0.5
    trainer.fit()
    grid = Image.open(trainer.out_dir / "samples" / "epoch_001.png")
    assert grid.width < grid.height  # ten clips, one per row, each a row of eight frames: taller than wide
    pipe = Pipeline.from_checkpoint(trainer.out_dir / "checkpoints" / "last.pt", "cpu")
    labels = pipe.default_labels([3, 8], 2)
    assert labels.tolist() == [[3, 0, 0], [3, 1, 0], [8, 1, 0], [8, 2, 0]]  # each digit moving each way in turn
    clips = pipe.generate(labels, seed=0).images
    assert clips.shape == (4, 1, 8, 32, 32) and torch.isfinite(clips).all()

    from difflab import evaluation

    scores = evaluation.evaluate_pipeline(pipe, fake_mnist, 8, steps=2, progress=False)
    assert scores["n"] == 8 and scores["video"]["frames"] == 8 and scores["fid"] > scores["fid_floor"]
    assert scores["video"]["real"]["direction_accuracy"] == 1  # the held-out clips move as their prompts say
    with pytest.raises(ValueError, match="4 to 1000 held-out clips"):
        evaluation.evaluate_pipeline(pipe, fake_mnist, 1001, steps=2, progress=False)

    from difflab.commands import sample

    out = tmp_path / "clips.png"
    ckpt = str(trainer.out_dir / "checkpoints" / "last.pt")
    assert sample.main(["--checkpoint", ckpt, "--prompt", "a 7 moving up quickly", "--prompt", "a 1 moving left slowly",
                        "--n", "3", "--steps", "2", "--out", str(out)]) == 0
    gif = Image.open(out.with_suffix(".gif"))  # the clips playing
    assert gif.n_frames == 8 and Image.open(out).size == (2 * (8 * 34 + 2), 2 * (6 * 34 + 2))  # 6 rows of 8 frames
    from difflab.infra.failures import InputError

    with pytest.raises(InputError, match="a <digit> moving <left"):  # another form: the one clips' prompts take
        sample.main(["--checkpoint", ckpt, "--prompt", "a thin 7", "--steps", "2", "--out", str(out)])


def test_clips_and_the_video_dit_go_together_and_nothing_else_with_them(tmp_path):
    from conftest import tiny_config
    from difflab.config import ConfigError

    flow = {"diffusion": {"target": "flow", "schedule": "flow"}}
    for sections, key in [({"data": {"dataset": "moving_mnist"}}, "model.architecture"),  # a U-Net on clips
                          ({"model": VIDEO}, "data.dataset"),  # a video DiT on images
                          ({"data": {"dataset": "moving_mnist"}, "model": {**VIDEO, "frames": 4}}, "model.frames"),
                          ({"data": {"dataset": "moving_mnist"}, "model": {**VIDEO, "tubelet": 3}}, "model.frames")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            tiny_config(tmp_path, **sections, **flow)


def test_real_clips_score_as_what_they_are_and_a_still_digit_moves_nowhere(monkeypatch):
    """video_scores.clip_scores with a stand-in judge that reads the blob's size as its digit: real clips keep their
    digit in every frame and move as asked; the same digit held still keeps its identity but not its motion."""
    import numpy as np

    from difflab import video_scores

    tiles, motion, labels = synthetic_split("test")
    clips = torch.from_numpy(moving_mnist.render(tiles, motion))[:, None].float() / 127.5 - 1
    asked = torch.from_numpy(np.stack([labels, motion[:, 1], motion[:, 2]], 1))

    class SizeJudge(torch.nn.Module):  # features: the ink's area; the "digit": the clip's own label, by area
        def __init__(self):
            super().__init__()
            self.device_marker = torch.nn.Parameter(torch.zeros(1))  # where it runs (evaluation.on_its_device)
            self.area = {round(float(((c[0, 0] + 1) / 2).sum()), 1): int(d) for c, d in zip(clips, labels)}

        def features(self, x):
            return ((x + 1) / 2).sum((1, 2, 3))[:, None].repeat(1, 2)

        def classify(self, f):
            return torch.nn.functional.one_hot(torch.tensor([self.area.get(round(float(a), 1), 0) for a in f[:, 0]]),
                                               10).float()

    monkeypatch.setattr(video_scores, "features", lambda clf, images, batch_size=500: clf.features(images))
    scores, feats = video_scores.clip_scores(clips, asked, SizeJudge())
    assert feats.shape == (64 * 8, 2)
    assert scores["direction_accuracy"] == 1 and scores["speed_accuracy"] == 1
    assert scores["identity_consistent"] == 1 and scores["frame_accuracy"] == scores["identity_correct"]
    still, _ = video_scores.clip_scores(clips[:, :, :1].repeat(1, 1, 8, 1, 1), asked, SizeJudge())
    assert still["identity_consistent"] == 1 and still["speed_accuracy"] == (asked[:, 2] == 0).float().mean()


def test_image_to_video_reads_the_given_first_frame_and_a_text_model_refuses_one():
    from difflab.models.video_dit import given_first_frames

    model = randomised(video_dit(frames=2, tubelet=1, first_frame=0.25))
    assert model.patch_embed.in_channels == 2  # x_t and the given frame, side by side
    x, t, y = torch.randn(2, 1, 2, 16, 16), torch.full((2,), 300.0), torch.tensor([[7, 0, 1]] * 2)
    frame = torch.rand(2, 1, 16, 16) * 2 - 1
    given, none, zeros = model(x, t, y, first=frame), model(x, t, y), model(x, t, y, first=torch.zeros_like(frame))
    assert not torch.allclose(given, none) and torch.equal(none, zeros)  # no frame given: zeros, an empty frame
    doubled = model(torch.cat([x, x]), t.repeat(2), y.repeat(2, 1), first=frame)  # guidance: both halves given it
    assert torch.allclose(doubled[:2], given, atol=1e-5) and torch.allclose(doubled[2:], given, atol=1e-5)
    clips = torch.randn(3, 1, 8, 4, 4)
    chosen = given_first_frames(clips, torch.tensor([True, False, True]))
    assert torch.equal(chosen[0], clips[0, :, 0]) and torch.equal(chosen[2], clips[2, :, 0]) and not chosen[1].any()
    with pytest.raises(ValueError, match="first frame"):
        video_dit(frames=2, tubelet=1)(x, t, y, first=frame)


def test_image_to_video_trains_samples_and_scores_from_held_out_first_frames(tmp_path, monkeypatch, fake_mnist):
    from conftest import tiny_config
    from difflab import evaluation
    from difflab.pipeline import Pipeline
    from difflab.training import Trainer

    monkeypatch.setattr(moving_mnist, "load_split", synthetic_split)
    cfg = tiny_config(tmp_path, data={"dataset": "moving_mnist"}, model={**VIDEO, "first_frame": 0.5},
                      training={"max_steps": 2}, diffusion={"target": "flow", "schedule": "flow"},
                      sampling={"sampler": "euler", "steps": 2})
    trainer = Trainer(cfg, quiet=True)
    trainer.fit()
    ckpt = trainer.out_dir / "checkpoints" / "last.pt"
    pipe = Pipeline.from_checkpoint(ckpt, "cpu", sampling=["sampling.first_frame=true"])
    labels = torch.tensor([[3, 0, 0], [3, 1, 1], [8, 2, 0]])
    frames = moving_mnist.first_frames([3, 3, 8])
    tiles, motion, digits = synthetic_split("test")
    assert frames.shape == (3, 1, 32, 32) and frames.min() == -1 and frames.max() > 0
    assert not torch.equal(frames[0], frames[1])  # two 3s: two held-out clips of 3, their first frames
    first_of_8 = torch.from_numpy(moving_mnist.render(tiles, motion[[8]])[0, 0]).float() / 127.5 - 1
    assert torch.equal(frames[2, 0], first_of_8)
    drawn = pipe.generate(labels, seed=0)
    assert torch.equal(drawn.images, pipe.generate(labels, seed=0, first_frames=frames).images)
    assert not torch.equal(drawn.images, pipe.generate(labels, seed=0, first_frames=-frames).images)
    scores = evaluation.evaluate_pipeline(pipe, fake_mnist, 8, steps=2, progress=False)
    assert scores["video"]["first_frame_given"] and 0 < scores["video"]["first_frame_error"] <= 1
    text_only = tiny_config(tmp_path / "t", data={"dataset": "moving_mnist"}, model=VIDEO, training={"max_steps": 1},
                            diffusion={"target": "flow", "schedule": "flow"}, sampling={"first_frame": True})
    with pytest.raises(ValueError, match="not trained to be given a first frame"):
        Pipeline(build_model(text_only.model, 1, 32), text_only, torch.device("cpu")).generate(labels, steps=1)
