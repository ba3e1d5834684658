"""
Acquisition for mixbo: which mixture to train next, at which model scale and for how many steps.

On a fitted gp.GP and finite candidate sets: exact, no inner optimizer, no Monte Carlo.
  simplex_candidates        mixtures drawn on the simplex, on its faces and around incumbents.
  log_expected_improvement  EI for minimization as log EI (Ament et al. 2023, NeurIPS, "LogEI").
  lower_confidence_bound    GP-UCB, sign-flipped for losses (Srinivas et al. 2010, ICML).
  log_knowledge_gradient    the exact discrete knowledge gradient (Frazier, Powell & Dayanik 2009,
                            INFORMS J. Comput. 21(4)) with the set A of KGCP (Scott et al. 2011).
  choose_next               one BO step: 'mfkg' = KG / cost over mixtures x scales x steps
                            (Poloczek et al. 2017 misoKG; Wu et al. 2019 taKG), exact by branch and
                            bound on an upper bound of KG; 'kg', 'ei', 'ucb' at the target.
  recommend                 the argmin of the posterior mean at the target.
Losses are MINIMIZED; arrays are float64. Shapes: D domains, C candidate mixtures, F fidelities,
E evaluated mixtures, M lines of a knowledge gradient, Z candidate measurements.
"""

from dataclasses import dataclass

import numpy as np
from scipy.special import erfcx, ndtr

import gp

_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)
_HALF_LOG_PI_OVER_2 = 0.5 * np.log(np.pi / 2.0)

# -------------------------------------------------------------------------------------------------
# Candidate mixtures on the simplex


def _dirichlet(rng, alpha):
    """Dirichlet draws, one per row of alpha (n, D) -> (n, D), exact for tiny alpha: the normalized
    gamma vector, Gamma(alpha) as in Marsaglia & Tsang (2000): G ~ Gamma(alpha + 1), U ~ U(0, 1),
        G U^(1/alpha) ~ Gamma(alpha)
    in logs (Gamma(alpha) underflows to 0 for small alpha: a row of zeros would give 0/0)."""
    log_g = np.log(rng.standard_gamma(alpha + 1.0))  # drawn first, then U: the seeded order
    log_gamma = log_g + np.log(rng.uniform(size=alpha.shape)) / alpha
    w = np.exp(log_gamma - log_gamma.max(axis=1, keepdims=True))  # largest entry 1, none NaN
    return w / w.sum(axis=1, keepdims=True)


def _snap_to_face(w, zero_below):
    """Weights below zero_below set to exactly 0, rows renormalized: (n, D) -> (n, D). The largest
    weight of a row is >= 1/D > zero_below, so no row becomes all zeros."""
    w = np.where(w < zero_below, 0.0, w)
    return w / w.sum(axis=1, keepdims=True)


def simplex_candidates(n_domains, n_global, seed, incumbents=None, n_local=256, floor=0.0,
                       concentrations=(20.0, 200.0)):
    """Candidate mixtures (rows >= 0 summing to 1 within 1e-12), drawn on the simplex directly
    (rejection sampling runs dry at >= 7 weights: facebook/Ax#3867). Returns (rows, D), in order:
      - the D vertices and the uniform mixture 1/D;
      - n_global // 2 draws from Dirichlet(1, ..., 1), uniform on the simplex;
      - n_global - n_global // 2 sparse draws from Dirichlet(alpha, ..., alpha), one alpha per draw,
        log-uniform in [min(1/D, 1/2), 1/2]: mass on a few domains up to about half of them.
        Weights below zero_below = 0.1/D are then set to EXACTLY 0 (at most 10% of the mass), so
        these lie on faces, edges and vertices, where mixture optima often sit;
      - with incumbents (m, D): the incumbents, then n_local draws split evenly over them from a
        Dirichlet centred on each incumbent w0, alternating over `concentrations` c:
            alpha = c w0 + 1/D
        (one pseudo-count spread evenly, so zero weights may become positive; mean ~ w0, the sd of a
        weight w is sqrt(w (1 - w) / (c + 2)): c = 20 steps about a lengthscale, c = 200 refines),
        snapped to faces as above.
    floor in [0, 1/D]: each row finally becomes floor + (1 - D floor) w (weights >= floor); seeded.
    """
    n_domains, n_global, n_local = int(n_domains), int(n_global), int(n_local)
    if n_domains < 2:
        raise ValueError(f"simplex_candidates needs n_domains >= 2, got {n_domains}")
    if n_global < 0 or n_local < 0:
        raise ValueError(f"n_global and n_local must be >= 0, got {n_global} and {n_local}")
    if not 0.0 <= floor <= 1.0 / n_domains:
        raise ValueError(f"floor must be in [0, 1/n_domains] = [0, {1.0 / n_domains:.4g}] so the "
                         f"weights can sum to 1, got {floor}")
    rng = np.random.default_rng(seed)
    zero_below = 0.1 / n_domains
    parts = [np.eye(n_domains), np.full((1, n_domains), 1.0 / n_domains)]  # vertices, uniform
    parts.append(_dirichlet(rng, np.ones((n_global // 2, n_domains))))
    log_alpha = rng.uniform(np.log(min(1.0 / n_domains, 0.5)), np.log(0.5),
                            size=(n_global - n_global // 2, 1))  # one alpha per sparse draw
    alpha = np.repeat(np.exp(log_alpha), n_domains, axis=1)
    parts.append(_snap_to_face(_dirichlet(rng, alpha), zero_below))
    if incumbents is not None:
        inc = np.atleast_2d(np.asarray(incumbents, dtype=np.float64))  # (m, D)
        if inc.shape[1] != n_domains or not np.all(np.isfinite(inc)) or np.any(inc < 0) \
                or np.any(np.abs(inc.sum(axis=1) - 1.0) > 1e-9):
            raise ValueError(f"incumbents must be an (m, {n_domains}) array of mixtures "
                             f"(weights >= 0 summing to 1)")
        parts.append(inc / inc.sum(axis=1, keepdims=True))
        if n_local > 0 and len(inc) > 0:
            centre = np.repeat(inc, -(-n_local // len(inc)), axis=0)[:n_local]  # (n_local, D) w0
            conc = np.resize(np.asarray(concentrations, dtype=np.float64), n_local)[:, None]
            if np.any(conc <= 0):
                raise ValueError(f"concentrations must be > 0, got {concentrations}")
            local = _dirichlet(rng, conc * centre + 1.0 / n_domains)  # alpha = c w0 + 1/D
            parts.append(_snap_to_face(local, zero_below))
    return floor + (1.0 - n_domains * floor) * np.concatenate(parts, axis=0)


# -------------------------------------------------------------------------------------------------
# log h(u) = log(phi(u) + u Phi(u)), shared by log EI and the knowledge gradient


def _log1mexp(x):
    """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2.
    Maechler 2012, "Accurately computing log(1 - exp(-|a|))"."""
    return np.where(x > -np.log(2.0), np.log(-np.expm1(np.minimum(x, -1e-300))),
                    np.log1p(-np.exp(x)))


def log_h(u):
    """log h(u), h(u) = phi(u) + u Phi(u) = E[max(u + Z, 0)] for Z ~ N(0, 1); finite for finite u.

    The branches of Ament et al. 2023 (as BoTorch's _log_ei_helper):
      u > -1:          log(phi(u) + u Phi(u)) directly (no cancellation there);
      -1e3 <= u <= -1: h = phi(u) (1 - |u| Phi(u)/phi(u)), and with
          Phi(u)/phi(u) = sqrt(pi/2) erfcx(-u/sqrt 2)
          log h = log phi(u) + log1mexp(log(|u| erfcx(-u/sqrt 2)) + log(pi/2)/2)
      u < -1e3:        the asymptotic series of the Mills ratio (Abramowitz & Stegun 26.2.12),
          h(u) = phi(u) / u^2 (1 - 3/u^2 + 15/u^4 + O(u^-6))
        exact to double precision there, where 1 - exp(w) with w ~ -1/u^2 would lose digits.
    """
    u = np.asarray(u, dtype=np.float64)
    if np.isnan(u).any():
        raise ValueError("log_h got NaN: the posterior mean or sd it came from is NaN "
                         "(check the GP fit)")
    out = np.empty_like(u)
    direct, tail = u > -1.0, u < -1e3
    mid = ~direct & ~tail  # -1e3 <= u <= -1 (u is not NaN)
    ud, um, ut = u[direct], u[mid], u[tail]
    out[direct] = np.log(np.exp(-0.5 * ud * ud - _LOG_SQRT_2PI) + ud * ndtr(ud))
    log_ratio = np.log(-um * erfcx(-um / np.sqrt(2.0))) + _HALF_LOG_PI_OVER_2  # < 0
    out[mid] = -0.5 * um * um - _LOG_SQRT_2PI + _log1mexp(log_ratio)
    with np.errstate(over="ignore", divide="ignore"):  # u = -inf (or u^2 overflowing): -inf
        r = 1.0 / (ut * ut)
        out[tail] = -0.5 * ut * ut - _LOG_SQRT_2PI + np.log(r) + np.log1p(-3.0 * r + 15.0 * r * r)
    return out


# -------------------------------------------------------------------------------------------------
# Expected improvement (log) and lower confidence bound, for minimization


def log_expected_improvement(mean, sd, best):
    """log E[max(best - f, 0)] for f ~ N(mean, sd^2): (m,), (m,), float -> (m,). best is the
    incumbent (the caller's lowest posterior mean at the fidelity EI is taken at). sd is clamped at
    1e-12 (BoTorch clamps the variance at 1e-12): zero variance gives a finite value, never NaN.
    EI = sd h(u), u = (best - mean) / sd (Jones et al. 1998, eq. 15, sign-flipped for minimization):
        log EI = log sd + log h(u)    (Ament et al. 2023)"""
    mean = np.asarray(mean, dtype=np.float64)
    sd = np.maximum(np.asarray(sd, dtype=np.float64), 1e-12)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(sd)) and np.isfinite(best)):
        raise ValueError("log_expected_improvement needs finite mean, sd and best "
                         "(check the GP fit)")
    return np.log(sd) + log_h((best - mean) / sd)


def lower_confidence_bound(mean, sd, beta):
    """The optimistic loss, to be MINIMIZED: (m,), (m,), float -> (m,). beta multiplies the
    VARIANCE, as in BoTorch's UpperConfidenceBound (kappa = sqrt(beta) in mu - kappa sigma).
        LCB = mu - sqrt(beta) sigma    (Srinivas et al. 2010, GP-UCB, sign-flipped)"""
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    return np.asarray(mean, dtype=np.float64) - np.sqrt(beta) * np.asarray(sd, dtype=np.float64)


def srinivas_beta(n_candidates, t, delta=0.1):
    """beta_t for a finite domain D of n_candidates points at iteration t >= 1; the regret bound
    holds with probability >= 1 - delta.
        beta_t = 2 log(|D| t^2 pi^2 / (6 delta))    (Srinivas et al. 2010, Theorem 1)"""
    if n_candidates < 1 or t < 1 or not 0.0 < delta < 1.0:
        raise ValueError(f"srinivas_beta needs n_candidates >= 1, t >= 1, 0 < delta < 1; "
                         f"got {n_candidates}, {t}, {delta}")
    return 2.0 * np.log(n_candidates * t * t * np.pi ** 2 / (6.0 * delta))


# -------------------------------------------------------------------------------------------------
# Exact discrete knowledge gradient


def _max_line(A, B, slope):
    """Per row of lines (Z, M), the index (Z,) of the largest intercept among the lines of slope
    `slope` (Z, 1): with the row's smallest (largest) slope, the maximum at z -> -inf (+inf)."""
    return np.argmax(np.where(B == slope, A, -np.inf), axis=1)


def _prefilter(A, B):
    """Lines that can be on the upper envelope: intercepts A, slopes B (Z, M) -> (Z, M) bool.

    Frazier's AffineBreakpointsPrep.m filter, made exact. The envelope is above g(z), the max of
    the lines `left`, `at_zero`, `right` that are the maximum at z -> -inf, 0, +inf; g has kinks
    p1 <= 0 and p2 >= 0. A line minus g is concave and piecewise linear with kinks p1, p2, so a
    line below g at both kinks is never on the envelope. Comparisons that meet NaN (inf * 0 after an
    overflow) are False, so such lines are kept, as are g's three. A line that round-off puts just
    below g at a kink touches the envelope on an interval of round-off length at most.
    """
    rows = np.arange(len(A))
    left = _max_line(A, B, B.min(axis=1, keepdims=True))
    right = _max_line(A, B, B.max(axis=1, keepdims=True))
    at_zero = np.argmax(A, axis=1)
    a_l, b_l, a_0, b_0 = A[rows, left], B[rows, left], A[rows, at_zero], B[rows, at_zero]
    a_r, b_r = A[rows, right], B[rows, right]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        p1 = np.where(b_0 > b_l, (a_l - a_0) / (b_0 - b_l), 0.0)[:, None]  # (Z, 1)
        p2 = np.where(b_r > b_0, (a_0 - a_r) / (b_r - b_0), 0.0)[:, None]  # (Z, 1)
        g1, g2 = a_0[:, None] + b_0[:, None] * p1, a_0[:, None] + b_0[:, None] * p2
        below = (A + B * p1 < g1) & (A + B * p2 < g2)
    below[rows, left] = below[rows, at_zero] = below[rows, right] = False
    return ~below


def _walk(A, B):
    """log h of each row's lines by walking its upper envelope from the left: (Z, M) x 2 -> (Z,).
    Rows may be padded with lines (intercept -inf, the row's smallest slope) that take no part."""
    out = np.full(len(A), -np.inf)  # -inf (KG = 0) until a term is added
    active = np.arange(len(A))  # the rows still walking; row k of A, B belongs to active[k]
    j = _max_line(A, B, B.min(axis=1, keepdims=True))  # start: the maximum at z -> -inf
    a_j, b_j = A[active, j], B[active, j]  # the current envelope line of each row
    while active.size:
        slope_gain = B - b_j[:, None]  # (Za, M)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            crossing = np.where(slope_gain > 0, (a_j[:, None] - A) / slope_gain, np.inf)
        i = np.argmin(crossing, axis=1)  # the next envelope line: the first crossing
        r = np.arange(active.size)
        c = crossing[r, i]  # the breakpoint between lines j and i
        go = c < np.inf  # a row with no steeper line (or a crossing at +inf) has finished
        if not go.all():
            r, i, c, active = r[go], i[go], c[go], active[go]
        # FPD 2009, the closed form of h: one term (b_i - b_j) f(-|c|) per breakpoint
        out[active] = np.logaddexp(out[active], np.log(slope_gain[r, i]) + log_h(-np.abs(c)))
        a_j, b_j = A[r, i], B[r, i]
        if not go.all():
            A, B = A[r], B[r]
    return out


def log_knowledge_gradient(a, b, groups=8):
    """log of the exact knowledge gradient for MINIMIZATION, one value per column z:
    a (M,) or (M, Z), b (M, Z) -> (Z,); -inf where KG = 0 (e.g. all slopes equal).

    Line i is the posterior mean at x_i after measuring z: a_i + b_i Z, Z ~ N(0, 1), with
    a_i = mu_n(x_i) and b_i = Sigma_n(x_i, z) / sqrt(Sigma_n(z, z) + lambda) (FPD 2009's
    sigma-tilde). Since Z and -Z have the same law, with a' = -a,
        KG(z) = min_i a_i - E[min_i (a_i + b_i Z)] = E[max_i (a'_i + b_i Z)] - max_i a'_i = h(a', b)
    and h is exact on the upper envelope of the lines a'_i + b_i z: envelope lines j_1, j_2, ... of
    increasing slope meeting at breakpoints c_1 < c_2 < ...,
        h(a', b) = sum_k (b_{j_k+1} - b_{j_k}) f(-|c_k|),  f(s) = s Phi(s) + phi(s)   (FPD 2009)
    summed as logsumexp_k [log(b_{j_k+1} - b_{j_k}) + log_h(-|c_k|)], so values far below 1e-300
    keep their digits. Equal breakpoints (three lines through a point) telescope.

    FPD's Alg. 1 sorts and stacks each column in turn; here all columns walk their envelopes from
    the left at once (_walk: the next line is the steeper one crossing the current first, O(M) a
    line), after _prefilter drops lines that cannot be on them, in `groups` of similar counts."""
    b = np.asarray(b, dtype=np.float64)
    if b.ndim != 2:
        raise ValueError(f"b must be an (M, Z) array (lines x candidate measurements), "
                         f"got {b.shape}")
    n_lines, n_columns = b.shape
    a = np.asarray(a, dtype=np.float64)
    if a.shape == (n_lines,):
        a = a[:, None]  # the same intercepts for every column
    elif a.shape != (n_lines, n_columns):
        raise ValueError(f"a must have shape ({n_lines},) or ({n_lines}, {n_columns}) to match b, "
                         f"got {a.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("a and b must be finite (a posterior mean or covariance is NaN/inf: "
                         "check the GP fit)")
    out = np.full(n_columns, -np.inf)
    if n_lines < 2 or n_columns == 0:
        return out
    # one ROW per column z, (Z, M): the reductions run over contiguous memory
    A = np.ascontiguousarray(np.broadcast_to(-a, (n_lines, n_columns)).T)  # max-form intercepts a'
    B = np.ascontiguousarray(b.T)
    keep = _prefilter(A, B)
    kept = keep.sum(axis=1)  # (Z,) lines left per column
    b_min = B.min(axis=1)
    for cols in np.array_split(np.argsort(kept, kind="stable"), groups):  # similar counts together
        if cols.size == 0:
            continue
        counts = kept[cols]
        width = int(counts.max())
        rows, lines = np.nonzero(keep[cols])  # kept (column, line) pairs, row by row
        slot = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)  # place in row
        A_packed = np.full((cols.size, width), -np.inf)  # padding: intercept -inf and ...
        B_packed = np.repeat(b_min[cols, None], width, axis=1)  # ... the row's smallest slope
        A_packed[rows, slot] = A[cols[rows], lines]
        B_packed[rows, slot] = B[cols[rows], lines]
        out[cols] = _walk(A_packed, B_packed)
    return out


def knowledge_gradient(a, b):
    """The exact knowledge gradient for minimization, exp(log_knowledge_gradient(a, b)) >= 0:
    a (M,) or (M, Z), b (M, Z) -> (Z,)."""
    return np.exp(log_knowledge_gradient(a, b))


def log_knowledge_gradient_bound(a, sd):
    """An upper bound on log_knowledge_gradient(a, b) for EVERY b with |b_i| <= sd_i:
    a, sd (M, Z) -> (Z,). For every Z, b_i Z <= sd_i |Z| = max(sd_i Z, -sd_i Z), so with a' = -a
        E[max_i (a'_i + b_i Z)] <= E[max_i max(a'_i + sd_i Z, a'_i - sd_i Z)]
    and the bound is the knowledge gradient of the 2M lines (a_i, sd_i) and (a_i, -sd_i)."""
    return log_knowledge_gradient(np.concatenate([a, a]), np.concatenate([sd, -sd]))


# -------------------------------------------------------------------------------------------------
# The decision of one BO step, and the recommendation

STRATEGIES = ("mfkg", "kg", "ei", "ucb")
_CHUNK = 2 ** 21  # numbers per (measurements, E + 1) array of the KG (16 MB): bounds the memory
# pairs whose KG comes first; any size is exact, see bench/README.md ("The acquisition step")
_FIRST_ROUND = 256


@dataclass(frozen=True)
class Decision:
    """What to run next and why. value is the criterion maximized: log(KG / cost) for 'mfkg', log KG
    for 'kg', log EI for 'ei', -LCB for 'ucb'. kg: the choice's knowledge gradient (loss units; None
    for 'ei' / 'ucb'); cost = cost(scale, steps) + fixed_cost; index: the row of candidates."""
    weights: np.ndarray  # (D,)
    scale: float
    steps: int
    strategy: str
    value: float
    kg: float | None
    cost: float
    index: int


def unique_rows(W):
    """The distinct rows of W (n, D) -> (E, D), in first-seen order (the knowledge gradient's set A
    needs each mixture once, however many runs share it)."""
    _, first = np.unique(W, axis=0, return_index=True)
    return W[np.sort(first)]


def _target_posterior(model, mixtures, target, bounds):
    """Posterior mean and sd (m,), (m,) of each mixture's loss at the target (scale, steps)."""
    mean, var = gp.predict(model, gp.encode(mixtures, target[0], target[1], bounds))
    return mean, np.sqrt(var)


def _kg_may_reach(a, b, floor):
    """(Z,) bool: False only where the KG of the row's lines, intercepts a and slopes b (Z, M), is
    provably below exp(floor) (Z,), in O(M) a row. With r the row's lowest line, d_i = a_r - a_i
    <= 0 and e_i = |b_i - b_r|, the KG is
        E[max_i (d_i + (b_i - b_r) Z)]    (line r is one of them and E[b_r Z] = 0)
    and a max of terms >= 0 is at most their sum:
        KG <= (max_i b_i - min_i b_i) phi(0)                                     (d_i <= 0)
        KG <= sum_i E[(d_i + e_i Z)^+] = sum_i e_i h(d_i / e_i)
        h(u) <= phi(u) / (1 + u^2) for u <= 0    (Gordon 1941, Ann. Math. Stat. 12, Mills ratio)
    The first screens the rows, the second is summed where it does not settle them (both + 1e-6
    relative, for round-off); rows with floor <= -600, where terms may underflow, are True. u^2 is
    capped at 1400 (exp's underflow is slow): a term it raises stays below 1e-304 e_i."""
    slack = np.exp(np.minimum(floor, 700.0) - 1e-6)  # (Z,) exp(floor), a little less
    may = (b.max(axis=1) - b.min(axis=1)) * np.exp(-_LOG_SQRT_2PI) >= slack
    rows = np.flatnonzero(may & (floor > -600.0))
    A, B = a[rows], b[rows]
    r = np.argmin(A, axis=1)[:, None]  # each row's lowest line
    d2, e = np.square(A - np.take_along_axis(A, r, 1)), np.abs(B - np.take_along_axis(B, r, 1))
    with np.errstate(over="ignore"):  # e = 0: d = 0 gives 0, else the cap; the term is 0
        u2 = np.minimum(d2 / (e * e + 1e-300), 1400.0)
    terms = e * np.exp(-0.5 * u2 - _LOG_SQRT_2PI) / (1.0 + u2)
    may[rows] = terms.sum(axis=1) >= slack[rows]
    return may


def _log_kg_chunk(model, W, U, u_target, XA, evaluated, mean_E, mean_W, want, floor=None):
    """log KG (m, f) of measuring each mixture of W (m, D) at each encoded fidelity U (f, 2) where
    want (m, f) is True, -inf elsewhere. For z = (w, N_f, T_f) the set A is the evaluated mixtures
    at the target, XA (E, D + 2), plus the candidate's projection p = (w, N_target, T_target)
    (Scott, Frazier & Powell 2011, KGCP):
        a = [mu_n(A_E); mu_n(p)]
        b = [Sigma_n(A_E, z); Sigma_n(p, z)] / sqrt(Sigma_n(z, z) + lambda)    (FPD 2009)
    with lambda the noise variance of a new observation. floor (m, f): a pair _kg_may_reach rules
    out (KG < exp(floor)) gets -inf, unwalked."""
    cov, own, var = gp.cross_covariance_grid(model, XA, W, U, u_target)  # (m, f, E), (m, f), (m, f)
    m, f, E = cov.shape
    # an evaluated candidate has its projection in A_E already: copy that line so the two are equal
    # bit for bit (a 1e-17 difference in slope would give a spurious KG of 1e-17 instead of 0)
    c_dup, e_dup = np.nonzero((W[:, None, :] == evaluated[None, :, :]).all(axis=2))
    own[c_dup] = cov[c_dup, :, e_dup]
    cov, own, mean_z = cov.reshape(m * f, E), own.reshape(m * f), mean_W.repeat(f)
    sd_y = np.sqrt(var.reshape(m * f) + model.noise_variance)  # sd of the new observation y

    def lines(pick):  # (a, b) (z, E + 1) of the pairs pick (flat indices), a row each
        a = np.column_stack([np.broadcast_to(mean_E, (pick.size, E)), mean_z[pick]])
        return a, np.column_stack([cov[pick], own[pick]]) / sd_y[pick, None]

    pick, out = np.flatnonzero(want), np.full(m * f, -np.inf)
    if floor is not None:  # lines in blocks that stay in the cache, kept where they may reach
        floor = floor.reshape(m * f)
        pick = np.concatenate([p[_kg_may_reach(*lines(p), floor[p])]
                               for p in np.array_split(pick, max(1, -(-pick.size // 2048)))])
    out[pick] = log_knowledge_gradient(*(x.T for x in lines(pick)))  # the lines as columns
    return out.reshape(m, f)


def _log_kg_pairs(model, candidates, evaluated, fidelities, target, bounds, means, pairs,
                  floor=None):
    """log KG (C, F) of measuring candidate c at fidelity f where pairs (C, F) is True, -inf
    elsewhere. means = (mean_E, mean_C): the posterior means at the target of evaluated (E, D) and
    of candidates; floor (C, F), optional: a pair whose KG provably lies below it may be left at
    -inf. The grid of candidates with a pair x fidelities with one takes as few calls as _CHUNK
    allows (most of a call's time does not grow with it): blocks of fidelities, then mixtures."""
    mean_E, mean_C = means
    XA = gp.encode(evaluated, target[0], target[1], bounds)  # (E, D + 2)
    U = gp.encode_fidelities(*zip(*fidelities), bounds)  # (F, 2)
    u_target = gp.encode_fidelities([target[0]], [target[1]], bounds)[0]  # (2,)
    out, n = np.full(pairs.shape, -np.inf), len(evaluated) + 1  # n: lines per pair
    rows, columns = np.flatnonzero(pairs.any(axis=1)), np.flatnonzero(pairs.any(axis=0))
    n_blocks = min(columns.size, -(-columns.size * rows.size * n // _CHUNK))  # 0 without pairs
    for f in np.array_split(columns, n_blocks) if n_blocks else ():
        rows_f = rows[pairs[np.ix_(rows, f)].any(axis=1)]  # not empty: each f has a pair
        for c in np.array_split(rows_f, -(-rows_f.size * f.size * n // _CHUNK)):
            g = np.ix_(c, f)  # the grid c x f
            out[g] = _log_kg_chunk(model, candidates[c], U[f], u_target, XA, evaluated, mean_E,
                                   mean_C[c], pairs[g], None if floor is None else floor[g])
    return out


def _log_kg_grid(model, candidates, evaluated, fidelities, target, bounds):
    """log KG (C, F) of measuring each candidate mixture (C, D) at each fidelity (scale, steps)."""
    means = [_target_posterior(model, x, target, bounds)[0] for x in (evaluated, candidates)]
    pairs = np.ones((len(candidates), len(fidelities)), dtype=bool)
    return _log_kg_pairs(model, candidates, evaluated, fidelities, target, bounds, means, pairs)


def _log_kg_bounds(model, mean_E, sd_E, mean_C, sd_C):
    """(C,) log of an upper bound on the KG of measuring candidate c at ANY fidelity. By
    Cauchy-Schwarz on the posterior covariance every slope of c's lines is at most its line's sd,
        |b_i| = |Sigma_n(x_i, z)| / sqrt(Sigma_n(z, z) + lambda) <= sigma_n(x_i)
    and log_knowledge_gradient_bound does the rest. Variances floored at 1e-8 y_scale^2, the bound
    raised by 1e-6 (relative): round-off in a computed KG does not cross it."""
    floor = 1e-8 * model.y_scale ** 2
    out = np.empty(len(mean_C))
    chunk = max(1, _CHUNK // (2 * (len(mean_E) + 1)))  # candidates per call
    for start in range(0, len(mean_C), chunk):
        c = slice(start, start + chunk)
        shape = (len(mean_E), len(mean_C[c]))
        a = np.vstack([np.broadcast_to(mean_E[:, None], shape), mean_C[c]])  # (E + 1, c)
        sd = np.vstack([np.broadcast_to(sd_E[:, None], shape), sd_C[c]])  # (E + 1, c)
        out[c] = log_knowledge_gradient_bound(a, np.sqrt(sd ** 2 + floor)) + 1e-6
    return out


def _allowed(candidates, fidelities, available):
    """(C, F) bool: available(w, scale, steps) at every pair (all True without `available`)."""
    if available is None:
        return np.ones((len(candidates), len(fidelities)), dtype=bool)
    allowed = np.array([[bool(available(w, s, t)) for s, t in fidelities] for w in candidates])
    if not allowed.any():
        raise ValueError("available(...) rejects every candidate at every fidelity: "
                         "nothing can be run")
    return allowed


def _argmax_allowed(score, candidates, fidelities, available):
    """(c, f) of the largest finite score (C, F) at a pair that available(...) allows, ties to the
    first pair in row-major order (as np.argmax over the allowed pairs); None if there is none.
    available may be slow (a Python call per pair), so pairs are tried from the best score down (a
    stable sort keeps ties in row-major order) and the first allowed one ends the search."""
    if available is None:
        c, f = divmod(int(np.argmax(score)), score.shape[1])
        return (c, f) if np.isfinite(score[c, f]) else None
    for i in np.argsort(-score, axis=None, kind="stable"):  # flat indices, best first
        c, f = divmod(int(i), score.shape[1])
        if not np.isfinite(score[c, f]):  # -inf from here on
            return None
        if available(candidates[c], *fidelities[f]):
            return c, f
    return None


def _choose_by_kg(model, candidates, evaluated, fidelities, run_cost, target, bounds, available):
    """(c, f, value, kg) of the largest allowed log(KG / cost) over candidates x fidelities.

    Branch and bound, exact: bound (C, F) >= log(KG / cost) at every pair (_log_kg_bounds). The KG
    of the _FIRST_ROUND pairs with the largest bounds comes first, then that of every pair whose
    bound reaches the best allowed score so far, walked only where _kg_may_reach does not rule it
    out: no pair left out can reach it, so the argmax (ties included) is the one over all pairs. If
    every allowed KG is 0, the candidate with the largest posterior sd at the target is run at the
    target (if allowed, else at the most expensive allowed fidelity): value -inf, kg 0.0."""
    mean_E, sd_E = _target_posterior(model, evaluated, target, bounds)
    mean_C, sd_C = _target_posterior(model, candidates, target, bounds)
    log_cost = np.log(run_cost)
    if len(fidelities) > 1:
        bound = _log_kg_bounds(model, mean_E, sd_E, mean_C, sd_C)[:, None] - log_cost  # (C, F)
        n_first = min(_FIRST_ROUND, bound.size)
    else:  # one fidelity: the bound would cost about as much as the KGs it could save
        bound, n_first = np.full((len(candidates), 1), np.inf), len(candidates)
    log_kg = np.full(bound.shape, -np.inf)  # -inf where not computed

    def best_allowed(pairs, floor=None):  # the KG at pairs, then the best allowed (c, f) or None
        log_kg[pairs] = _log_kg_pairs(model, candidates, evaluated, fidelities, target, bounds,
                                      (mean_E, mean_C), pairs, floor)[pairs]
        return _argmax_allowed(log_kg - log_cost, candidates, fidelities, available)

    first = np.zeros(bound.shape, dtype=bool)
    first.flat[np.argpartition(-bound, n_first - 1, axis=None)[:n_first]] = True
    pick = best_allowed(first)
    best = -np.inf if pick is None else log_kg[pick] - log_cost[pick[1]]
    rest = ~first & (bound >= best)
    if rest.any():  # a pair whose KG / cost provably stays below best is left at -inf
        pick = best_allowed(rest, np.broadcast_to(best + log_cost, bound.shape))
    if pick is not None:
        c, f = pick
        return c, f, float(log_kg[c, f] - log_cost[f]), float(np.exp(log_kg[c, f]))
    allowed = _allowed(candidates, fidelities, available)  # every allowed KG is 0, all computed
    prefer = sorted(range(len(fidelities)),
                    key=lambda g: (fidelities[g] != tuple(target), -run_cost[g]))
    f = next(g for g in prefer if allowed[:, g].any())
    c = int(np.argmax(np.where(allowed[:, f], sd_C, -np.inf)))
    return c, f, -np.inf, 0.0


def _choose_by_ei_or_ucb(strategy, model, candidates, evaluated, target, bounds, beta, available):
    """(c, value) of the largest allowed log EI or -LCB at the target (masked by available at every
    candidate when no allowed score is finite)."""
    mean, sd = _target_posterior(model, candidates, target, bounds)
    if strategy == "ei":
        best = float(_target_posterior(model, evaluated, target, bounds)[0].min())  # the incumbent
        score = log_expected_improvement(mean, sd, best)
    else:
        b = srinivas_beta(len(candidates), len(evaluated) + 1) if beta is None else float(beta)
        score = -lower_confidence_bound(mean, sd, b)
    pick = _argmax_allowed(score[:, None], candidates, [tuple(target)], available)
    if pick is None:
        score = np.where(_allowed(candidates, [tuple(target)], available)[:, 0], score, -np.inf)
    c = int(np.argmax(score)) if pick is None else pick[0]
    return c, float(score[c])


def choose_next(strategy, model, candidates, evaluated, scales, steps, target, bounds, cost=None,
                fixed_cost=0.0, beta=None, available=None):
    """The next run: which mixture, at which scale, for how many steps. Returns a Decision.

    strategy    'mfkg': argmax over candidates x scales x steps of
                    KG(z) / (cost(scale, steps) + fixed_cost)
                'kg': argmax KG(z) at the target only; 'ei': argmax log EI at the target; 'ucb':
                argmin of the LCB mu - sqrt(beta) sigma at the target.
    model       a fitted gp.GP (gp.fit_gp) over rows gp.encode(weights, scale, steps, bounds).
    candidates  (C, D) mixtures to choose from.
    evaluated   (n, D) mixtures already run, at any fidelity, repeats allowed (at least one row):
                the set A of the knowledge gradient and EI's incumbent, both at the TARGET fidelity.
    scales, steps  the fidelity grid (ascending); target = (scale, steps); bounds as in gp.encode.
    cost        cost(scale, steps) -> float > 0 (required for 'mfkg'; else only reported, 1 if
                None). A run to T steps yields every checkpoint <= T: it costs what its last does.
    fixed_cost  overhead added to the cost of every run (the units of cost), as BoTorch's.
    beta        'ucb' only: None -> srinivas_beta(C, t), t = distinct evaluated mixtures + 1.
    available   optional available(weights, scale, steps) -> bool; rejected pairs are never chosen.
                It is called from the best score down until a pair is allowed.

    'mfkg' does not get stuck at the cheapest fidelity (facebook/Ax#475): KG values a measurement
    by how it moves the posterior mean AT THE TARGET (A holds only target points), so a cheap
    fidelity uncorrelated with the target has KG ~ 0; KG is exact, in log space (the one-shot Monte
    Carlo KG of Ax#475 and BoTorch#626 gives tiny runs a spurious positive KG that a tiny cost
    inflates); fixed_cost floors every run's cost. If every KG is exactly 0 (e.g. A is one line),
    the candidate with the largest posterior sd at the target is run there: value -inf, kg 0.0.
    A measurement's KG counts its final checkpoint only: the KG of the whole trace of checkpoints
    (taKG, Wu et al. 2019) has no closed form; the last checkpoint alone is exact and a lower bound.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    candidates = np.atleast_2d(np.asarray(candidates, dtype=np.float64))  # (C, D)
    evaluated = np.atleast_2d(np.asarray(evaluated, dtype=np.float64))  # (n, D)
    if len(candidates) == 0 or len(evaluated) == 0 or candidates.shape[1] != evaluated.shape[1]:
        raise ValueError("candidates and evaluated must be non-empty (n, D) arrays with the same D")
    if strategy == "mfkg" and cost is None:
        raise ValueError("strategy 'mfkg' needs cost(scale, steps) -> float (the objective's cost)")
    evaluated = unique_rows(evaluated)  # (E, D)
    fidelities = [(s, t) for s in scales for t in steps] if strategy == "mfkg" else [tuple(target)]
    run_cost = np.array([(cost(s, t) if cost is not None else 1.0) + fixed_cost
                         for s, t in fidelities])  # (F,)
    if not np.all(np.isfinite(run_cost)) or np.any(run_cost <= 0):
        raise ValueError(f"cost(scale, steps) + fixed_cost must be finite and > 0 at every "
                         f"fidelity, got {run_cost}")
    if strategy in ("mfkg", "kg"):
        c, f, value, kg = _choose_by_kg(model, candidates, evaluated, fidelities, run_cost, target,
                                        bounds, available)
    else:
        c, value = _choose_by_ei_or_ucb(strategy, model, candidates, evaluated, target, bounds,
                                        beta, available)
        f, kg = 0, None
    s, t = fidelities[f]
    return Decision(weights=candidates[c].copy(), scale=float(s), steps=int(t), strategy=strategy,
                    value=value, kg=kg, cost=float(run_cost[f]), index=int(c))


def recommend(model, mixtures, target, bounds, draws=()):
    """The mixture to recommend now: argmin over mixtures (m, D) of the posterior mean at the
    target. Returns (index, mean, sd): its row, posterior mean and latent sd there (loss units);
    given draws (GPs on sampled hyperparameters), the mean and sd of their mixture there."""
    mixtures = np.atleast_2d(np.asarray(mixtures, dtype=np.float64))
    if len(mixtures) == 0:
        raise ValueError("recommend needs at least one mixture to choose from")
    mean, sd = _target_posterior(model, mixtures, target, bounds)
    i = int(np.argmin(mean))
    if not draws:
        return i, float(mean[i]), float(sd[i])
    mean, var = gp.predict_mixture(draws, gp.encode(mixtures[i:i + 1], *target, bounds))
    return i, float(mean[0]), float(np.sqrt(var[0]))
