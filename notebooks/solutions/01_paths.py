"""Answers to the exercises of notebooks/01_paths.ipynb: each `# %% <key>` section replaces that exercise's cell."""

import torch  # the notebook imported it before these cells

# %% noisy
def noisy(path, x0, eps, t):
    """Return x_t = alpha(t) x0 + sigma(t) eps for a batch (Ho et al. 2020, Eq. 4)."""
    shape = (-1, *[1] * (x0.ndim - 1))
    a = path.alpha(t).reshape(shape).to(x0.dtype)
    s = path.sigma(t).reshape(shape).to(x0.dtype)
    return a * x0 + s * eps

# %% log_snr
def log_snr(path, t):
    """Return lambda(t) = log(alpha(t)^2 / sigma(t)^2) (Kingma et al. 2021, Sec. 3)."""
    return 2 * (torch.log(path.alpha(t)) - torch.log(path.sigma(t)))

# %% is_vp
def is_vp(path, tol=1e-5):
    """Return True if alpha^2 + sigma^2 = 1 (within tol) on a fine grid of [0, 1]."""
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    deviation = (path.alpha(t) ** 2 + path.sigma(t) ** 2 - 1).abs().max()
    return bool(deviation < tol)
