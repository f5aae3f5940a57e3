"""Answers to the exercises of notebooks/03_v.ipynb: each `# %% <key>` section replaces that exercise's cell."""

import torch  # the notebook imported it before these cells

# %% v_target
def v_target(x0, eps, a, s):
    """Return v = a eps - s x0 (Salimans & Ho 2022, Sec. 4)."""
    return a * eps - s * x0

# %% v_to_x0_eps
def v_to_x0_eps(v_hat, x_t, a, s):
    """Return (x0_hat, eps_hat) = (a x_t - s v, s x_t + a v) on a VP path (Salimans & Ho 2022, App. D)."""
    return a * x_t - s * v_hat, s * x_t + a * v_hat

# %% gains
def gains(name, a, s):
    """Return (g_x0, g_eps), the derivatives of x0_hat and eps_hat with respect to the network's output."""
    one = torch.ones_like(a)
    if name == "eps":
        return -s / a, one
    if name == "x0":
        return one, -a / s
    return -s * one, a * one  # v: x0 = a x_t - s v, eps = s x_t + a v
