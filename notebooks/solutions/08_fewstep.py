# Answer cells of notebooks/08_fewstep.ipynb: one section per exercise
# They run inside the notebook, so they use its names.
# ruff: noqa: F821
# %% boundary_coeffs
# YOUR TURN: boundary_coeffs
def boundary_coeffs(objective, a, s):
    """(c_skip, c_out) of an objective at alpha = a, sigma = s: read off its affine x0_hat."""
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    c_skip = objective.to_x0_eps(zero, one, a, s)[0]  # x_t = 1, out = 0
    c_out = objective.to_x0_eps(one, zero, a, s)[0]  # x_t = 0, out = 1
    return c_skip, c_out

# %% consistency_sample
# YOUR TURN: consistency_sample
def consistency_sample(f, x, times, path, generator):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1)."""
    times = [float(t) for t in times]
    x0 = f(x, times[0])[0]
    for s in times[1:]:
        if s <= 0:
            break
        a_s, s_s = samplers._coeffs(path, s)
        x = a_s * x0 + s_s * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x0 = f(x, s)[0]
    return x0

# %% shortcut_target
# YOUR TURN: shortcut_target
def shortcut_target(velocity, x_t, t, d):
    """The mean velocity of two jumps of d from t (Frans et al. 2024, Eq. 5)."""
    s1 = velocity(x_t, t, d)
    s2 = velocity(x_t - d * s1, t - d, d)
    return (s1 + s2) / 2
