"""Answers to the exercises of notebooks/02_eps.ipynb: each `# %% <key>` section replaces that exercise's cell."""

import torch  # the notebook imported it before these cells

# %% x0_from_eps
def x0_from_eps(eps_hat, x_t, a, s):
    """Return x0_hat = (x_t - s eps_hat) / a (Ho et al. 2020, Eq. 15)."""
    return (x_t - s * eps_hat) / a

# %% ddpm_loss
def ddpm_loss(model, path, x0, t, eps):
    """Return L_simple (Ho et al. 2020, Algorithm 1 and Eq. 14) for given draws x0, t, eps."""
    a, s = path.alpha(t)[:, None], path.sigma(t)[:, None]
    x_t = a * x0 + s * eps
    return (model(x_t, 1000 * t, None) - eps).pow(2).mean()

# %% posterior_mean
def posterior_mean(path, x_t, x0, t, s):
    """Return the mean of q(x_s | x_t, x0) (Ho et al. 2020, Eq. 7; Kingma et al. 2021, Eq. 32)."""
    def coeffs(u):
        u = torch.tensor(u, dtype=torch.float64)
        return float(path.alpha(u)), float(path.sigma(u))

    (a_t, s_t), (a_s, s_s) = coeffs(t), coeffs(s)
    a_ts = a_t / a_s
    s2_ts = s_t**2 - a_ts**2 * s_s**2
    return (a_ts * s_s**2 / s_t**2) * x_t + (a_s * s2_ts / s_t**2) * x0
