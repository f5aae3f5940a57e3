"""DiT and MMDiT: shapes, adaLN-Zero at init, how the label reaches the image, size, learning."""

import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
if SRC not in sys.path:  # tests/conftest.py may already have done this
    sys.path.insert(0, SRC)

import pytest
import torch
import torch.nn.functional as F

from difflab.models import model_config, model_keys
from difflab.models.dit import DiTBlock, build_dit
from difflab.models.layers import apply_rope, rope_2d, sincos_pos_embed_2d, unpatchify
from difflab.models.layers import NULL_CLASS, count_parameters
from difflab.models.mmdit import MMDiTBlock, build_mmdit

torch.set_num_threads(1)

BUILDERS = {"dit": build_dit, "mmdit": build_mmdit}


def settings(name: str, **values):
    """The `model:` section of architecture `name` from those of `values` it has (the DiT has no cond_tokens)."""
    return model_config(name, **{k: v for k, v in values.items() if k in model_keys(name)})

# The ~1.7M-parameter settings (C=1, 28x28): same width for both, an MMDiT block ~ two DiT blocks.
SETTINGS = {
    "dit": dict(hidden_size=112, depth=7, num_heads=4, mlp_ratio=4.0),
    "mmdit": dict(hidden_size=112, depth=4, num_heads=4, mlp_ratio=4.0, cond_tokens=4),
}

# Small models for the fast tests.
TINY = dict(hidden_size=32, depth=2, num_heads=4, mlp_ratio=2.0, cond_tokens=2)


def inputs(batch: int, channels: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, size, size, generator=g)
    t = torch.rand(batch, generator=g) * 1000
    y = torch.randint(0, NULL_CLASS + 1, (batch,), generator=g)
    return x, t, y


def perturb(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> None:
    """Add small noise to every weight, so zero-initialised gates and outputs become non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("name", ["dit", "mmdit"])
@pytest.mark.parametrize(
    "channels,size,patch", [(1, 28, 2), (1, 28, 4), (4, 7, 1)]  # pixels, two patch sizes; latent
)
def test_output_shape(name, channels, size, patch):
    model = BUILDERS[name](settings(name, patch_size=patch, **TINY), channels, size)
    perturb(model)  # the untrained output is exactly 0; make it depend on the input
    x, t, y = inputs(3, channels, size)
    out = model(x, t, y)
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and out.abs().sum() > 0


@pytest.mark.parametrize("name", ["dit", "mmdit"])
def test_untrained_model_outputs_zero(name):
    """The zero-initialised final layer makes the first prediction exactly 0 (DiT Sec. 3.2)."""
    model = BUILDERS[name](settings(name, patch_size=4, **TINY), 1, 28)
    assert torch.equal(model(*inputs(2, 1, 28)), torch.zeros(2, 1, 28, 28))


def test_bad_patch_size_fails_loudly():
    with pytest.raises(ValueError, match="divisible"):
        build_dit(settings("dit", patch_size=3, **TINY), 1, 28)


def test_unpatchify_inverts_cutting_into_patches():
    """Token order (row-major) and per-token layout (C, p, p) agree with F.unfold's patches."""
    x = torch.randn(2, 3, 12, 12)
    tokens = F.unfold(x, kernel_size=4, stride=4).transpose(1, 2)  # (B, T, C*p*p)
    assert torch.equal(unpatchify(tokens, channels=3, patch_size=4, grid_h=3, grid_w=3), x)


def test_position_embedding_is_fixed_and_distinct():
    pos = sincos_pos_embed_2d(32, 7, 7)  # (1, 49, 32)
    assert pos.shape == (1, 49, 32)
    distances = torch.cdist(pos[0], pos[0]) + torch.eye(49)
    assert distances.min() > 1e-3  # every position gets its own code
    model = build_dit(settings("dit", patch_size=4, **TINY), 1, 28)
    assert not any(p is model.pos_embed for p in model.parameters())  # not learned


def test_rope_attention_scores_depend_only_on_the_offset():
    """2D RoPE (Su et al. 2021; Flux): q_i . k_j is a function of position_i - position_j."""
    grid, head_dim = 5, 16
    angles = rope_2d(head_dim, grid, grid)  # (25, 8)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(head_dim, generator=g), torch.randn(head_dim, generator=g)
    # the same query and key vector at every position, then rotated by each position
    q_rot = apply_rope(q.expand(1, 1, grid * grid, head_dim), angles)[0, 0]  # (25, 16)
    k_rot = apply_rope(k.expand(1, 1, grid * grid, head_dim), angles)[0, 0]
    scores = (q_rot @ k_rot.T).view(grid, grid, grid, grid)  # (row_q, col_q, row_k, col_k)
    # shift both tokens by one row and one column: the score stays; it is the offset that counts
    assert torch.allclose(scores[:-1, :-1, :-1, :-1], scores[1:, 1:, 1:, 1:], atol=1e-5)
    # ... and different offsets give different scores: position does reach attention
    assert not torch.allclose(scores[0, 0, 0, 0], scores[0, 0, 0, 1], atol=1e-3)
    assert not torch.allclose(scores[0, 0, 0, 0], scores[0, 0, 1, 0], atol=1e-3)
    # a rotation keeps each vector's length
    assert torch.allclose(q_rot.norm(dim=-1), q.norm().expand(grid * grid), atol=1e-5)


@pytest.mark.parametrize("name", ["dit", "mmdit"])
def test_rope_replaces_the_position_table_without_new_parameters(name):
    sincos = BUILDERS[name](settings(name, patch_size=4, **TINY), 1, 28)
    rope = BUILDERS[name](settings(name, patch_size=4, pos_embed="rope", **TINY), 1, 28)
    assert rope.pos_embed is None and rope.rope.shape == (49, TINY["hidden_size"] // TINY["num_heads"] // 2)
    assert count_parameters(rope) == count_parameters(sincos)
    perturb(rope)
    x, t, y = inputs(2, 1, 28)
    with torch.no_grad():  # the image tokens' rotations depend on where they are, not on x
        base = rope(x, t, y)
        rope.rope.zero_()  # no rotation at all: the model no longer knows where a token is
        assert not torch.allclose(base, rope(x, t, y), atol=1e-5)


def test_dit_block_is_identity_at_init():
    block = DiTBlock(dim=32, num_heads=4, mlp_ratio=4.0)
    x, c = torch.randn(2, 10, 32), torch.randn(2, 32)
    assert torch.equal(block(x, c), x)
    perturb(block)  # and it is not the identity by construction
    assert not torch.allclose(block(x, c), x)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_mmdit_block_is_identity_at_init_on_both_streams(qk_norm):
    x, ctx, c = torch.randn(2, 10, 32), torch.randn(2, 3, 32), torch.randn(2, 32)
    block = MMDiTBlock(dim=32, num_heads=4, mlp_ratio=4.0, qk_norm=qk_norm)
    x_out, ctx_out = block(x, ctx, c)
    assert torch.equal(x_out, x) and torch.equal(ctx_out, ctx)
    # the last block only lends keys and values from the conditioning stream
    last = MMDiTBlock(dim=32, num_heads=4, mlp_ratio=4.0, qk_norm=qk_norm, last=True)
    x_out, ctx_out = last(x, ctx, c)
    assert torch.equal(x_out, x) and ctx_out is None
    perturb(block)
    x_out, ctx_out = block(x, ctx, c)
    assert not torch.allclose(x_out, x) and not torch.allclose(ctx_out, ctx)


def test_models_start_as_identity_blocks():
    """The builders keep adaLN-Zero after their own initialisation pass."""
    dit = build_dit(settings("dit", patch_size=4, **TINY), 1, 28)
    mmdit = build_mmdit(settings("mmdit", patch_size=4, **TINY), 1, 28)
    x, ctx, c = torch.randn(2, 49, 32), torch.randn(2, 2, 32), torch.randn(2, 32)
    assert all(torch.equal(block(x, c), x) for block in dit.blocks)
    x_out, ctx_out = mmdit.blocks[0](x, ctx, c)
    assert torch.equal(x_out, x) and torch.equal(ctx_out, ctx)


def test_single_stream_blocks_start_as_identity_and_read_the_class_tokens():
    """Flux's single-stream blocks: identity at init; afterwards the image reads the class tokens there."""
    model = build_mmdit(settings("mmdit", patch_size=4, single_depth=2, pos_embed="rope", **TINY), 1, 28)
    assert not model.blocks[-1].cond.pre_only  # the joint blocks' last cond output is read now
    h, c = torch.randn(2, 2 + 49, 32), torch.randn(2, 32)
    assert all(torch.equal(block(h, c), h) for block in model.single_blocks)
    perturb(model)
    with torch.no_grad():
        # every class gets the same pooled vector, and the joint blocks no longer update the image
        # tokens: the label can reach the image only through the single-stream blocks' attention
        model.pooled_embed.table.weight.copy_(model.pooled_embed.table.weight[3].expand_as(model.pooled_embed.table.weight))
        for block in model.blocks:
            block.img.mod.lin.weight.zero_()
            block.img.mod.lin.bias.zero_()
        out_null, out_3 = mmdit_outputs(model, NULL_CLASS, 3)
        assert not torch.allclose(out_null, out_3, atol=1e-5)
        # without single-stream blocks the same weights leave no route at all
        model.single_blocks = torch.nn.ModuleList()
        out_null, out_3 = mmdit_outputs(model, NULL_CLASS, 3)
        assert torch.equal(out_null, out_3)


def mmdit_outputs(model, y_a: int, y_b: int):
    x, t, _ = inputs(2, 1, 28)
    with torch.no_grad():
        return model(x, t, torch.full((2,), y_a)), model(x, t, torch.full((2,), y_b))


@pytest.mark.parametrize("qk_norm", [False, True])
def test_mmdit_label_reaches_image_through_both_routes(qk_norm):
    model = build_mmdit(settings("mmdit", patch_size=4, qk_norm=qk_norm, **TINY), 1, 28)
    perturb(model)
    # the null class and a real class give different outputs
    out_null, out_3 = mmdit_outputs(model, NULL_CLASS, 3)
    assert not torch.allclose(out_null, out_3, atol=1e-5)
    with torch.no_grad():
        pooled = model.pooled_embed.table.weight
        tokens = model.cond_embed.weight
        saved_pooled, saved_tokens = pooled.clone(), tokens.clone()
        # 1. same pooled vector for every class: the label now acts only through the
        #    conditioning tokens, i.e. through joint attention; the output still changes
        pooled.copy_(saved_pooled[3].expand_as(pooled))
        out_null, out_3 = mmdit_outputs(model, NULL_CLASS, 3)
        assert not torch.allclose(out_null, out_3, atol=1e-5)
        # 2. same tokens too: no route is left, so the label cannot change the output
        tokens.copy_(saved_tokens[3].expand_as(tokens))
        out_null, out_3 = mmdit_outputs(model, NULL_CLASS, 3)
        assert torch.equal(out_null, out_3)
        # 3. same tokens, per-class pooled vectors: the pooled route alone changes it
        pooled.copy_(saved_pooled)
        out_null, out_3 = mmdit_outputs(model, NULL_CLASS, 3)
        assert not torch.allclose(out_null, out_3, atol=1e-5)


@pytest.mark.parametrize("name", ["dit", "mmdit"])
@pytest.mark.parametrize("patch", [2, 4])
def test_parameter_budget(name, patch):
    """The chosen settings land within 5% of 1.7M parameters for 1x28x28 images."""
    model = BUILDERS[name](settings(name, patch_size=patch, **SETTINGS[name]), 1, 28)
    assert 1.615e6 <= count_parameters(model) <= 1.785e6


@pytest.mark.parametrize("name", ["dit", "mmdit"])
def test_a_few_steps_reduce_the_loss(name):
    torch.manual_seed(0)
    model = BUILDERS[name](settings(name, patch_size=4, **TINY), 1, 28)
    x, t, y = inputs(8, 1, 28, seed=1)
    target = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.mse_loss(model(x, t, y), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]  # about 0.98 -> 0.4 for both models


def test_hourglass_merges_2x2_neighbours_and_splits_them_back_in_place():
    """layers.Hourglass (HDiT, Crowson et al. 2024): a coarse token holds exactly its 2x2 fine neighbours, and `up`
    puts each of the four back where it came from."""
    from difflab.models.layers import Hourglass

    hg = Hourglass(dim=3, grid=4, head_dim=None)
    fine = torch.arange(16 * 3, dtype=torch.float32).reshape(1, 16, 3)  # token (r, c) at index 4 r + c
    with torch.no_grad():  # merge: keep the concatenated features (4 x 3 -> 12 -> first 3 of them), split: copy
        hg.merge = torch.nn.Linear(12, 3, bias=False)
        hg.merge.weight.copy_(torch.eye(12)[:3])
        hg.split.weight.zero_(), hg.split.bias.zero_()
    coarse = hg.down(fine)
    assert coarse.shape == (1, 4, 3)
    # coarse token 1 (row 0, column 1) starts with the features of fine token (0, 2) = index 2
    assert torch.equal(coarse[0, 1], fine[0, 2])
    assert torch.equal(coarse[0, 2], fine[0, 8])  # coarse (1, 0) <- fine (2, 0)

    hg.split = torch.nn.Linear(3, 12, bias=False)
    probe = torch.zeros(1, 4, 3)
    probe[0, 3] = torch.tensor([1.0, 2.0, 3.0])  # only coarse token (1, 1) is non-zero
    with torch.no_grad():
        hg.split.weight.copy_(torch.eye(12)[:, :3].repeat(1, 1))  # its four children get [1, 2, 3], then zeros
        hg.skip_mix.fill_(1.0)  # the split tokens alone, no skip
    out = hg.up(probe, torch.zeros(1, 16, 3))
    nonzero = out[0].abs().sum(-1).nonzero().flatten().tolist()
    assert nonzero == [10]  # child (0, 0) of coarse (1, 1) is fine token (2, 2): index 10


@pytest.mark.parametrize("name", ["dit", "mmdit"])
def test_hourglass_runs_the_middle_blocks_on_a_quarter_of_the_tokens(name):
    depth = {"dit": dict(depth=4), "mmdit": dict(depth=2, single_depth=2)}[name]
    model = BUILDERS[name](settings(name, patch_size=2, hourglass=True, pos_embed="rope",
                                    **{**TINY, **depth}), 1, 28)
    perturb(model)
    seen = []
    blocks = [*model.blocks, *getattr(model, "single_blocks", [])]
    for block in blocks:
        block.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    x, t, y = inputs(2, 1, 28)
    out = model(x, t, y)
    assert out.shape == x.shape and torch.isfinite(out).all()
    cond = 0 if name == "dit" else TINY["cond_tokens"]
    image_tokens = [n if i < 2 and name == "mmdit" else n - cond for i, n in enumerate(seen)]  # joint: image only
    assert image_tokens == [196, 49, 49, 196]
    plain = BUILDERS[name](settings(name, patch_size=2, pos_embed="rope", **{**TINY, **depth}), 1, 28)
    extra = count_parameters(model) - count_parameters(plain)
    assert extra == 2 * 4 * TINY["hidden_size"] ** 2 + 5 * TINY["hidden_size"] + 1  # merge, split, the skip's mix


@pytest.mark.parametrize("name", ["dit", "mmdit"])
def test_an_hourglass_needs_an_even_token_grid_and_three_blocks(name):
    from difflab.config import ConfigError

    with pytest.raises(ValueError, match="token grid of patch_size 4 is odd"):
        BUILDERS[name](settings(name, patch_size=4, hourglass=True, **{**TINY, "depth": 3}), 1, 28)
    from difflab.config import load_config

    root = Path(__file__).resolve().parent.parent
    config, blocks = {"dit": ("configs/reference/dit_transformer.yaml", ["model.depth=2"]),
                      "mmdit": ("configs/unified_sd3_mmdit_flow.yaml", ["model.depth=1", "model.single_depth=1"])}[name]
    with pytest.raises(ConfigError, match="model.hourglass: expected false with fewer than 3 blocks"):
        load_config(root / config, ["model.hourglass=true", *blocks])
    with pytest.raises(ConfigError, match="model.hourglass: expected bool, got 2"):
        load_config(root / config, ["model.hourglass=2"])
    assert load_config(root / config, ["model.hourglass=true"]).model.net.hourglass is True


def test_flop_counter_counts_attention_on_the_cpu():
    """torch's own counter has no formula for the CPU attention kernel (it counts it as nothing); difflab's adds
    2 products x 2 FLOPs per multiply-add x query-key pairs x head width, forward, and twice that backward."""
    from torch.utils.flop_counter import FlopCounterMode

    from difflab.infra.speed import training_flops

    class Attend(torch.nn.Module):
        def forward(self, x, t, y):  # (B, heads, tokens, width): attention alone, nothing else to count
            return F.scaled_dot_product_attention(x, x, x)

    batch, heads, tokens, width = 2, 3, 50, 8
    x = torch.randn(batch, heads, tokens, width, requires_grad=True)
    expected = 3 * 2 * 2 * batch * heads * tokens * tokens * width
    assert training_flops(Attend(), x, None, None) == expected
    with FlopCounterMode(display=False) as plain:  # what the project counted before: if torch learns it, drop ours
        F.scaled_dot_product_attention(x, x, x).pow(2).mean().backward()
    assert plain.get_total_flops() < expected


@pytest.mark.parametrize("name", ["dit", "mmdit"])
def test_a_transformers_flops_grow_faster_than_linearly_in_tokens(name):
    """Halving the patch side quadruples the tokens: the Linears' FLOPs grow 4x, attention's 16x, so the whole
    network's more than 4x (counted with attention; without it, the ratio would be 4x at most)."""
    from difflab.infra.speed import training_flops

    flops = {}
    for patch in (2, 4):
        torch.manual_seed(0)
        model = BUILDERS[name](settings(name, patch_size=patch, **TINY), 1, 28)
        flops[patch] = training_flops(model, torch.randn(1, 1, 28, 28), torch.full((1,), 500.0), torch.tensor([3]))
    assert flops[2] > 4.2 * flops[4]
