"""
gp.py -- exact Gaussian-process regression for mixbo, read top to bottom.

The GP models the loss y of a training run as a function of the input row
    x = [w_1 .. w_K, u_N, u_T]                       (float64, length d = K + 2)
where w is the data mixture (on the simplex, used as is) and u_N, u_T are log model scale and log
training steps mapped to [0, 1] by the search space's bounds (see `encode`).

What is in this file, in order:
  1. encode                      the input encoding of the contract.
  2. kernels                     RBF and Matern-5/2 with ARD lengthscales, the spectral mixture kernel of
                                 Wilson & Adams (2013, eq. 12) and GPyTorch's product-of-1-D variant.
  3. model structures            which kernel sits on which input group, the run-level noise, and the
                                 scaling-law mean (Hoffmann et al. 2022) for the cross-scale model (issue 8).
  4. hyperparameters             names, bounds, log-priors (BoTorch >= 0.12 style), packing to a vector.
  5. marginal likelihood         R&W Alg. 2.1 / eq. 2.30 with escalating jitter; exact gradient by eq. 5.9,
                                 the kernel's derivatives by torch autograd in float64.
  6. fit_gp                      MAP hyperparameters by scipy L-BFGS-B, seeded restarts, best kept.
  7. predict, cross_covariance   the posterior (R&W eq. 2.23-2.24), in ORIGINAL y units; cross_covariance_grid
                                 for mixtures x fidelities (the knowledge gradient's), kernel factored per group.

References
  [RW] C. E. Rasmussen & C. K. I. Williams, Gaussian Processes for Machine Learning, MIT Press 2006.
  [WA] A. G. Wilson & R. P. Adams, Gaussian Process Kernels for Pattern Discovery and Extrapolation, ICML 2013.
  [HO] J. Hoffmann et al., Training Compute-Optimal Large Language Models (Chinchilla), 2022, eq. 2/10.
  [KA] J. Kaplan et al., Scaling Laws for Neural Language Models, 2020.
  [HV] C. Hvarfner, E. O. Hellsten & L. Nardi, Vanilla Bayesian Optimization Performs Great in High
       Dimensions, ICML 2024 (the lengthscale prior BoTorch uses since v0.12).
  sklearn's gaussian_process/_gpr.py is the line-by-line model for Alg. 2.1.

Conventions: everything is float64. y is standardized (mean 0, population std 1, as sklearn's
normalize_y) before fitting; hyperparameters, noise and the log marginal likelihood live in standardized
units; predict / cross_covariance / noise_variance are returned in original y units.
"""

import math
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch

DTYPE = torch.float64
NOISE_FLOOR = 1e-6      # smallest noise variance, standardized units (a 0.01-nat seed noise on a 1-nat spread is 1e-4)
JITTER_TRIES = 4        # after a plain attempt, add 1e-8 * 10^k * mean(diag K), k = 0..3 (GPyTorch psd_safe_cholesky)
PENALTY = 1e10          # objective value when every Cholesky attempt fails during the fit (a penalty, not a crash)

KERNELS = ("rbf", "matern52", "sm", "sm_product")
STRUCTURES = ("joint", "product", "additive")
MEANS = ("constant", "scaling_law")


# ----------------------------------------------------------------------------------------------
# 1. input encoding (the contract)

def _unit_log(v, lo, hi, name):
    """(log v - log lo) / (log hi - log lo), or 0 when hi == lo."""
    v = np.asarray(v, dtype=np.float64)
    if not np.all(np.isfinite(v)) or np.any(v <= 0) or lo <= 0 or hi < lo:
        raise ValueError(f"encode: {name} values and bounds must be finite and > 0 with min <= max; "
                         f"got bounds ({lo}, {hi})")
    if hi == lo:
        return np.zeros_like(v)
    return (np.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))


def encode(weights, scale, steps, bounds):
    """X (n, K+2) = [w, u_N, u_T] from weights (n,K) or (K,), scale (n,) or scalar, steps (n,) or scalar,
    bounds = (scale_min, scale_max, steps_min, steps_max)."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))                 # (n, K)
    n = w.shape[0]
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), (n,))       # (n,)
    steps = np.broadcast_to(np.asarray(steps, dtype=np.float64), (n,))       # (n,)
    s_min, s_max, t_min, t_max = (float(b) for b in bounds)
    u_N = _unit_log(scale, s_min, s_max, "scale")                            # (n,)
    u_T = _unit_log(steps, t_min, t_max, "steps")                            # (n,)
    return np.column_stack([w, u_N, u_T])                                    # (n, K+2)


# ----------------------------------------------------------------------------------------------
# 2. kernels. Each takes A (n,p), B (m,p) and returns (n,m); all have k(x,x) = 1 (amplitudes live in
#    the model structure), except the raw spectral-mixture functions, which take their weights as given.

def _scaled_sqdist(A, B, ls):
    """sum_p ((a_p - b_p) / l_p)^2, (n,m); |a|^2 + |b|^2 - 2 a.b, clamped at 0 against round-off."""
    A, B = A / ls, B / ls
    d2 = torch.addmm((A * A).sum(1)[:, None] + (B * B).sum(1)[None, :], A, B.T, alpha=-2.0)
    return d2.clamp_min(0.0)


# The two stationary kernels as autograd Functions of r^2: forward in numpy (its float64 sqrt/exp ran 4-8x
# faster than torch's CPU kernels on this box, measured on 300 x 4096 blocks), backward one multiply by the
# saved dk/dr^2, finite at r = 0 (autograd through sqrt is infinite there).

class _RBFOfSqdist(torch.autograd.Function):
    """k(r^2) = exp(-r^2 / 2), dk/dr^2 = -k / 2."""

    @staticmethod
    def forward(ctx, d2):
        k = np.exp(-0.5 * d2.detach().numpy())                                  # (n, m)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(torch.from_numpy(-0.5 * k))                    # dk / dr^2
        return torch.from_numpy(k)

    @staticmethod
    def backward(ctx, grad):
        (dk_dd2,) = ctx.saved_tensors
        return grad * dk_dd2


class _Matern52OfSqdist(torch.autograd.Function):
    """k(r^2) = (1 + s + s^2 / 3) exp(-s), s = sqrt(5 r^2), dk/dr^2 = -5/6 (1 + s) exp(-s)."""

    @staticmethod
    def forward(ctx, d2):
        s = np.sqrt(5.0 * d2.detach().numpy())                                  # (n, m)
        e = np.exp(-s)
        if ctx.needs_input_grad[0]:
            dk = s + 1.0
            dk *= e
            dk *= -5.0 / 6.0
            ctx.save_for_backward(torch.from_numpy(dk))                          # dk / dr^2
        k = s / 3.0
        k += 1.0
        k *= s
        k += 1.0
        k *= e                                                                   # (1 + s (1 + s / 3)) e^-s
        return torch.from_numpy(k)

    @staticmethod
    def backward(ctx, grad):
        (dk_dd2,) = ctx.saved_tensors
        return grad * dk_dd2


def rbf(A, B, ls):
    """k = exp(-r^2 / 2), r^2 = sum_p (tau_p / l_p)^2.  [RW eq. 4.9 with ARD, eq. 5.2]"""
    return _RBFOfSqdist.apply(_scaled_sqdist(A, B, ls))


def matern52(A, B, ls):
    """k = (1 + sqrt5 r + 5 r^2 / 3) exp(-sqrt5 r), r = ARD distance.  [RW eq. 4.17]"""
    return _Matern52OfSqdist.apply(_scaled_sqdist(A, B, ls))


def spectral_mixture(A, B, weights, ls, means):
    """Wilson & Adams (2013) eq. 12: a SUM over components q of a PRODUCT over dimensions p,
        k(tau) = sum_q w_q prod_p exp(-2 pi^2 tau_p^2 v_qp) cos(2 pi tau_p mu_qp),
    written with lengthscales l_qp = 1 / (2 pi sqrt(v_qp)), so exp(-2 pi^2 tau^2 v) = exp(-tau^2 / (2 l^2)).
    k(0) = sum_q w_q.  weights (Q,), ls (Q,p), means (Q,p) (frequencies, cycles per unit of w)."""
    tau = A[:, None, :] - B[None, :, :]                                      # (n, m, p)
    k = torch.zeros(A.shape[0], B.shape[0], dtype=A.dtype)
    for q in range(weights.shape[0]):
        envelope = torch.exp(-0.5 * _scaled_sqdist(A, B, ls[q]))           # prod_p exp(-tau_p^2 / 2 l_qp^2)
        k = k + weights[q] * envelope * torch.cos(2 * math.pi * tau * means[q]).prod(-1)
    return k


def spectral_mixture_product(A, B, weights, ls, means):
    """GPyTorch's SpectralMixtureKernel (since its PR #1392): a PRODUCT over dimensions of 1-D spectral
    mixtures sharing the weights, k(tau) = prod_p sum_q w_q exp(-tau_p^2 / 2 l_qp^2) cos(2 pi tau_p mu_qp),
    so k(0) = (sum_q w_q)^p. NOT eq. 12 of Wilson & Adams; offered under its own name."""
    tau = A[:, None, :] - B[None, :, :]                                      # (n, m, p)
    per_dim = torch.zeros_like(tau)
    for q in range(weights.shape[0]):
        per_dim = per_dim + weights[q] * torch.exp(-0.5 * (tau / ls[q]) ** 2) * torch.cos(2 * math.pi * tau * means[q])
    return per_dim.prod(-1)


def _group_kernel(kind, A, B, P, prefix):
    """One factor of the model: `kind` on the columns in A, B with the parameters named prefix_*."""
    if kind == "rbf":
        return rbf(A, B, P[prefix + "_lengthscale"])
    if kind == "matern52":
        return matern52(A, B, P[prefix + "_lengthscale"])
    w = P["sm_weights"] / P["sm_weights"].sum()                              # normalized: k(0) = 1
    if kind == "sm":
        return spectral_mixture(A, B, w, P["sm_lengthscale"], P["sm_means"])
    return spectral_mixture_product(A, B, w, P["sm_lengthscale"], P["sm_means"])


# ----------------------------------------------------------------------------------------------
# 3. model structures (which kernel on which columns) and the mean function.
#
#   "joint"     k = s^2 k(x, x')                          one ARD kernel over all d columns (sklearn's form)
#   "product"   k = s^2 k_w(w,w') k_N(u_N,u_N') k_T(u_T,u_T')         each factor chosen independently
#   "additive"  k = s_f^2 k_fid([u_N,u_T],[u_N',u_T']) + s^2 k_w(w,w') k_N(u_N,u_N') k_T(u_T,u_T')
#               the shared scale/steps effect (k_fid, same kind as k_N) and the mixture effect each get
#               their own amplitude (issue 8).
#
#   noise: y = f(x) + e_run + e, e ~ N(0, sigma^2) independent per observation and, with
#       run_noise=True, e_run ~ N(0, sigma_run^2) shared by every observation of one training run (its
#       checkpoints): a seed's offset persists through a run, so checkpoints of one run are not independent
#       repeats. Noise covariance sigma^2 I + sigma_run^2 B, B_ij = 1 when i and j come from the same run.
#       Without it the GP reads each run's offset as mixture signal (measured in bench/cross_scale.py).
#
#   mean "constant"     m = 0 on standardized y (the sample mean, as sklearn's normalize_y)
#   mean "scaling_law"  m(u_N, u_T) = h(x)^T beta,
#       h(x) = [1, exp(-alpha_N u_N), exp(-alpha_T u_T), exp(-alpha_N u_N - alpha_T u_T)]
#       The first three are Hoffmann et al. (2022) eq. 10, L(N, D) = E + A / N^alpha + B / D^beta, in the
#       encoded inputs: A / N^alpha = A exp(-alpha log N) = [A N_min^-alpha] exp(-[alpha log(N_max/N_min)] u_N),
#       so beta = (E, A N_min^-alpha, B D_min^-beta, ...) in standardized units and alpha_N = alpha
#       log(N_max / N_min) (likewise T for D: tokens are steps x batch). The fourth is the coupling
#       C / (N^alpha D^beta), the product of the two power laws: the lowest-order term by which the learning
#       curve in D may be steeper or flatter at larger N, which Chinchilla's additive form leaves out (Kaplan
#       et al.'s L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D, [KA], is not additive).
#       The coefficients beta get a Gaussian prior N(0, S), S = diag(s_beta^2, s_beta^2, s_beta^2, s_C^2), and
#       are integrated out exactly (R&W sec. 2.7, eq. 2.39): the model is then the GP with kernel
#       k(x, x') + h(x)^T S h(x'), so the posterior (eq. 2.41-2.42) carries the uncertainty of the scaling-law
#       fit into the target-scale predictions. s_beta^2, s_C^2, alpha_N, alpha_T are hyperparameters, fitted
#       with the kernel's by the marginal likelihood; s_C^2 has its own amplitude so that the evidence decides
#       whether there is a coupling (on simulate.py's benchmarks, whose law is additive, it is fitted small; on
#       data/runs_cpu.csv, whose model sizes also ran different learning rates, large: bench/cross_scale.py,
#       README "Cross-scale"). (Fitting beta as 3 more hyperparameters instead was measured by
#       bench/cross_scale.py: 1.7-1.9x the fit time and 2-3x the L-BFGS-B evaluations, Spearman within 0.004.)

@dataclass(frozen=True)
class Config:
    """The model options of fit_gp (same names and defaults)."""
    structure: str = "product"
    kernel_w: str = "matern52"
    kernel_N: str = "rbf"
    kernel_T: str = "rbf"
    mean: str = "scaling_law"
    sm_components: int = 2
    priors: bool = True
    run_noise: bool = True


def _kernel(cfg, P, A, B, K):
    """Prior covariance (n,m) between rows A (n,d) and B (m,d), standardized units, without noise."""
    if cfg.structure == "joint":
        return P["amplitude"] * _group_kernel(cfg.kernel_w, A, B, P, "w")
    kw = _group_kernel(cfg.kernel_w, A[:, :K], B[:, :K], P, "w")
    kN = _group_kernel(cfg.kernel_N, A[:, K:K + 1], B[:, K:K + 1], P, "N")
    kT = _group_kernel(cfg.kernel_T, A[:, K + 1:], B[:, K + 1:], P, "T")
    k = P["amplitude"] * kw * kN * kT
    if cfg.structure == "additive":
        k = k + P["fid_amplitude"] * _group_kernel(cfg.kernel_N, A[:, K:], B[:, K:], P, "fid")
    if cfg.mean == "scaling_law":
        k = k + (_basis(P, A, K) * _basis_variances(P)) @ _basis(P, B, K).T           # h(x)^T S h(x')
    return k


def _basis(P, X, K):
    """h(x) = [1, exp(-alpha_N u_N), exp(-alpha_T u_T), exp(-alpha_N u_N - alpha_T u_T)] (n, 4):
    [HO] E + A / N^alpha + B / D^beta, and the coupling C / (N^alpha D^beta)."""
    power_N = torch.exp(-P["mean_alpha_N"] * X[:, K])                                  # (n,) N^-alpha
    power_T = torch.exp(-P["mean_alpha_T"] * X[:, K + 1])                              # (n,) D^-beta
    return torch.stack([torch.ones(X.shape[0], dtype=DTYPE), power_N, power_T, power_N * power_T], dim=1)


def _basis_variances(P):
    """diag(S) (4,): the prior variances of beta = (E, A, B, C): s_beta^2 for Chinchilla's three, s_C^2 for
    the coupling."""
    s = P["mean_amplitude"]
    return torch.stack([s, s, s, P["mean_coupling"]])


def _prior_var(cfg, P, X, K):
    """k(x, x) (m,): every stationary factor is 1 at tau = 0, so the sum of amplitudes, plus the
    scaling-law term h(x)^T S h(x)."""
    amplitudes = P["amplitude"] + (P["fid_amplitude"] if cfg.structure == "additive" else 0.0)
    v = amplitudes * torch.ones(X.shape[0], dtype=DTYPE)
    if cfg.mean == "scaling_law":
        v = v + (_basis(P, X, K) ** 2 * _basis_variances(P)).sum(1)
    return v


# ----------------------------------------------------------------------------------------------
# 4. hyperparameters. Each is (name, shape, log-parameterized?, lower, upper, LogNormal prior (mu, sigma) or
#    None), bounds in natural units. Priors, as BoTorch >= 0.12 (notes section 1.5):
#      lengthscales ~ LogNormal(sqrt2 + log(d) / 2, sqrt3)   [HV]; d = number of input columns
#      noise, run_noise ~ LogNormal(-4, 1)                   (standardized units)
#    amplitudes, spectral weights/frequencies and scaling-law parameters: no prior (flat within the bounds).
#    The prior density is that of the natural parameter (as BoTorch), evaluated at exp(theta). With
#    priors=False the objective is the plain log marginal likelihood (sklearn's), but the priors still
#    choose the starting points.

def _specs(cfg, d, K):
    ls_prior = (math.sqrt(2.0) + 0.5 * math.log(d), math.sqrt(3.0))
    noise_prior = (-4.0, 1.0)
    ls = lambda name, p: (name, (p,), True, 1e-2, 1e5, ls_prior)
    specs = [("noise", (), True, NOISE_FLOOR, 10.0, noise_prior), ("amplitude", (), True, 1e-6, 1e5, None)]
    if cfg.run_noise:
        specs.append(("run_noise", (), True, NOISE_FLOOR, 10.0, noise_prior))
    groups = [("w", cfg.kernel_w, d if cfg.structure == "joint" else K)]
    if cfg.structure != "joint":
        groups += [("N", cfg.kernel_N, 1), ("T", cfg.kernel_T, 1)]
    for prefix, kind, p in groups:
        if kind in ("rbf", "matern52"):
            specs.append(ls(prefix + "_lengthscale", p))
        else:
            Q = cfg.sm_components
            specs += [("sm_weights", (Q,), True, 1e-3, 1e3, None),
                      ("sm_lengthscale", (Q, p), True, 1e-2, 1e5, ls_prior),
                      ("sm_means", (Q, p), False, 0.0, 5.0, None)]
    if cfg.structure == "additive":
        specs += [("fid_amplitude", (), True, 1e-6, 1e5, None), ls("fid_lengthscale", 2)]
    if cfg.mean == "scaling_law":
        specs += [("mean_amplitude", (), True, 1e-6, 1e4, None), ("mean_coupling", (), True, 1e-6, 1e4, None),
                  ("mean_alpha_N", (), True, 1e-2, 1e2, None), ("mean_alpha_T", (), True, 1e-2, 1e2, None)]
    return specs


def _unpack(theta, specs):
    """Flat vector theta (torch) -> dict of natural-unit tensors (exp of the log-parameterized ones)."""
    P, i = {}, 0
    for name, shape, is_log, *_ in specs:
        size = int(np.prod(shape))
        v = theta[i:i + size].reshape(shape)
        P[name] = torch.exp(v) if is_log else v
        i += size
    return P


def _pack(P, specs):
    """dict of natural-unit values -> flat numpy theta."""
    parts = []
    for name, shape, is_log, *_ in specs:
        v = np.broadcast_to(np.asarray(P[name], dtype=np.float64), shape).ravel()
        parts.append(np.log(v) if is_log else v)
    return np.concatenate(parts)


def _bounds(specs):
    out = []
    for name, shape, is_log, lo, hi, _ in specs:
        out += [(math.log(lo), math.log(hi)) if is_log else (lo, hi)] * int(np.prod(shape))
    return out


def _log_prior(P, specs, cfg):
    """sum of LogNormal(mu, sigma) log-densities of the natural parameters x: -log x - log(sigma sqrt(2 pi))
    - (log x - mu)^2 / (2 sigma^2); 0 with priors=False."""
    lp = torch.zeros((), dtype=DTYPE)
    if not cfg.priors:
        return lp
    for name, _, _, _, _, prior in specs:
        if prior is not None:
            mu, sigma = prior
            z = torch.log(P[name])
            lp = lp + (-z - math.log(sigma * math.sqrt(2 * math.pi)) - (z - mu) ** 2 / (2 * sigma ** 2)).sum()
    return lp


def _initial_theta(specs, rng, first, cfg):
    """Restart 0: the priors' modes (BoTorch's initial lengthscale), amplitudes 1 (additive: 1 and 0.1),
    spectral means spread over [0, 1], scaling-law exponents 1. Later restarts: draws from the priors,
    log-uniform within the bounds where there is no prior (exponents: log-uniform in [0.1, 10])."""
    P = {}
    for name, shape, is_log, lo, hi, prior in specs:
        if first:
            if prior is not None:
                v = np.full(shape, math.exp(prior[0] - prior[1] ** 2))            # LogNormal mode
            elif name == "sm_means":
                v = np.broadcast_to(np.linspace(0.0, 1.0, shape[0])[:, None], shape).copy()
            elif name.startswith("mean_alpha"):
                v = np.ones(shape)
            elif name == "amplitude" and cfg.structure == "additive":
                v = np.full(shape, 0.1)
            else:
                v = np.ones(shape)
        elif prior is not None:
            v = np.exp(rng.normal(prior[0], prior[1], size=shape))
        elif name.startswith("mean_alpha"):
            v = np.exp(rng.uniform(math.log(0.1), math.log(10.0), size=shape))
        elif is_log:
            v = np.exp(rng.uniform(math.log(lo), math.log(hi), size=shape))
        else:
            v = rng.uniform(lo, hi, size=shape)
        P[name] = np.clip(v, lo, hi)
    return _pack(P, specs)


# ----------------------------------------------------------------------------------------------
# 5. Cholesky with escalating jitter, and the log marginal likelihood

def _cholesky(Kmat):
    """Lower L with L L^T = Kmat + jitter I, and the jitter used. First without jitter, then
    1e-8 * 10^k * mean(diag), k = 0..JITTER_TRIES-1. Returns (None, None) if every attempt fails."""
    scale = Kmat.diagonal().mean().abs().item()
    eye = torch.eye(Kmat.shape[0], dtype=DTYPE)
    for k in range(JITTER_TRIES + 1):
        jitter = 0.0 if k == 0 else 1e-8 * 10 ** (k - 1) * scale
        L, info = torch.linalg.cholesky_ex(Kmat + jitter * eye if jitter else Kmat)
        if info.item() == 0 and torch.isfinite(L.diagonal()).all():      # a NaN/inf in K reaches diag(L)
            return L, jitter
    return None, None


def _lml_terms(cfg, P, X, y, K, B):
    """R&W Alg. 2.1 on standardized y: returns (lml, L, alpha, jitter, K_f) or None if Cholesky fails.
    B (n, n): 1 where two observations come from the same run. K_f = K(X, X) without noise keeps its
    autograd graph (for eq. 5.9 in _objective)."""
    Kf = _kernel(cfg, P, X, X, K)                                                       # (n, n) K(X, X)
    Kmat = Kf.detach().clone()
    if cfg.run_noise:
        Kmat.add_(P["run_noise"].detach() * B)                                          # + sigma_run^2 B
    Kmat.diagonal().add_(P["noise"].detach())                                           # + sigma_n^2 I
    L, jitter = _cholesky(Kmat)                                                         # Alg. 2.1 line 2
    if L is None:
        return None
    r = y[:, None]                                                                      # (n, 1)
    alpha = torch.cholesky_solve(r, L)                                                  # Alg. 2.1 line 3
    lml = (-0.5 * (r * alpha).sum() - torch.log(L.diagonal()).sum()                    # Alg. 2.1 line 7,
           - 0.5 * X.shape[0] * math.log(2 * math.pi))                                   # eq. 2.30
    return lml.item(), L, alpha[:, 0], jitter, Kf


def _objective(theta_np, cfg, specs, X, y, K, B):
    """Negative log posterior -(log p(y | theta) + log p(theta)) and its exact gradient.
    R&W eq. 5.9: d lml / d theta_j = 1/2 tr((alpha alpha^T - K^-1) dK/dtheta_j). We form
    G = 1/2 (alpha alpha^T - K^-1) once (K^-1 from the Cholesky factor, LAPACK potri) and let autograd
    contract it with dK/dtheta through the kernel's elementwise formulas: backward of sum(G * K) + log p.
    Measured by bench/bench_gp.py at n = 500: 14.8 ms per evaluation, against 34.0 ms for autograd through
    the Cholesky itself. A failed factorization returns PENALTY with a zero gradient (L-BFGS-B then
    backtracks, or stops that restart)."""
    theta = torch.tensor(theta_np, dtype=DTYPE, requires_grad=True)
    P = _unpack(theta, specs)
    terms = _lml_terms(cfg, P, X, y, K, B)
    if terms is None:
        return PENALTY, np.zeros_like(theta_np)
    lml, L, alpha, _, Kf = terms
    G = 0.5 * (torch.outer(alpha, alpha) - torch.cholesky_inverse(L))                   # (n, n) eq. 5.9
    log_prior = _log_prior(P, specs, cfg)
    surrogate = ((G * Kf).sum() + P["noise"] * G.diagonal().sum()                       # dK_f + dsigma^2 I
                 + log_prior)                                                           # gradient = that of lml + log p
    if cfg.run_noise:
        surrogate = surrogate + P["run_noise"] * (G * B).sum()                          # d sigma_run^2 B
    surrogate.backward()
    obj, g = -(lml + log_prior.item()), -theta.grad.numpy()
    if not (math.isfinite(obj) and np.all(np.isfinite(g))):
        return PENALTY, np.zeros_like(theta_np)
    return obj, g.copy()


# ----------------------------------------------------------------------------------------------
# 6. fitting

@dataclass(frozen=True)
class GP:
    """A fitted GP: the data, the hyperparameters and the factorization of the posterior."""
    config: Config
    n_weights: int
    X: np.ndarray                 # (n, d) training inputs
    y: np.ndarray                 # (n,) training targets, original units
    y_mean: float                 # standardization: y_std_units = (y - y_mean) / y_scale
    y_scale: float
    hyperparameters: dict         # natural units (standardized y), numpy
    L: torch.Tensor               # (n, n) lower Cholesky factor of K + noise I + run_noise B (+ jitter I), standardized
    alpha: torch.Tensor           # (n,) (K + noise I + run_noise B)^-1 y, standardized
    jitter: float                 # jitter that the final factorization needed (0.0 usually)
    noise_variance: float         # noise variance of one new observation (noise + run_noise), ORIGINAL y units
    run_noise_variance: float     # the part of it shared by all checkpoints of one run, ORIGINAL y units
    log_marginal_likelihood: float  # log p(y | theta) of the standardized y, without the prior


def _check_inputs(X, n_weights, what):
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != n_weights + 2:
        raise ValueError(f"{what} must have shape (n, n_weights + 2) = (n, {n_weights + 2}) as built by gp.encode; "
                         f"got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{what} contains NaN or inf; drop or repair those rows before fitting/predicting")
    w = X[:, :n_weights]
    if np.any(w < -1e-9) or np.any(np.abs(w.sum(1) - 1.0) > 1e-6):
        bad = int(np.flatnonzero((w < -1e-9).any(1) | (np.abs(w.sum(1) - 1.0) > 1e-6))[0])
        raise ValueError(f"{what} row {bad}: the first {n_weights} columns (mixture weights) must be >= 0 and sum "
                         f"to 1; renormalize with w / w.sum()")
    return X


def fit_gp(X, y, n_weights, seed=0, restarts=2, structure="product", kernel_w="matern52",
           kernel_N="rbf", kernel_T="rbf", mean="scaling_law", sm_components=2, priors=True,
           run_noise=True, runs=None, hyperparameters=None, maxiter=200):
    """Fit the GP by maximizing log p(y | theta) + log p(theta) over log-parameters with L-BFGS-B
    (`restarts` starts: the priors' modes, then seeded draws; the best is kept). With `hyperparameters`
    (a dict in natural, standardized units, as GP.hyperparameters) nothing is optimized: the GP is
    conditioned on them (sklearn's optimizer=None).
    X (n, n_weights+2) from encode, y (n,) losses. runs (n,) optional labels of the training run each
    observation comes from (for run_noise); None: rows with the same weights and scale are one run.

    Defaults, chosen by bench/cross_scale.py (simulate.py's benchmarks; fit on 48 mixtures at the two
    smallest scales plus 2 target runs, predicting 46 held-back target runs; means over 10 splits):
      structure="product", mean="scaling_law": k = h(x)^T S h(x') + s^2 k_w k_N k_T, i.e. the shared
      scale/steps effect (the scaling-law basis) and the mixture effect have their own amplitudes. Spearman
      on "default" 0.905 vs 0.861 for the plain product kernel (ceiling 0.929), "sparse" 0.941 vs 0.918.
      The basis's coupling term C / (N^alpha D^beta): on the simulators it moved Spearman and coverage by
      <= 0.003 and 0.02; on the real table data/runs_cpu.csv (20 splits, 2 of 12 target runs seen) it took the
      68% coverage of the held-back target runs from 0.50 +- 0.06 to 0.61 +- 0.05 and the RMSE from 0.094 to
      0.082 (Spearman 0.30 -> 0.23 +- 0.09, where the small scales rank the target at -0.10); inside the loop
      (mfkg, 56 paired runs on "default", "sparse", "shift") the final regret moved by +0.0008 +- 0.0008 nats
      (worse in 29, better in 18), at about 1.4x the loop's wall time (the coupling's variance is walked
      down to ~0 on the simulators, whose law is additive: there it can only cost).
      kernel_N = kernel_T = "rbf" (Matern-5/2 on the weights): 68%/95% coverage of the noise-free target
      loss 0.67/0.92, 0.66/0.96, 0.75/0.99 on "default", "sparse", "shift". With Matern-5/2 on u_N, u_T too,
      "shift" (where the optimum moves) was too wide, 0.85 at 68%, for Spearman higher by 0.003 on
      "default" and "sparse" (paired over splits; 0.016 +- 0.018 on "shift"). The loss is a smooth function
      of log N and log T, which is RBF's assumption. structure="additive" with the same mean ranked within
      0.005 at about 2x the fit time. run_noise on, restarts=2 (as measured).
      Caveat (bench/calibration.py): on mixbo's own ledgers, which hold no run at the target fidelity, this
      model's target intervals are too narrow, so mixbo reports the recommendation's +- from a
      mean="constant" GP with Matern-5/2 on u_N, u_T (mixbo.REPORTING_MODEL), whose intervals held their rate."""
    if structure not in STRUCTURES or mean not in MEANS or not {kernel_w, kernel_N, kernel_T} <= set(KERNELS):
        raise ValueError(f"unknown model option: structure in {STRUCTURES}, mean in {MEANS}, kernels in {KERNELS}")
    if structure == "joint" and kernel_w not in ("rbf", "matern52"):
        raise ValueError("structure='joint' needs kernel_w 'rbf' or 'matern52'")
    if kernel_N.startswith("sm") or kernel_T.startswith("sm"):
        raise ValueError("spectral mixture kernels are offered on the weights only: "
                         "set kernel_N, kernel_T to 'rbf' or 'matern52'")
    X = _check_inputs(X, n_weights, "X")
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (X.shape[0],):
        raise ValueError(f"y must have shape (n,) = ({X.shape[0]},) matching X; got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("y contains NaN or inf; drop failed trials (non-finite losses) before fitting")
    if runs is None:
        runs = np.unique(X[:, :n_weights + 1], axis=0, return_inverse=True)[1].ravel()  # same (w, u_N)
    runs = np.asarray(runs)
    if runs.shape != (X.shape[0],):
        raise ValueError(f"runs must have shape (n,) = ({X.shape[0]},), one run label per row of X; got {runs.shape}")
    B = torch.from_numpy((runs[:, None] == runs[None, :]).astype(np.float64))         # (n, n) same run
    cfg = Config(structure, kernel_w, kernel_N, kernel_T, mean, sm_components, priors, run_noise)
    K, d = n_weights, X.shape[1]

    # standardize y (population std, as sklearn's normalize_y; std 1 if y is constant, as BoTorch's min_stdv)
    y_mean, y_scale = float(y.mean()), float(y.std())
    if not y_scale > 1e-8 * max(1.0, abs(y_mean)):
        y_scale = 1.0
    ys_np = (y - y_mean) / y_scale
    Xt, ys = torch.from_numpy(X), torch.from_numpy(ys_np)
    specs = _specs(cfg, d, K)

    if hyperparameters is not None:
        missing = [name for name, *_ in specs if name not in hyperparameters]
        if missing:
            raise ValueError(f"hyperparameters lack {missing}; pass GP.hyperparameters of a fit with the same "
                             f"model options")
        theta = _pack(hyperparameters, specs)
    else:
        rng = np.random.default_rng(seed)
        bounds = _bounds(specs)
        best = None
        for r in range(max(1, restarts)):
            theta0 = _initial_theta(specs, rng, r == 0, cfg)
            res = scipy.optimize.minimize(_objective, theta0, args=(cfg, specs, Xt, ys, K, B), jac=True,
                                          method="L-BFGS-B", bounds=bounds, options={"maxiter": maxiter})
            if best is None or res.fun < best.fun:
                best = res
        theta = best.x

    with torch.no_grad():
        P = _unpack(torch.from_numpy(theta), specs)
        terms = _lml_terms(cfg, P, Xt, ys, K, B)
        if terms is None:   # only reachable with user-given hyperparameters: raise the noise to the floor x 100
            P["noise"] = torch.clamp(P["noise"], min=100 * NOISE_FLOOR)
            terms = _lml_terms(cfg, P, Xt, ys, K, B)
        if terms is None:
            raise ValueError("the kernel matrix is not positive definite even with jitter; "
                             "increase the 'noise' hyperparameter")
    lml, L, alpha, jitter, _ = terms
    run_var = float(P["run_noise"]) if run_noise else 0.0
    hyp = {k: v.numpy().copy() if v.ndim else float(v) for k, v in P.items()}
    return GP(cfg, K, X, y, y_mean, y_scale, hyp, L, alpha, float(jitter),
              (float(P["noise"]) + run_var) * y_scale ** 2, run_var * y_scale ** 2, float(lml))


# ----------------------------------------------------------------------------------------------
# 7. posterior, original y units

def _params(gp):
    return {k: torch.as_tensor(v, dtype=DTYPE) for k, v in gp.hyperparameters.items()}


def predict(gp, Xs, full_cov=False):
    """Latent posterior at Xs (m, d): mean (m,) and variance (m,) or covariance (m, m), ORIGINAL y units.
    R&W Alg. 2.1 lines 4-6 / eq. 2.23-2.24 (with the scaling-law basis inside k: eq. 2.41-2.42)."""
    Xs = torch.from_numpy(_check_inputs(Xs, gp.n_weights, "Xs"))
    X, K, P = torch.from_numpy(gp.X), gp.n_weights, _params(gp)
    with torch.no_grad():
        Ks = _kernel(gp.config, P, X, Xs, K)                                     # (n, m) K(X, Xs)
        mean = Ks.T @ gp.alpha                                                    # Alg. 2.1 line 4
        V = torch.linalg.solve_triangular(gp.L, Ks, upper=False)                 # (n, m) line 5: v = L \ k*
        mean = (gp.y_mean + gp.y_scale * mean).numpy()
        if full_cov:
            cov = _kernel(gp.config, P, Xs, Xs, K) - V.T @ V                     # eq. 2.24
            return mean, (gp.y_scale ** 2 * cov).numpy()
        var = (_prior_var(gp.config, P, Xs, K) - (V * V).sum(0)).clamp_min(0.0)        # line 6, >= 0 against round-off
        return mean, (gp.y_scale ** 2 * var).numpy()


def cross_covariance(gp, XA, XZ, chunk=4096):
    """Posterior covariance Sigma_n(A, Z) (|A|, |Z|) and posterior variance at Z (|Z|,), ORIGINAL y units:
        Sigma_n(A, Z) = K(A, Z) - K(A, X) (K + sigma^2 I)^-1 K(X, Z) = K(A, Z) - V_A^T V_Z,  V_. = L \\ K(X, .)
    (R&W eq. 2.24 off the diagonal). One Cholesky (from the fit) and triangular solves, Z in chunks of
    `chunk` columns to bound memory. This is the knowledge gradient's hot path."""
    XA = torch.from_numpy(_check_inputs(XA, gp.n_weights, "XA"))
    XZ = torch.from_numpy(_check_inputs(XZ, gp.n_weights, "XZ"))
    X, K, P, cfg = torch.from_numpy(gp.X), gp.n_weights, _params(gp), gp.config
    cov = torch.empty(XA.shape[0], XZ.shape[0], dtype=DTYPE)
    var = torch.empty(XZ.shape[0], dtype=DTYPE)
    with torch.no_grad():
        VA = torch.linalg.solve_triangular(gp.L, _kernel(cfg, P, X, XA, K), upper=False)   # (n, |A|)
        for s in range(0, XZ.shape[0], chunk):
            Zc = XZ[s:s + chunk]
            VZ = torch.linalg.solve_triangular(gp.L, _kernel(cfg, P, X, Zc, K), upper=False)  # (n, c)
            cov[:, s:s + chunk] = _kernel(cfg, P, XA, Zc, K) - VA.T @ VZ
            var[s:s + chunk] = (_prior_var(cfg, P, Zc, K) - (VZ * VZ).sum(0)).clamp_min(0.0)
    return (gp.y_scale ** 2 * cov).numpy(), (gp.y_scale ** 2 * var).numpy()


def _kernel_grid(cfg, P, W, U, B, K):
    """Prior covariance (M, F, n) between the grid of rows z_mf = [w_m, u_f], W (M, K) mixtures x U (F, 2)
    fidelities [u_N, u_T], and rows B (n, d), standardized units. The product and additive structures factor
    over the input groups (section 3),
        k(z_mf, b) = s^2 k_w(w_m, b_w) [k_N k_T](u_f, b_u) + [s_f^2 k_fid + h^T S h](u_f, b_u),
    so k_w is evaluated once per mixture (M, n) and the rest once per fidelity (F, n): n (M + F) kernel
    evaluations instead of n M F. The joint kernel does not factor: it is evaluated on the M F full rows."""
    M, F, n = W.shape[0], U.shape[0], B.shape[0]
    if cfg.structure == "joint":
        Z = torch.cat([W.repeat_interleave(F, dim=0), U.repeat(M, 1)], dim=1)            # (M F, d) mixture-major
        return _kernel(cfg, P, Z, B, K).reshape(M, F, n)
    kw = P["amplitude"] * _group_kernel(cfg.kernel_w, W, B[:, :K], P, "w")               # (M, n) s^2 k_w
    kNT = (_group_kernel(cfg.kernel_N, U[:, :1], B[:, K:K + 1], P, "N")
           * _group_kernel(cfg.kernel_T, U[:, 1:], B[:, K + 1:], P, "T"))                 # (F, n) k_N k_T
    k = kw[:, None, :] * kNT[None, :, :]                                                   # (M, F, n)
    if cfg.structure == "additive":
        k += P["fid_amplitude"] * _group_kernel(cfg.kernel_N, U, B[:, K:], P, "fid")
    if cfg.mean == "scaling_law":
        k += (_basis(P, U, 0) * _basis_variances(P)) @ _basis(P, B, K).T                  # h(u_f)^T S h(b)
    return k


def cross_covariance_grid(gp, XA, W, U, u_P, block=1024):
    """cross_covariance for the GRID of measurements z_mf = [w_m, u_f]: W (M, K) mixtures x U (F, 2) encoded
    fidelities [u_N, u_T] (the last two columns of gp.encode). XA (|A|, d) rows are paired with every z; the
    row p_m = [w_m, u_P] (u_P (2,) one fidelity) is paired with mixture m's F measurements only (the knowledge
    gradient's projection of z to the target). Returns, ORIGINAL y units, measurement-major,
        cov (M, F, |A|) = Sigma_n(z_mf, A),  own (M, F) = Sigma_n(z_mf, p_m),  var (M, F) = Sigma_n(z_mf, z_mf),
    equal to cross_covariance on the M F rows (tested to 1e-10), but faster:
      * the prior covariances K(Z, X), K(Z, A) come from _kernel_grid (k_w once per mixture, the scale/steps
        factors and the scaling-law term once per fidelity) instead of n M F kernel evaluations;
      * V_A = L \\ K(X, A) and V_P = L \\ K(X, P) are solved once, not once per block;
      * k(z_mf, p_m) depends on f only (the same w_m in both rows, and every kernel here is stationary);
      * own needs one column of V_P per measurement: sum_i V_Z[i, mf] V_P[i, m] (n M F), not V_Z^T V_P;
      * the triangular solve (n^2 M F flops, most of the time) runs on V_Z^T = K(Z, X) L^-T, Z-major rows as
        torch stores them (no transposed copies), in blocks of about `block` columns (whole mixtures):
        measured on this box, 1 thread, n = 300: 23 GFLOP/s at 1024 columns, 15 at 2048 (cache)."""
    XA = torch.from_numpy(_check_inputs(XA, gp.n_weights, "XA"))
    K = gp.n_weights
    W, U, u_P = (np.asarray(v, dtype=np.float64) for v in (W, U, u_P))
    if W.ndim != 2 or W.shape[1] != K or U.ndim != 2 or U.shape[1] != 2 or u_P.shape != (2,) \
            or not np.isfinite(U).all() or not np.isfinite(u_P).all():
        raise ValueError(f"W must be (M, {K}) mixtures, U (F, 2) and u_P (2,) finite [u_N, u_T] columns of gp.encode; "
                         f"got W {W.shape}, U {U.shape}, u_P {u_P.shape}")
    XP = torch.from_numpy(_check_inputs(np.column_stack([W, np.broadcast_to(u_P, (len(W), 2))]), K, "W rows"))
    W, U = XP[:, :K], torch.from_numpy(U)                                                # (M, K), (F, 2)
    X, P, cfg = torch.from_numpy(gp.X), _params(gp), gp.config
    n, M, F = X.shape[0], W.shape[0], U.shape[0]
    cov = torch.empty(M, F, XA.shape[0], dtype=DTYPE)
    own = torch.empty(M, F, dtype=DTYPE)
    var = torch.empty(M, F, dtype=DTYPE)
    with torch.no_grad():
        VA = torch.linalg.solve_triangular(gp.L, _kernel(cfg, P, X, XA, K), upper=False)     # (n, |A|)
        VP = torch.linalg.solve_triangular(gp.L, _kernel(cfg, P, X, XP, K), upper=False).T   # (M, n) row m: V_P[:, m]
        Z0 = torch.cat([W[:1].expand(F, K), U], dim=1)                                     # (F, d) one mixture's z
        prior_var = _prior_var(cfg, P, Z0, K)                                              # (F,) k(z, z): u only
        own_prior = _kernel(cfg, P, Z0, XP[:1], K)[:, 0]                                   # (F,) k(z_mf, p_m): u only
        mb = max(1, block // F)                                                            # mixtures per block
        for s in range(0, M, mb):
            Wb = W[s:s + mb]                                                               # (m, K)
            m = Wb.shape[0]
            VZ = torch.linalg.solve_triangular(gp.L.T, _kernel_grid(cfg, P, Wb, U, X, K).reshape(m * F, n),
                                               upper=True, left=False).reshape(m, F, n)    # (m, F, n) (L \ K(X, z))^T
            cov[s:s + m] = _kernel_grid(cfg, P, Wb, U, XA, K) - VZ @ VA                    # eq. 2.24 off the diagonal
            own[s:s + m] = own_prior - (VZ * VP[s:s + m, None, :]).sum(2)                 # eq. 2.24, paired
            var[s:s + m] = (prior_var - (VZ * VZ).sum(2)).clamp_min(0.0)                  # eq. 2.24 diagonal, >= 0
    y2 = gp.y_scale ** 2
    return (y2 * cov).numpy(), (y2 * own).numpy(), (y2 * var).numpy()
