# Answer cells of notebooks/05_transformers.ipynb: one section per exercise
# They run inside the notebook, so they use its names.
# ruff: noqa: F821
# %% patchify
# YOUR TURN: patchify
def patchify(x, p):
    """Cut images x (B, C, H, W) into p x p patches: return (B, T, C*p*p), T = (H/p) * (W/p)."""
    B, C, H, W = x.shape
    x = x.view(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p): grid first, then each token's numbers
    return x.reshape(B, (H // p) * (W // p), C * p * p)

# %% modulate
# YOUR TURN: modulate
def modulate(h, shift, scale):
    """adaLN modulation of tokens h (B, T, D) by per-sample shift and scale, each (B, 1, D)."""
    return h * (1 + scale) + shift

# %% joint_attention
# YOUR TURN: joint_attention
def joint_attention(cond_qkv, img_qkv):
    """Joint attention of two streams over the one sequence [cond; image] (Esser et al. 2024, Fig. 2b)."""
    M = cond_qkv[0].shape[2]
    q, k, v = (torch.cat([c, i], dim=2) for c, i in zip(cond_qkv, img_qkv))
    out = attention(q, k, v)  # (B, M + N, H * Dh)
    return out[:, :M], out[:, M:]
