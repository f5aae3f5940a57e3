# Answer cells of notebooks/07_samplers.ipynb: one section per exercise
# They run inside the notebook, so they use its names.
# ruff: noqa: F821
# %% ddim_step
# YOUR TURN: ddim_step
def ddim_step(denoiser, x, t, s, path):
    """One deterministic DDIM step (eta = 0) from time t to the smaller time s (Song et al. 2021, Eq. 12)."""
    x0_hat, eps_hat = denoiser(x, t)
    a_s, s_s = samplers._coeffs(path, s)
    return a_s * x0_hat + s_s * eps_hat

# %% count_calls
# YOUR TURN: count_calls
def count_calls(sampler, steps, path):
    """How many times `sampler` calls its denoiser on a `steps`-step trailing grid."""
    calls = [0]
    inner = gaussian_denoiser(path)

    def counting(x, t):
        calls[0] += 1
        return inner(x, t)

    times = time_grid(steps, "trailing").double()
    sampler(counting, start_noise(path, float(times[0]), 4), times, path)
    return calls[0]

# %% exact_endpoint
# YOUR TURN: exact_endpoint
def exact_endpoint(x, t, path):
    """Where the probability-flow ODE carries the points x at time t, at t = 0, for data N(MU, S0^2)."""
    a, s = samplers._coeffs(path, t)
    return MU + S0 * (x - a * MU) / math.sqrt(a * a * S0 * S0 + s * s)
