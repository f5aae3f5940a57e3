"""Draw every figure of docs/theory.md from difflab's own code.

    python docs/figures/theory.py                  # the page's figures, into docs/images/theory_*.png (~1 min)
    python docs/figures/theory.py --quick --out /tmp/theory   # a tiny run (seconds), for tests

Figures:
- theory_paths.png: alpha(t), sigma(t) and log-SNR(t) of every path in schedules.PATHS;
- theory_weights.png: the weight each objective puts on the eps-MSE, against log-SNR
  (Kingma & Gao 2023, arXiv 2303.00848, Sec. 2-3), and Min-SNR (Hang et al. 2023);
- theory_toy.png: a 2D Gaussian mixture; one tiny MLP per objective trained with objectives.diffusion_loss,
  sampled with samplers.sample_ddim / sample_euler (deterministic) and sample_ddpm (stochastic);
- theory_flow.png: straight conditional paths, the exact marginal flow (closed form for a Gaussian mixture),
  and a network trained after one reflow (Liu et al. 2022, arXiv 2209.03003, "Reflow").
It also prints the straightness of each flow (the measure S of Liu et al. 2022), which the page quotes.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from difflab.guidance import Denoiser  # noqa: E402
from difflab.objectives import build_objective, diffusion_loss, min_snr_weight  # noqa: E402
from difflab.samplers import sample_ddim, sample_ddpm, sample_euler  # noqa: E402
from difflab.schedules import PATHS, build_path, sample_training_t, time_grid  # noqa: E402
from difflab.settings import DiffusionConfig  # noqa: E402

Tensor = torch.Tensor
DPI = 100


def save(fig: plt.Figure, file: Path) -> None:
    """Save a figure as a small PNG: drawn at DPI, then reduced to a 64-colour palette (line plots need no more)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format="png")
    plt.close(fig)
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors=64).save(file, optimize=True)


# ---------------------------------------------------------------- (a) the paths


def path_configs() -> list[tuple[str, DiffusionConfig]]:
    """One config per entry of schedules.PATHS, with the betas its configs use, plus SD's zero-terminal-SNR variant."""
    betas = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}  # DDPM; SD (configs/unified_sd1_*.yaml)
    out = []
    for name in PATHS:
        start, end = betas.get(name, (1e-4, 0.02))
        out.append((name, DiffusionConfig(schedule=name, beta_start=start, beta_end=end)))
    out.append(("scaled_linear+zero_snr",
                DiffusionConfig(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, zero_terminal_snr=True)))
    return out


def log_snr(a: Tensor, s: Tensor) -> Tensor:
    """lambda = log(alpha^2 / sigma^2) (Kingma et al. 2021, Sec. 3.2)."""
    return 2 * (a.double().clamp(min=1e-12).log() - s.double().clamp(min=1e-12).log())


def figure_paths(out: Path) -> None:
    t = torch.linspace(0, 1, 401, dtype=torch.float64)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for name, cfg in path_configs():
        path = build_path(cfg)
        a, s = path.alpha(t), path.sigma(t)
        style = "--" if "zero_snr" in name else "-"
        axes[0].plot(t, a, style, label=name)
        axes[1].plot(t, s, style, label=name)
        inner = (t > 0) & (t < 1)  # log-SNR is +inf at t = 0 and -inf where alpha(1) = 0
        axes[2].plot(t[inner], log_snr(a, s)[inner], style, label=name)
    for ax, title in zip(axes, ["alpha(t)", "sigma(t)", "log-SNR = log(alpha^2 / sigma^2)"]):
        ax.set_title(title)
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
    axes[2].set_ylim(-20, 15)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save(fig, out / "theory_paths.png")


# ---------------------------------------------------------------- (b) loss weights against log-SNR


def vp_at(lam: Tensor) -> tuple[Tensor, Tensor]:
    """alpha, sigma of a variance-preserving path at log-SNR lam: alpha^2 = sigmoid(lam)."""
    return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()


def flow_at(lam: Tensor) -> tuple[Tensor, Tensor]:
    """alpha, sigma of the flow path at log-SNR lam: (1 - t) / t = exp(lam / 2)."""
    t = torch.sigmoid(-lam / 2)
    return 1 - t, t


def eps_weight(name: str, a: Tensor, s: Tensor) -> Tensor:
    """The weight w with ||out - target||^2 = w ||eps_hat - eps||^2, from the objective's x0_error_scale.

    An output error e is an x0 error c e (c = x0_error_scale), and an eps error e' is an x0 error
    -(s / a) e'; so w = (s / a)^2 / c^2 (Kingma & Gao 2023, Sec. 2.3).
    """
    c = build_objective(name).x0_error_scale(a, s)
    return (s / a) ** 2 / c**2


def _log_snr_axes(ax, ylim: tuple, title: str) -> None:
    """A log-scale panel over log-SNR, with its limits, title, legend and grid."""
    ax.set_yscale("log")
    ax.set_ylim(*ylim)
    ax.set_xlabel("log-SNR lambda")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def figure_weights(out: Path) -> None:
    lam = torch.linspace(-10, 10, 401, dtype=torch.float64)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    for name, at, label in [("eps", vp_at, "eps (any path): 1"), ("x0", vp_at, "x0: exp(-lambda)"),
                            ("v", vp_at, "v (VP path): 1 + exp(-lambda)"),
                            ("flow", flow_at, "flow (flow path): (1 + exp(-lambda/2))^2")]:
        a, s = at(lam)
        ax.plot(lam, eps_weight(name, a, s), label=label)
    a, s = vp_at(lam)
    w = min_snr_weight(build_objective("eps"), a, s, gamma=5.0) * eps_weight("eps", a, s)
    ax.plot(lam, w, "k--", label="Min-SNR-5 (eps or v): min(SNR, 5) / SNR")
    _log_snr_axes(ax, (1e-4, 1e4), "weight w(lambda) on ||eps_hat - eps||^2")

    # What training actually weights: w(lambda) times the density of lambda that the t-sampling gives.
    ax = axes[1]
    g = torch.Generator().manual_seed(0)
    bins = torch.linspace(-10, 10, 41, dtype=torch.float64)
    centres = (bins[1:] + bins[:-1]) / 2
    for target, cfg, label in [
        ("eps", DiffusionConfig(schedule="linear"), "eps, linear, t uniform (DDPM)"),
        ("eps", DiffusionConfig(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), "eps, SD1"),
        ("v", DiffusionConfig(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), "v, SD2"),
        ("flow", DiffusionConfig(schedule="flow", t_sampling="logit_normal"), "flow, logit-normal t (SD3)"),
    ]:
        path = build_path(cfg)
        t = sample_training_t(cfg, 200_000, g, "cpu").double()
        lam_t = log_snr(path.alpha(t), path.sigma(t))
        a, s = path.alpha(t).double(), path.sigma(t).double()
        inside = (lam_t > -10) & (lam_t < 10)  # the plotted range (it leaves out t = 1 on the flow path: lambda = -inf)
        w = eps_weight(target, a[inside], s[inside])
        hist = torch.histogram(lam_t[inside], bins=bins, weight=w).hist
        ax.plot(centres, hist / hist.sum() / (bins[1] - bins[0]), label=label)
    _log_snr_axes(ax, (1e-3, 1), "w(lambda) p(lambda): the weighting training applies")
    fig.tight_layout()
    save(fig, out / "theory_weights.png")


# ---------------------------------------------------------------- (c) a 2D Gaussian mixture


MEANS = torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0], [0.0, -2.0]], dtype=torch.float64) * 0.9
WEIGHTS = torch.tensor([0.4, 0.2, 0.2, 0.2], dtype=torch.float64)
TAU = 0.2  # each component's standard deviation


def sample_data(n: int, g: torch.Generator) -> Tensor:
    k = torch.multinomial(WEIGHTS.float(), n, replacement=True, generator=g)
    return (MEANS[k] + TAU * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def exact_denoiser(path_name: str = "flow"):
    """(x_t, t) -> (E[x0 | x_t], the matching eps) for the mixture, in closed form.

    Under x_t = a x0 + s eps each component k is N(a m_k, (a^2 tau^2 + s^2) I); Bayes gives its
    responsibility r_k(x_t), and within a component E[x0 | x_t, k] = m_k + a tau^2 (x_t - a m_k) / (a^2 tau^2 + s^2).
    """
    path = build_path(DiffusionConfig(schedule=path_name))

    def denoise(x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        tt = torch.tensor([t], dtype=torch.float64)
        a, s = float(path.alpha(tt)), float(path.sigma(tt))
        var = a**2 * TAU**2 + s**2
        xd = x.double()
        d2 = ((xd[:, None, :] - a * MEANS[None]) ** 2).sum(-1)  # (B, K)
        r = torch.softmax(WEIGHTS.log()[None] - d2 / (2 * var), dim=1)
        x0_k = MEANS[None] + a * TAU**2 * (xd[:, None, :] - a * MEANS[None]) / var
        x0 = (r[..., None] * x0_k).sum(1)
        eps = (xd - a * x0) / s
        return x0.float(), eps.float()

    return denoise


class TinyMLP(torch.nn.Module):
    """(x_t, 1000 t, y) -> output, the signature of difflab's networks; y is ignored (unconditional)."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2 + 8, width), torch.nn.SiLU(), torch.nn.Linear(width, width),
                                       torch.nn.SiLU(), torch.nn.Linear(width, width), torch.nn.SiLU(),
                                       torch.nn.Linear(width, 2))

    def forward(self, x: Tensor, t1000: Tensor, y: Tensor) -> Tensor:
        t = (t1000 / 1000).reshape(-1, 1).float()
        freqs = torch.arange(1, 5, dtype=torch.float32) * math.pi
        return self.net(torch.cat([x, t, torch.sin(freqs * t), torch.cos(freqs[:3] * t)], dim=1))


def train(target: str, schedule: str, steps: int, g: torch.Generator, pairs: tuple[Tensor, Tensor] | None = None
          ) -> TinyMLP:
    """Train with difflab's own loss (objectives.diffusion_loss); `pairs` = fixed (x0, eps) couplings for reflow."""
    cfg = DiffusionConfig(target=target, schedule=schedule, t_sampling="uniform")
    path, objective = build_path(cfg), build_objective(target)
    model = TinyMLP()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    batch = 512
    y = torch.zeros(batch, dtype=torch.long)
    for _ in range(steps):
        if pairs is None:
            x0, eps = sample_data(batch, g), torch.randn(batch, 2, generator=g)
        else:
            idx = torch.randint(0, len(pairs[0]), (batch,), generator=g)
            x0, eps = pairs[0][idx], pairs[1][idx]
        t = sample_training_t(cfg, batch, g, "cpu")
        loss, _ = diffusion_loss(model, path, objective, x0, y, t, eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def run_sampler(sampler, denoiser, noise: Tensor, times: Tensor, path, g: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor]:
    """(final samples, trajectories (steps + 1, B, 2)) of a difflab sampler, read through its callback."""
    xs = []
    x = sampler(denoiser, noise, times, path, generator=g, callback=lambda i, t, x_t, x0: xs.append(x_t.clone()))
    return x, torch.stack(xs + [x])


def straightness(traj: Tensor, times: Tensor) -> float:
    """S = int_0^1 E||(x_0 - x_1) - dx/dt||^2 dt along the sampled trajectories (Liu et al. 2022, straightness).

    Zero exactly when every trajectory is a straight line travelled at constant speed.
    """
    dt = (times[1:] - times[:-1]).double()  # negative: sampling runs from t = 1 down to 0
    vel = (traj[1:] - traj[:-1]).double() / dt[:, None, None]
    mean_vel = (traj[-1] - traj[0]).double() / (times[-1] - times[0]).double()
    return float((((vel - mean_vel) ** 2).sum(-1).mean(1) * dt.abs()).sum())


def scatter_background(ax, data: Tensor) -> None:
    ax.scatter(data[:, 0], data[:, 1], s=2, c="0.75", zorder=0)
    ax.set_xlim(-3.5, 3.5)
    ax.set_ylim(-3.5, 3.5)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def draw_trajectories(ax, traj: Tensor, colour: str) -> None:
    for j in range(traj.shape[1]):
        ax.plot(traj[:, j, 0], traj[:, j, 1], color=colour, lw=0.6, alpha=0.6)
    ax.scatter(traj[0, :, 0], traj[0, :, 1], s=5, c="k", zorder=3)
    ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=8, c="tab:red", zorder=3)


def figure_toy(out: Path, train_steps: int, n_traj: int, steps: int) -> dict[str, TinyMLP]:
    g = torch.Generator().manual_seed(0)
    data = sample_data(2000, g)
    noise = torch.randn(n_traj, 2, generator=torch.Generator().manual_seed(1))
    # eps, x0 and v on DDPM's linear path with SD1/SD2's "leading" grid; flow on its own path from t = 1.
    runs = [("eps", "linear", "leading"), ("x0", "linear", "leading"), ("v", "linear", "leading"),
            ("flow", "flow", "trailing")]
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.6))
    models = {}
    for col, (target, schedule, spacing) in enumerate(runs):
        start = time.time()
        model = train(target, schedule, train_steps, g)
        models[target] = model
        path = build_path(DiffusionConfig(schedule=schedule))
        denoiser = Denoiser(model, build_objective(target), path, torch.zeros(n_traj, dtype=torch.long))
        times = time_grid(steps, spacing)
        deterministic = sample_euler if target == "flow" else sample_ddim
        _, traj = run_sampler(deterministic, denoiser, noise, times, path)
        _, traj_ddpm = run_sampler(sample_ddpm, denoiser, noise, times, path, torch.Generator().manual_seed(2))
        # DDPM's trajectories zig-zag with fresh noise at every step: a few of them are enough to see it.
        for row, (tr, name) in enumerate([(traj, "euler" if target == "flow" else "ddim, eta = 0"),
                                          (traj_ddpm[:, :8], "ddpm (8 of the trajectories)")]):
            ax = axes[row, col]
            scatter_background(ax, data)
            draw_trajectories(ax, tr, "tab:blue" if row == 0 else "tab:green")
            ax.set_title(f"{target} on {schedule}: {name}", fontsize=9)
        print(f"toy: trained {target} on {schedule} ({train_steps} steps) and sampled in {time.time() - start:.1f} s")
    fig.suptitle(f"Trajectories of {steps}-step samplers (black: noise, red: sample; grey: data)", fontsize=10)
    fig.tight_layout()
    save(fig, out / "theory_toy.png")
    return models


def figure_flow(out: Path, flow_model: TinyMLP, train_steps: int, n_traj: int, steps: int) -> None:
    g = torch.Generator().manual_seed(3)
    data = sample_data(2000, g)
    path = build_path(DiffusionConfig(schedule="flow"))
    times = time_grid(steps, "trailing")
    noise = torch.randn(n_traj, 2, generator=torch.Generator().manual_seed(1))
    exact = exact_denoiser("flow")

    # Reflow (Liu et al. 2022, arXiv 2209.03003): couple each noise with where the current flow takes it, and
    # retrain on the straight lines between those pairs. Here the flow being straightened is the exact one.
    z = torch.randn(4096, 2, generator=g)
    x_end, _ = run_sampler(sample_euler, exact, z, time_grid(100, "trailing"), path)
    reflowed = train("flow", "flow", train_steps, g, pairs=(x_end, z))

    y = torch.zeros(n_traj, dtype=torch.long)
    learnt = Denoiser(flow_model, build_objective("flow"), path, y)
    refl = Denoiser(reflowed, build_objective("flow"), path, y)
    _, traj_exact = run_sampler(sample_euler, exact, noise, times, path)
    _, traj_learnt = run_sampler(sample_euler, learnt, noise, times, path)
    _, traj_refl = run_sampler(sample_euler, refl, noise, times, path)
    one_step = time_grid(1, "trailing")
    for name, den, traj in [("exact marginal flow", exact, traj_exact), ("learnt flow (1-rectified)", learnt,
                                                                        traj_learnt),
                            ("after one reflow (2-rectified)", refl, traj_refl)]:
        x1, _ = run_sampler(sample_euler, den, noise, one_step, path)
        gap = float((x1 - traj[-1]).norm(dim=1).mean())
        print(f"flow: {name}: straightness S = {straightness(traj, times):.3f}, "
              f"mean |1-step Euler - {steps}-step Euler| = {gap:.3f}")

    fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
    x0 = sample_data(n_traj, torch.Generator().manual_seed(4))
    lines = torch.stack([noise, x0])  # independent pairs (x0, eps): the conditional paths
    scatter_background(axes[0], data)
    draw_trajectories(axes[0], lines, "tab:orange")
    axes[0].set_title("conditional paths: (1 - t) x0 + t eps", fontsize=9)
    for ax, traj, title in [(axes[1], traj_exact, "exact marginal velocity (closed form)"),
                            (axes[2], traj_learnt, "learnt flow MLP (euler)"),
                            (axes[3], traj_refl, "after one reflow (euler)")]:
        scatter_background(ax, data)
        draw_trajectories(ax, traj, "tab:blue")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save(fig, out / "theory_flow.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny training and few trajectories (a few seconds)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"), help="folder for the PNGs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_steps, n_traj, steps = (60, 8, 10) if args.quick else (3000, 40, 50)
    start = time.time()
    figure_paths(out)
    figure_weights(out)
    models = figure_toy(out, train_steps, n_traj, steps)
    figure_flow(out, models["flow"], train_steps, n_traj, steps)
    print(f"wrote theory_*.png to {out} in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
