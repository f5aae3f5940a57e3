"""The video DiT (issue 49, difflab.models.video_dit): spacetime patches, full or factorised attention."""

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
