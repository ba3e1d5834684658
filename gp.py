"""
gp.py -- exact Gaussian-process regression of a run's loss over data mixtures and fidelities.

A run is the row x = [w_1 .. w_K, u_N, u_T] (float64, d = K + 2): the mixture w on the simplex, and log
model scale and log steps mapped to [0, 1] by the search space's bounds (`encode`). In order:
  1. encode, encode_fidelities  the input contract
  2. kernels                    RBF and Matern-5/2 with ARD lengthscales [RW sec. 4.2]; the spectral
                                mixture [WA eq. 12] and GPyTorch's product-of-1-D variant
  3. the model                  a mixture effect shared by the scales plus per-scale deviations (intrinsic
                                coregionalization over the discrete scales [BO; AL sec. 4]), run-level
                                noise, and a scaling-law mean [HO] integrated out [RW sec. 2.7]
  4. hyperparameters            bounds and LogNormal priors (BoTorch's [HV]; the deviations' [CH])
  5. marginal likelihood        [RW Alg. 2.1, eq. 5.9], Cholesky with escalating jitter
  6. fit_gp                     MAP hyperparameters by L-BFGS-B from seeded starts
  7. posterior                  predict, cross_covariance(_grid) [RW eq. 2.24], directional_derivative [SO]
y is standardized before fitting (as sklearn's normalize_y): hyperparameters and the log marginal
likelihood are in those units, everything section 7 returns is in y's own units.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.linalg.lapack
import scipy.optimize
import torch

# [RW] C. E. Rasmussen & C. K. I. Williams, Gaussian Processes for Machine Learning, MIT Press 2006.
# [WA] A. G. Wilson & R. P. Adams, Gaussian Process Kernels for Pattern Discovery and Extrapolation,
#      ICML 2013.
# [HO] J. Hoffmann et al., Training Compute-Optimal Large Language Models, 2022.
# [KA] J. Kaplan et al., Scaling Laws for Neural Language Models, 2020.
# [BO] E. V. Bonilla, K. M. A. Chai & C. K. I. Williams, Multi-task Gaussian Process Prediction,
#      NeurIPS 2008.
# [AL] M. A. Alvarez, L. Rosasco & N. D. Lawrence, Kernels for Vector-Valued Functions: a Review,
#      Foundations and Trends in Machine Learning 4(3), 2012.
# [HV] C. Hvarfner, E. O. Hellsten & L. Nardi, Vanilla Bayesian Optimization Performs Great in High
#      Dimensions, ICML 2024 (BoTorch's priors since v0.12).
# [CH] Y. Chung, S. Rabe-Hesketh, V. Dorie, A. Gelman & J. Liu, A Nondegenerate Penalized Likelihood
#      Estimator for Variance Parameters in Multilevel Models, Psychometrika 78(4), 2013.
# [SO] E. Solak, R. Murray-Smith, W. E. Leithead, D. J. Leith & C. E. Rasmussen, Derivative
#      Observations in Gaussian Process Models of Dynamic Systems, NeurIPS 2003.
# scikit-learn's gaussian_process/_gpr.py is the line-by-line model for Alg. 2.1.

DTYPE = torch.float64
NOISE_FLOOR = 1e-6      # smallest noise variance, standardized units
JITTER_TRIES = 4        # after a plain attempt, + 1e-8 10^k mean(diag K), k = 0..3 (GPyTorch's retries)
PENALTY = 1e10          # the objective where every Cholesky attempt fails: L-BFGS-B backtracks
SAME_SCALE = 1e-9       # |u_N - u_N'| <= this is one model scale (encode maps a scale to one float)
LAW_VARIANCE = 100.0    # prior variance s_b^2 of the scaling law's E, A, B, standardized units (section 3)

KERNELS = ("rbf", "matern52", "sm", "sm_product")
STRUCTURES = ("joint", "product", "additive")
MEANS = ("constant", "scaling_law")


# ----------------------------------------------------------------------------------------------
# 1. input encoding (the contract)

def _unit_log(v, lo, hi, name):
    """(log v - log lo) / (log hi - log lo), or 0 when hi == lo."""
    v = np.asarray(v, dtype=np.float64)
    if not np.all(np.isfinite(v)) or np.any(v <= 0) or not 0 < lo <= hi < math.inf:
        raise ValueError(f"encode: {name} values and bounds must be finite and > 0 with min <= max; "
                         f"got bounds ({lo}, {hi})")
    if hi == lo:
        return np.zeros_like(v)
    return (np.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))


def encode_fidelities(scales, steps, bounds):
    """U (F, 2) = [u_N, u_T] of F (scale, steps) pairs (arrays or scalars, broadcast against each other),
    bounds = (scale_min, scale_max, steps_min, steps_max): the fidelity columns of `encode`."""
    scales, steps = np.broadcast_arrays(np.asarray(scales, dtype=np.float64),
                                        np.asarray(steps, dtype=np.float64))
    s_min, s_max, t_min, t_max = (float(b) for b in bounds)
    return np.column_stack([_unit_log(scales.ravel(), s_min, s_max, "scale"),
                            _unit_log(steps.ravel(), t_min, t_max, "steps")])


def encode(weights, scale, steps, bounds):
    """X (n, K+2) = [w, u_N, u_T] from weights (n, K) or (K,), scale and steps (n,) or scalars."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))                      # (n, K)
    n = w.shape[0]
    U = encode_fidelities(np.broadcast_to(scale, (n,)), np.broadcast_to(steps, (n,)), bounds)
    return np.column_stack([w, U])


# ----------------------------------------------------------------------------------------------
# 2. kernels. Each takes A (n, p), B (m, p) and returns (n, m), or with paired=True (n,) for the row
#    pairs (a_i, b_i) (n == m). k(x, x) = 1: the amplitudes live in the model (section 3).

def _scaled_sqdist(A, B, ls, paired=False):
    """r^2 = sum_p ((a_p - b_p) / l_p)^2. All pairs as |a|^2 + |b|^2 - 2 a.b (one matrix product),
    clamped at 0 against round-off outside autograd: derivatives are those of the exact expression,
    second ones at a = b included."""
    A, B = A / ls, B / ls
    if paired:
        return ((A - B) ** 2).sum(1)
    d2 = torch.addmm((A * A).sum(1)[:, None] + (B * B).sum(1)[None, :], A, B.T, alpha=-2.0)
    with torch.no_grad():
        d2.clamp_min_(0.0)
    return d2


class _Matern52(torch.autograd.Function):
    """k(r^2) = (1 + s + s^2 / 3) e^-s, s = sqrt(5 r^2), as a function of r^2: its slope
    dk/dr^2 = -5/6 (1 + s) e^-s is finite at r = 0, where autograd through the square root is not."""

    @staticmethod
    def forward(ctx, d2):
        s = d2.mul(5.0).sqrt_()
        e = s.neg().exp_()
        ctx.save_for_backward(d2, (s + 1.0).mul_(e).mul_(-5.0 / 6.0))                # r^2, dk/dr^2
        return (s / 3.0).add_(1.0).mul_(s).add_(1.0).mul_(e)

    @staticmethod
    def backward(ctx, grad):
        d2, slope = ctx.saved_tensors
        if torch.is_grad_enabled():          # create_graph: this derivative will be differentiated
            slope = _Matern52Slope.apply(d2)
        return grad * slope


class _Matern52Slope(torch.autograd.Function):
    """dk/dr^2 = -5/6 (1 + s) e^-s of the Matern-5/2, with its own slope d^2k/d(r^2)^2 = 25/12 e^-s."""

    @staticmethod
    def forward(ctx, d2):
        ctx.save_for_backward(d2)
        s = d2.mul(5.0).sqrt_()
        return (s + 1.0).mul_(s.neg().exp_()).mul_(-5.0 / 6.0)

    @staticmethod
    def backward(ctx, grad):
        (d2,) = ctx.saved_tensors
        return grad * d2.mul(5.0).sqrt_().neg_().exp_().mul_(25.0 / 12.0)


def rbf(A, B, ls, paired=False):
    """k = exp(-r^2 / 2), r the ARD distance.  [RW eq. 4.9, 5.2]"""
    return _scaled_sqdist(A, B, ls, paired).mul_(-0.5).exp_()


def matern52(A, B, ls, paired=False):
    """k = (1 + sqrt5 r + 5 r^2 / 3) exp(-sqrt5 r), r the ARD distance.  [RW eq. 4.17]"""
    return _Matern52.apply(_scaled_sqdist(A, B, ls, paired))


def spectral_mixture(A, B, weights, ls, means, paired=False):
    """Wilson & Adams (2013) eq. 12, a SUM over components q of a PRODUCT over dimensions p,
        k(tau) = sum_q w_q prod_p exp(-2 pi^2 tau_p^2 v_qp) cos(2 pi tau_p mu_qp),
    with lengthscales l_qp = 1 / (2 pi sqrt(v_qp)): exp(-2 pi^2 tau^2 v) = exp(-tau^2 / (2 l^2)).
    k(0) = sum_q w_q. weights (Q,), ls (Q, p), means (Q, p) (frequencies, cycles per unit of w)."""
    tau = A - B if paired else A[:, None, :] - B[None, :, :]                     # (n, [m,] p)
    k = 0.0
    for q in range(weights.shape[0]):
        envelope = torch.exp(-0.5 * _scaled_sqdist(A, B, ls[q], paired))        # prod_p e^(-tau^2/2l^2)
        k = k + weights[q] * envelope * torch.cos(2 * math.pi * tau * means[q]).prod(-1)
    return k


def spectral_mixture_product(A, B, weights, ls, means, paired=False):
    """GPyTorch's SpectralMixtureKernel (since its PR #1392): a PRODUCT over dimensions of 1-D spectral
    mixtures sharing the weights, k(tau) = prod_p sum_q w_q exp(-tau_p^2 / 2 l_qp^2) cos(2 pi tau_p mu_qp),
    so k(0) = (sum_q w_q)^p. NOT eq. 12 of Wilson & Adams; offered under its own name."""
    tau = A - B if paired else A[:, None, :] - B[None, :, :]                     # (n, [m,] p)
    per_dim = 0.0
    for q in range(weights.shape[0]):
        per_dim = per_dim + (weights[q] * torch.exp(-0.5 * (tau / ls[q]) ** 2)
                             * torch.cos(2 * math.pi * tau * means[q]))
    return per_dim.prod(-1)


def _group_kernel(kind, A, B, P, prefix, paired=False):
    """One factor of the model: `kind` on the columns in A, B with the parameters named prefix_*."""
    if kind == "rbf":
        return rbf(A, B, P[prefix + "_lengthscale"], paired)
    if kind == "matern52":
        return matern52(A, B, P[prefix + "_lengthscale"], paired)
    w = P["sm_weights"] / P["sm_weights"].sum()                                  # k(0) = 1
    sm = spectral_mixture if kind == "sm" else spectral_mixture_product
    return sm(A, B, w, P["sm_lengthscale"], P["sm_means"], paired)


# ----------------------------------------------------------------------------------------------
# 3. the model. Standardized y = f(x) + e_run + e. With structure "product" f has the covariance
#      k(x, x') = k_w(w, w') k_T(u_T, u_T') [s^2 k_N(u_N, u_N') + s_d^2 1[N = N']]     mixture effect
#               + s_l^2 1[N = N']                                                    level of a scale
#               + h(u)^T S h(u')                                                     scaling law
#    The bracket is intrinsic coregionalization over the discrete scales [BO eq. 2; AL sec. 4.2], with
#    the scales' coregionalization matrix B = s^2 K_N + s_d^2 I: a mixture effect shared by the scales
#    (correlated by k_N) plus a deviation of each scale of its own, so that [AL eq. 21]
#      corr(f_N(w), f_N'(w)) = s^2 k_N(u_N, u_N') / (s^2 + s_d^2),   s_d^2 = q s^2, q fitted:
#    small runs inform the target only as far as the scales agree with each other, and an unseen scale
#    (the target before its first run) has a level of prior sd s_l beyond the scaling law's.
#    scale_deviation=False leaves both deviation terms out.
#    "joint": one ARD kernel k_x on all d columns replaces k_w k_N k_T: s^2 k_x(x, x') (1 + q 1[N = N']).
#    "additive": + s_f^2 k_fid([u_N, u_T], [u_N', u_T']) (k_N's kind), a scale/steps effect of its own.
#    noise: e ~ N(0, sigma^2) per observation, e_run ~ N(0, sigma_run^2) shared by the checkpoints of one
#      run (a seed's offset persists through a run): covariance sigma^2 I + sigma_run^2 R, R_ij = 1 when
#      observations i and j come from one run.
#    mean "constant": 0 on standardized y (the sample mean).
#    mean "scaling_law": h(u)^T beta, h(u) = [1, e^(-a_N u_N), e^(-a_T u_T), e^(-a_N u_N - a_T u_T)].
#      The first three are L(N, D) = E + A / N^alpha + B / D^beta [HO eq. 10] in the encoded inputs:
#      A / N^alpha = [A N_min^-alpha] e^(-[alpha log(N_max / N_min)] u_N), so a_N = alpha log(N_max / N_min),
#      likewise a_T for D. The fourth is the coupling C / (N^alpha D^beta), the lowest-order term by which
#      the learning curve may be steeper at larger N (the law of [KA] is not additive in N and D).
#      beta ~ N(0, S), S = diag(s_b^2, s_b^2, s_b^2, s_C^2), is integrated out [RW sec. 2.7, eq. 2.39]:
#      the GP with kernel k + h^T S h, whose posterior [RW eq. 2.41-2.42] carries the law's uncertainty.

@dataclass(frozen=True)
class Config:
    """The model options, each declared here once (section 3 says what they do). The defaults are
    chosen by bench/cross_scale.py, see bench/README-gp.md."""
    structure: str = "product"       # "joint" | "product" | "additive"
    kernel_w: str = "matern52"       # on the weights (on every column with "joint")
    kernel_N: str = "rbf"            # on u_N: "rbf" | "matern52"
    kernel_T: str = "rbf"            # on u_T: "rbf" | "matern52"
    mean: str = "scaling_law"        # "constant" | "scaling_law"
    scale_deviation: bool = True     # the per-scale deviation terms s_d^2, s_l^2
    sm_components: int = 2           # components Q of a spectral mixture kernel
    priors: bool = True              # MAP with section 4's priors; False: maximum likelihood
    run_noise: bool = True           # the noise offset shared by the checkpoints of one run

    def __post_init__(self):
        if (self.structure not in STRUCTURES or self.mean not in MEANS
                or not {self.kernel_w, self.kernel_N, self.kernel_T} <= set(KERNELS)):
            raise ValueError(f"unknown model option: structure in {STRUCTURES}, mean in {MEANS}, "
                             f"kernels in {KERNELS}")
        if self.structure == "joint" and self.kernel_w not in ("rbf", "matern52"):
            raise ValueError("structure='joint' needs kernel_w 'rbf' or 'matern52'")
        if {self.kernel_N, self.kernel_T} - {"rbf", "matern52"}:
            raise ValueError("spectral mixture kernels are offered on the weights only: "
                             "set kernel_N, kernel_T to 'rbf' or 'matern52'")


def _basis(P, U):
    """h(u) (n, 4) = [1, N^-alpha, D^-beta, N^-alpha D^-beta] in the encoded U = [u_N, u_T] (n, 2)."""
    power_N = torch.exp(-P["mean_alpha_N"] * U[:, 0])
    power_T = torch.exp(-P["mean_alpha_T"] * U[:, 1])
    return torch.stack([torch.ones_like(power_N), power_N, power_T, power_N * power_T], dim=1)


def _fidelity_terms(cfg, P, UA, UB, paired):
    """The model's terms on the fidelity columns U = [u_N, u_T]: (factor, offset) with
    k = k_w * factor + offset (k_x in place of k_w with "joint"); (n, m), (n,) if paired, or scalars."""
    if cfg.scale_deviation:
        gap = UA[:, 0] - UB[:, 0] if paired else UA[:, :1] - UB[:, 0]
        same = (gap.abs() <= SAME_SCALE).to(DTYPE)                                 # 1[N = N']
    if cfg.structure == "joint":
        factor = P["amplitude"] * (1.0 + P["scale_deviation"] * same if cfg.scale_deviation else 1.0)
    else:
        k_N = _group_kernel(cfg.kernel_N, UA[:, :1], UB[:, :1], P, "N", paired)
        if cfg.scale_deviation:
            k_N = k_N + P["scale_deviation"] * same                                # B[N, N'] / s^2
        factor = P["amplitude"] * _group_kernel(cfg.kernel_T, UA[:, 1:], UB[:, 1:], P, "T", paired) * k_N
    offset = torch.zeros((), dtype=DTYPE)
    if cfg.structure == "additive":
        offset = offset + P["fid_amplitude"] * _group_kernel(cfg.kernel_N, UA, UB, P, "fid", paired)
    if cfg.scale_deviation:
        offset = offset + P["level_deviation"] * same                              # s_l^2 1[N = N']
    if cfg.mean == "scaling_law":
        s = torch.tensor(LAW_VARIANCE, dtype=DTYPE)
        S = torch.stack([s, s, s, P["mean_coupling"]])                             # diag(S)
        hA, hB = _basis(P, UA), _basis(P, UB)
        offset = offset + ((hA * S * hB).sum(1) if paired else (hA * S) @ hB.T)   # h^T S h'
    return factor, offset


def _distinct(A):
    """(rows, index) with rows[index] == A exactly: A's distinct rows (found by sorting a projection of
    the rows, then verified), or (A, None) if they are all distinct or A requires grad (a derivative in
    A is wanted: its rows may move apart)."""
    if A.requires_grad:
        return A, None
    _, index = torch.unique(A @ torch.arange(2.0, A.shape[1] + 2, dtype=DTYPE).sqrt(), return_inverse=True)
    rows = A.new_empty(int(index.max()) + 1 if len(A) else 0, A.shape[1]).index_copy_(0, index, A)
    return (rows, index) if len(rows) < len(A) and torch.equal(rows[index], A) else (A, None)


def _on_distinct_rows(terms, A, B):
    """terms(A, B) -> tuple of (n, m) tensors (or scalars), evaluated on the distinct rows of A and B
    and gathered back: a search's rows repeat (a run's checkpoints share w, fidelities are few), so the
    elementwise work shrinks to the distinct pairs."""
    (rows_A, index_A), (rows_B, index_B) = _distinct(A), _distinct(B)
    out = tuple(terms(rows_A, rows_B))
    if index_B is not None:          # columns first, on the small table; then whole rows (contiguous)
        out = tuple(t.index_select(1, index_B) if t.ndim == 2 else t for t in out)
    if index_A is not None:
        out = tuple(t.index_select(0, index_A) if t.ndim == 2 else t for t in out)
    return out


def _kernel(cfg, P, A, B, K, paired=False):
    """Prior covariance of f between rows A (n, d) and B (m, d): (n, m), or (n,) for the pairs
    (a_i, b_i) with paired=True (k(x, x) with B = A); standardized units, without noise."""
    cols = slice(None) if cfg.structure == "joint" else slice(0, K)
    if paired:
        factor, offset = _fidelity_terms(cfg, P, A[:, K:], B[:, K:], True)
        k_w = _group_kernel(cfg.kernel_w, A[:, cols], B[:, cols], P, "w", True)
    else:
        factor, offset = _on_distinct_rows(lambda a, b: _fidelity_terms(cfg, P, a, b, False),
                                           A[:, K:], B[:, K:])
        (k_w,) = _on_distinct_rows(lambda a, b: (_group_kernel(cfg.kernel_w, a, b, P, "w"),),
                                   A[:, cols], B[:, cols])
    if torch.is_grad_enabled():
        return torch.addcmul(offset, k_w, factor)                                 # k_w factor + offset
    return k_w.mul_(factor).add_(offset)           # the same in place: no (n, m) temporary


# ----------------------------------------------------------------------------------------------
# 4. hyperparameters, bounds in natural units, priors on the natural value (as BoTorch):
#      lengthscales ~ LogNormal(sqrt2 + log(d) / 2, sqrt3), noise and run_noise ~ LogNormal(-4, 1)  [HV]
#      q = s_d^2 / s^2 ~ LogNormal(DEVIATION_PRIOR), s_l^2 ~ LogNormal(LEVEL_PRIOR)
#    The deviations' priors are boundary-avoiding [CH]: their density vanishes at 0, so a fit on one or
#    two scales (where the data cannot tell how far the scales agree, and the prior decides) does not
#    collapse to perfect transfer, while many agreeing scales still walk q down to near 0; and no more
#    than a moderate deviation is assumed without evidence. Amplitudes, spectral weights and frequencies,
#    the law's variances and exponents: flat within the bounds. priors=False maximizes the plain log
#    marginal likelihood, but the priors still give the starting points.

# A LogNormal(mu, sigma) density of x is, in z = log x (what L-BFGS-B moves), a normal density centred at
# the mode mu - sigma^2 with sd sigma: these state the mode and sigma (chosen by bench/cross_scale.py).
DEVIATION_PRIOR = (math.log(0.25) + 2.0 ** 2, 2.0)    # log q ~ N(log 0.25, 2^2): corr 0.8 at the mode
LEVEL_PRIOR = (math.log(0.0025) + 2.0 ** 2, 2.0)      # log s_l^2 ~ N(log 0.05^2, 2^2): sd 0.05 at the mode


class Spec(NamedTuple):
    """One hyperparameter: name and shape, whether theta holds its log, natural-unit bounds, and a
    LogNormal prior (mu, sigma) of its natural value, or None (flat within the bounds)."""
    name: str
    shape: tuple
    log: bool
    lower: float
    upper: float
    prior: tuple = None


def _specs(cfg, d, K):
    ls_prior, noise_prior = (math.sqrt(2.0) + 0.5 * math.log(d), math.sqrt(3.0)), (-4.0, 1.0)
    lengthscales = lambda prefix, p: Spec(prefix + "_lengthscale", (p,), True, 1e-2, 1e5, ls_prior)
    specs = [Spec("noise", (), True, NOISE_FLOOR, 10.0, noise_prior), Spec("amplitude", (), True, 1e-6, 1e5)]
    if cfg.run_noise:
        specs.append(Spec("run_noise", (), True, NOISE_FLOOR, 10.0, noise_prior))
    if cfg.kernel_w in ("rbf", "matern52"):
        specs.append(lengthscales("w", d if cfg.structure == "joint" else K))
    else:
        Q = cfg.sm_components
        specs += [Spec("sm_weights", (Q,), True, 1e-3, 1e3),
                  Spec("sm_lengthscale", (Q, K), True, 1e-2, 1e5, ls_prior),
                  Spec("sm_means", (Q, K), False, 0.0, 5.0)]
    if cfg.structure != "joint":
        specs += [lengthscales("N", 1), lengthscales("T", 1)]
    if cfg.structure == "additive":
        specs += [Spec("fid_amplitude", (), True, 1e-6, 1e5), lengthscales("fid", 2)]
    if cfg.scale_deviation:
        specs += [Spec("scale_deviation", (), True, 1e-4, 1e2, DEVIATION_PRIOR),
                  Spec("level_deviation", (), True, 1e-6, 1e2, LEVEL_PRIOR)]
    if cfg.mean == "scaling_law":
        specs += [Spec("mean_coupling", (), True, 1e-6, 1e4),
                  Spec("mean_alpha_N", (), True, 1e-2, 1e2), Spec("mean_alpha_T", (), True, 1e-2, 1e2)]
    return specs


def _law_exponents(U, y):
    """The scaling law's exponents (a_N, a_T) for fit_gp to hold fixed: least squares of h(u)^T beta alone
    to the standardized y (n,), beta linear for given exponents (variable projection, Golub & Pereyra
    1973), on a grid of log a over [log 0.1, log 10] polished by Nelder-Mead. (Fitted with the kernel's
    hyperparameters they took L-BFGS-B several times the evaluations: bench/bench_gp.py, README-gp.md.)
    An exponent whose column holds fewer than 3 distinct values (2 levels fit any exponent) is 1.
    Returns the exponents (2,) and the mean squared residual (the variance the kernel is left with)."""
    U_t = torch.from_numpy(U)
    identified = np.array([len(np.unique(U[:, j])) >= 3 for j in (0, 1)])
    exponents = lambda log_a: np.where(identified, np.exp(np.clip(log_a, math.log(1e-2), math.log(1e2))), 1.0)

    def rss(log_a):
        a = torch.from_numpy(exponents(log_a))
        H = _basis({"mean_alpha_N": a[0], "mean_alpha_T": a[1]}, U_t).numpy()          # (n, 4)
        return float(((H @ np.linalg.lstsq(H, y, rcond=None)[0] - y) ** 2).sum())
    grid = np.linspace(math.log(0.1), math.log(10.0), 21)
    start = min(([a, b] for a in grid for b in grid), key=rss)
    best = scipy.optimize.minimize(rss, start, method="Nelder-Mead")
    return exponents(best.x), best.fun / len(y)


def _unpack(theta, specs):
    """Flat theta (torch) -> dict of natural-unit tensors (exp of the log-parameterized ones)."""
    P, i = {}, 0
    for spec in specs:
        size = math.prod(spec.shape)
        v = theta[i:i + size].reshape(spec.shape)
        P[spec.name] = torch.exp(v) if spec.log else v
        i += size
    return P


def _pack(P, specs):
    """dict of natural-unit values -> flat numpy theta."""
    parts = [np.broadcast_to(np.asarray(P[s.name], dtype=np.float64), s.shape).ravel() for s in specs]
    return np.concatenate([np.log(v) if s.log else v for s, v in zip(specs, parts)])


def _bounds(specs):
    return [(math.log(s.lower), math.log(s.upper)) if s.log else (s.lower, s.upper)
            for s in specs for _ in range(math.prod(s.shape))]


def _log_prior(P, specs, cfg):
    """sum of the LogNormal(mu, sigma) log-densities of the natural parameters x:
    -log x - log(sigma sqrt(2 pi)) - (log x - mu)^2 / (2 sigma^2); 0 with priors=False."""
    lp = torch.zeros((), dtype=DTYPE)
    for s in specs:
        if cfg.priors and s.prior is not None:
            (mu, sigma), z = s.prior, torch.log(P[s.name])
            lp = lp + (-z - math.log(sigma * math.sqrt(2 * math.pi)) - (z - mu) ** 2 / (2 * sigma ** 2)).sum()
    return lp


def _initial_theta(specs, rng, first, cfg, residual=1.0):
    """Start 0: the priors' modes (BoTorch's initial lengthscale), amplitudes the variance left by the
    mean (additive: 0.1 and 1 times it), spectral means spread over [0, 1], scaling-law exponents 1.
    Later starts: draws from the priors, log-uniform within the bounds where there is none (exponents:
    log-uniform in [0.1, 10])."""
    P = {}
    for s in specs:
        lo, hi = s.lower, s.upper
        if s.name.startswith("mean_alpha"):
            lo, hi = (1.0, 1.0) if first else (0.1, 10.0)
        if first and s.name in ("noise", "run_noise"):
            v = np.full(s.shape, min(math.exp(s.prior[0] - s.prior[1] ** 2), 0.05 * residual))
        elif first and s.prior is not None:
            v = np.full(s.shape, math.exp(s.prior[0] - s.prior[1] ** 2))             # LogNormal mode
        elif first and s.name == "sm_means":
            v = np.broadcast_to(np.linspace(0.0, 1.0, s.shape[0])[:, None], s.shape)
        elif first and s.name in ("amplitude", "fid_amplitude"):
            v = np.full(s.shape, (0.1 if s.name == "amplitude" and cfg.structure == "additive" else 1.0)
                        * max(residual, 1e-4))
        elif first:
            v = np.ones(s.shape)
        elif s.prior is not None:
            v = np.exp(rng.normal(s.prior[0], s.prior[1], size=s.shape))
        elif s.log:
            v = np.exp(rng.uniform(math.log(lo), math.log(hi), size=s.shape))
        else:
            v = rng.uniform(lo, hi, size=s.shape)
        P[s.name] = np.clip(v, s.lower, s.upper)
    return _pack(P, specs)


# ----------------------------------------------------------------------------------------------
# 5. Cholesky with escalating jitter, and the log marginal likelihood

def _cholesky(Kmat):
    """Lower L with L L^T = Kmat + jitter I, and the jitter: first none, then 1e-8 10^k mean(diag Kmat),
    k = 0..JITTER_TRIES-1. (None, None) if every attempt fails. Kmat is not modified."""
    scale = Kmat.diagonal().mean().abs().item()
    for k in range(JITTER_TRIES + 1):
        jitter = 0.0 if k == 0 else 1e-8 * 10 ** (k - 1) * scale
        A = Kmat
        if jitter:
            A = Kmat.clone()
            A.diagonal().add_(jitter)
        L, info = torch.linalg.cholesky_ex(A)
        if info.item() == 0 and torch.isfinite(L.diagonal()).all():     # a NaN/inf in K reaches diag L
            return L, jitter
    return None, None


def _lml_terms(cfg, P, X, y, K, R):
    """R&W Alg. 2.1 on standardized y: (lml, L, alpha, jitter, K_f), or None if Cholesky fails.
    R (n, n): 1 where two observations come from one run. K_f = K(X, X) without noise keeps its
    autograd graph (for eq. 5.9)."""
    Kf = _kernel(cfg, P, X, X, K)                                                   # (n, n) K(X, X)
    Kmat = Kf.detach().clone()
    if cfg.run_noise:
        Kmat.add_(R, alpha=P["run_noise"].item())                                   # + sigma_run^2 R
    Kmat.diagonal().add_(P["noise"].item())                                         # + sigma^2 I
    L, jitter = _cholesky(Kmat)                                                     # Alg. 2.1 line 2
    if L is None:
        return None
    alpha = torch.cholesky_solve(y[:, None], L)[:, 0]                               # line 3
    lml = -0.5 * y.dot(alpha) - torch.log(L.diagonal()).sum() - 0.5 * len(y) * math.log(2 * math.pi)
    return lml.item(), L, alpha, jitter, Kf                                          # line 7, eq. 2.30


def _objective(theta_np, cfg, specs, X, y, K, R):
    """-(log p(y | theta) + log p(theta)) and its exact gradient. R&W eq. 5.9:
        d lml / d theta_j = 1/2 tr((alpha alpha^T - K^-1) dK / dtheta_j) = sum(G * dK / dtheta_j),
    G formed once, and autograd contracts it with the kernel's elementwise derivatives: one backward
    pass from K_f with gradient G. A failed factorization returns PENALTY with a zero gradient."""
    theta = torch.tensor(theta_np, dtype=DTYPE, requires_grad=True)
    P = _unpack(theta, specs)
    terms = _lml_terms(cfg, P, X, y, K, R)
    if terms is None:
        return PENALTY, np.zeros_like(theta_np)
    lml, L, alpha, _, Kf = terms
    # K^-1 by LAPACK potri on L in place: its lower triangle only (L's upper is 0). For symmetric dK,
    # sum(G * dK) = sum(W * dK) with W = G on the diagonal, 2 G below it and 0 above, i.e.
    # W = 1/2 alpha alpha^T - [lower triangle of K^-1, its diagonal halved]
    K_inv = torch.from_numpy(scipy.linalg.lapack.dpotri(L.numpy().T, lower=0, overwrite_c=1)[0].T)
    K_inv.diagonal().mul_(0.5)
    G = K_inv.mul_(-1.0).addr_(alpha, alpha, alpha=0.5)                                # (n, n) eq. 5.9
    log_prior = _log_prior(P, specs, cfg)
    roots, grads = [Kf, P["noise"]], [G, G.diagonal().sum()]                         # dK_f, dsigma^2 I
    if cfg.run_noise:
        roots, grads = roots + [P["run_noise"]], grads + [(G * R).sum()]            # dsigma_run^2 R
    if log_prior.requires_grad:
        roots, grads = roots + [log_prior], grads + [torch.ones((), dtype=DTYPE)]
    torch.autograd.backward(roots, grads)
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
    y_mean: float                 # standardization: standardized y = (y - y_mean) / y_scale
    y_scale: float
    hyperparameters: dict         # natural units (standardized y), numpy
    L: torch.Tensor               # (n, n) lower Cholesky factor of K + noise I + run_noise R (+ jitter I)
    alpha: torch.Tensor           # (n,) (K + noise I + run_noise R)^-1 y, standardized
    jitter: float                 # the jitter the final factorization needed (0.0 usually)
    noise_variance: float         # noise variance of one new observation (noise + run_noise), y units
    run_noise_variance: float     # the part of it shared by the checkpoints of one run, y units
    log_marginal_likelihood: float  # log p(y | theta) of the standardized y, without the prior


def _check_inputs(X, n_weights, what):
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != n_weights + 2:
        raise ValueError(f"{what} must have shape (n, n_weights + 2) = (n, {n_weights + 2}) as built by "
                         f"gp.encode; got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{what} contains NaN or inf; drop or repair those rows")
    w = X[:, :n_weights]
    off = (w < -1e-9).any(1) | (np.abs(w.sum(1) - 1.0) > 1e-6)
    if off.any():
        raise ValueError(f"{what} row {int(np.flatnonzero(off)[0])}: the first {n_weights} columns (mixture "
                         f"weights) must be >= 0 and sum to 1; renormalize with w / w.sum()")
    return X


def fit_gp(X, y, n_weights, config=Config(), *, seed=0, restarts=2, runs=None, hyperparameters=None,
           maxiter=200):
    """Fit the GP of `config` to X (n, n_weights + 2) from encode and losses y (n,) by maximizing
    log p(y | theta) + log p(theta) over log-parameters with L-BFGS-B from `restarts` starts (the
    priors' modes, then seeded draws; the best is kept). With `hyperparameters` (natural, standardized
    units, as GP.hyperparameters) nothing is optimized: the GP is conditioned on them (sklearn's
    optimizer=None). runs (n,): optional label of the training run of each observation (for run_noise);
    None: rows with the same weights and scale are one run."""
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
        raise ValueError(f"runs must have shape (n,) = ({X.shape[0]},), one run label per row of X; "
                         f"got {runs.shape}")
    R = torch.from_numpy((runs[:, None] == runs[None, :]).astype(np.float64))        # (n, n) same run
    cfg, K = config, n_weights

    # standardize y (population std, as sklearn's normalize_y; 1 if y is constant, as BoTorch's min_stdv)
    y_mean, y_scale = float(y.mean()), float(y.std())
    if not y_scale > 1e-8 * max(1.0, abs(y_mean)):
        y_scale = 1.0
    Xt, ys = torch.from_numpy(X), torch.from_numpy((y - y_mean) / y_scale)
    specs = _specs(cfg, X.shape[1], K)

    if hyperparameters is not None:
        missing = [s.name for s in specs if s.name not in hyperparameters]
        if missing:
            raise ValueError(f"hyperparameters lack {missing}; pass GP.hyperparameters of a fit with the "
                             f"same Config")
        theta = _pack(hyperparameters, specs)
    else:
        residual = 1.0                      # the variance left to the kernel: standardized y's
        if cfg.mean == "scaling_law":      # a Spec with lower == upper is held fixed by L-BFGS-B
            exponents, residual = _law_exponents(X[:, K:], ys.numpy())
            fixed = dict(zip(("mean_alpha_N", "mean_alpha_T"), exponents))
            specs = [s._replace(lower=fixed[s.name], upper=fixed[s.name]) if s.name in fixed else s
                     for s in specs]
        rng, best = np.random.default_rng(seed), None
        for r in range(max(1, restarts)):
            res = scipy.optimize.minimize(_objective, _initial_theta(specs, rng, r == 0, cfg, residual),
                                          args=(cfg, specs, Xt, ys, K, R), jac=True, method="L-BFGS-B",
                                          bounds=_bounds(specs), options={"maxiter": maxiter})
            if best is None or res.fun < best.fun:
                best = res
        theta = best.x

    with torch.no_grad():
        P = _unpack(torch.from_numpy(theta), specs)
        terms = _lml_terms(cfg, P, Xt, ys, K, R)
        if terms is None:   # only with given hyperparameters: raise the noise to 100 x the floor
            P["noise"] = torch.clamp(P["noise"], min=100 * NOISE_FLOOR)
            terms = _lml_terms(cfg, P, Xt, ys, K, R)
        if terms is None:
            raise ValueError("the kernel matrix is not positive definite even with jitter; "
                             "increase the 'noise' hyperparameter")
    lml, L, alpha, jitter, _ = terms
    run_var = float(P["run_noise"]) if cfg.run_noise else 0.0
    hyp = {k: v.numpy().copy() if v.ndim else float(v) for k, v in P.items()}
    return GP(cfg, K, X, y, y_mean, y_scale, hyp, L, alpha, float(jitter),
              (float(P["noise"]) + run_var) * y_scale ** 2, run_var * y_scale ** 2, float(lml))


# ----------------------------------------------------------------------------------------------
# 7. posterior, ORIGINAL y units

def _params(gp):
    return {k: torch.as_tensor(v, dtype=DTYPE) for k, v in gp.hyperparameters.items()}


def predict(gp, Xs, full_cov=False):
    """Latent posterior at Xs (m, d): mean (m,) and variance (m,) or covariance (m, m), y units.
    R&W Alg. 2.1 lines 4-6 / eq. 2.23-2.24 (with the scaling-law basis inside k: eq. 2.41-2.42)."""
    Xs = torch.from_numpy(_check_inputs(Xs, gp.n_weights, "Xs"))
    X, K, P, cfg = torch.from_numpy(gp.X), gp.n_weights, _params(gp), gp.config
    with torch.no_grad():
        Ks = _kernel(cfg, P, X, Xs, K)                                              # (n, m) K(X, Xs)
        mean = gp.y_mean + gp.y_scale * (Ks.T @ gp.alpha)                           # line 4
        V = torch.linalg.solve_triangular(gp.L, Ks, upper=False)                    # line 5: L \ k*
        if full_cov:
            cov = _kernel(cfg, P, Xs, Xs, K) - V.T @ V                              # eq. 2.24
            return mean.numpy(), (gp.y_scale ** 2 * cov).numpy()
        var = (_kernel(cfg, P, Xs, Xs, K, paired=True) - V.square_().sum(0)).clamp_min(0.0)  # line 6
        return mean.numpy(), (gp.y_scale ** 2 * var).numpy()


def cross_covariance(gp, XA, XZ, chunk=4096):
    """Posterior covariance Sigma_n(A, Z) (|A|, |Z|) and posterior variance at Z (|Z|,), y units:
        Sigma_n(A, Z) = K(A, Z) - K(A, X) (K + noise)^-1 K(X, Z) = K(A, Z) - V_A^T V_Z,  V = L \\ K(X, .)
    (R&W eq. 2.24 off the diagonal), Z in chunks of `chunk` columns to bound memory."""
    XA = torch.from_numpy(_check_inputs(XA, gp.n_weights, "XA"))
    XZ = torch.from_numpy(_check_inputs(XZ, gp.n_weights, "XZ"))
    X, K, P, cfg = torch.from_numpy(gp.X), gp.n_weights, _params(gp), gp.config
    cov = torch.empty(XA.shape[0], XZ.shape[0], dtype=DTYPE)
    var = torch.empty(XZ.shape[0], dtype=DTYPE)
    with torch.no_grad():
        VA = torch.linalg.solve_triangular(gp.L, _kernel(cfg, P, X, XA, K), upper=False)     # (n, |A|)
        for s in range(0, XZ.shape[0], chunk):
            Zc = XZ[s:s + chunk]
            VZ = torch.linalg.solve_triangular(gp.L, _kernel(cfg, P, X, Zc, K), upper=False)  # (n, c)
            cov[:, s:s + chunk] = _kernel(cfg, P, XA, Zc, K) - VA.T @ VZ
            var[s:s + chunk] = (_kernel(cfg, P, Zc, Zc, K, paired=True) - (VZ * VZ).sum(0)).clamp_min(0.0)
    return (gp.y_scale ** 2 * cov).numpy(), (gp.y_scale ** 2 * var).numpy()


def _kernel_grid(cfg, P, W, U, B, K):
    """Prior covariance (M, F, n) between the grid of rows z_mf = [w_m, u_f] (W (M, K) mixtures x U (F, 2)
    fidelities) and rows B (n, d). The product and additive models factor over the input groups,
        k(z_mf, b) = k_w(w_m, b_w) factor(u_f, b_u) + offset(u_f, b_u)          (section 3),
    so k_w is evaluated once per mixture (M, n) and the rest once per fidelity (F, n): n (M + F)
    evaluations instead of n M F. The joint kernel does not factor: it is evaluated on the M F rows."""
    M, F, n = W.shape[0], U.shape[0], B.shape[0]
    if cfg.structure == "joint":
        Z = torch.cat([W.repeat_interleave(F, dim=0), U.repeat(M, 1)], dim=1)     # (M F, d) mixture-major
        return _kernel(cfg, P, Z, B, K).reshape(M, F, n)
    (k_w,) = _on_distinct_rows(lambda a, b: (_group_kernel(cfg.kernel_w, a, b, P, "w"),), W, B[:, :K])
    factor, offset = _on_distinct_rows(lambda a, b: _fidelity_terms(cfg, P, a, b, False), U, B[:, K:])
    return torch.addcmul(offset, k_w[:, None, :], factor)


def cross_covariance_grid(gp, XA, W, U, u_P, block=1024):
    """cross_covariance for the GRID of measurements z_mf = [w_m, u_f]: W (M, K) mixtures x U (F, 2)
    fidelities from encode_fidelities. XA (|A|, d) rows are paired with every z; the row p_m = [w_m, u_P]
    (u_P (2,): one fidelity from encode_fidelities) with mixture m's F measurements only (the knowledge
    gradient's projection of z to the target). Returns, y units, measurement-major,
        cov (M, F, |A|) = Sigma_n(z_mf, A),  own (M, F) = Sigma_n(z_mf, p_m),  var (M, F) = Sigma_n(z_mf, z_mf),
    equal to cross_covariance on the M F rows, but faster:
      * the prior covariances come from _kernel_grid (k_w once per mixture, the rest once per fidelity);
      * V_A = L \\ K(X, A) and V_P = L \\ K(X, P) are solved once, not once per block;
      * k(z_mf, p_m) depends on f only (the same w_m in both rows, and k_w(w, w) = 1);
      * own needs one column of V_P per measurement: sum_i V_Z[i, mf] V_P[i, m], not V_Z^T V_P;
      * the triangular solve (most of the time) runs on V_Z^T = K(Z, X) L^-T, Z-major rows as torch
        stores them, in blocks of about `block` columns (whole mixtures; the size by bench/bench_gp.py)."""
    XA = torch.from_numpy(_check_inputs(XA, gp.n_weights, "XA"))
    K = gp.n_weights
    W, U, u_P = (np.asarray(v, dtype=np.float64) for v in (W, U, u_P))
    if W.ndim != 2 or W.shape[1] != K or U.ndim != 2 or U.shape[1] != 2 or u_P.shape != (2,) \
            or not np.isfinite(U).all() or not np.isfinite(u_P).all():
        raise ValueError(f"W must be (M, {K}) mixtures, U (F, 2) and u_P (2,) finite [u_N, u_T] from "
                         f"gp.encode_fidelities; got W {W.shape}, U {U.shape}, u_P {u_P.shape}")
    XP = np.column_stack([W, np.broadcast_to(u_P, (len(W), 2))])
    XP = torch.from_numpy(_check_inputs(XP, K, "W rows"))                              # (M, d)
    W, U = XP[:, :K], torch.from_numpy(U)                                             # (M, K), (F, 2)
    X, P, cfg = torch.from_numpy(gp.X), _params(gp), gp.config
    n, M, F = X.shape[0], W.shape[0], U.shape[0]
    cov = torch.empty(M, F, XA.shape[0], dtype=DTYPE)
    own = torch.empty(M, F, dtype=DTYPE)
    var = torch.empty(M, F, dtype=DTYPE)
    with torch.no_grad():
        VA = torch.linalg.solve_triangular(gp.L, _kernel(cfg, P, X, XA, K), upper=False)     # (n, |A|)
        VP = torch.linalg.solve_triangular(gp.L, _kernel(cfg, P, X, XP, K), upper=False).T   # (M, n)
        Z0 = torch.cat([W[:1].expand(F, K), U], dim=1)                                 # (F, d) one mixture
        prior_var = _kernel(cfg, P, Z0, Z0, K, paired=True)                          # (F,) k(z, z)
        own_prior = _kernel(cfg, P, Z0, XP[:1], K)[:, 0]                               # (F,) k(z_mf, p_m)
        mb = max(1, block // F)                                                        # mixtures per block
        for s in range(0, M, mb):
            m = min(mb, M - s)
            Kz = _kernel_grid(cfg, P, W[s:s + m], U, X, K).reshape(m * F, n)
            VZ = torch.linalg.solve_triangular(gp.L.T, Kz, upper=True, left=False).reshape(m, F, n)
            cov[s:s + m] = _kernel_grid(cfg, P, W[s:s + m], U, XA, K) - VZ @ VA            # eq. 2.24
            own[s:s + m] = own_prior - (VZ * VP[s:s + m, None, :]).sum(2)
            var[s:s + m] = (prior_var - (VZ * VZ).sum(2)).clamp_min(0.0)
    y2 = gp.y_scale ** 2
    return (y2 * cov).numpy(), (y2 * own).numpy(), (y2 * var).numpy()


def directional_derivative(gp, X, V):
    """Posterior of the directional derivative D_v f(x) = v . grad_x f(x) at rows X (m, d) along
    directions V (m, d), y units: mean (m,) and variance (m,). A direction moves weight on the simplex:
    its weights sum to 0 and its u_N, u_T columns are 0. The derivative of a GP is a GP [RW sec. 9.4; SO]:
        mean = D_v k(x, X) alpha,   var = D_v D_v' k(x, x')|_(x' = x) - ||L^-1 D_v k(X, x)||^2,
    the kernel's derivatives by torch autograd (exact)."""
    X = torch.from_numpy(_check_inputs(X, gp.n_weights, "X"))
    K, V = gp.n_weights, np.asarray(V, dtype=np.float64)
    if V.shape != X.shape or not np.isfinite(V).all() or np.any(V[:, K:] != 0) \
            or np.any(np.abs(V[:, :K].sum(1)) > 1e-9 * (1.0 + np.abs(V).max())):
        raise ValueError(f"V must be (m, d) = {tuple(X.shape)} finite directions with weights summing to "
                         f"0 and zero u_N, u_T columns, e.g. e_j - w; got shape {V.shape}")
    V = torch.from_numpy(V)
    Xtr, P, cfg = torch.from_numpy(gp.X), _params(gp), gp.config
    s = torch.zeros(X.shape[0], dtype=DTYPE, requires_grad=True)
    t = torch.zeros(X.shape[0], dtype=DTYPE, requires_grad=True)
    # D_v k(x_i, X_j) = d K_ij / d s_i of K = k(X + s V, X_train): forward mode by two reverse passes
    Ks = _kernel(cfg, P, X + s[:, None] * V, Xtr, K)                                    # (m, n)
    probe = torch.zeros_like(Ks, requires_grad=True)
    (ds,) = torch.autograd.grad((Ks * probe).sum(), s, create_graph=True)     # sum_j probe_ij dK_ij/ds_i
    (dK,) = torch.autograd.grad(ds.sum(), probe)                                        # (m, n)
    # D_v D_v' k(x_i, x_i) = d^2 k(x_i + s_i v_i, x_i + t_i v_i) / ds_i dt_i at s = t = 0
    kxx = _kernel(cfg, P, X + s[:, None] * V, X + t[:, None] * V, K, paired=True)     # (m,)
    (ds,) = torch.autograd.grad(kxx.sum(), s, create_graph=True)
    (dsdt,) = torch.autograd.grad(ds.sum(), t)
    with torch.no_grad():
        mean = dK @ gp.alpha
        Vd = torch.linalg.solve_triangular(gp.L, dK.T, upper=False)                     # (n, m)
        var = (dsdt - (Vd * Vd).sum(0)).clamp_min(0.0)
    return (gp.y_scale * mean).numpy(), (gp.y_scale ** 2 * var).numpy()
