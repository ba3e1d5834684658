"""
Acquisition for mixbo: which mixture to train next, at which model scale and for how many steps.

Everything here works on a fitted GP from gp.py over rows x = [w_1..w_K, u_N, u_T] (see gp.encode), and on
finite candidate sets of mixtures, so every quantity is computed exactly (no inner optimizer, no Monte Carlo):

1. simplex_candidates: mixtures drawn on the simplex directly (Dirichlet draws, never rejection sampling,
   which runs dry at >= 7 weights: facebook/Ax#3867), including sparse draws with weights exactly 0
   (optima often sit on faces of the simplex), the vertices, the uniform mixture and draws around incumbents.
2. log_expected_improvement: EI for MINIMIZING loss, computed as log EI (Ament et al. 2023, "Unexpected
   Improvements to Expected Improvement for Bayesian Optimization", NeurIPS, arXiv 2310.20708), with the
   incumbent taken at the TARGET fidelity only.
3. lower_confidence_bound: mu - sqrt(beta) * sigma (Srinivas et al. 2010, "Gaussian Process Optimization in
   the Bandit Setting"; beta multiplies the variance, as in BoTorch's UpperConfidenceBound).
4. knowledge_gradient / log_knowledge_gradient: the exact knowledge gradient over a finite set of lines
   (Frazier, Powell & Dayanik 2009, "The Knowledge-Gradient Policy for Correlated Normal Beliefs", INFORMS
   J. Comput. 21(4), Alg. 1 and the closed form of h computed from it), vectorized over thousands of
   candidate measurements at once.
5. choose_next: the decision of one BO step for the strategies 'mfkg' (cost-normalized multi-fidelity KG
   over mixture x scale x steps: Poloczek, Wang & Frazier 2017 "misoKG"; Wu et al. 2019 "taKG"), 'kg', 'ei'
   and 'ucb' (target fidelity only). recommend: argmin of the posterior mean at the target.

Conventions: losses are MINIMIZED; every array is float64; shapes are written in comments, with
M = |A| lines, Z = number of candidate measurements, K = number of domains, C = number of candidate mixtures.
"""

from dataclasses import dataclass

import numpy as np
from scipy.special import erfcx, ndtr

import gp

_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)
_HALF_LOG_PI_OVER_2 = 0.5 * np.log(np.pi / 2.0)

# -----------------------------------------------------------------------------------------------------------
# Candidate mixtures on the simplex


def _dirichlet(rng, alpha):
    """Dirichlet draws, one per row of alpha (n, K) -> (n, K), exact for tiny alpha.

    Marsaglia & Tsang (2000), "A simple method for generating gamma variables", the case alpha < 1:
    if G ~ Gamma(alpha + 1) and U ~ U(0,1) then G * U^(1/alpha) ~ Gamma(alpha).
    Working with log G avoids the underflow of Gamma(alpha) to exactly 0 for small alpha (a row of zeros would
    give 0/0); the Dirichlet is the normalized gamma vector, i.e. a softmax of the log-gammas.
    """
    log_g = np.log(rng.standard_gamma(alpha + 1.0)) + np.log(rng.uniform(size=alpha.shape)) / alpha  # (n, K)
    w = np.exp(log_g - log_g.max(axis=1, keepdims=True))  # (n, K), largest entry exactly 1, none NaN
    return w / w.sum(axis=1, keepdims=True)


def _snap_to_face(w, zero_below):
    """Set weights below zero_below to exactly 0 and renormalize: (n, K) -> (n, K).

    The largest weight of a row is >= 1/K > zero_below, so no row becomes all zeros.
    """
    w = np.where(w < zero_below, 0.0, w)
    return w / w.sum(axis=1, keepdims=True)


def simplex_candidates(K, n_global, seed, incumbents=None, n_local=256, floor=0.0,
                       concentrations=(20.0, 200.0)):
    """Candidate mixtures on the probability simplex, drawn directly on it (no rejection sampling).

    Returns an (M, K) array, rows in this order:
      - the K vertices (all data from one domain) and the uniform mixture 1/K;
      - n_global // 2 draws from Dirichlet(1, ..., 1), the uniform distribution on the simplex (its interior);
      - n_global - n_global // 2 sparse draws from Dirichlet(alpha, ..., alpha), one alpha per draw, log-uniform
        in [min(1/K, 1/2), 1/2]. With the total concentration K*alpha between 1 and K/2 the draw puts its mass
        on a few domains (alpha = 1/K: typically 1-3) up to about half of them. Weights below zero_below = 0.1/K
        (a tenth of the uniform share; at most 10% of the mass in total) are then set to EXACTLY 0 and the row
        renormalized, so these candidates lie on faces, edges and vertices of the simplex where mixture optima
        often sit (a weight of 1e-9 can neither be built into a data loader nor told apart from 0 by the GP);
      - if incumbents (m, K) is given: the incumbents themselves, then n_local draws split evenly over them from
        a Dirichlet centred on each incumbent w0: alpha = c * w0 + 1/K (c = concentration, plus one pseudo-count
        spread evenly, so that zero weights of w0 are allowed to become positive). Its mean is (c w0 + 1/K)/(c+1)
        ~ w0 and the sd of a weight w is sqrt(w (1 - w) / (c + 2)): for w = 0.25, c = 20 gives 0.09 (a step of
        the order of a mixture lengthscale) and c = 200 gives 0.03 (a refinement); draws alternate between the
        concentrations given. Weights below zero_below are snapped to 0 as above, so an incumbent on a face
        mostly keeps its zeros.
    floor (0 <= floor <= 1/K): every candidate is finally mixed with the uniform mixture,
    w <- floor + (1 - K floor) w, so that every weight is >= floor exactly and the rows still sum to 1.
    Every row is >= 0 and sums to 1 within 1e-12. Seeded: the same arguments give the same array.
    """
    K, n_global, n_local = int(K), int(n_global), int(n_local)
    if K < 2:
        raise ValueError(f"simplex_candidates needs K >= 2 domains, got K={K}")
    if n_global < 0 or n_local < 0:
        raise ValueError(f"n_global and n_local must be >= 0, got {n_global} and {n_local}")
    if not 0.0 <= floor <= 1.0 / K:
        raise ValueError(f"floor must be in [0, 1/K] = [0, {1.0 / K:.4g}] so the weights can sum to 1, got {floor}")
    rng = np.random.default_rng(seed)
    zero_below = 0.1 / K
    parts = [np.eye(K), np.full((1, K), 1.0 / K)]  # (K, K) vertices, (1, K) uniform mixture
    n_flat = n_global // 2
    parts.append(_dirichlet(rng, np.ones((n_flat, K))))  # (n_flat, K) uniform on the simplex
    n_sparse = n_global - n_flat
    lo, hi = min(1.0 / K, 0.5), 0.5
    alpha = np.exp(rng.uniform(np.log(lo), np.log(hi), size=(n_sparse, 1)))  # (n_sparse, 1) one alpha per draw
    parts.append(_snap_to_face(_dirichlet(rng, np.broadcast_to(alpha, (n_sparse, K)).copy()), zero_below))
    if incumbents is not None:
        inc = np.atleast_2d(np.asarray(incumbents, dtype=np.float64))  # (m, K)
        if inc.shape[1] != K or not np.all(np.isfinite(inc)) or np.any(inc < 0) \
                or np.any(np.abs(inc.sum(axis=1) - 1.0) > 1e-9):
            raise ValueError(f"incumbents must be an (m, {K}) array of mixtures (weights >= 0 summing to 1)")
        parts.append(inc / inc.sum(axis=1, keepdims=True))
        if n_local > 0 and len(inc) > 0:
            centre = np.repeat(inc, -(-n_local // len(inc)), axis=0)[:n_local]  # (n_local, K) w0 per draw
            conc = np.resize(np.asarray(concentrations, dtype=np.float64), n_local)[:, None]  # (n_local, 1) c
            if np.any(conc <= 0):
                raise ValueError(f"concentrations must be > 0, got {concentrations}")
            parts.append(_snap_to_face(_dirichlet(rng, conc * centre + 1.0 / K), zero_below))
    w = np.concatenate(parts, axis=0)  # (M, K)
    return floor + (1.0 - K * floor) * w


# -----------------------------------------------------------------------------------------------------------
# log h(u) = log(phi(u) + u Phi(u)), shared by log-EI and the knowledge gradient


def _log1mexp(x):
    """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2 (Maechler 2012, "Accurately computing
    log(1 - exp(-|a|))")."""
    return np.where(x > -np.log(2.0), np.log(-np.expm1(np.minimum(x, -1e-300))), np.log1p(-np.exp(x)))


def log_h(u):
    """log h(u) with h(u) = phi(u) + u Phi(u) (= E[max(u + Z, 0)], Z ~ N(0,1)), finite for every finite u.

    Ament et al. 2023, LogEI (the same branches as BoTorch's _log_ei_helper, notes section 2.1):
      u > -1:        log(phi(u) + u Phi(u)) directly (no cancellation there);
      -1e3 <= u <= -1: h = phi(u) (1 - |u| Phi(u)/phi(u)) and Phi(u)/phi(u) = sqrt(pi/2) erfcx(-u/sqrt 2), so
                     log h = log phi(u) + log1mexp(log(|u| erfcx(-u/sqrt 2)) + log(pi/2)/2);
      u < -1e3:      the asymptotic series h(u) = phi(u)/u^2 (1 - 3/u^2 + 15/u^4 + O(u^-6)) (Abramowitz &
                     Stegun 26.2.12 for the Mills ratio), which is exact to double precision there while the
                     erfcx branch loses digits to 1 - exp(w) with w ~ -1/u^2.
    """
    u = np.asarray(u, dtype=np.float64)
    if np.isnan(u).any():
        raise ValueError("log_h got NaN: the posterior mean or sd it was computed from is NaN (check the GP fit)")
    out = np.empty_like(u)
    direct = u > -1.0
    mid = (u <= -1.0) & (u >= -1e3)
    tail = u < -1e3
    ud = u[direct]
    out[direct] = np.log(np.exp(-0.5 * ud * ud - _LOG_SQRT_2PI) + ud * ndtr(ud))
    um = u[mid]
    w = np.log(-um * erfcx(-um / np.sqrt(2.0))) + _HALF_LOG_PI_OVER_2  # log(|u| Phi(u)/phi(u)) < 0
    out[mid] = -0.5 * um * um - _LOG_SQRT_2PI + _log1mexp(w)
    ut = u[tail]
    with np.errstate(over="ignore", divide="ignore"):  # u = -inf (or u^2 overflowing) gives log h = -inf
        r = 1.0 / (ut * ut)
        out[tail] = -0.5 * ut * ut - _LOG_SQRT_2PI + np.log(r) + np.log1p(-3.0 * r + 15.0 * r * r)
    return out


# -----------------------------------------------------------------------------------------------------------
# Expected improvement (log) and lower confidence bound, for minimization


def log_expected_improvement(mean, sd, best):
    """log EI for MINIMIZATION: log E[max(best - f, 0)], f ~ N(mean, sd^2). (m,), (m,), float -> (m,).

    EI = sd h(u) with u = (best - mean)/sd (Jones et al. 1998, eq. 15, sign-flipped for minimization), so
    log EI = log sd + log h(u) (Ament et al. 2023). best is the incumbent: the best (lowest) posterior
    mean at the TARGET fidelity over the evaluated mixtures (an incumbent taken from small-scale losses, whole
    nats lower, would make EI vanish or explode). sd is clamped at 1e-12 (BoTorch's min_var=1e-12 is on the
    variance; we clamp the sd) so a zero posterior variance gives a finite, very negative value, never NaN.
    """
    mean = np.asarray(mean, dtype=np.float64)
    sd = np.maximum(np.asarray(sd, dtype=np.float64), 1e-12)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(sd)) and np.isfinite(best)):
        raise ValueError("log_expected_improvement needs finite mean, sd and best (check the GP fit)")
    u = (best - mean) / sd  # (m,) standardized improvement
    return np.log(sd) + log_h(u)


def lower_confidence_bound(mean, sd, beta):
    """mu - sqrt(beta) sigma: the optimistic loss, to be MINIMIZED. (m,), (m,), float -> (m,).

    Srinivas et al. 2010, GP-UCB (for maximization; sign-flipped here). beta multiplies the VARIANCE, as in
    BoTorch's UpperConfidenceBound (many libraries write mu - kappa sigma with kappa = sqrt(beta)).
    """
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    return np.asarray(mean, dtype=np.float64) - np.sqrt(beta) * np.asarray(sd, dtype=np.float64)


def srinivas_beta(n_candidates, t, delta=0.1):
    """beta_t = 2 log(|D| t^2 pi^2 / (6 delta)) for a finite domain D (Srinivas et al. 2010, Theorem 1).

    n_candidates = |D|, t >= 1 the iteration number; with probability >= 1 - delta the regret bound holds.
    """
    if n_candidates < 1 or t < 1 or not 0.0 < delta < 1.0:
        raise ValueError(f"srinivas_beta needs n_candidates >= 1, t >= 1, 0 < delta < 1; "
                         f"got {n_candidates}, {t}, {delta}")
    return 2.0 * np.log(n_candidates * t * t * np.pi ** 2 / (6.0 * delta))


# -----------------------------------------------------------------------------------------------------------
# Exact discrete knowledge gradient


def _prefilter(A, B):
    """Lines that can be on the upper envelope: (Z, M) intercepts A, slopes B -> (Z, M) bool, one row per column.

    Frazier's AffineBreakpointsPrep.m filter, made exact: with L, K0, R the lines that are the maximum at
    z -> -inf, z = 0 and z -> +inf, the envelope is above g(z) = max(L, K0, R), which is max(L, K0) for z <= 0
    (R <= K0 there) and max(K0, R) for z >= 0, with kinks p1 <= 0 where K0 overtakes L and p2 >= 0 where R
    overtakes K0. A line minus g is concave and piecewise linear with kinks p1, p2, rising before p1 and
    falling after p2, so it is largest at p1 or p2: a line below g at both kinks is never on the envelope.
    Comparisons that meet NaN (inf * 0 after an overflow) are False, so such lines are kept, never dropped;
    L, K0 and R themselves are always kept. A line that round-off puts just below g at a kink touches the
    envelope over an interval of round-off length at most, so dropping it changes h at round-off level.
    """
    r = np.arange(len(A))
    L = np.argmax(np.where(B == B.min(axis=1, keepdims=True), A, -np.inf), axis=1)  # (Z,) max at z -> -inf
    R = np.argmax(np.where(B == B.max(axis=1, keepdims=True), A, -np.inf), axis=1)  # (Z,) max at z -> +inf
    K0 = np.argmax(A, axis=1)  # (Z,) max at z = 0
    a_L, b_L, a_K, b_K, a_R, b_R = A[r, L], B[r, L], A[r, K0], B[r, K0], A[r, R], B[r, R]  # (Z,) each
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        p1 = np.where(b_K > b_L, (a_L - a_K) / (b_K - b_L), 0.0)[:, None]  # (Z, 1) kink of g left of 0
        p2 = np.where(b_R > b_K, (a_K - a_R) / (b_R - b_K), 0.0)[:, None]  # (Z, 1) kink of g right of 0
        below = (A + B * p1 < a_K[:, None] + b_K[:, None] * p1) & (A + B * p2 < a_K[:, None] + b_K[:, None] * p2)
    below[r, L] = below[r, K0] = below[r, R] = False  # the lines that define g (round-off could drop them)
    return ~below


def _walk(A, B):
    """log h of each row's lines by walking its upper envelope from the left: (Z, M), (Z, M) -> (Z,).
    Rows may be padded with lines (intercept -inf, slope = the row's smallest slope) that never take part."""
    out = np.full(len(A), -np.inf)  # (Z,) log KG, -inf until a term is added
    r = np.arange(len(A))
    j = np.argmax(np.where(B == B.min(axis=1, keepdims=True), A, -np.inf), axis=1)  # (Z,) max at z -> -inf
    a_j, b_j = A[r, j], B[r, j]  # (Z,), (Z,) the current envelope line of each column
    active = r  # (Za,) columns still walking; row k of A, B belongs to column active[k]
    while active.size:
        db = B - b_j[:, None]  # (Za, M) slope gain of each line over the current one
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # db <= 0 is masked to +inf
            c = np.where(db > 0, (a_j[:, None] - A) / db, np.inf)  # (Za, M) crossing points with line j
        i = np.argmin(c, axis=1)  # (Za,) the next envelope line
        r = np.arange(active.size)
        c_next = c[r, i]  # (Za,) the breakpoint between line j and line i
        go = c_next < np.inf  # a column with no steeper line (or a crossing at +inf) has finished
        if not go.all():
            r, i, c_next, active = r[go], i[go], c_next[go], active[go]
        term = np.log(db[r, i]) + log_h(-np.abs(c_next))  # (Za,) log[(b_i - b_j) f(-|c|)], FPD 2009 closed form
        out[active] = np.logaddexp(out[active], term)
        a_j, b_j = A[r, i], B[r, i]
        if not go.all():
            A, B = A[r], B[r]  # drop the finished columns
    return out


def log_knowledge_gradient(a, b, groups=8):
    """log of the exact knowledge gradient for MINIMIZATION, one value per column. a (M,) or (M, Z), b (M, Z) -> (Z,).

    For one candidate measurement z (a column), line i is the posterior mean at x_i of the set A after the
    measurement: a_i + b_i Z with a_i = mu_n(x_i), b_i = Sigma_n(x_i, z) / sqrt(Sigma_n(z, z) + lambda), and
    Z ~ N(0, 1) (FPD 2009: b is their sigma-tilde(Sigma^n, z)). For a loss the value of information is
        KG(z) = min_i a_i - E[min_i (a_i + b_i Z)] = E[max_i (-a_i + b_i Z)] - max_i (-a_i) = h(-a, b)
    (Z and -Z have the same law), h being FPD's max-form. h is computed exactly from the upper envelope of the
    lines a'_i + b_i z (a' = -a):
        h(a', b) = sum_k (b_{j_k+1} - b_{j_k}) f(-|c_k|),  f(s) = s Phi(s) + phi(s)     (FPD 2009, closed form of h)
    over consecutive envelope lines j_1, j_2, ... (increasing slope) meeting at breakpoints c_1 < c_2 < ...,
    and returned as logsumexp_k [log(b_{j_k+1} - b_{j_k}) + log h(-|c_k|)] (f is log_h's h), so values far
    below 1e-300 keep their digits. Columns with one envelope line (e.g. all b equal) give -inf (KG = 0).

    FPD's Alg. 1 builds the envelope with a sort and a stack, sequentially per column. Here every column walks
    its envelope from the left at the same time (vectorized over columns, _walk): start at the line of smallest
    slope (largest intercept among ties: the maximum at z -> -inf); from the current line j the next envelope
    line is the line i with b_i > b_j whose crossing c_i = (a'_j - a'_i)/(b_i - b_j) with line j comes first,
    and c_i is the breakpoint. A column stops at the line of largest slope. The cost is O(M) per envelope line
    per column, so lines that cannot be on the envelope are dropped first (_prefilter; typically 2/3 to 7/8 of
    them), and the columns are walked in `groups` groups of similar kept counts, each packed to its widest
    column. Equal breakpoints (three lines through one point) need no special care: their terms telescope.
    """
    b = np.asarray(b, dtype=np.float64)
    if b.ndim != 2:
        raise ValueError(f"b must be an (M, Z) array (lines x candidate measurements), got shape {b.shape}")
    M, Z = b.shape
    a = np.asarray(a, dtype=np.float64)
    if a.shape == (M,):
        a = a[:, None]  # (M, 1), the same intercepts for every column
    elif a.shape != (M, Z):
        raise ValueError(f"a must have shape ({M},) or ({M}, {Z}) to match b, got {a.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("a and b must be finite (a posterior mean or covariance is NaN/inf: check the GP fit)")
    out = np.full(Z, -np.inf)  # (Z,)
    if M < 2 or Z == 0:
        return out
    # one ROW per column z (Z, M): the reductions below then run over contiguous memory
    A = np.ascontiguousarray(np.broadcast_to(-a, (M, Z)).T)  # (Z, M) max-form intercepts a' = -a
    B = np.ascontiguousarray(b.T)  # (Z, M) slopes
    keep = _prefilter(A, B)  # (Z, M)
    kept = keep.sum(axis=1)  # (Z,) lines left per column
    b_min = B.min(axis=1)  # (Z,)
    for cols in np.array_split(np.argsort(kept, kind="stable"), groups):  # columns with similar counts
        if cols.size == 0:
            continue
        counts = kept[cols]  # (Zg,)
        width = int(counts.max())
        rows, lines = np.nonzero(keep[cols])  # kept (column, line) pairs, row by row
        slot = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)  # place in its packed row
        Ap = np.full((cols.size, width), -np.inf)  # (Zg, width) padding: intercept -inf ...
        Bp = np.repeat(b_min[cols, None], width, axis=1)  # ... and the row's smallest slope
        Ap[rows, slot] = A[cols[rows], lines]
        Bp[rows, slot] = B[cols[rows], lines]
        out[cols] = _walk(Ap, Bp)
    return out


def knowledge_gradient(a, b):
    """Exact knowledge gradient for minimization, exp(log_knowledge_gradient(a, b)) >= 0.
    a (M,) or (M, Z), b (M, Z) -> (Z,)."""
    return np.exp(log_knowledge_gradient(a, b))


# -----------------------------------------------------------------------------------------------------------
# The decision of one BO step, and the recommendation

STRATEGIES = ("mfkg", "kg", "ei", "ucb")


@dataclass(frozen=True)
class Decision:
    """What to run next and why. value is the criterion that was maximized: log(KG / cost) for 'mfkg',
    log KG for 'kg', log EI for 'ei', -LCB for 'ucb'. kg is the knowledge gradient of the choice (loss units;
    None for 'ei' / 'ucb'); cost = cost(scale, steps) + fixed_cost; index is the row of `candidates`."""
    weights: np.ndarray  # (K,)
    scale: float
    steps: int
    strategy: str
    value: float
    kg: float | None
    cost: float
    index: int


def unique_rows(W):
    """Unique mixtures (rows) of W (n, K) -> (E, K), in first-seen order (a run's checkpoints and repeated
    seeds share one mixture; the knowledge gradient's set A needs each mixture once)."""
    _, first = np.unique(W, axis=0, return_index=True)
    return W[np.sort(first)]


def _log_kg_grid(model, candidates, evaluated, fidelities, target, bounds):
    """log KG of measuring each candidate mixture at each fidelity: (C, K), (E, K), F pairs -> (C, F).

    For the measurement z = (w_c, N_f, T_f) the set A is the E evaluated mixtures at the target plus the
    candidate's own projection (w_c, N_target, T_target) (Scott, Frazier & Powell 2011, KGCP), so
        a = [mu_n(A_E); mu_n(p_c)]                                            (E + 1,)
        b = [Sigma_n(A_E, z); Sigma_n(p_c, z)] / sqrt(Sigma_n(z, z) + lambda)    (E + 1,)  (FPD 2009, sigma-tilde)
    The measurements form a grid (mixtures x fidelities): gp.cross_covariance_grid gives every Sigma_n of a
    chunk of mixtures in one call, each projection paired with its own mixture's F columns only. Chunks of
    mixtures keep each (E + 1, columns) array near 2^21 numbers (16 MB; log_knowledge_gradient has a per-call
    cost of its own, so not much smaller). a and b are built measurement-major, (columns, E + 1), and passed
    transposed: log_knowledge_gradient works on one row per measurement, so it needs no copy.
    """
    C, F, E = len(candidates), len(fidelities), len(evaluated)
    s_t, t_t = target
    XA = gp.encode(evaluated, s_t, t_t, bounds)  # (E, K + 2) A_E at the target
    XP = gp.encode(candidates, s_t, t_t, bounds)  # (C, K + 2) the projections p_c
    a_E = gp.predict(model, XA)[0]  # (E,) posterior mean at the target
    a_P = gp.predict(model, XP)[0]  # (C,) same, at the projections
    fid_scale = np.array([s for s, _ in fidelities], dtype=np.float64)  # (F,)
    fid_steps = np.array([t for _, t in fidelities], dtype=np.float64)  # (F,)
    U = gp.encode(candidates[:1].repeat(F, axis=0), fid_scale, fid_steps, bounds)[:, -2:]  # (F, 2) [u_N, u_T]
    chunk = max(1, 2 ** 21 // ((E + 1) * F))  # mixtures per call
    out = []  # (m F,) log KG per chunk, candidate-major
    for start in range(0, C, chunk):
        Wc = candidates[start:start + chunk]  # (m, K)
        m = len(Wc)
        cov, own, var = gp.cross_covariance_grid(model, XA, Wc, U, XP[0, -2:])  # (m, F, E), (m, F), (m, F)
        # a candidate that was evaluated has its projection in A_E already: copy that line so the two are equal
        # bit for bit (own and cov are summed in different orders; a 1e-17 difference in slope would give a
        # spurious KG of ~1e-17 where the exact value is 0, and choose_next's all-zero fallback would not fire)
        c_dup, e_dup = np.nonzero((Wc[:, None, :] == evaluated[None, :, :]).all(axis=2))  # (D,), (D,)
        own[c_dup] = cov[c_dup, :, e_dup]
        sd_y = np.sqrt(var + model.noise_variance).reshape(m * F, 1)  # sd of the observation y (a new run's noise)
        b = np.concatenate([cov.reshape(m * F, E), own.reshape(m * F, 1)], axis=1) / sd_y  # (m F, E + 1)
        a = np.empty((m * F, E + 1))  # intercepts, measurement-major as b
        a[:, :E], a[:, E] = a_E, a_P[start:start + m].repeat(F)  # A_E's shared, then each one's own projection
        out.append(log_knowledge_gradient(a.T, b.T))  # (m F,)
    return np.concatenate(out).reshape(C, F)


def _allowed(candidates, fidelities, available):
    """(C, F) bool: available(w, scale, steps) at every candidate x fidelity (all True without `available`)."""
    if available is None:
        return np.ones((len(candidates), len(fidelities)), dtype=bool)
    allowed = np.array([[bool(available(w, s, t)) for s, t in fidelities] for w in candidates])  # (C, F)
    if not allowed.any():
        raise ValueError("available(...) rejects every candidate at every fidelity: nothing can be run")
    return allowed


def _argmax_allowed(score, candidates, fidelities, available):
    """(c, f) of the largest finite score (C, F) at a pair that available(...) allows, ties to the first pair in
    row-major order (as np.argmax over the allowed pairs); None if there is none. available is a Python call
    per pair (mixbo's: a budget check, plus a lookup for tables; calling it on every pair took 1.7 s over 21,605
    calls in a profiled `python mixbo.py --sim`), so the pairs are tried from the best score down (a stable sort
    keeps ties in row-major order) and the first allowed one ends the search: usually a few calls, never more
    than one per pair."""
    order = np.argsort(-score, axis=None, kind="stable")  # (C F,) flat indices, best first
    for i in order:
        c, f = divmod(int(i), score.shape[1])
        if not np.isfinite(score[c, f]):  # -inf from here on
            return None
        if available is None or available(candidates[c], *fidelities[f]):
            return c, f
    return None


def choose_next(strategy, model, candidates, evaluated, scales, steps, target, bounds, cost=None,
                fixed_cost=0.0, beta=None, available=None):
    """The next run: which mixture, at which scale, for how many steps. Returns a Decision.

    strategy    'mfkg': argmax over candidates x scales x steps of KG(z) / (cost(scale, steps) + fixed_cost);
                'kg': argmax KG(z) with z at the target only; 'ei': argmax log EI at the target; 'ucb': argmin
                of the LCB mu - sqrt(beta) sigma at the target.
    model       a fitted gp.GP (gp.fit_gp) over rows gp.encode(weights, scale, steps, bounds).
    candidates  (C, K) mixtures to choose from (simplex_candidates, or a table's fixed pool).
    evaluated   (n, K) mixtures already run, at any fidelity, repeats allowed (at least one row): they form
                the set A of the knowledge gradient and give EI's incumbent, both at the TARGET fidelity.
    scales, steps  the fidelity grid (ascending tuples); target = (scale, steps); bounds as in gp.encode.
    cost        cost(scale, steps) -> float > 0 (the objective's; required for 'mfkg', otherwise only
                reported in Decision.cost, which is 1 + fixed_cost without it). A run to T steps yields
                every checkpoint <= T for free, so the cost of a run is the cost of its last step.
    fixed_cost  overhead added to the cost of every run (same units as cost), as BoTorch's fixed_cost.
    beta        'ucb' only: None -> the Srinivas et al. 2010 schedule srinivas_beta(C, t), t = number of
                distinct evaluated mixtures + 1, delta = 0.1; a float -> that fixed beta.
    available   optional available(weights, scale, steps) -> bool; pairs it rejects are never chosen
                (table replay: only rows of the table can be run). Called from the best score down until a
                pair is allowed (on every pair only when none with a finite score is).

    How 'mfkg' avoids getting stuck at the cheapest fidelity (facebook/Ax#475, notes section 3.7):
      * KG is the value of a measurement for the posterior mean AT THE TARGET (A holds only target-fidelity
        points): a cheap run counts only as far as the GP says it moves the target-scale losses, and a cheap
        fidelity that is uncorrelated with the target has KG ~ 0 (see tests);
      * KG is exact and in log space (no Monte Carlo): Ax#475 and BoTorch#626 come from one-shot MC KG, whose
        estimation noise gives tiny runs a spurious positive KG that a tiny cost turns into a large ratio;
      * fixed_cost puts a floor under the cost of every run (real runs have start-up, evaluation and
        data-loading overhead), so KG / cost cannot explode as cost -> 0;
      * if every KG is exactly 0 (nothing anywhere is informative, e.g. A has a single line), the candidate
        with the largest posterior sd at the target is run at the TARGET (or, if `available` forbids it
        there, at the most expensive allowed fidelity); value is then -inf and kg 0.0.
    A measurement's KG counts its final checkpoint only: the knowledge gradient of the whole trace of
    checkpoints (taKG, Wu et al. 2019) has no closed form; the last checkpoint alone is exact and a lower bound.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    candidates = np.atleast_2d(np.asarray(candidates, dtype=np.float64))  # (C, K)
    evaluated = np.atleast_2d(np.asarray(evaluated, dtype=np.float64))  # (n, K)
    if len(candidates) == 0 or len(evaluated) == 0 or candidates.shape[1] != evaluated.shape[1]:
        raise ValueError("candidates and evaluated must be non-empty (n, K) arrays with the same K")
    if strategy == "mfkg" and cost is None:
        raise ValueError("strategy 'mfkg' needs cost(scale, steps) -> float (the objective's cost function)")
    evaluated = unique_rows(evaluated)  # (E, K)
    s_t, t_t = target
    fidelities = [(s, t) for s in scales for t in steps] if strategy == "mfkg" else [(s_t, t_t)]
    run_cost = np.array([(cost(s, t) if cost is not None else 1.0) + fixed_cost for s, t in fidelities])  # (F,)
    if not np.all(np.isfinite(run_cost)) or np.any(run_cost <= 0):
        raise ValueError(f"cost(scale, steps) + fixed_cost must be finite and > 0 at every fidelity, got {run_cost}")

    kg = None
    if strategy in ("mfkg", "kg"):
        log_kg = _log_kg_grid(model, candidates, evaluated, fidelities, target, bounds)  # (C, F)
        score = log_kg - np.log(run_cost)[None, :]  # (C, F) log(KG / cost)
        pick = _argmax_allowed(score, candidates, fidelities, available)
        if pick is not None:
            c, f = pick
            kg = float(np.exp(log_kg[c, f]))
        else:  # every allowed KG is 0: explore where the target is most uncertain, at the target if it is
            # allowed, else at the most expensive allowed fidelity
            allowed = _allowed(candidates, fidelities, available)  # (C, F)
            score = np.where(allowed, score, -np.inf)
            prefer = sorted(range(len(fidelities)), key=lambda g: (fidelities[g] != (s_t, t_t), -run_cost[g]))
            f = next(g for g in prefer if allowed[:, g].any())
            _, var = gp.predict(model, gp.encode(candidates, s_t, t_t, bounds))  # (C,) at the target
            c = int(np.argmax(np.where(allowed[:, f], var, -np.inf)))
            kg = 0.0
        value = float(score[c, f])
    else:
        mean, var = gp.predict(model, gp.encode(candidates, s_t, t_t, bounds))  # (C,), (C,) at the target
        sd = np.sqrt(var)
        if strategy == "ei":
            best = float(gp.predict(model, gp.encode(evaluated, s_t, t_t, bounds))[0].min())  # target incumbent
            score = log_expected_improvement(mean, sd, best)  # (C,)
        else:
            b = srinivas_beta(len(candidates), len(evaluated) + 1) if beta is None else float(beta)
            score = -lower_confidence_bound(mean, sd, b)  # (C,) maximize -LCB
        pick = _argmax_allowed(score[:, None], candidates, fidelities, available)
        if pick is None:  # no allowed finite score: argmax of the score masked by every pair's availability
            score = np.where(_allowed(candidates, fidelities, available)[:, 0], score, -np.inf)
        c, f = (int(np.argmax(score)), 0) if pick is None else pick
        value = float(score[c])
    s, t = fidelities[f]
    return Decision(weights=candidates[c].copy(), scale=float(s), steps=int(t), strategy=strategy,
                    value=value, kg=kg, cost=float(run_cost[f]), index=int(c))


def recommend(model, mixtures, target, bounds):
    """The mixture to recommend now: argmin over `mixtures` (m, K) of the posterior mean at the target.
    Returns (index, mean, sd): the row, its posterior mean and latent sd at the target (loss units)."""
    mixtures = np.atleast_2d(np.asarray(mixtures, dtype=np.float64))  # (m, K)
    if len(mixtures) == 0:
        raise ValueError("recommend needs at least one mixture to choose from")
    mean, var = gp.predict(model, gp.encode(mixtures, target[0], target[1], bounds))  # (m,), (m,)
    i = int(np.argmin(mean))
    return i, float(mean[i]), float(np.sqrt(var[i]))
