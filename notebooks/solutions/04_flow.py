"""Answers to the exercises of notebooks/04_flow.ipynb: each `# %% <key>` section replaces that exercise's cell."""

# %% flow_pair
def flow_pair(x0, eps, t):
    """Return (x_t, u) = ((1 - t) x0 + t eps, eps - x0) (Liu et al. 2022; Esser et al. 2024, Eq. 3)."""
    t = t[:, None]
    return (1 - t) * x0 + t * eps, eps - x0

# %% euler_step
def euler_step(x_t, u, t, s):
    """Return x_s = x_t + (s - t) u, one Euler step of dx/dt = u."""
    return x_t + (s - t) * u

# %% straightness
def straightness(traj, times):
    """Return S = integral || (x_1 - x_0) - dx/dt ||^2 dt (Liu et al. 2022, Sec. 2.2), on a discrete trajectory."""
    total_time = times[-1] - times[0]
    overall = (traj[-1] - traj[0]) / total_time
    s = 0.0
    for i in range(len(times) - 1):
        dt = times[i + 1] - times[i]
        v = (traj[i + 1] - traj[i]) / dt
        s += abs(dt) * float((overall - v).pow(2).sum(-1).mean())
    return s / abs(total_time)
