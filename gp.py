"""gp.py -- exact Gaussian-process regression of a run's loss over data mixtures and fidelities.

A run is the row x = [w_1 .. w_K, u_N, u_T] (float64, d = K + 2): the mixture w on the simplex, then
log model scale and log steps mapped to [0, 1] by the search space's bounds (`encode`). In order:
  1. encode, encode_fidelities  the input contract
  2. kernels                    RBF, Matern-5/2 (ARD) [RW sec. 4.2], spectral mixture [WA eq. 12]
  3. the model                  an effect shared by the scales, per-scale deviations (intrinsic
                                coregionalization [BO; AL]), run noise, a scaling-law mean [HO]
  4. hyperparameters            bounds, LogNormal priors (BoTorch's [HV], boundary-avoiding [CH])
  5. marginal likelihood        [RW Alg. 2.1, eq. 5.9], Cholesky with escalating jitter
  6. fit_gp                     MAP hyperparameters by L-BFGS-B from seeded starts;
     sample_hyperparameters     draws from their posterior by slice sampling [NE], as [SN]
  7. posterior                  predict (and over draws), cross_covariance(_grid) [RW eq. 2.24],
                                derivatives
y is standardized (as sklearn's normalize_y): hyperparameters and the log marginal likelihood are in
those units; everything section 7 returns is in y's own units.
"""

import math
from collections import namedtuple
from dataclasses import dataclass

import numpy as np
import scipy.linalg.lapack
import scipy.optimize
import torch

# [RW] Rasmussen & Williams, Gaussian Processes for Machine Learning, MIT Press 2006.
# [WA] Wilson & Adams, Gaussian Process Kernels for Pattern Discovery and Extrapolation, ICML 2013.
# [HO] Hoffmann et al., Training Compute-Optimal Large Language Models, NeurIPS 2022.
# [BO] Bonilla, Chai & Williams, Multi-task Gaussian Process Prediction, NeurIPS 2008.
# [AL] Alvarez, Rosasco & Lawrence, Kernels for Vector-Valued Functions: a Review, 2012, sec. 4.
# [HV] Hvarfner, Hellsten & Nardi, Vanilla BO Performs Great in High Dimensions, ICML 2024.
# [CH] Chung et al., A Nondegenerate Penalized Likelihood Estimator for Variance Parameters, 2013.
# [NE] Neal, Slice Sampling, Annals of Statistics 31(3), 2003.
# [SN] Snoek, Larochelle & Adams, Practical Bayesian Optimization of ML Algorithms, NeurIPS 2012.
# scikit-learn's gaussian_process/_gpr.py is the line-by-line model for Alg. 2.1.

DTYPE = torch.float64
NOISE_FLOOR = 1e-6      # smallest noise variance, standardized units
JITTER_TRIES = 4        # after a plain attempt: + 1e-8 10^k mean(diag K), k = 0..3 (as GPyTorch)
PENALTY = 1e10          # the objective where every Cholesky attempt fails: L-BFGS-B backtracks
SAME_SCALE = 1e-9       # |u_N - u_N'| <= this is one model scale (encode maps a scale to one float)
LAW_VARIANCE = 100.0    # prior variance s_b^2 of the scaling law's E, A, B (section 3)
KERNELS, STRUCTURES = ("rbf", "matern52", "sm"), ("joint", "product")
MEANS = ("constant", "scaling_law")

# ---------------------------------------------------------------------------------- 1. encoding
def encode_fidelities(scales, steps, bounds):
    """U (F, 2) = [u_N, u_T] of F (scale, steps) pairs (arrays or scalars, broadcast), bounds =
    (scale_min, scale_max, steps_min, steps_max): u = (log v - log lo) / (log hi - log lo), 0 if
    hi == lo. The fidelity columns of `encode`."""
    columns = np.broadcast_arrays(np.asarray(scales, dtype=float), np.asarray(steps, dtype=float))
    U = []
    for v, lo, hi, name in zip(columns, bounds[0::2], bounds[1::2], ("scale", "steps")):
        lo, hi, v = float(lo), float(hi), v.ravel()
        if not np.all(np.isfinite(v)) or np.any(v <= 0) or not 0 < lo <= hi < math.inf:
            raise ValueError(f"encode: {name} values and bounds must be finite and > 0 with "
                             f"min <= max; got bounds ({lo}, {hi})")
        span = math.log(hi) - math.log(lo)
        U.append(np.zeros_like(v) if hi == lo else (np.log(v) - math.log(lo)) / span)
    return np.column_stack(U)

def encode(weights, scale, steps, bounds):
    """X (n, K+2) = [w, u_N, u_T] from weights (n, K) or (K,), scale and steps (n,) or scalars."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))                      # (n, K)
    n = (w.shape[0],)
    U = encode_fidelities(np.broadcast_to(scale, n), np.broadcast_to(steps, n), bounds)
    return np.column_stack([w, U])

# ----------------------------------------------------------------------------------- 2. kernels
# Each maps A (n, p), B (m, p) to (n, m), or (n,) for the pairs (a_i, b_i) if paired; k(x, x) = 1.

def _scaled_sqdist(A, B, ls, paired=False):
    """r^2 = sum_p ((a_p - b_p) / l_p)^2; all pairs as |a|^2 + |b|^2 - 2 a.b, clamped at 0 outside
    autograd: derivatives stay those of the exact expression, second ones at a = b included."""
    A, B = A / ls, B / ls
    if paired:
        return ((A - B) ** 2).sum(1)
    d2 = torch.addmm((A * A).sum(1)[:, None] + (B * B).sum(1)[None, :], A, B.T, alpha=-2.0)
    with torch.no_grad():
        d2.clamp_min_(0.0)
    return d2

class _Matern52(torch.autograd.Function):
    """k(r^2) = (1 + s + s^2 / 3) e^-s, s = sqrt(5 r^2) [RW eq. 4.17], a function of r^2: its slope
    dk/dr^2 = -5/6 (1 + s) e^-s is finite at r = 0, where autograd through the root is not."""
    @staticmethod
    def forward(ctx, d2):
        ctx.save_for_backward(d2)
        s = d2.mul(5.0).sqrt_()
        return (s / 3.0).add_(1.0).mul_(s).add_(1.0).mul_(s.neg().exp_())

    @staticmethod
    def backward(ctx, grad):                # a Function again: create_graph differentiates it
        return grad * _Matern52Slope.apply(*ctx.saved_tensors)

class _Matern52Slope(torch.autograd.Function):
    """dk/dr^2 = -5/6 (1 + s) e^-s, with its own slope d^2k/d(r^2)^2 = 25/12 e^-s."""
    @staticmethod
    def forward(ctx, d2):
        ctx.save_for_backward(d2)
        s = d2.mul(5.0).sqrt_()
        return (s + 1.0).mul_(s.neg().exp_()).mul_(-5.0 / 6.0)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.saved_tensors[0].mul(5.0).sqrt_().neg_().exp_().mul_(25.0 / 12.0)

def spectral_mixture(A, B, weights, ls, means, paired=False):
    """Wilson & Adams (2013) eq. 12 (not GPyTorch's product over p of sums), weights (Q,), ls and
    means (Q, p), l_qp = 1 / (2 pi sqrt(v_qp)) for their spectral variances v, k(0) = sum_q w_q:
        k(tau) = sum_q w_q prod_p exp(-tau_p^2 / (2 l_qp^2)) cos(2 pi tau_p mu_qp)."""
    tau = A - B if paired else A[:, None, :] - B[None, :, :]                     # (n, [m,] p)
    return sum(w * (torch.exp(-0.5 * (tau / l) ** 2) * torch.cos(2 * math.pi * tau * mu)).prod(-1)
               for w, l, mu in zip(weights, ls, means))

def _group_kernel(kind, A, B, P, prefix, paired=False):
    """`kind` on the columns in A, B with the parameters prefix_*: RBF exp(-r^2 / 2) [RW eq. 4.9],
    Matern-5/2, or a spectral mixture with k(0) = 1."""
    if kind in ("rbf", "matern52"):
        d2 = _scaled_sqdist(A, B, P[prefix + "_lengthscale"], paired)
        return d2.mul_(-0.5).exp_() if kind == "rbf" else _Matern52.apply(d2)
    w = P["sm_weights"] / P["sm_weights"].sum()
    return spectral_mixture(A, B, w, P["sm_lengthscale"], P["sm_means"], paired)

# --------------------------------------------------------------------------------- 3. the model
# y = f(x) + e_run + e, standardized. With structure "product" (the default) f has the covariance
#   k(x, x') = k_w(w, w') k_T(u_T, u_T') [s^2 k_N(u_N, u_N') + s_d^2 1[N = N']]    mixture effect
#            + s_l^2 1[N = N'] + h(u)^T S h(u')                                  level, scaling law
# The bracket is intrinsic coregionalization over the scales [BO eq. 2; AL sec. 4.2], an effect
# shared by the scales plus each scale's own: corr(f_N(w), f_N'(w)) = s^2 k_N / (s^2 + s_d^2) with
# s_d^2 = q s^2, q fitted, so small runs inform the target as far as scales agree; an unseen scale
# (the target before its first run) has an effect and a level (sd s_l) of its own.
# "joint": s^2 k_x(x, x') (1 + q 1[N = N']), one ARD kernel on all d columns. noise: sigma^2 I +
# sigma_run^2 R, R_ij = 1 when i and j are checkpoints of one run (a seed's offset persists).
# mean "scaling_law": h = [1, e^(-a_N u_N), e^(-a_T u_T), e^(-a_N u_N - a_T u_T)] is E + A/N^alpha +
#   B / D^beta [HO eq. 10] in the encoded inputs (a_N = alpha log(N_max / N_min), likewise a_T) plus
#   the coupling C / (N^alpha D^beta) (Kaplan et al. 2020's law is not additive). beta ~ N(0, S),
#   S = diag(s_b^2, s_b^2, s_b^2, s_C^2), integrated out [RW eq. 2.39-42]: kernel k + h^T S h. s_b^2
#   = LAW_VARIANCE is vague (the coefficients are a few units): a law seen at one scale does not pin
#   the target's level; s_C^2, a_N, a_T fitted (from least squares: _law_exponents). "constant": 0.

@dataclass(frozen=True)
class Config:
    """The model options, each declared here once (section 3 says what they do). The defaults are
    chosen by bench/cross_scale.py, see bench/README.md."""
    structure: str = "product"       # "product" | "joint"
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
                or self.kernel_w not in KERNELS or {self.kernel_N, self.kernel_T} - set(KERNELS[:2])
                or (self.structure == "joint" and self.kernel_w == "sm")):
            raise ValueError(f"unknown model option: structure in {STRUCTURES}, mean in {MEANS}, "
                             f"kernel_w in {KERNELS} ('sm' not with 'joint'), kernel_N and "
                             f"kernel_T in {KERNELS[:2]}")

def _basis(P, U):
    """h(u) (n, 4) = [1, N^-alpha, D^-beta, N^-alpha D^-beta] at U = [u_N, u_T]; (..., n, 4)."""
    power_N = torch.exp(-P["mean_alpha_N"] * U[:, 0])
    power_T = torch.exp(-P["mean_alpha_T"] * U[:, 1])
    return torch.stack([torch.ones_like(power_N), power_N, power_T, power_N * power_T], dim=-1)

def _fidelity_terms(cfg, P, UA, UB, paired):
    """The terms on the fidelity columns U = [u_N, u_T]: (factor, offset), k = k_w factor + offset
    (k_x in place of k_w with "joint"); each (n, m), (n,) if paired, or a scalar."""
    if cfg.scale_deviation:
        gap = UA[:, 0] - UB[:, 0] if paired else UA[:, :1] - UB[:, 0]
        same = (gap.abs() <= SAME_SCALE).to(DTYPE)                                 # 1[N = N']
    if cfg.structure == "joint":
        factor = P["amplitude"] * (1.0 + P["scale_deviation"] * same if cfg.scale_deviation else 1)
    else:
        k_N = _group_kernel(cfg.kernel_N, UA[:, :1], UB[:, :1], P, "N", paired)
        if cfg.scale_deviation:
            k_N = k_N + P["scale_deviation"] * same                    # (s^2 K_N + s_d^2 I) / s^2
        k_T = _group_kernel(cfg.kernel_T, UA[:, 1:], UB[:, 1:], P, "T", paired)
        factor = P["amplitude"] * k_T * k_N
    offset = P["level_deviation"] * same if cfg.scale_deviation else torch.zeros((), dtype=DTYPE)
    if cfg.mean == "scaling_law":
        s_b = torch.tensor(LAW_VARIANCE, dtype=DTYPE)
        S = torch.stack([s_b, s_b, s_b, P["mean_coupling"]])                       # diag(S)
        hA, hB = _basis(P, UA), _basis(P, UB)
        offset = offset + ((hA * S * hB).sum(1) if paired else (hA * S) @ hB.T)   # h^T S h'
    return factor, offset

def _distinct(A):
    """(rows, index), rows[index] == A exactly: A's distinct rows (sorting a projection, verified),
    or (A, None) if all rows are distinct or A requires grad (its rows may move apart)."""
    if A.requires_grad:
        return A, None
    index = torch.unique(A @ torch.arange(2.0, A.shape[1] + 2, dtype=DTYPE).sqrt(),
                         return_inverse=True)[1]
    rows = A.new_empty(int(index.max()) + 1 if len(A) else 0, A.shape[1]).index_copy_(0, index, A)
    return (rows, index) if len(rows) < len(A) and torch.equal(rows[index], A) else (A, None)

def _on_distinct_rows(terms, A, B, known=None):
    """terms(A, B) -> (n, m) tensors or scalars on the distinct rows of A and B (known: _distinct(A)
    if B = A), gathered back: a search's rows repeat (checkpoints share w; fidelities are few)."""
    (rows_A, index_A), (rows_B, index_B) = (known,) * 2 if known else (_distinct(A), _distinct(B))
    out = tuple(terms(rows_A, rows_B))
    for dim, index in ((1, index_B), (0, index_A)):
        if index is not None:
            out = tuple(t.index_select(dim, index) if t.ndim == 2 else t for t in out)
    return out

def _terms(cfg, P, WA, WB, UA, UB, paired=False, known=(None, None)):
    """(k_w, factor, offset), k = k_w factor + offset: k_w on the mixture columns WA, WB (every
    column with "joint"), _fidelity_terms on UA, UB; on the distinct rows unless paired."""
    weights = lambda a, b: (_group_kernel(cfg.kernel_w, a, b, P, "w", paired),)
    fidelity = lambda a, b: _fidelity_terms(cfg, P, a, b, paired)
    gather = (lambda terms, a, b, _: tuple(terms(a, b))) if paired else _on_distinct_rows
    (factor, offset), (k_w,) = gather(fidelity, UA, UB, known[1]), gather(weights, WA, WB, known[0])
    return k_w, factor, offset

def _kernel(cfg, P, A, B, K, paired=False, known=(None, None)):
    """Prior covariance of f between rows A (n, d) and B (m, d): (n, m), or (n,) for the pairs
    (a_i, b_i) if paired (k(x, x): B = A); standardized, noise-free. known: fit_gp's, for B = A."""
    cols = slice(None) if cfg.structure == "joint" else slice(0, K)
    k_w, factor, offset = _terms(cfg, P, A[:, cols], B[:, cols], A[:, K:], B[:, K:], paired, known)
    if torch.is_grad_enabled():
        return torch.addcmul(offset, k_w, factor)                              # k_w factor + offset
    return k_w.mul_(factor).add_(offset)                    # the same in place: no (n, m) temporary

# ---------------------------------------------------------------------------- 4. hyperparameters
# LogNormal priors on the natural value (as BoTorch): lengthscales (sqrt2 + log(d) / 2, sqrt3),
# noise and run_noise (-4, 1) [HV]; q and s_l^2 boundary-avoiding [CH]: where the data cannot tell
# how far the scales agree the prior decides, not a collapse to perfect transfer (modes by
# bench/cross_scale.py); the amplitude's mode is the variance the mean leaves (fit_gp's residual),
# so one run per mixture cannot explain the mixture effect away as run noise (bench/README.md).
# The rest is flat. In z = log x a LogNormal(mu, sigma) is a normal of sd sigma about mu - sigma^2.
DEVIATION_PRIOR = (math.log(0.25) + 4.0, 2.0)     # log q ~ N(log 0.25, 2^2): corr 0.8 at the mode
LEVEL_PRIOR = (math.log(0.0025) + 4.0, 2.0)       # log s_l^2 ~ N(log 0.05^2, 2^2): sd 0.05 there
# One hyperparameter: name, shape, whether theta holds its log, natural-unit bounds (lower == upper
# holds it fixed), and a LogNormal prior (mu, sigma) of its natural value or None (flat).
Spec = namedtuple("Spec", "name shape log lower upper prior", defaults=(None,))

def _specs(cfg, d, K, residual=1.0):
    ls_prior, noise_prior = (math.sqrt(2.0) + 0.5 * math.log(d), math.sqrt(3.0)), (-4.0, 1.0)
    lengthscales = lambda prefix, p: Spec(prefix + "_lengthscale", (p,), True, 1e-2, 1e5, ls_prior)
    amplitude_prior = (math.log(max(residual, 1e-4)) + 4.0, 2.0)    # mode: the residual variance
    specs = [Spec("noise", (), True, NOISE_FLOOR, 10.0, noise_prior),
             Spec("amplitude", (), True, 1e-6, 1e5, amplitude_prior)]
    if cfg.run_noise:
        specs.append(Spec("run_noise", (), True, NOISE_FLOOR, 10.0, noise_prior))
    if cfg.kernel_w in ("rbf", "matern52"):
        specs.append(lengthscales("w", d if cfg.structure == "joint" else K))
    else:
        Q = cfg.sm_components
        specs += [Spec("sm_weights", (Q,), True, 1e-3, 1e3), Spec("sm_lengthscale", (Q, K), True,
                  1e-2, 1e5, ls_prior), Spec("sm_means", (Q, K), False, 0.0, 5.0)]
    if cfg.structure != "joint":
        specs += [lengthscales("N", 1), lengthscales("T", 1)]
    if cfg.scale_deviation:
        specs += [Spec("scale_deviation", (), True, 1e-4, 1e2, DEVIATION_PRIOR),
                  Spec("level_deviation", (), True, 1e-6, 1e2, LEVEL_PRIOR)]
    if cfg.mean == "scaling_law":
        specs += [Spec("mean_coupling", (), True, 1e-6, 1e4)]
        specs += [Spec("mean_alpha_" + c, (), True, 1e-2, 1e2) for c in "NT"]
    return specs

def _law_exponents(U, y):
    """(a_N, a_T), which are identified, and the mean squared residual: least squares of h^T beta
    to the standardized y (variable projection, Golub & Pereyra 1973), grid then Nelder-Mead; 1
    (held) for a column with < 3 distinct values. fit_gp frees the others last (bench/README.md)."""
    (U_t, y_t), low, high = map(torch.from_numpy, (U, y)), math.log(1e-2), math.log(1e2)
    identified = np.array([len(np.unique(U[:, j])) >= 3 for j in (0, 1)])
    exponents = lambda log_a: np.where(identified, np.exp(np.clip(log_a, low, high)), 1.0)
    law = lambda a: _basis({"mean_alpha_N": a[..., :1], "mean_alpha_T": a[..., 1:]}, U_t)
    def rss(log_a):
        H = law(torch.from_numpy(exponents(log_a))).numpy()                           # (n, 4)
        return float(((H @ np.linalg.lstsq(H, y, rcond=None)[0] - y) ** 2).sum())
    grid = np.linspace(math.log(0.1), math.log(10.0), 21)
    pairs = np.array([[a, b] for a in grid for b in grid])                            # (441, 2)
    H = law(torch.from_numpy(exponents(pairs)))                            # (441, n, 4) at once
    beta = torch.linalg.lstsq(H, y_t.expand(len(pairs), -1)[..., None], driver="gelsd")[0]
    start = pairs[int(torch.argmin(((H @ beta)[..., 0] - y_t).square_().sum(1)))]
    best = scipy.optimize.minimize(rss, start, method="Nelder-Mead")
    return exponents(best.x), identified, best.fun / len(y)

def _unpack(theta, specs, natural=False):
    """Flat theta (torch) -> dict of natural-unit tensors: exp of the log parts unless `natural`."""
    parts = torch.split(theta, [math.prod(s.shape) for s in specs])
    return {s.name: torch.exp(v.reshape(s.shape)) if s.log and not natural else v.reshape(s.shape)
            for s, v in zip(specs, parts)}

def _pack(P, specs):
    """dict of natural-unit values -> flat numpy theta."""
    parts = [np.broadcast_to(np.asarray(P[s.name], dtype=float), s.shape).ravel() for s in specs]
    return np.concatenate([np.log(v) if s.log else v for s, v in zip(specs, parts)])

def _log_prior(theta, specs, cfg):
    """(sum, gradient in theta) of the LogNormal(mu, sigma) log-densities of the natural parameters
    x = e^z (a prior is on a log-parameterized one: z is its part of theta); 0 with priors=False:
        -z - log(sigma sqrt(2 pi)) - (z - mu)^2 / (2 sigma^2),   slope -1 - (z - mu) / sigma^2"""
    lp, grad = 0.0, []
    for s, z in zip(specs, np.split(theta, np.cumsum([math.prod(s.shape) for s in specs])[:-1])):
        (mu, sigma), on = s.prior or (0.0, 1.0), cfg.priors and s.prior is not None
        lp += on * float((-z - math.log(sigma * math.sqrt(2 * math.pi))
                          - (z - mu) ** 2 / (2 * sigma ** 2)).sum())
        grad.append(on * (-1.0 - (z - mu) / sigma ** 2))
    return lp, np.concatenate(grad)

def _initial_theta(specs, rng, first, residual=1.0, start=None):
    """Start 0: `start`, the priors' modes, the amplitude the variance the mean leaves (`residual`),
    noises <= 5% of it (else L-BFGS-B may settle where run noise explains the mixture effect),
    spectral means over [0, 1], the rest 1. Later starts: prior draws, else log-uniform."""
    P = {}
    for s in specs:
        mode = (start or {}).get(s.name, math.exp(s.prior[0] - s.prior[1] ** 2) if s.prior else 1.0)
        if first and s.name in ("noise", "run_noise"):
            v = np.full(s.shape, min(mode, 0.05 * residual))
        elif first and s.name == "sm_means":
            v = np.broadcast_to(np.linspace(0.0, 1.0, s.shape[0])[:, None], s.shape)
        elif first:
            v = np.full(s.shape, max(residual, 1e-4) if s.name == "amplitude" else mode)
        elif s.prior is not None:
            v = np.exp(rng.normal(s.prior[0], s.prior[1], size=s.shape))
        elif s.log:
            v = np.exp(rng.uniform(math.log(s.lower), math.log(s.upper), size=s.shape))
        else:
            v = rng.uniform(s.lower, s.upper, size=s.shape)
        P[s.name] = np.clip(v, s.lower, s.upper)
    return _pack(P, specs)

# ------------------------------------------------------------------------ 5. marginal likelihood
def _cholesky(Kmat):
    """(L, jitter), L L^T = Kmat + jitter I (JITTER_TRIES' schedule; Kmat kept), or (None, None)."""
    for k in range(JITTER_TRIES + 1):
        jitter = 0.0 if k == 0 else 1e-8 * 10 ** (k - 1) * Kmat.diagonal().mean().abs().item()
        A = Kmat + jitter * torch.eye(len(Kmat), dtype=DTYPE) if jitter else Kmat
        L, info = torch.linalg.cholesky_ex(A)
        if info.item() == 0 and torch.isfinite(L.diagonal()).all():    # a NaN/inf in K reaches L
            return L, jitter
    return None, None

def _lml_terms(cfg, P, X, y, K, R, known=(None, None)):
    """R&W Alg. 2.1 on standardized y: (lml, L, alpha, jitter, K_f), or None if Cholesky fails;
    R (n, n) is 1 within a run; K_f = K(X, X) (noise-free) keeps its graph (eq. 5.9); known: X's."""
    Kf = _kernel(cfg, P, X, X, K, known=known)                                     # (n, n) K(X, X)
    Kmat = Kf.detach().clone()
    if cfg.run_noise:
        Kmat.add_(R, alpha=P["run_noise"].item())                                  # + sigma_run^2 R
    Kmat.diagonal().add_(P["noise"].item())                                         # + sigma^2 I
    L, jitter = _cholesky(Kmat)                                                    # Alg. 2.1 line 2
    if L is None:
        return None
    alpha = torch.cholesky_solve(y[:, None], L)[:, 0]                               # line 3
    lml = -0.5 * y.dot(alpha) - torch.log(L.diagonal()).sum() - 0.5 * len(y) * math.log(2 * math.pi)
    return lml.item(), L, alpha, jitter, Kf                                       # line 7, eq. 2.30

def _objective(theta_np, cfg, specs, X, y, K, R, known=(None, None)):
    """-(log p(y | theta) + log p(theta)) and its exact gradient (PENALTY and 0 if Cholesky fails):
        d lml / d theta_j = 1/2 tr((alpha alpha^T - K^-1) dK / dtheta_j) = sum(G * dK / dtheta_j),
    R&W eq. 5.9: one autograd pass from K_f contracts G with dK/dx; for z = log x, d/dz = x d/dx."""
    log = np.concatenate([np.full(math.prod(s.shape), s.log) for s in specs])
    x = np.where(log, np.exp(theta_np), theta_np)                                  # natural units
    natural = torch.from_numpy(x).requires_grad_()
    P = _unpack(natural, specs, natural=True)
    terms = _lml_terms(cfg, P, X, y, K, R, known)
    if terms is None:
        return PENALTY, np.zeros_like(theta_np)
    lml, L, alpha, _, Kf = terms
    # K^-1 by LAPACK potri on L in place: its lower triangle only (L's upper is 0). dK is symmetric,
    # so sum(G * dK) = sum(W * dK) with W = G on the diagonal, 2 G below it and 0 above:
    # W = 1/2 alpha alpha^T - [the lower triangle of K^-1, its diagonal halved]
    K_inv = torch.from_numpy(scipy.linalg.lapack.dpotri(L.numpy().T, lower=0, overwrite_c=1)[0].T)
    K_inv.diagonal().mul_(0.5)
    G = K_inv.mul_(-1.0).addr_(alpha, alpha, alpha=0.5)                            # (n, n) eq. 5.9
    log_prior, prior_grad = _log_prior(theta_np, specs, cfg)
    roots, grads = [Kf, P["noise"]], [G, G.diagonal().sum()]                     # dK_f, dsigma^2 I
    if cfg.run_noise:
        roots, grads = roots + [P["run_noise"]], grads + [(G * R).sum()]        # dsigma_run^2 R
    torch.autograd.backward(roots, grads)
    obj, g = -(lml + log_prior), -(natural.grad.numpy() * np.where(log, x, 1.0) + prior_grad)
    if not (math.isfinite(obj) and np.all(np.isfinite(g))):
        return PENALTY, np.zeros_like(theta_np)
    return obj, g

# ----------------------------------------------------------------------------------- 6. fitting
@dataclass(frozen=True)
class GP:
    """A fitted GP: the data, the hyperparameters and the factorization of the posterior."""
    config: Config
    n_weights: int
    X: np.ndarray                 # (n, d) training inputs
    y: np.ndarray                 # (n,) training targets, y units
    y_mean: float                 # standardization: standardized y = (y - y_mean) / y_scale
    y_scale: float
    hyperparameters: dict         # natural units (standardized y), numpy
    L: torch.Tensor               # (n, n) lower Cholesky factor of K + noise I + run_noise R
    alpha: torch.Tensor           # (n,) (K + noise I + run_noise R)^-1 y, standardized
    noise_variance: float         # noise variance of a new observation (noise + run_noise), y units
    run_noise_variance: float     # the part of it shared by the checkpoints of one run, y units
    log_marginal_likelihood: float  # log p(y | theta) of the standardized y, without the prior
    runs: np.ndarray              # (n,) each row's run label (run_noise)

def _check_inputs(X, n_weights, what):
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != n_weights + 2:
        raise ValueError(f"{what} must have shape (n, n_weights + 2) = (n, {n_weights + 2}) as "
                         f"built by gp.encode; got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{what} contains NaN or inf; drop or repair those rows")
    off = (X[:, :n_weights] < -1e-9).any(1) | (np.abs(X[:, :n_weights].sum(1) - 1.0) > 1e-6)
    if off.any():
        raise ValueError(f"{what} row {int(np.flatnonzero(off)[0])}: the first {n_weights} columns "
                         f"(mixture weights) must be >= 0 and sum to 1; renormalize by w / w.sum()")
    return X

def _run_matrix(runs):
    """R (n, n): 1 where two rows are of the same run (runs: each row's run label), else 0."""
    return torch.from_numpy(np.equal.outer(runs, runs).astype(np.float64))

def _distinct_inputs(cfg, X, K):
    """_distinct of the mixture columns (every column with "joint") and of the fidelity columns
    of X (n, d): _lml_terms' `known`."""
    return _distinct(X if cfg.structure == "joint" else X[:, :K]), _distinct(X[:, K:])

def _theta_box(specs, held):
    """(lower, upper) (p,) of theta: each spec's bounds, in log where theta holds the log, and
    lower == upper at the value of a name in `held` ({name: natural value})."""
    box = lambda s: (held[s.name],) * 2 if s.name in held else (s.lower, s.upper)
    return np.array([tuple(map(math.log, box(s))) if s.log else box(s) for s in specs
                     for _ in range(math.prod(s.shape))], dtype=float).T

def _lbfgsb(starts, specs, held, args, maxiter):
    """The best L-BFGS-B minimum of _objective(theta, *args) from the starts (ties: the first),
    those in `held` ({name: value}) held; relative stop 1e-7, not scipy's 2.2e-9 (bench/README)."""
    bounds = list(zip(*_theta_box(specs, held)))
    fits = (scipy.optimize.minimize(_objective, x0, args, "L-BFGS-B", jac=True, bounds=bounds,
                                    options={"maxiter": maxiter, "ftol": 1e-7}) for x0 in starts)
    return min(fits, key=lambda res: res.fun).x

def fit_gp(X, y, n_weights, config=Config(), *, seed=0, restarts=2, runs=None, hyperparameters=None,
           maxiter=200):
    """Fit the GP of `config` to X (n, n_weights + 2) from encode and losses y (n,): maximize
    log p(y | theta) + log p(theta) by L-BFGS-B from `restarts` starts (section 4's, then seeded
    draws), the law's exponents held at least squares, then from the best with them free; or, given
    `hyperparameters` (as GP.hyperparameters), condition on them (sklearn's optimizer=None). runs
    (n,): each observation's run label (run_noise); None: rows with the same w and scale."""
    X, y, K, cfg = _check_inputs(X, n_weights, "X"), np.asarray(y, dtype=float), n_weights, config
    if y.shape != (X.shape[0],) or not np.all(np.isfinite(y)):
        raise ValueError(f"y must be (n,) = ({X.shape[0]},) finite losses matching X; got shape "
                         f"{y.shape}: drop failed trials (non-finite losses) before fitting")
    runs = np.unique(X[:, :K + 1], axis=0, return_inverse=True)[1].ravel() if runs is None else runs
    if np.shape(runs) != (X.shape[0],):
        raise ValueError(f"runs must have shape (n,) = ({X.shape[0]},), one label per row of X; "
                         f"got {np.shape(runs)}")
    y_mean, y_scale = float(y.mean()), float(y.std())         # population std, as sklearn's
    y_scale = y_scale if y_scale > 1e-8 * max(1.0, abs(y_mean)) else 1.0   # as BoTorch's min_stdv
    Xt, ys = torch.from_numpy(X), torch.from_numpy((y - y_mean) / y_scale)
    residual, start, free = 1.0, {}, []           # the variance the mean leaves to the kernel
    if hyperparameters is None and cfg.mean == "scaling_law":
        exponents, identified, residual = _law_exponents(X[:, K:], ys.numpy())
        start = dict(zip(("mean_alpha_N", "mean_alpha_T"), exponents))
        free = [k for k, f in zip(start, identified) if f]
    specs = _specs(cfg, X.shape[1], K, residual)              # the amplitude prior's mode
    R, known = _run_matrix(runs), _distinct_inputs(cfg, Xt, K)
    if hyperparameters is not None:
        if missing := [s.name for s in specs if s.name not in hyperparameters]:
            raise ValueError(f"hyperparameters lack {missing}; pass GP.hyperparameters of a fit "
                             f"with the same Config")
        theta = _pack(hyperparameters, specs)
    else:
        rng, args = np.random.default_rng(seed), (cfg, specs, Xt, ys, K, R, known)
        theta = _lbfgsb((_initial_theta(specs, rng, r == 0, residual, start)
                         for r in range(max(1, restarts))), specs, start, args, maxiter)
        if free:                           # then the identified exponents too, from the best
            held = {k: a for k, a in start.items() if k not in free}
            theta = _lbfgsb([theta], specs, held, args, maxiter)
    with torch.no_grad():
        P = _unpack(torch.from_numpy(theta), specs)
        terms = _lml_terms(cfg, P, Xt, ys, K, R, known)
        if terms is None:   # only with given hyperparameters: raise the noise to 100 x the floor
            P["noise"] = torch.clamp(P["noise"], min=100 * NOISE_FLOOR)
            terms = _lml_terms(cfg, P, Xt, ys, K, R, known)
        if terms is None:
            raise ValueError("the kernel matrix is not positive definite even with jitter; "
                             "increase the 'noise' hyperparameter")
    lml, L, alpha, _, _ = terms
    run_var = float(P["run_noise"]) if cfg.run_noise else 0.0
    hyp = {k: v.numpy().copy() if v.ndim else float(v) for k, v in P.items()}
    return GP(cfg, K, X, y, y_mean, y_scale, hyp, L, alpha,
              (float(P["noise"]) + run_var) * y_scale ** 2, run_var * y_scale ** 2, float(lml),
              np.asarray(runs))

def slice_sample(log_density, x, lower, upper, sweeps, rng, width=1.0, max_steps=10):
    """A Markov chain of `sweeps` states (p,) with stationary density exp(log_density) on the box
    [lower, upper] (p,), from x: each sweep updates every coordinate with lower < upper once, in a
    random order, by univariate slice sampling, stepping out by `width` at most max_steps times
    and shrinking ([NE] fig. 3 and 5)."""
    x, chain = np.clip(np.asarray(x, dtype=float), lower, upper), []
    if not math.isfinite(level := log_density(x)):
        raise ValueError("slice_sample must start where log_density is finite; start at a fit")
    for _ in range(sweeps):
        for j in rng.permutation(np.flatnonzero(lower < upper)):
            slice_level, y = level + math.log(rng.uniform()), x.copy()     # the slice under x
            def inside(v):
                y[j] = v
                return lower[j] <= v <= upper[j] and log_density(y) > slice_level
            a = x[j] - width * rng.uniform()                               # fig. 3: stepping out
            b, left = a + width, int(max_steps * rng.uniform())
            right = max_steps - 1 - left
            while left > 0 and inside(a):
                a, left = a - width, left - 1
            while right > 0 and inside(b):
                b, right = b + width, right - 1
            a, b = max(a, lower[j]), min(b, upper[j])                      # the box
            while True:                                                    # fig. 5: shrinkage
                y[j] = v = rng.uniform(a, b)
                if (value := log_density(y)) > slice_level:
                    x, level = y, value
                    break
                a, b = (v, b) if v < x[j] else (a, v)
        chain.append(x.copy())
    return chain

def sample_hyperparameters(gp, draws, seed=0):
    """`draws` hyperparameter sets (dicts as GP.hyperparameters) from p(theta | y) on gp's data,
    with fit_gp's priors, bounds and held exponents, as [SN] sec. 3.2 marginalizes a GP's:
    slice_sample over theta, 2 draws sweeps from gp's own theta, the last `draws` kept."""
    X, K, cfg = gp.X, gp.n_weights, gp.config
    ys = (gp.y - gp.y_mean) / gp.y_scale
    identified, residual = (True, True), 1.0
    if cfg.mean == "scaling_law":
        _, identified, residual = _law_exponents(X[:, K:], ys)
    specs = _specs(cfg, X.shape[1], K, residual)
    held = {f"mean_alpha_{c}": gp.hyperparameters[f"mean_alpha_{c}"]
            for c, free in zip("NT", identified) if not free}
    theta, (lower, upper) = _pack(gp.hyperparameters, specs), _theta_box(specs, held)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(ys)
    R, known = _run_matrix(gp.runs), _distinct_inputs(cfg, Xt, K)
    def log_posterior(theta):
        with torch.no_grad():
            terms = _lml_terms(cfg, _unpack(torch.from_numpy(theta), specs), Xt, yt, K, R, known)
        return -math.inf if terms is None else terms[0] + _log_prior(theta, specs, cfg)[0]
    chain = slice_sample(log_posterior, theta, lower, upper, 2 * draws,
                         np.random.default_rng(seed))
    return [{k: v.numpy().copy() if v.ndim else float(v)
             for k, v in _unpack(torch.from_numpy(z), specs).items()} for z in chain[draws:]]

# ----------------------------------------------------------------------- 7. posterior, y units
def _params(gp):
    return {k: torch.as_tensor(v, dtype=DTYPE) for k, v in gp.hyperparameters.items()}

def predict(gp, Xs, full_cov=False):
    """Latent posterior at Xs (m, d): mean (m,) and variance (m,) or covariance (m, m), y units.
    R&W Alg. 2.1 lines 4-6 / eq. 2.23-2.24 (with the scaling-law basis inside k: eq. 2.41-2.42)."""
    Xs = torch.from_numpy(_check_inputs(Xs, gp.n_weights, "Xs"))
    X, K, P, cfg = torch.from_numpy(gp.X), gp.n_weights, _params(gp), gp.config
    with torch.no_grad():
        Ks = _kernel(cfg, P, X, Xs, K)                                             # (n, m) K(X, Xs)
        mean = gp.y_mean + gp.y_scale * (Ks.T @ gp.alpha)                          # line 4
        V = torch.linalg.solve_triangular(gp.L, Ks, upper=False)                   # line 5: L \ k*
        if full_cov:
            cov = _kernel(cfg, P, Xs, Xs, K) - V.T @ V                             # eq. 2.24
            return mean.numpy(), (gp.y_scale ** 2 * cov).numpy()
        var = _kernel(cfg, P, Xs, Xs, K, paired=True) - V.square_().sum(0)          # line 6
        return mean.numpy(), (gp.y_scale ** 2 * var.clamp_min(0.0)).numpy()

def predict_mixture(models, Xs):
    """Mean and variance (m,) of the equal-weight mixture of the models' posteriors at Xs (as
    predict): the mean of their means, the mean of their variances plus the variance of their means
    (the law of total variance)."""
    means, variances = zip(*(predict(model, Xs) for model in models))
    return np.mean(means, axis=0), np.mean(variances, axis=0) + np.var(means, axis=0)

def cross_covariance(gp, XA, XZ, chunk=4096):
    """Posterior covariance Sigma_n(A, Z) (|A|, |Z|) and variance at Z (|Z|,), y units, Z in chunks:
        Sigma_n(A, Z) = K(A, Z) - K(A, X) (K + noise)^-1 K(X, Z) = K(A, Z) - V_A^T V_Z  [RW 2.24]"""
    XA = torch.from_numpy(_check_inputs(XA, gp.n_weights, "XA"))
    XZ = torch.from_numpy(_check_inputs(XZ, gp.n_weights, "XZ"))
    X, K, P, cfg, L = torch.from_numpy(gp.X), gp.n_weights, _params(gp), gp.config, gp.L
    cov, var = torch.empty(len(XA), len(XZ), dtype=DTYPE), torch.empty(len(XZ), dtype=DTYPE)
    with torch.no_grad():
        VA = torch.linalg.solve_triangular(L, _kernel(cfg, P, X, XA, K), upper=False)   # (n, |A|)
        for s in range(0, XZ.shape[0], chunk):
            Zc = XZ[s:s + chunk]
            VZ = torch.linalg.solve_triangular(L, _kernel(cfg, P, X, Zc, K), upper=False)  # (n, c)
            cov[:, s:s + chunk] = _kernel(cfg, P, XA, Zc, K) - VA.T @ VZ
            var[s:s + chunk] = _kernel(cfg, P, Zc, Zc, K, paired=True) - VZ.square_().sum(0)
    return (gp.y_scale ** 2 * cov).numpy(), (gp.y_scale ** 2 * var.clamp_min(0.0)).numpy()

def _kernel_grid(cfg, P, W, U, B, K):
    """Prior covariance (M, F, n) of the grid z_mf = [w_m, u_f] (W (M, K) x U (F, 2)) and B (n, d):
    k_w once per mixture, the rest once per fidelity; "joint" does not factor: on the M F rows."""
    M, F, n = W.shape[0], U.shape[0], B.shape[0]
    if cfg.structure == "joint":
        Z = torch.cat([W.repeat_interleave(F, dim=0), U.repeat(M, 1)], dim=1)  # (M F, d) by mixture
        return _kernel(cfg, P, Z, B, K).reshape(M, F, n)
    k_w, factor, offset = _terms(cfg, P, W, B[:, :K], U, B[:, K:])          # (M, n), (F, n)
    return torch.addcmul(offset, k_w[:, None, :], factor)

def cross_covariance_grid(gp, XA, W, U, u_P, block=1024):
    """cross_covariance on the GRID z_mf = [w_m, u_f], W (M, K) x U (F, 2), y units, faster than on
    the M F rows: cov (M, F, |A|) = Sigma_n(z_mf, XA), own (M, F) = Sigma_n(z_mf, [w_m, u_P]) (KG's
    projection to the target u_P (2,)), var (M, F) = Sigma_n(z_mf, z_mf). "product": with section
    3's phi_f, o_f (n,) and kappa_m = k_w(w_m, .) (R,) over the R distinct training mixtures r(j),
        K(X, z_mf) = phi_f * kappa_m[r] + o_f,   L^-1 K(X, z_mf) = T_f kappa_m + t_f
    T_f = L^-1 diag(phi_f) onehot(r) (n, R), t_f = L^-1 o_f solved once per fidelity: eq. 2.24's
    products are (R, .) forms in kappa_m. "joint", or R >= M: V_Z by solves, `block` rows a time."""
    XA, K = torch.from_numpy(_check_inputs(XA, gp.n_weights, "XA")), gp.n_weights
    W, U, u_P = (np.asarray(v, dtype=np.float64) for v in (W, U, u_P))
    if W.ndim != 2 or W.shape[1] != K or U.ndim != 2 or U.shape[1] != 2 or u_P.shape != (2,) \
            or not np.isfinite(U).all() or not np.isfinite(u_P).all():
        raise ValueError(f"W must be (M, {K}) mixtures, U (F, 2) and u_P (2,) finite [u_N, u_T] "
                         f"from encode_fidelities; got W {W.shape}, U {U.shape}, u_P {u_P.shape}")
    XP = torch.from_numpy(_check_inputs(np.column_stack([W, np.tile(u_P, (len(W), 1))]), K, "W"))
    W, U = XP[:, :K], torch.from_numpy(U)                                         # (M, K), (F, 2)
    X, P, cfg, L = torch.from_numpy(gp.X), _params(gp), gp.config, gp.L
    n, M, F = X.shape[0], W.shape[0], U.shape[0]
    with torch.no_grad():
        VA = torch.linalg.solve_triangular(L, _kernel(cfg, P, X, XA, K), upper=False)    # (n, |A|)
        Z0 = torch.cat([W[:1].expand(F, K), U], dim=1)                            # (F, d) a mixture
        prior_var = _kernel(cfg, P, Z0, Z0, K, paired=True)                          # (F,) k(z, z)
        own_prior = _kernel(cfg, P, Z0, XP[:1], K)[:, 0]                  # (F,) k(z, p): w-free
        mixtures, r = _distinct(X[:, :K])
        own, var = torch.empty(2, M, F, dtype=DTYPE)
        if cfg.structure == "joint" or len(mixtures) >= M:       # T_f would cost more than V_Z
            cov = torch.empty(M, F, len(XA), dtype=DTYPE)
            VP = torch.linalg.solve_triangular(L, _kernel(cfg, P, X, XP, K), upper=False).T
            mb = max(1, block // F)                                               # mixtures a block
            for s in range(0, M, mb):
                m = min(mb, M - s)
                Kz = _kernel_grid(cfg, P, W[s:s + m], U, X, K).reshape(m * F, n)
                VZ = torch.linalg.solve_triangular(L.T, Kz, upper=True, left=False).reshape(m, F, n)
                cov[s:s + m] = _kernel_grid(cfg, P, W[s:s + m], U, XA, K) - VZ @ VA      # eq. 2.24
                own[s:s + m] = own_prior - (VZ * VP[s:s + m, None, :]).sum(2)
                var[s:s + m] = (prior_var - (VZ * VZ).sum(2)).clamp_min(0.0)
        else:
            r = torch.arange(n) if r is None else r                       # row j has mixture r(j)
            kappa = _group_kernel(cfg.kernel_w, W, mixtures, P, "w")                   # (M, R)
            phi, offset = _fidelity_terms(cfg, P, torch.cat([U, XP[:1, K:]]), X[:, K:], False)
            onehot = torch.nn.functional.one_hot(r, len(mixtures)).to(DTYPE)           # (n, R)
            T = torch.linalg.solve_triangular(L, phi[:, :, None] * onehot, upper=False)  # F+1, n, R
            t = torch.linalg.solve_triangular(L, offset.expand(F + 1, n).T, upper=False).T  # F+1, n
            TA = T[:F].transpose(1, 2) @ VA                                         # (F, R, |A|)
            cov = _kernel_grid(cfg, P, W, U, XA, K) - torch.einsum("mr,fra->mfa", kappa, TA) \
                - (t[:F] @ VA)[None]                                                 # eq. 2.24
            VP = kappa @ T[F].T + t[F]                                 # (M, n) at the target u_P
            for f in range(F):
                VZ = kappa @ T[f].T + t[f]                                            # (M, n)
                own[:, f] = own_prior[f] - (VZ * VP).sum(1)
                var[:, f] = (prior_var[f] - VZ.square_().sum(1)).clamp_min(0.0)
    return tuple((gp.y_scale ** 2 * v).numpy() for v in (cov, own, var))

def directional_derivative(gp, X, V):
    """Posterior mean (m,) and variance (m,), y units, of D_v f(x) = v . grad_x f(x) at rows X (m,
    d) along V (m, d) (weights summing to 0, u_N, u_T zero). A GP's derivative is a GP (R&W 9.4;
    Solak et al. 2003); the kernel's derivatives by torch autograd:
        mean = D_v k(x, X) alpha,   var = D_v D_v' k(x, x')|x'=x - ||L^-1 D_v k(X, x)||^2"""
    X = torch.from_numpy(_check_inputs(X, gp.n_weights, "X"))
    K, V = gp.n_weights, np.asarray(V, dtype=np.float64)
    if V.shape != X.shape or not np.isfinite(V).all() or np.any(V[:, K:] != 0) \
            or np.any(np.abs(V[:, :K].sum(1)) > 1e-9 * (1.0 + np.abs(V).max())):
        raise ValueError(f"V must be (m, d) = {tuple(X.shape)} finite directions with weights "
                         f"summing to 0 and zero u_N, u_T columns, e.g. e_j - w; got {V.shape}")
    V, Xtr, P, cfg = torch.from_numpy(V), torch.from_numpy(gp.X), _params(gp), gp.config
    s, t = (torch.zeros(X.shape[0], dtype=DTYPE, requires_grad=True) for _ in range(2))
    # D_v k(x_i, X_j) = dK_ij / ds_i of K = k(X + s V, X_train): forward mode by two reverse passes
    Ks = _kernel(cfg, P, X + s[:, None] * V, Xtr, K)                                  # (m, n)
    probe = torch.zeros_like(Ks, requires_grad=True)
    (ds,) = torch.autograd.grad((Ks * probe).sum(), s, create_graph=True)   # sum_j probe dK_ij/ds_i
    (dK,) = torch.autograd.grad(ds.sum(), probe)                                      # (m, n)
    # D_v D_v' k(x_i, x_i) = d^2 k(x_i + s_i v_i, x_i + t_i v_i) / ds_i dt_i at s = t = 0
    kxx = _kernel(cfg, P, X + s[:, None] * V, X + t[:, None] * V, K, paired=True)   # (m,)
    (ds,) = torch.autograd.grad(kxx.sum(), s, create_graph=True)
    (dsdt,) = torch.autograd.grad(ds.sum(), t)
    with torch.no_grad():
        Vd = torch.linalg.solve_triangular(gp.L, dK.T, upper=False)                   # (n, m)
        var = (dsdt - (Vd * Vd).sum(0)).clamp_min(0.0)
        return (gp.y_scale * dK @ gp.alpha).numpy(), (gp.y_scale ** 2 * var).numpy()
