"""The identities of docs/theory.md hold in this code: each test checks one equation of the page against the
functions that implement it (schedules, objectives, samplers, guidance), and the page's figure script runs."""

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from difflab.guidance import cfg_mix
from difflab.objectives import OBJECTIVES, build_objective, min_snr_weight
from difflab.samplers import _posterior, sample_ddim, sample_euler
from difflab.schedules import PATHS, CosinePath, FlowPath, build_path, linear_betas
from difflab.settings import DiffusionConfig

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docs" / "figures" / "theory.py"
VP = [(name, zero) for name in PATHS if name != "flow" for zero in (False, True)]
T = torch.tensor([0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99], dtype=torch.float64)


def path_of(name: str, zero_terminal_snr: bool = False):
    return build_path(DiffusionConfig(schedule=name, zero_terminal_snr=zero_terminal_snr))


# 1. The forward process: alpha^2 + sigma^2 = 1 on the VP paths, alpha + sigma = 1 on the flow path.

@pytest.mark.parametrize("name, zero", VP, ids=[f"{n}{'+zero_snr' if z else ''}" for n, z in VP])
def test_every_vp_path_preserves_variance(name, zero):
    path = path_of(name, zero)
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    assert torch.allclose(path.alpha(t) ** 2 + path.sigma(t) ** 2, torch.ones_like(t), atol=1e-9)


def test_the_flow_path_is_a_straight_line_and_not_vp():
    path = path_of("flow")
    assert torch.allclose(path.alpha(T) + path.sigma(T), torch.ones_like(T))
    assert (path.alpha(T) ** 2 + path.sigma(T) ** 2 < 1 - 1e-3).all()


def test_the_closed_form_is_the_product_of_the_one_step_kernels():
    """q(x_k | x_0) = N(sqrt(abar_k) x0, (1 - abar_k) I) composes the steps q(x_k | x_{k-1}) (Ho et al. 2020, Eq. 2, 4):
    alpha_k = prod sqrt(1 - beta), and sigma_k^2 = sum of each step's noise scaled by the steps after it."""
    betas = linear_betas(1000, 1e-4, 0.02)
    path = path_of("linear")
    a, var = 1.0, 0.0
    for k, beta in enumerate(betas.tolist(), start=1):
        a, var = a * math.sqrt(1 - beta), var * (1 - beta) + beta
        if k in (1, 10, 500, 1000):
            t = torch.tensor([k / 1000], dtype=torch.float64)
            assert float(path.alpha(t)) == pytest.approx(a, rel=1e-9)
            assert float(path.sigma(t)) ** 2 == pytest.approx(var, rel=1e-9)


# 2. The posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020, Eq. 6-7).

@pytest.mark.parametrize("k", [2, 10, 300, 999, 1000])
def test_the_posterior_is_ho_eq_7(k):
    betas = linear_betas(1000, 1e-4, 0.02)
    abar = torch.cumprod(1 - betas, 0)
    beta, ab_t, ab_s = float(betas[k - 1]), float(abar[k - 1]), float(abar[k - 2])
    path = path_of("linear")
    t, s = torch.tensor([k / 1000], dtype=torch.float64), torch.tensor([(k - 1) / 1000], dtype=torch.float64)
    c_xt, c_x0, var = _posterior(float(path.alpha(t)), float(path.sigma(t)), float(path.alpha(s)), float(path.sigma(s)))
    assert c_x0 == pytest.approx(math.sqrt(ab_s) * beta / (1 - ab_t), rel=1e-6)
    assert c_xt == pytest.approx(math.sqrt(1 - beta) * (1 - ab_s) / (1 - ab_t), rel=1e-6)
    assert var == pytest.approx((1 - ab_s) / (1 - ab_t) * beta, rel=1e-6)


def test_ddim_with_eta_one_draws_from_the_posterior():
    """Song et al. 2021, Eq. 12 and 16: with eta = 1 the DDIM step has the posterior's mean and variance."""
    path = path_of("cosine")
    x, x0 = torch.tensor([[0.7]]), torch.tensor([[-0.4]])
    t, s = 0.6, 0.5
    a_t, s_t = (float(f(torch.tensor([t]))) for f in (path.alpha, path.sigma))
    a_s, s_s = (float(f(torch.tensor([s]))) for f in (path.alpha, path.sigma))
    eps = (x - a_t * x0) / s_t
    c_xt, c_x0, var = _posterior(a_t, s_t, a_s, s_s)
    c = math.sqrt(var)
    ddim_mean = a_s * x0 + math.sqrt(s_s**2 - c**2) * eps  # DDIM's step without its c z term
    assert torch.allclose(ddim_mean, c_xt * x + c_x0 * x0, atol=1e-6)


# 3. Every objective is the same loss under a different weighting of log-SNR (Kingma & Gao 2023).

def weight_on_eps_mse(name: str, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    c = build_objective(name).x0_error_scale(a, s)
    return (s / a) ** 2 / c**2


def test_each_objective_weights_the_eps_loss_as_the_page_says():
    lam = torch.linspace(-8, 8, 33, dtype=torch.float64)
    a, s = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()  # a VP path at log-SNR lam
    assert torch.allclose(weight_on_eps_mse("eps", a, s), torch.ones_like(lam))
    assert torch.allclose(weight_on_eps_mse("x0", a, s), torch.exp(-lam))
    assert torch.allclose(weight_on_eps_mse("v", a, s), 1 + torch.exp(-lam))
    tf = torch.sigmoid(-lam / 2)  # the flow path at the same log-SNR: ((1 - t) / t)^2 = exp(lam)
    assert torch.allclose(weight_on_eps_mse("flow", 1 - tf, tf), (1 + torch.exp(-lam / 2)) ** 2)
    w = min_snr_weight(build_objective("eps"), a, s, gamma=5.0)
    assert torch.allclose(w, torch.clamp(torch.exp(lam), max=5.0) / torch.exp(lam))


@pytest.mark.parametrize("name", OBJECTIVES)
def test_the_weight_turns_the_objectives_error_into_the_eps_error(name):
    """The same (x0_hat, eps_hat), written in the objective's output, has error^2 = w(lambda) * eps error^2."""
    path = path_of("flow") if name == "flow" else path_of("cosine")
    t = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    a, s = path.alpha(t), path.sigma(t)
    obj = build_objective(name)
    x0, eps = torch.tensor([0.3, -1.0, 0.5], dtype=torch.float64), torch.tensor([1.2, 0.4, -0.7], dtype=torch.float64)
    x_t = a * x0 + s * eps
    eps_hat = eps + 0.1
    x0_hat = (x_t - s * eps_hat) / a
    err_out = obj.target(x0_hat, eps_hat, a, s) - obj.target(x0, eps, a, s)
    assert torch.allclose(err_out**2, weight_on_eps_mse(name, a, s) * (eps_hat - eps) ** 2)


# 8 (and the round trip every section uses): target and to_x0_eps invert each other.

@pytest.mark.parametrize("schedule", list(PATHS))
@pytest.mark.parametrize("name", OBJECTIVES)
def test_target_and_to_x0_eps_round_trip(name, schedule):
    g = torch.Generator().manual_seed(0)
    path = path_of(schedule)
    x0, eps = torch.randn(len(T), generator=g, dtype=torch.float64), torch.randn(len(T), generator=g,
                                                                                 dtype=torch.float64)
    a, s = path.alpha(T), path.sigma(T)
    obj = build_objective(name)
    x0_hat, eps_hat = obj.to_x0_eps(obj.target(x0, eps, a, s), a * x0 + s * eps, a, s)
    assert torch.allclose(x0_hat, x0, atol=1e-9) and torch.allclose(eps_hat, eps, atol=1e-9)


@pytest.mark.parametrize("path", [CosinePath(), path_of("linear")], ids=["cosine", "linear"])
def test_v_is_the_derivative_along_the_angle(path):
    """alpha = cos phi, sigma = sin phi: d x_phi / d phi = alpha eps - sigma x0 = v (Salimans & Ho 2022, Sec. 4)."""
    x0, eps = torch.tensor(0.8, dtype=torch.float64), torch.tensor(-1.3, dtype=torch.float64)
    h = 1e-6
    for t in (0.1, 0.37, 0.5, 0.83):
        tt = torch.tensor([t - h, t, t + h], dtype=torch.float64)
        a, s = path.alpha(tt), path.sigma(tt)
        phi = torch.atan2(s, a)
        x = a * x0 + s * eps
        dx_dphi = (x[2] - x[0]) / (phi[2] - phi[0])
        v = build_objective("v").target(x0, eps, a[1], s[1])
        assert float(dx_dphi) == pytest.approx(float(v), rel=1e-5, abs=1e-7)


def test_the_flow_velocity_is_dx_dt():
    path, obj = FlowPath(), build_objective("flow")
    x0, eps = torch.tensor(0.8, dtype=torch.float64), torch.tensor(-1.3, dtype=torch.float64)
    h = 1e-6
    for t in (0.1, 0.5, 0.9):
        tt = torch.tensor([t - h, t + h], dtype=torch.float64)
        x = path.alpha(tt) * x0 + path.sigma(tt) * eps
        u = obj.target(x0, eps, path.alpha(tt[:1]), path.sigma(tt[:1]))
        assert float((x[1] - x[0]) / (2 * h)) == pytest.approx(float(u), rel=1e-6)


def test_v_and_the_flow_velocity_carry_the_same_information():
    """On the flow path, u = ((2t - 1) x_t + V) / ((1 - t)^2 + t^2) with V the repo's v target there."""
    path, g = FlowPath(), torch.Generator().manual_seed(1)
    x0, eps = torch.randn(len(T), generator=g, dtype=torch.float64), torch.randn(len(T), generator=g,
                                                                                 dtype=torch.float64)
    a, s = path.alpha(T), path.sigma(T)
    x_t = a * x0 + s * eps
    v = build_objective("v").target(x0, eps, a, s)
    u = build_objective("flow").target(x0, eps, a, s)
    assert torch.allclose(u, ((2 * T - 1) * x_t + v) / ((1 - T) ** 2 + T**2), atol=1e-12)


# 4. eps <-> score, and Tweedie's formula.

def gaussian_posterior(m: float, tau: float, a: float, s: float, x: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_t] for x0 ~ N(m, tau^2), x_t = a x0 + s eps: the Gaussian conditioning formula."""
    return m + a * tau**2 * (x - a * m) / (a**2 * tau**2 + s**2)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_tweedie_on_a_gaussian(t):
    m, tau = 0.7, 0.3
    path = path_of("cosine")
    a, s = float(path.alpha(torch.tensor([t]))), float(path.sigma(torch.tensor([t])))
    x = torch.linspace(-2, 2, 9, dtype=torch.float64, requires_grad=True)
    marginal = torch.distributions.Normal(a * m, math.sqrt(a**2 * tau**2 + s**2))
    score, = torch.autograd.grad(marginal.log_prob(x).sum(), x)  # grad_x log p_t(x), by autograd
    x = x.detach()
    eps_hat = -s * score  # eps = -sigma * score
    x0_hat, _ = build_objective("eps").to_x0_eps(eps_hat, x, torch.tensor(a), torch.tensor(s))
    assert torch.allclose(x0_hat, gaussian_posterior(m, tau, a, s, x), atol=1e-9)  # Tweedie = the posterior mean
    assert torch.allclose((x + s**2 * score) / a, x0_hat, atol=1e-9)


def load_script():
    spec = importlib.util.spec_from_file_location("theory_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_figure_scripts_mixture_denoiser_is_tweedie():
    """The closed-form E[x0 | x_t] of the page's Gaussian mixture equals (x_t + sigma^2 score) / alpha, with
    the score of the noisy mixture taken by autograd."""
    fig = load_script()
    path = FlowPath()
    x = torch.tensor([[0.3, -0.5], [2.0, 0.1], [-1.0, 1.5]], dtype=torch.float64)
    for t in (0.2, 0.6, 0.95):
        a, s = float(path.alpha(torch.tensor([t]))), float(path.sigma(torch.tensor([t])))
        var = a**2 * fig.TAU**2 + s**2
        xg = x.clone().requires_grad_(True)
        comp = torch.distributions.Independent(torch.distributions.Normal(a * fig.MEANS, math.sqrt(var)), 1)
        logp = torch.logsumexp(fig.WEIGHTS.log() + comp.log_prob(xg[:, None, :]), dim=1)
        score, = torch.autograd.grad(logp.sum(), xg)
        x0_hat, eps_hat = fig.exact_denoiser("flow")(x.float(), t)
        assert torch.allclose(x0_hat.double(), (x + s**2 * score) / a, atol=1e-4)
        assert torch.allclose(eps_hat.double(), -s * score, atol=1e-4)


# 5. Guidance: cfg_mix, and the mapping to Ho & Salimans' w.

def test_cfg_mix_endpoints_and_the_papers_w():
    cond, uncond = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.2, 0.3, -1.0])
    assert torch.equal(cfg_mix(cond, uncond, 1.0), cond)
    assert torch.equal(cfg_mix(cond, uncond, 0.0), uncond)
    w_theirs = 2.5  # Ho & Salimans 2022, Eq. 6: (1 + w) eps_c - w eps_u
    assert torch.allclose(cfg_mix(cond, uncond, 1 + w_theirs), (1 + w_theirs) * cond - w_theirs * uncond)


def test_guidance_is_bayes_rule_on_scores():
    """For Gaussians p(x) = N(0, 1), p(x | c) = N(mu, 1) (so p(c | x) is log-linear in x): w = 1 on the scores
    gives the conditional score, which is the prior's score plus grad log p(c | x)."""
    mu = 1.5
    x = torch.linspace(-2, 2, 5, dtype=torch.float64)
    score_u, score_c = -x, -(x - mu)
    grad_log_p_c_given_x = score_c - score_u  # Bayes: log p(c|x) = log p(x|c) - log p(x) + const
    assert torch.allclose(grad_log_p_c_given_x, torch.full_like(x, mu))
    assert torch.allclose(cfg_mix(score_c, score_u, 3.0), score_u + 3.0 * grad_log_p_c_given_x)


# 6. The probability-flow ODE: DDIM (eta = 0) with the exact denoiser transports p_1 onto the data.

def test_ddim_with_the_exact_denoiser_maps_noise_onto_a_gaussian_datum():
    """Data N(m, tau^2): the PF-ODE's map is affine, x_1 = a_1 m + sqrt(a_1^2 tau^2 + s_1^2) z -> m + tau z."""
    m, tau = 0.5, 0.2
    path = path_of("cosine")

    def denoiser(x: torch.Tensor, t: float):
        a, s = float(path.alpha(torch.tensor([t]))), float(path.sigma(torch.tensor([t])))
        x0 = gaussian_posterior(m, tau, a, s, x)
        return x0, (x - a * x0) / s

    z = torch.linspace(-2, 2, 9, dtype=torch.float64)
    a1, s1 = float(path.alpha(torch.tensor([1.0]))), float(path.sigma(torch.tensor([1.0])))
    x1 = a1 * m + math.sqrt(a1**2 * tau**2 + s1**2) * z
    out = sample_ddim(denoiser, x1, torch.linspace(1, 0, 401, dtype=torch.float64), path)
    assert torch.allclose(out, m + tau * z, atol=5e-3)


def test_euler_on_the_flow_path_steps_along_the_velocity():
    """On the flow path the DDIM/Euler update a_s x0_hat + s_s eps_hat is x_t + (s - t) u, u = eps_hat - x0_hat,
    for a denoiser whose (x0_hat, eps_hat) agree with x_t = (1 - t) x0_hat + t eps_hat, as to_x0_eps's do."""
    x0_hat, eps_hat = torch.tensor([0.4, -0.2]), torch.tensor([1.0, 0.3])
    x = 0.2 * x0_hat + 0.8 * eps_hat
    out = sample_euler(lambda x_t, t: (x0_hat, eps_hat), x, [0.8, 0.55], FlowPath())
    assert torch.allclose(out, x + (0.55 - 0.8) * (eps_hat - x0_hat), atol=1e-6)


# The page's figures come from a script that runs.

def test_the_figure_script_writes_every_png(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in ("paths", "weights", "toy", "flow"):
        png = tmp_path / f"theory_{name}.png"
        assert png.is_file() and 0 < png.stat().st_size < 150_000, name
    assert "straightness" in done.stdout


def test_the_page_names_only_functions_and_tests_that_exist():
    """Every `module.name` the page cites is an attribute of difflab.<module>, every test it cites is in this file."""
    import importlib
    import re

    page = (ROOT / "docs" / "theory.md").read_text()
    cited = {(m, n) for m, n in re.findall(r"`(schedules|objectives|samplers|guidance)\.([A-Za-z_][\w.]*)`", page)
             if n != "py"}  # `schedules.py` names a file
    assert len(cited) > 20  # the page cites its code; if none is found, the pattern broke
    for module, name in cited:
        obj = importlib.import_module(f"difflab.{module}")
        for part in name.split("."):
            assert hasattr(obj, part), f"docs/theory.md cites {module}.{name}, which does not exist"
            obj = getattr(obj, part)
    tests = set(re.findall(r"`(test_\w+)`", page))
    assert tests and tests <= set(globals()), sorted(tests - set(globals()))
