"""Tests for acquisition.py: every test compares with an independent oracle (a closed form, a
transcription of Frazier's sequential algorithm, numerical integration, Monte Carlo on a GP refitted
with the fantasy, mpmath, BoTorch, the exhaustive grid) on the same inputs.
Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_acquisition.py"""

import mpmath
import numpy as np
import pytest
from scipy.stats import norm

import acquisition as acq
import gp


def f_direct(s):
    """f(s) = s Phi(s) + phi(s) (FPD 2009), straight from the definition in 50-digit mpmath (the
    double-precision formula cancels for s < -5)."""
    mpmath.mp.dps = 50
    f = lambda v: float(v * mpmath.ncdf(v) + mpmath.npdf(v))
    return np.array([f(mpmath.mpf(v)) for v in np.ravel(s).tolist()]).reshape(np.shape(s))


def kg_sequential(a, b):
    """Oracle: FPD 2009 Alg. 1 as in Frazier's AffineBreakpointsPrep.m / AffineBreakpoints.m, one
    column, max-form h(a', b) with a' = -a (minimization). Sort by (b, a'), keep the largest a'
    per b, stack the envelope."""
    ap = -np.asarray(a, dtype=np.float64)
    order = np.lexsort((ap, b))  # by b, then a'
    ap, b = ap[order], b[order]
    keep = np.append(b[1:] != b[:-1], True)  # last of each equal-b run has the largest a'
    ap, b = ap[keep], b[keep]
    stack, c = [0], [-np.inf]
    for i in range(1, len(b)):
        while True:
            j = stack[-1]
            cj = (ap[j] - ap[i]) / (b[i] - b[j])
            if len(stack) > 1 and cj <= c[-1]:
                stack.pop(), c.pop()
                continue
            break
        c.append(cj)
        stack.append(i)
    return sum((b[stack[k + 1]] - b[stack[k]]) * f_direct(-abs(c[k + 1]))
               for k in range(len(stack) - 1))


def kg_integral(a, b, grid=400001):
    """Oracle: KG = min a - E[min_i (a_i + b_i Z)] by the trapezoid rule on [-12, 12]."""
    z = np.linspace(-12.0, 12.0, grid)
    g = np.min(a[:, None] + b[:, None] * z[None, :], axis=0)  # (grid,)
    return a.min() - np.trapezoid(g * norm.pdf(z), z)


# -------------------------------------------------------------------------------------------------
# exact discrete KG


def test_two_lines_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 200))
    b = rng.normal(size=(2, 200))
    got = acq.knowledge_gradient(a, b)
    db = np.abs(b[1] - b[0])
    want = db * f_direct(-np.abs(a[1] - a[0]) / db)  # FPD 2009's f, two alternatives
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # independent beliefs: b = (sigma_tilde, 0) gives sigma_tilde f(-|a_x - a_other| / sigma_tilde)
    got = acq.knowledge_gradient(np.array([1.0, 1.3]), np.array([[0.2], [0.0]]))
    np.testing.assert_allclose(got, 0.2 * f_direct(-0.3 / 0.2), rtol=1e-12)


def test_kg_matches_sequential_algorithm_and_integral():
    rng = np.random.default_rng(1)
    M, Z = 25, 40
    a = rng.normal(size=M)
    b = rng.normal(size=(M, Z))
    b[3] = b[4]  # equal slopes in every column
    b[:, 0] = np.round(b[:, 0], 1)  # many ties in one column
    got = acq.knowledge_gradient(a, b)
    want = np.array([kg_sequential(a, b[:, z]) for z in range(Z)])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-300)
    for z in range(3):
        np.testing.assert_allclose(got[z], kg_integral(a, b[:, z]), rtol=1e-7)


def test_prefilter_and_grouping_change_nothing():
    # the exact prefilter + packed groups against the plain envelope walk over all lines, on many
    # lines with duplicates, equal slopes and slopes 1e-15 apart
    rng = np.random.default_rng(11)
    M, Z = 150, 600
    a = rng.normal(size=(M, Z)) * rng.uniform(0.01, 1, size=Z)
    b = rng.normal(size=(M, Z)) * rng.uniform(0.01, 1, size=Z)
    a[10], b[10] = a[11], b[11]  # duplicated line
    b[20] = b[21]  # equal slopes
    b[30] = b[31] * (1 + 1e-15)  # nearly equal slopes
    want = acq._walk(np.ascontiguousarray(-a.T), np.ascontiguousarray(b.T))
    for groups in (1, 3, 8):
        got = acq.log_knowledge_gradient(a, b, groups=groups)
        np.testing.assert_allclose(got, want, rtol=1e-13)
    kept = acq._prefilter(np.ascontiguousarray(-a.T), np.ascontiguousarray(b.T))
    assert kept.mean() < 0.5  # it does prune


def test_kg_nonnegative_and_zero_for_equal_slopes():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(30, 500))
    b = rng.normal(size=(30, 500)) * rng.uniform(0, 2, size=500)
    assert np.all(acq.knowledge_gradient(a, b) >= 0.0)
    equal = np.broadcast_to(rng.normal(size=500), (30, 500))
    assert np.all(acq.knowledge_gradient(a, equal) == 0.0)
    assert np.all(acq.log_knowledge_gradient(a, equal) == -np.inf)


def test_kg_invariant_to_permuting_and_duplicating_lines():
    rng = np.random.default_rng(3)
    a = rng.normal(size=20)
    b = rng.normal(size=(20, 300))
    base = acq.log_knowledge_gradient(a, b)
    p = rng.permutation(20)
    np.testing.assert_allclose(acq.log_knowledge_gradient(a[p], b[p]), base, rtol=1e-12)
    d = np.concatenate([np.arange(20), [0, 5, 5, 19]])
    np.testing.assert_allclose(acq.log_knowledge_gradient(a[d], b[d]), base, rtol=1e-12)


def test_log_kg_keeps_digits_far_below_double_range():
    # two lines meeting at c = 60: KG = |db| f(-60) ~ 1e-785, not representable as a double
    got = acq.log_knowledge_gradient(np.array([0.0, 60.0]), np.array([[0.0], [1.0]]))[0]
    mpmath.mp.dps = 40
    s = mpmath.mpf(-60)
    want = float(mpmath.log(s * mpmath.ncdf(s) + mpmath.npdf(s)))
    assert np.isfinite(got) and abs(got - want) < 1e-12 * abs(want)


def _gp_problem(seed=0, D=3):
    """A small fitted GP over (w, scale, steps), and its search space. A constant mean: every prior
    variance is then a hyperparameter, which _refit_at_data_mean can rescale exactly (the scaling
    law's fixed, vague coefficient variance could not be)."""
    rng = np.random.default_rng(seed)
    scales, steps = (1e6, 1e7), (100, 400)
    bounds = (scales[0], scales[-1], steps[0], steps[-1])
    W = acq.simplex_candidates(D, 16, seed)[D + 1:D + 13]  # (12, D) interior and sparse mixtures
    S = rng.choice(scales, size=len(W))
    T = rng.choice(steps, size=len(W))
    y = (3.0 + 2.0 / np.log(S) * 10 + 30.0 / np.sqrt(T) + ((W - [0.5, 0.3, 0.2]) ** 2).sum(1)
         + 0.02 * rng.normal(size=len(W)))
    X = gp.encode(W, S, T, bounds)
    model = gp.fit_gp(X, y, D, gp.Config(mean="constant"), seed=0, restarts=2)
    return model, W, scales, steps, bounds, X, y


def _refit_at_data_mean(model, X, x_new):
    """The posterior after observing y_new = mean(y) at x_new, hyperparameters fixed: gp.fit_gp with
    `hyperparameters` on the data plus the fantasy. fit_gp standardizes y again; at y_new = mean(y)
    the new mean is unchanged (the GP's prior mean, the data mean, stays the same) and the new scale
    is s' = s sqrt(n / (n + 1)), so the natural-unit model is kept by multiplying every variance
    hyperparameter (standardized units) by (s / s')^2. Returns the refitted GP and y_new."""
    y_new = model.y_mean
    y2 = np.append(model.y, y_new)
    r2 = (model.y_scale / y2.std()) ** 2
    variances = ("amplitude", "noise", "run_noise", "level_deviation", "mean_coupling")
    h = {k: (v * r2 if k in variances else v) for k, v in model.hyperparameters.items()}
    cfg = model.config
    refit = gp.fit_gp(np.vstack([X, x_new]), y2, model.n_weights, cfg, hyperparameters=h)
    assert abs(refit.y_mean - model.y_mean) < 1e-12 * abs(model.y_mean)
    return refit, y_new


def test_kg_agrees_with_monte_carlo_fantasies_on_a_fitted_gp():
    model, W, scales, steps, bounds, X, y = _gp_problem()
    target = (scales[-1], steps[-1])
    A = np.vstack([W, [[0.45, 0.35, 0.2]]])  # evaluated mixtures + the candidate's mixture
    XA = gp.encode(A, *target, bounds)  # (|A|, d) at the target
    z = gp.encode(A[-1:], scales[0], steps[-1], bounds)  # (1, d) a new run at the small scale
    log_kg = acq._log_kg_grid(model, A[-1:], W, [(scales[0], steps[-1])], target, bounds)[0, 0]
    # Bayes' rule makes the fantasy posterior mean affine in y:
    #     mu_{n+1}(A) = mu_n(A) + beta (y - mu_n(z))
    # One explicit refit with the fantasized point (y = the data mean, hyperparameters fixed) gives
    # beta exactly, and then 10^6 fantasies need no 10^6 refits.
    mu_A, _ = gp.predict(model, XA)
    mu_z, var_z = gp.predict(model, z)
    refit, y_new = _refit_at_data_mean(model, X, z)
    assert abs(y_new - mu_z[0]) > 0.1 * np.sqrt(var_z[0])  # the refit moves the posterior
    beta = (gp.predict(refit, XA)[0] - mu_A) / (y_new - mu_z[0])  # (|A|,)
    # the refit agrees with the posterior covariance the acquisition uses (lambda: both noises)
    cov, _ = gp.cross_covariance(model, XA, z)
    want = cov[:, 0] / (var_z[0] + model.noise_variance)
    np.testing.assert_allclose(beta, want, rtol=1e-6, atol=1e-9)
    sd_y = np.sqrt(var_z[0] + model.noise_variance)  # predictive sd of the observation
    rng = np.random.default_rng(0)
    fantasies = mu_z[0] + sd_y * rng.standard_normal(10 ** 6)  # (10^6,) y ~ predictive distribution
    means = mu_A[:, None] + beta[:, None] * (fantasies[None, :] - mu_z[0])  # (|A|, 10^6) posteriors
    gain = mu_A.min() - means.min(axis=0)  # (10^6,)
    se = gain.std() / np.sqrt(gain.size)
    assert gain.mean() > 10 * se  # the check is informative: KG is clearly > 0 here
    assert abs(np.exp(log_kg) - gain.mean()) < 3 * se


# -------------------------------------------------------------------------------------------------
# log h, log EI, LCB


def test_log_h_against_mpmath_across_branches():
    u = np.array([-1e7, -1e5, -1e3 - 1e-6, -1e3, -999.0, -40.0, -10.0, -1.0 - 1e-9, -1.0, -0.3, 0.0,
                  2.0, 40.0])
    got = acq.log_h(u)
    mpmath.mp.dps = 60
    want = np.array([float(mpmath.log(mpmath.npdf(v) + v * mpmath.ncdf(v)))
                     for v in map(mpmath.mpf, u.tolist())])
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-14)


def test_log_ei_equals_log_of_direct_ei_and_is_finite_at_minus_40():
    rng = np.random.default_rng(4)
    mean = rng.normal(size=2000)
    sd = rng.uniform(0.05, 2.0, size=2000)
    best = 0.1
    u = (best - mean) / sd
    ok = u > -5  # where the direct formula is representable and free of cancellation
    direct = sd * (u * norm.cdf(u) + norm.pdf(u))  # Jones et al. 1998 eq. 15, minimization
    got = acq.log_expected_improvement(mean, sd, best)
    np.testing.assert_allclose(got[ok], np.log(direct[ok]), rtol=1e-11)
    got = acq.log_expected_improvement(np.array([40.0]), np.array([1.0]), 0.0)[0]  # u = -40
    assert np.isfinite(got) and abs(got - (-808.29856835662)) < 1e-9
    assert np.isfinite(acq.log_expected_improvement(np.array([1.0]), np.array([0.0]), 0.0)[0])


def test_log_ei_and_ucb_match_botorch():
    import torch
    from botorch.acquisition.analytic import LogExpectedImprovement, UpperConfidenceBound
    from botorch.utils.testing import MockModel, MockPosterior

    rng = np.random.default_rng(5)
    mean, sd = rng.normal(size=500), rng.uniform(1e-3, 2.0, size=500)
    mean[:5] = 30.0  # u ~ -15 .. -3e4: deep in the tail
    post = MockPosterior(mean=torch.tensor(mean).reshape(500, 1, 1),
                         variance=torch.tensor(sd ** 2).reshape(500, 1, 1))
    X = torch.zeros(500, 1, 1, dtype=torch.float64)
    best_f = torch.tensor(0.2, dtype=torch.float64)  # a python float would become a float32 buffer
    want = LogExpectedImprovement(MockModel(post), best_f=best_f, maximize=False)(X).numpy()
    np.testing.assert_allclose(acq.log_expected_improvement(mean, sd, 0.2), want, rtol=1e-9)
    want = UpperConfidenceBound(MockModel(post), beta=2.5, maximize=False)(X).numpy()  # -LCB
    np.testing.assert_allclose(-acq.lower_confidence_bound(mean, sd, 2.5), want, rtol=1e-12)


def test_srinivas_beta_formula():
    want = 2 * np.log(100 * 9 * np.pi ** 2 / 0.6)
    assert acq.srinivas_beta(100, 3, 0.1) == pytest.approx(want, rel=1e-14)


# -------------------------------------------------------------------------------------------------
# candidates


@pytest.mark.parametrize("D", [2, 5, 17, 40])
def test_candidates_lie_on_the_simplex(D):
    inc = acq.simplex_candidates(D, 4, 9)[-2:]  # two sparse incumbents, zeros included
    C = acq.simplex_candidates(D, 500, 7, incumbents=inc, n_local=100)
    assert C.shape == (D + 1 + 500 + 2 + 100, D)
    assert np.all(C >= 0.0) and np.all(np.abs(C.sum(1) - 1.0) <= 1e-12)
    np.testing.assert_array_equal(C[:D], np.eye(D))
    np.testing.assert_allclose(C[D], np.full(D, 1.0 / D), rtol=1e-15)
    sparse = C[D + 1 + 250:D + 1 + 500]
    # on a face (exact zeros); with D = 2, alpha = 1/2 leaves fewer
    assert np.mean((sparse == 0.0).any(1)) > (0.2 if D == 2 else 0.5)
    assert np.all(sparse[sparse > 0] >= 0.1 / D * 0.999)  # nothing left below the snapping point
    local = C[-100:]
    dist = np.abs(local - np.repeat(inc, 50, axis=0)).sum(1)  # L1 distance to its incumbent
    random_dist = np.abs(C[D + 1:D + 251, None] - inc[None]).sum(-1)
    assert np.median(dist) < np.median(random_dist)  # closer than random
    again = acq.simplex_candidates(D, 500, 7, incumbents=inc, n_local=100)
    np.testing.assert_array_equal(C, again)  # seeded
    floor = 0.2 / D
    F = acq.simplex_candidates(D, 500, 7, incumbents=inc, n_local=100, floor=floor)
    assert np.all(F >= floor) and np.all(np.abs(F.sum(1) - 1.0) <= 1e-12)


def test_candidates_reject_bad_input():
    with pytest.raises(ValueError, match="floor"):
        acq.simplex_candidates(4, 10, 0, floor=0.3)
    with pytest.raises(ValueError, match="incumbents"):
        acq.simplex_candidates(3, 10, 0, incumbents=np.array([[0.5, 0.6, 0.0]]))


# -------------------------------------------------------------------------------------------------
# the decision


def _two_fidelity_gp(N_lengthscale):
    """A GP with fixed hyperparameters over (w, scale) with two scales: the cheap scale's losses are
    perfectly correlated with the target's (N_lengthscale 1e5: k_N(0, 1) = 1 - 1e-10) or
    uncorrelated (0.01: k_N ~ 1e-96)."""
    D, scales, steps = 3, (1e6, 1e8), (1000,)
    bounds = (scales[0], scales[-1], steps[0], steps[-1])
    W = acq.simplex_candidates(D, 20, 3)[D + 1:D + 9]  # (8, D)
    S = np.array([1e6, 1e8] * 4)
    y = 3.0 + ((W - 0.3) ** 2).sum(1) + np.where(S == 1e6, 0.5, 0.0)
    h = {"noise": 1e-2, "amplitude": 1.0, "w_lengthscale": np.full(D, 0.3),
         "N_lengthscale": np.array([N_lengthscale]), "T_lengthscale": np.array([1.0])}
    config = gp.Config(mean="constant", run_noise=False, scale_deviation=False)
    model = gp.fit_gp(gp.encode(W, S, 1000, bounds), y, D, config, hyperparameters=h)
    return model, W, scales, steps, bounds


@pytest.mark.parametrize("N_lengthscale, want_scale", [(1e5, 1e6), (0.01, 1e8)])
def test_mfkg_picks_cheap_fidelity_only_when_it_informs_the_target(N_lengthscale, want_scale):
    model, W, scales, steps, bounds = _two_fidelity_gp(N_lengthscale)
    cand = acq.simplex_candidates(3, 200, 4, incumbents=W[:2])
    cost = lambda s, t: s / 1e8  # the cheap scale costs 1% of the target
    d = acq.choose_next("mfkg", model, cand, W, scales, steps, (1e8, 1000), bounds, cost=cost)
    assert d.scale == want_scale and d.kg > 0
    # the same mixture measured at the target: equal KG when correlated, the cheap KG ~ 0 when not
    fids = [(1e6, 1000), (1e8, 1000)]
    grid = acq._log_kg_grid(model, cand[d.index:d.index + 1], W, fids, (1e8, 1000), bounds)
    if N_lengthscale > 1:
        np.testing.assert_allclose(grid[0, 0], grid[0, 1], rtol=1e-6)
        assert d.cost == pytest.approx(0.01)
    else:
        assert grid[0, 0] < grid[0, 1] - 50  # KG(cheap) < e^-50 KG(target)


def test_choose_next_strategies_and_recommend():
    model, W, scales, steps, bounds, X, y = _gp_problem(seed=1)
    target = (scales[-1], steps[-1])
    cand = acq.simplex_candidates(3, 100, 5, incumbents=W[:1])
    Xc = gp.encode(cand, *target, bounds)
    mean, var = gp.predict(model, Xc)
    best = gp.predict(model, gp.encode(W, *target, bounds))[0].min()  # incumbent at the target
    d = acq.choose_next("ei", model, cand, W, scales, steps, target, bounds)
    assert d.index == np.argmax(acq.log_expected_improvement(mean, np.sqrt(var), best))
    assert (d.scale, d.steps) == target and d.kg is None
    d = acq.choose_next("ucb", model, cand, W, scales, steps, target, bounds, beta=4.0)
    assert d.index == np.argmin(mean - 2.0 * np.sqrt(var))
    d = acq.choose_next("kg", model, cand, W, scales, steps, target, bounds)
    assert (d.scale, d.steps) == target and d.value == pytest.approx(np.log(d.kg))
    cost = lambda s, t: s * t / (scales[-1] * steps[-1])
    only_cheap = lambda w, s, t: s == scales[0]
    d = acq.choose_next("mfkg", model, cand, W, scales, steps, target, bounds, cost=cost,
                        fixed_cost=0.05, available=only_cheap)
    assert d.scale == scales[0] and d.cost == pytest.approx(cost(d.scale, d.steps) + 0.05)
    i, m, s = acq.recommend(model, W, target, bounds)
    assert i == np.argmin(gp.predict(model, gp.encode(W, *target, bounds))[0]) and s > 0
    with pytest.raises(ValueError, match="unknown strategy"):
        acq.choose_next("pi", model, cand, W, scales, steps, target, bounds)
    with pytest.raises(ValueError, match="cost"):
        acq.choose_next("mfkg", model, cand, W, scales, steps, target, bounds)


@pytest.mark.parametrize("strategy", ["mfkg", "kg", "ei", "ucb"])
def test_available_searched_from_the_best_equals_masking_every_pair(strategy):
    """choose_next calls `available` from the best score down; oracle: mask the score with
    available() at every pair, argmax (ties to the first pair in row-major order, checked on an
    all-equal score)."""
    model, W, scales, steps, bounds, X, y = _gp_problem(seed=1)
    target = (scales[-1], steps[-1])
    cand = acq.simplex_candidates(3, 100, 5, incumbents=W[:1])
    fids = [(s, t) for s in scales for t in steps] if strategy == "mfkg" else [target]
    cost = lambda s, t: s * t / (scales[-1] * steps[-1])
    rejected = {i for i in range(len(cand)) if i % 3 != 1}  # 2 in 3 candidates at every fidelity
    calls = []

    def available(w, s, t):
        calls.append(1)
        i = int(np.flatnonzero((cand == w).all(axis=1))[0])
        return i not in rejected or (s, t) == fids[-1] and i % 2 == 0  # some, at one fidelity

    mask = np.array([[available(w, s, t) for s, t in fids] for w in cand])  # (C, F) every pair
    calls.clear()
    if strategy in ("mfkg", "kg"):
        log_kg = acq._log_kg_grid(model, cand, W, fids, target, bounds)
        score = log_kg - np.log([cost(*f) for f in fids])
    else:
        mean, var = gp.predict(model, gp.encode(cand, *target, bounds))
        best = gp.predict(model, gp.encode(W, *target, bounds))[0].min()
        score = (acq.log_expected_improvement(mean, np.sqrt(var), best) if strategy == "ei"
                 else -acq.lower_confidence_bound(mean, np.sqrt(var), 4.0))[:, None]
    c, f = np.unravel_index(np.argmax(np.where(mask, score, -np.inf)), score.shape)
    d = acq.choose_next(strategy, model, cand, W, scales, steps, target, bounds, cost=cost,
                        beta=4.0, available=available)
    assert (d.index, d.scale, d.steps) == (c, *fids[f])
    assert d.value == pytest.approx(score[c, f], rel=1e-12)
    assert 1 <= len(calls) < mask.size  # stopped at the first allowed pair
    # ties: equal scores everywhere, the first allowed pair in row-major order wins, as the argmax
    # over the mask does
    tied = acq._argmax_allowed(np.zeros_like(score), cand, fids, available)
    assert tied == np.unravel_index(np.argmax(mask), mask.shape)


def test_mfkg_runs_at_the_target_when_no_measurement_is_informative():
    # one candidate equal to the only evaluated mixture: both lines of A coincide, every KG is 0
    model, W, scales, steps, bounds = _two_fidelity_gp(1e5)
    cost = lambda s, t: s / 1e8
    d = acq.choose_next("mfkg", model, W[:1], W[:1], scales, steps, (1e8, 1000), bounds, cost=cost)
    assert d.kg == 0.0 and d.value == -np.inf and (d.scale, d.steps) == (1e8, 1000)
    only_cheap = lambda w, s, t: s == 1e6  # the target is not allowed: the fallback obeys it
    d = acq.choose_next("mfkg", model, W[:1], W[:1], scales, steps, (1e8, 1000), bounds, cost=cost,
                        available=only_cheap)
    assert d.kg == 0.0 and d.scale == 1e6


def test_fixed_cost_stops_weakly_informative_cheap_runs():
    # N_lengthscale 0.5: the cheap scale's best KG is ~6% of the target's. At 1% of the cost it
    # still wins KG/cost when runs are free to start; an overhead of 0.2 target runs makes the
    # target win.
    model, W, scales, steps, bounds = _two_fidelity_gp(0.5)
    cand = acq.simplex_candidates(3, 200, 4, incumbents=W[:2])
    grid = acq._log_kg_grid(model, cand, W, [(1e6, 1000), (1e8, 1000)], (1e8, 1000), bounds)
    assert 0.01 < np.exp(grid[:, 0].max() - grid[:, 1].max()) < 0.2
    cost = lambda s, t: s / 1e8
    d = acq.choose_next("mfkg", model, cand, W, scales, steps, (1e8, 1000), bounds, cost=cost)
    assert d.scale == 1e6
    d = acq.choose_next("mfkg", model, cand, W, scales, steps, (1e8, 1000), bounds, cost=cost,
                        fixed_cost=0.2)
    assert d.scale == 1e8 and d.cost == pytest.approx(1.2)


# -------------------------------------------------------------------------------------------------
# branch and bound: the bound, and the decision it must not change


def test_kg_bound_is_above_every_slope_within_the_sds_and_equals_its_integral():
    rng = np.random.default_rng(12)
    M, Z = 12, 300
    a = rng.normal(size=(M, Z)) * rng.uniform(0.01, 1, size=Z)
    sd = rng.uniform(0.0, 1.0, size=(M, Z)) * rng.uniform(0.01, 1, size=Z)
    bound = acq.log_knowledge_gradient_bound(a, sd)
    for extreme in (False, True):  # slopes inside the band, or on its edges
        u = rng.uniform(-1, 1, size=(M, Z))
        b = sd * (np.sign(u) if extreme else u)
        assert np.all(acq.log_knowledge_gradient(a, b) <= bound + 1e-12)
    # oracle: E[max_i (-a_i + sd_i |Z|)] - max_i (-a_i) by the trapezoid rule
    z = np.linspace(-12.0, 12.0, 400001)
    for col in range(3):
        g = np.max(-a[:, col, None] + sd[:, col, None] * np.abs(z)[None, :], axis=0)
        want = np.trapezoid(g * norm.pdf(z), z) - np.max(-a[:, col])
        np.testing.assert_allclose(np.exp(bound[col]), want, rtol=1e-7)


def test_kg_may_reach_never_rules_out_a_kg_at_its_floor_and_is_gordons_bound_for_two_lines():
    """_kg_may_reach: True wherever the exact KG reaches the floor (random lines); for two lines,
    u = d / e apart, it is True just below e phi(u) / (1 + u^2) and False just above (h(0) = phi(0):
    exact at u = 0); floors <= -600 are never ruled out."""
    rng = np.random.default_rng(21)
    M, Z = 9, 400
    a = rng.normal(size=(M, Z)) * rng.uniform(0.01, 1, size=Z)
    b = rng.normal(size=(M, Z)) * rng.uniform(1e-3, 1, size=Z)
    b[:, :5] = 0.3  # equal slopes: KG = 0
    exact = acq.log_knowledge_gradient(a, b)
    assert np.all(acq._kg_may_reach(a.T, b.T, exact))
    assert not acq._kg_may_reach(a.T, b.T, np.full(Z, 1.0))[:5].any()
    u = np.array([0.0, -1.0, -3.0, -30.0])
    A, B = np.column_stack([np.zeros_like(u), -u]), np.column_stack([np.zeros_like(u), np.ones(4)])
    gordon = np.array([float(mpmath.log(mpmath.npdf(x) / (1 + x * x))) for x in u])
    assert gordon[0] == pytest.approx(acq.log_h(np.zeros(1))[0], rel=1e-14)
    assert acq._kg_may_reach(A, B, gordon - 1e-7).all()
    assert not acq._kg_may_reach(A, B, gordon + 2e-6).any()
    assert acq._kg_may_reach(A[-1:] * 1e3, B[-1:], np.array([-600.0])).all()


def _fixed_case():
    """A GP with fixed hyperparameters: 14 runs over 3 scales x 3 checkpoints, 300 candidates."""
    rng = np.random.default_rng(7)
    D, scales, steps = 3, (1e6, 4e6, 1.6e7), (250, 500, 1000)
    bounds = (scales[0], scales[-1], steps[0], steps[-1])
    W = rng.dirichlet(np.ones(D), size=14)
    S = rng.choice(scales, size=14)
    Wn, Sn = np.tile(W, (3, 1)), np.tile(S, 3)
    Tn = np.repeat(np.array(steps, dtype=float), 14)
    y = (2.0 + 40.0 / Sn ** 0.3 + 5.0 / Tn ** 0.3 + ((Wn - [0.5, 0.3, 0.2]) ** 2).sum(1)
         + 0.01 * rng.normal(size=42))
    h = {"noise": 1e-3, "amplitude": 0.8, "w_lengthscale": np.array([0.3, 0.4, 0.5]),
         "N_lengthscale": np.array([0.7]), "T_lengthscale": np.array([1.2])}
    config = gp.Config(kernel_w="matern52", mean="constant", run_noise=False,
                       scale_deviation=False)
    model = gp.fit_gp(gp.encode(Wn, Sn, Tn, bounds), y, D, config, hyperparameters=h)
    cand = acq.simplex_candidates(D, 300, 8, incumbents=W[:2], n_local=40)
    cost = lambda s, t: s * t / (1.6e7 * 1000)
    return model, W, cand, scales, steps, bounds, cost


def test_mfkg_decision_is_the_one_before_branch_and_bound():
    """The decisions the exhaustive search (every pair's KG) made on this fixed case."""
    model, W, cand, scales, steps, bounds, cost = _fixed_case()
    target = (1.6e7, 1000)
    d = acq.choose_next("mfkg", model, cand, W, scales, steps, target, bounds, cost=cost)
    assert (d.index, d.scale, d.steps) == (274, 4e6, 250)
    assert d.value == pytest.approx(-1.0799718403738305, rel=1e-9)
    assert d.kg == pytest.approx(0.02122531804141469, rel=1e-9)
    d = acq.choose_next("mfkg", model, cand, W, scales, steps, target, bounds, cost=cost,
                        fixed_cost=0.05)
    assert (d.index, d.scale, d.steps) == (274, 4e6, 250)
    assert d.value == pytest.approx(-1.6677585052759496, rel=1e-9)
    d = acq.choose_next("kg", model, cand, W, scales, steps, target, bounds)
    assert (d.index, d.scale, d.steps) == (256, 1.6e7, 1000)
    assert d.value == pytest.approx(-3.081392705159738, rel=1e-9)


@pytest.mark.parametrize("case", ["fixed", "fixed_cost", "uncorrelated", "correlated"])
def test_branch_and_bound_equals_the_exhaustive_argmax(case, monkeypatch):
    """Oracle: the KG of every pair (_log_kg_grid), argmax of log(KG / cost). The bound must hold at
    every pair, and on the fixed case it must also leave pairs uncomputed."""
    if case.startswith("fixed"):
        model, W, cand, scales, steps, bounds, cost = _fixed_case()
        target, fixed_cost = (1.6e7, 1000), (0.05 if case == "fixed_cost" else 0.0)
    else:
        model, W, scales, steps, bounds = _two_fidelity_gp(1e5 if case == "correlated" else 0.01)
        cand = acq.simplex_candidates(3, 200, 4, incumbents=W[:2])
        cost, target, fixed_cost = (lambda s, t: s / 1e8), (1e8, 1000), 0.0
    fids = [(s, t) for s in scales for t in steps]
    log_cost = np.log([cost(*f) + fixed_cost for f in fids])
    log_kg = acq._log_kg_grid(model, cand, W, fids, target, bounds)  # (C, F) every pair
    score = log_kg - log_cost
    mean_E, sd_E = acq._target_posterior(model, acq.unique_rows(W), target, bounds)
    mean_C, sd_C = acq._target_posterior(model, cand, target, bounds)
    bound = acq._log_kg_bounds(model, mean_E, sd_E, mean_C, sd_C)  # (C,)
    assert np.all(log_kg <= bound[:, None])
    computed = []
    log_kg_pairs = acq._log_kg_pairs
    monkeypatch.setattr(acq, "_log_kg_pairs", lambda *a: computed.append(a[7].sum()) or
                        log_kg_pairs(*a))
    walked, log_knowledge_gradient = [0], acq.log_knowledge_gradient
    monkeypatch.setattr(acq, "log_knowledge_gradient", lambda a, b: walked.__setitem__(
        0, walked[0] + b.shape[1]) or log_knowledge_gradient(a, b))
    d = acq.choose_next("mfkg", model, cand, W, scales, steps, target, bounds, cost=cost,
                        fixed_cost=fixed_cost)
    c, f = np.unravel_index(np.argmax(score), score.shape)
    assert (d.index, d.scale, d.steps) == (c, *fids[f])
    assert d.value == pytest.approx(score[c, f], rel=1e-12)
    assert d.kg == pytest.approx(np.exp(log_kg[c, f]), rel=1e-12)
    if case == "fixed":
        assert sum(computed) < 0.75 * score.size  # the bound prunes
    if case == "fixed_cost":
        assert walked[0] < sum(computed)  # the union bound skips envelopes
