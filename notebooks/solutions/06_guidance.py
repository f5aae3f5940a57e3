# Answer cells of notebooks/06_guidance.ipynb: one section per exercise
# They run inside the notebook, so they use its names.
# ruff: noqa: F821
# %% drop_labels
# YOUR TURN: drop_labels
def drop_labels(y, drop):
    """Label dropout for classifier-free guidance: NULL_CLASS where drop is True, y elsewhere."""
    return torch.where(drop, torch.full_like(y, NULL_CLASS), y)

# %% my_cfg_mix
# YOUR TURN: my_cfg_mix
def my_cfg_mix(cond, uncond, w):
    """Classifier-free guidance (Ho & Salimans 2022, Eq. 6, with our w = 1 + theirs)."""
    return uncond + w * (cond - uncond)

# %% pick_scale
# YOUR TURN: pick_scale
def pick_scale(sweep, target):
    """The smallest guidance scale whose accuracy reaches `target`, else the most accurate one."""
    scales = sorted(sweep)
    for w in scales:
        if sweep[w][0] >= target:
            return w
    best = max(sweep[w][0] for w in scales)
    return next(w for w in scales if sweep[w][0] == best)
