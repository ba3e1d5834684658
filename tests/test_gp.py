"""Tests for gp.py, micrograd style: the same quantity computed by an oracle (scikit-learn,
GPyTorch, a direct transcription of the formula, finite differences, Monte Carlo) and compared
tightly. Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_gp.py"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gp  # noqa: E402
import simulate  # noqa: E402

K = 5  # domains in the test data: X = [w_1..w_5, u_N, u_T]
SKLEARN_MODEL = dict(structure="joint", mean="constant", priors=False, run_noise=False,
                     scale_deviation=False)   # one ARD kernel + white noise: sklearn's model


def make_data(n, seed=0, noise=0.05):
    """Continuous u_N, u_T (every row its own scale)."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.dirichlet(np.ones(K), n), rng.uniform(size=(n, 2))])
    y = (np.sin(3 * X[:, 0]) + X[:, 1] ** 2 - 2 * X[:, 5] + 0.5 * np.cos(4 * X[:, 6])
         + noise * rng.normal(size=n))
    return X, y


def make_runs(n_mixtures, scales, seed=0, transfer=1.0):
    """Runs of n_mixtures mixtures at each of the encoded scales (u_N values), checkpoints at u_T =
    0, 0.5, 1: a scaling law in u_N, u_T plus a mixture effect sqrt(transfer) g(w) + sqrt(1 -
    transfer) g_N(w) (g, g_N independent random functions), plus noise. Returns X, y, runs."""
    rng = np.random.default_rng(seed)
    W = rng.dirichlet(np.ones(K), n_mixtures)
    freq = rng.normal(0.0, 3.0, size=(len(scales) + 1, K))
    phase = rng.uniform(0, 2 * np.pi, size=len(scales) + 1)
    effect = lambda j: np.sqrt(2) * np.cos(W @ freq[j] + phase[j])                   # (n_mixtures,)
    rows, y, runs = [], [], []
    for j, u_N in enumerate(scales):
        f = np.sqrt(transfer) * effect(-1) + np.sqrt(1 - transfer) * effect(j)
        for i in range(n_mixtures):
            offset = 0.01 * rng.normal()
            for u_T in (0.0, 0.5, 1.0):
                rows.append(np.concatenate([W[i], [u_N, u_T]]))
                y.append(3.0 + np.exp(-1.5 * u_N) + 0.8 * np.exp(-2.0 * u_T) + 0.1 * f[i] + offset
                         + 0.003 * rng.normal())
                runs.append(j * n_mixtures + i)
    return np.array(rows), np.array(y), np.array(runs)


def sklearn_gpr(kind, amplitude, ls, noise, X, y, restarts=None):
    """sklearn GPR with the same kernel: amplitude * {RBF, Matern-5/2}(ls) + White(noise),
    normalize_y."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Matern, WhiteKernel
    base = RBF(ls) if kind == "rbf" else Matern(ls, nu=2.5)
    kernel = ConstantKernel(amplitude) * base + WhiteKernel(noise)
    if restarts is None:   # condition only (optimizer=None)
        return GaussianProcessRegressor(kernel, alpha=0.0, normalize_y=True,
                                        optimizer=None).fit(X, y)
    return GaussianProcessRegressor(kernel, alpha=0.0, normalize_y=True,
                                    n_restarts_optimizer=restarts - 1, random_state=0).fit(X, y)


def explicit_posterior(k, X, y, Xs, noise, y_mean, y_scale):
    """R&W eq. 2.23-2.24 by dense numpy algebra with the kernel function k(A, B) (standardized
    units)."""
    ys = (y - y_mean) / y_scale
    Ky = k(X, X) + noise * np.eye(len(X))
    Ks, Kss = k(X, Xs), k(Xs, Xs)
    mean = Ks.T @ np.linalg.solve(Ky, ys)
    cov = Kss - Ks.T @ np.linalg.solve(Ky, Ks)
    return y_mean + y_scale * mean, y_scale ** 2 * cov


# ------------------------------------------------------------------ equality with scikit-learn

@pytest.mark.parametrize("kind", ["rbf", "matern52"])
def test_posterior_and_lml_equal_sklearn(kind):
    X, y = make_data(40)
    Xs, _ = make_data(15, seed=1)
    hyp = {"amplitude": 1.7, "w_lengthscale": np.array([0.3, 0.5, 0.9, 1.3, 2.0, 0.4, 0.8]),
           "noise": 0.01}
    g = gp.fit_gp(X, y, K, gp.Config(kernel_w=kind, **SKLEARN_MODEL), hyperparameters=hyp)
    sk = sklearn_gpr(kind, hyp["amplitude"], hyp["w_lengthscale"], hyp["noise"], X, y)
    mean, var = gp.predict(g, Xs)
    sk_mean, sk_std = sk.predict(Xs, return_std=True)
    # sklearn's std includes the WhiteKernel noise (its kernel diag); ours is the latent f's
    np.testing.assert_allclose(mean, sk_mean, rtol=1e-8, atol=0)
    np.testing.assert_allclose(np.sqrt(var + g.noise_variance), sk_std, rtol=1e-8, atol=0)
    np.testing.assert_allclose(g.log_marginal_likelihood,
                               sk.log_marginal_likelihood(sk.kernel_.theta),
                               rtol=1e-8)
    _, cov = gp.predict(g, Xs, full_cov=True)
    _, sk_cov = sk.predict(Xs, return_cov=True)
    np.testing.assert_allclose(cov + g.noise_variance * np.eye(len(Xs)), sk_cov, rtol=1e-8,
                               atol=1e-12)


def test_rbf_product_over_groups_equals_joint_rbf():
    X, y = make_data(30)
    ls = np.array([0.3, 0.5, 0.9, 1.3, 2.0, 0.4, 0.8])
    opts = dict(kernel_w="rbf", run_noise=False, mean="constant", scale_deviation=False)
    joint = gp.fit_gp(X, y, K, gp.Config(structure="joint", **opts),
                      hyperparameters={"amplitude": 2.0, "w_lengthscale": ls, "noise": 0.02})
    prod = gp.fit_gp(X, y, K, gp.Config(**opts),
                     hyperparameters={"amplitude": 2.0, "w_lengthscale": ls[:K],
                                      "N_lengthscale": ls[K:K + 1],
                                      "T_lengthscale": ls[K + 1:], "noise": 0.02})
    Xs, _ = make_data(10, seed=3)
    for a, b in zip(gp.predict(joint, Xs, full_cov=True), gp.predict(prod, Xs, full_cov=True)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    assert abs(joint.log_marginal_likelihood - prod.log_marginal_likelihood) < 1e-9


def test_fitted_lml_at_least_sklearn():
    X, y = make_data(80, seed=2)
    for kind in ["rbf", "matern52"]:
        sk = sklearn_gpr(kind, 1.0, np.ones(7), 1e-2, X, y, restarts=2)
        g = gp.fit_gp(X, y, K, gp.Config(kernel_w=kind, **SKLEARN_MODEL), restarts=2, seed=0)
        sk_lml = sk.log_marginal_likelihood_value_
        assert g.log_marginal_likelihood >= sk_lml - 1e-6 * abs(sk_lml)


# ------------------------------------------------------------------ spectral mixture kernels

def test_spectral_mixture_equals_formula_and_k0():
    rng = np.random.default_rng(0)
    Q, p = 3, 4
    A, B = rng.uniform(size=(6, p)), rng.uniform(size=(5, p))
    w, ls = rng.uniform(0.2, 1.0, Q), rng.uniform(0.2, 2.0, (Q, p))
    mu = rng.uniform(0.0, 2.0, (Q, p))
    v = 1.0 / (2 * math.pi * ls) ** 2                      # spectral variances of Wilson & Adams
    direct = np.zeros((6, 5))
    for i in range(6):
        for j in range(5):
            tau = A[i] - B[j]
            direct[i, j] = sum(w[q] * np.prod(np.exp(-2 * math.pi ** 2 * tau ** 2 * v[q])
                                              * np.cos(2 * math.pi * tau * mu[q]))
                               for q in range(Q))      # W&A eq. 12
    t = lambda a: torch.from_numpy(a)
    ours = gp.spectral_mixture(t(A), t(B), t(w), t(ls), t(mu)).numpy()
    np.testing.assert_allclose(ours, direct, rtol=1e-12, atol=1e-14)
    k0 = gp.spectral_mixture(t(A[:1]), t(A[:1]), t(w), t(ls), t(mu)).item()
    assert abs(k0 - w.sum()) < 1e-12
    paired = gp.spectral_mixture(t(A[:5]), t(B), t(w), t(ls), t(mu), paired=True).numpy()
    np.testing.assert_allclose(paired, np.diag(direct[:5]), rtol=1e-12, atol=1e-14)


def test_spectral_mixture_equals_gpytorch_in_one_dimension():
    """GPyTorch's SpectralMixtureKernel is a product over dimensions of 1-D mixtures, which is not
    eq. 12 for p > 1 (k(0) = (sum w)^p there) but is the same kernel for p = 1: an independent
    oracle."""
    from gpytorch.kernels import SpectralMixtureKernel
    rng = np.random.default_rng(1)
    Q = 3
    A, B = rng.uniform(size=(6, 1)), rng.uniform(size=(5, 1))
    w, s = np.array([1.0, 0.6, 0.4]), rng.uniform(0.2, 2.0, (Q, 1))
    mu = rng.uniform(0.0, 2.0, (Q, 1))
    kern = SpectralMixtureKernel(num_mixtures=Q, ard_num_dims=1).double()
    kern.mixture_weights = torch.from_numpy(w)
    kern.mixture_scales = torch.from_numpy(s).reshape(Q, 1, 1)
    kern.mixture_means = torch.from_numpy(mu).reshape(Q, 1, 1)
    t = lambda a: torch.from_numpy(a)
    with torch.no_grad():
        oracle = kern(t(A), t(B)).to_dense().numpy()
        ours = gp.spectral_mixture(t(A), t(B), t(w), t(1 / (2 * math.pi * s)), t(mu)).numpy()
    np.testing.assert_allclose(ours, oracle, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ gradients, PSD, recovery

MODELS = [dict(SKLEARN_MODEL, kernel_w="matern52"), dict(), dict(scale_deviation=False),
          dict(kernel_w="sm"), dict(kernel_w="rbf", run_noise=False), dict(structure="joint"),
          dict(structure="joint", mean="scaling_law", scale_deviation=False),
          dict(kernel_N="matern52", kernel_T="matern52", mean="constant")]


def discrete_scales(X, levels=4):
    """X with u_N rounded to `levels` scales, so that rows share scales."""
    X = X.copy()
    X[:, K] = np.round(X[:, K] * (levels - 1)) / (levels - 1)
    return X


@pytest.mark.parametrize("opts", MODELS)
def test_gradient_equals_finite_differences(opts):
    X, y = make_data(25)
    X = discrete_scales(X)
    ys = torch.from_numpy((y - y.mean()) / y.std())
    runs = np.arange(25) // 3                          # groups of 3 observations share a run offset
    R = torch.from_numpy((runs[:, None] == runs[None, :]).astype(np.float64))
    cfg = gp.Config(**opts)
    specs = gp._specs(cfg, 7, K)
    rng = np.random.default_rng(0)
    theta = gp._initial_theta(specs, rng, True)
    theta = theta + rng.normal(0.0, 0.3, len(theta))
    objective = lambda th: gp._objective(th, cfg, specs, torch.from_numpy(X), ys, K, R)
    f, g = objective(theta)
    assert f != gp.PENALTY
    h = 1e-5
    fd = np.array([(objective(theta + h * e)[0] - objective(theta - h * e)[0]) / (2 * h)
                   for e in np.eye(len(theta))])
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(fd).max()))


@pytest.mark.parametrize("opts", MODELS)
def test_objective_on_the_fits_distinct_rows_equals_the_plain_objective(opts):
    """fit_gp hands _objective X's distinct mixtures and fidelities, computed once (`known`): the
    value and gradient are those of the objective that finds them itself, on runs of 3 checkpoints
    of 6 mixtures at 4 scales (rows repeat in both column groups)."""
    X, y, runs = make_runs(6, [0.0, 1 / 3, 2 / 3, 1.0], seed=2)
    ys, Xt = torch.from_numpy((y - y.mean()) / y.std()), torch.from_numpy(X)
    R = torch.from_numpy(np.equal.outer(runs, runs).astype(np.float64))
    cfg = gp.Config(**opts)
    specs = gp._specs(cfg, 7, K)
    known = gp._distinct(Xt if cfg.structure == "joint" else Xt[:, :K]), gp._distinct(Xt[:, K:])
    assert len(known[1][0]) == 12 and (cfg.structure == "joint" or len(known[0][0]) == 6)
    for seed in range(3):
        theta = gp._initial_theta(specs, np.random.default_rng(seed), seed == 0)
        f, g = gp._objective(theta, cfg, specs, Xt, ys, K, R)
        f_known, g_known = gp._objective(theta, cfg, specs, Xt, ys, K, R, known)
        assert f != gp.PENALTY and abs(f_known - f) <= 1e-12 * abs(f)
        np.testing.assert_allclose(g_known, g, rtol=1e-12, atol=1e-12 * np.abs(g).max())


def test_law_exponents_start_from_the_best_grid_pair_of_per_pair_least_squares():
    """_law_exponents' grid (441 least squares at once) then Nelder-Mead ends where Nelder-Mead
    from the pair that a loop of numpy least squares over the grid picks ends (to its tolerance)."""
    X, y, _ = make_runs(5, [0.0, 0.25, 0.5, 1.0], seed=1)
    ys = (y - y.mean()) / y.std()
    grid = np.linspace(math.log(0.1), math.log(10.0), 21)
    def rss(a_N, a_T):
        H = np.column_stack([np.ones(len(ys)), np.exp(-a_N * X[:, K]), np.exp(-a_T * X[:, K + 1]),
                             np.exp(-a_N * X[:, K] - a_T * X[:, K + 1])])
        return ((H @ np.linalg.lstsq(H, ys, rcond=None)[0] - ys) ** 2).sum()
    best = min(((a, b) for a in grid for b in grid), key=lambda p: rss(*np.exp(p)))
    oracle = scipy.optimize.minimize(lambda p: rss(*np.exp(p)), best, method="Nelder-Mead")
    exponents, identified, mse = gp._law_exponents(X[:, K:], ys)
    assert identified.all() and abs(mse * len(ys) - oracle.fun) <= 1e-6 * oracle.fun
    np.testing.assert_allclose(np.log(exponents), oracle.x, atol=1e-3)


@pytest.mark.parametrize("opts", MODELS)
def test_kernel_matrix_is_psd_and_paired_is_its_diagonal(opts):
    X = discrete_scales(make_data(60, seed=4)[0])
    cfg = gp.Config(**opts)
    specs = gp._specs(cfg, 7, K)
    P = gp._unpack(torch.from_numpy(gp._initial_theta(specs, np.random.default_rng(5), False)),
                   specs)
    Xt = torch.from_numpy(X)
    Kmat = gp._kernel(cfg, P, Xt, Xt, K).numpy()
    np.testing.assert_allclose(Kmat, Kmat.T, atol=1e-12 * np.abs(Kmat).max())
    assert np.linalg.eigvalsh(Kmat).min() > -1e-9 * Kmat.diagonal().max()
    np.testing.assert_allclose(gp._kernel(cfg, P, Xt, Xt, K, paired=True).numpy(), Kmat.diagonal(),
                               rtol=1e-12, atol=0)


def test_anisotropic_lengthscales_recovered():
    rng = np.random.default_rng(3)
    X = np.column_stack([rng.dirichlet(np.ones(K), 60), rng.uniform(size=(60, 2))])
    y = np.sin(6 * X[:, K]) + 0.1 * X[:, K + 1] + 0.01 * rng.normal(size=60)  # fast u_N, slow u_T
    g = gp.fit_gp(X, y, K, gp.Config(structure="joint", kernel_w="rbf", scale_deviation=False),
                  restarts=2)
    ls = g.hyperparameters["w_lengthscale"]
    assert ls[K] < 0.5 and ls[K] < ls[K + 1] / 3 and ls[K] < ls[:K].min() / 3


def test_cross_covariance_equals_full_covariance_and_units():
    X, y = make_data(50)
    X = discrete_scales(X)
    cfg = gp.Config()
    g = gp.fit_gp(X, 3.0 + 10.0 * y, K, cfg, restarts=1)
    XA, XZ = discrete_scales(make_data(7, seed=5)[0]), make_data(9, seed=6)[0]
    cov_AZ, var_Z = gp.cross_covariance(g, XA, XZ, chunk=4)
    _, cov = gp.predict(g, np.vstack([XA, XZ]), full_cov=True)
    np.testing.assert_allclose(cov_AZ, cov[:7, 7:], rtol=1e-9, atol=1e-10 * np.abs(cov).max())
    np.testing.assert_allclose(var_Z, np.diag(cov)[7:], rtol=1e-9, atol=1e-10 * np.abs(cov).max())
    # the same hyperparameters on y instead of 3 + 10 y: mean * 10 + 3, variances * 100
    g1 = gp.fit_gp(X, y, K, cfg, hyperparameters=g.hyperparameters)
    m1, v1 = gp.predict(g1, XZ)
    m10, v10 = gp.predict(g, XZ)
    np.testing.assert_allclose(m10, 3.0 + 10.0 * m1, rtol=1e-9, atol=1e-10 * np.abs(m10).max())
    np.testing.assert_allclose(v10, 100.0 * v1, rtol=1e-8)
    assert abs(g.noise_variance - 100.0 * g1.noise_variance) < 1e-10 * g.noise_variance


@pytest.mark.parametrize("opts", [o for o in MODELS if o.get("structure") != "joint"])
def test_cross_covariance_grid_on_run_structure_equals_plain_cross_covariance(opts):
    """More grid mixtures M than distinct training mixtures R (runs seen at 3 checkpoints): the
    (R, .) forms in kappa_m of the product structure against cross_covariance on the M F rows."""
    X, y, runs = make_runs(6, [0.0, 0.5, 1.0])
    g = gp.fit_gp(X, 3.0 + 10.0 * y, K, gp.Config(**opts), restarts=1, maxiter=15, runs=runs)
    rng = np.random.default_rng(9)
    W = np.vstack([np.eye(K)[:1], rng.dirichlet(np.full(K, 0.5), 30), X[:2, :K]])  # M = 33 > R
    U = np.array([[0.0, 0.0], [0.5, 1.0], [1.0, 0.5], [0.25, 0.75]])
    u_P = np.array([1.0, 1.0])
    XA = X[::7].copy()
    XA[:, K:] = u_P
    M, F = len(W), len(U)
    Z = np.column_stack([W.repeat(F, axis=0), np.tile(U, (M, 1))])
    XP = np.column_stack([W, np.tile(u_P, (M, 1))])
    cov_plain, var_plain = gp.cross_covariance(g, np.vstack([XA, XP]), Z)
    cov, own, var = gp.cross_covariance_grid(g, XA, W, U, u_P)
    tol = 1e-10 * np.abs(cov_plain).max()
    A = len(XA)
    np.testing.assert_allclose(cov, cov_plain[:A].T.reshape(M, F, A), rtol=0, atol=tol)
    np.testing.assert_allclose(own, cov_plain[A + np.arange(M).repeat(F),
                                              np.arange(M * F)].reshape(M, F), rtol=0, atol=tol)
    np.testing.assert_allclose(var, var_plain.reshape(M, F), rtol=0, atol=tol)


@pytest.mark.parametrize("opts", MODELS)
@pytest.mark.parametrize("block", [1, 1024])   # one mixture per block; all in one block
def test_cross_covariance_grid_equals_plain_cross_covariance(opts, block):
    """The grid form (kernel factors per mixture and per fidelity, paired projection rows) against
    cross_covariance on the same M F full rows z_mf = [w_m, u_f], mixture-major, to 1e-10."""
    X, y = make_data(40)
    X = discrete_scales(X)
    g = gp.fit_gp(X, 3.0 + 10.0 * y, K, gp.Config(**opts), restarts=1, maxiter=15)
    rng = np.random.default_rng(7)
    W = np.vstack([np.eye(K)[:1], rng.dirichlet(np.full(K, 0.3), 4)])       # (M, K), a vertex first
    bounds = (1e7, 1e9, 100, 1000)
    U = gp.encode_fidelities([1e7, 1e9 ** (1 / 3) * 1e7 ** (2 / 3), 1e9], [100, 300, 1000], bounds)
    u_P = gp.encode_fidelities(1e9, 1000, bounds)[0]                             # the target (1, 1)
    XA = discrete_scales(make_data(4, seed=8)[0])                                # (|A|, d)
    XP = np.column_stack([W, np.tile(u_P, (5, 1))])                           # (M, d) at the target
    M, F = len(W), len(U)
    Z = np.column_stack([W.repeat(F, axis=0), np.tile(U, (M, 1))])          # (M F, d) mixture-major
    cov_plain, var_plain = gp.cross_covariance(g, np.vstack([XA, XP]), Z)   # (|A| + M, M F), (M F,)
    cov, own, var = gp.cross_covariance_grid(g, XA, W, U, u_P, block=block)
    tol = 1e-10 * np.abs(cov_plain).max()
    np.testing.assert_allclose(cov, cov_plain[:4].T.reshape(M, F, 4), rtol=0, atol=tol)
    np.testing.assert_allclose(own, cov_plain[4 + np.arange(M).repeat(F),
                                              np.arange(M * F)].reshape(M, F),
                               rtol=0, atol=tol)
    np.testing.assert_allclose(var, var_plain.reshape(M, F), rtol=0, atol=tol)
    for bad in [(W[:, 1:], U), (W, U[:, :1])]:      # a weight or a fidelity column missing
        with pytest.raises(ValueError, match="W must be"):
            gp.cross_covariance_grid(g, XA, *bad, u_P)


# ------------------------------------------------------------------ the scaling-law mean

def basis(A, a_N, a_T):
    """h(u) (4, n) of the scaling law, written out."""
    return np.column_stack([np.ones(len(A)), np.exp(-a_N * A[:, K]), np.exp(-a_T * A[:, K + 1]),
                            np.exp(-a_N * A[:, K] - a_T * A[:, K + 1])]).T


LAW = {"mean_coupling": 0.5, "mean_alpha_N": 1.4, "mean_alpha_T": 0.6}
S_LAW = np.diag([gp.LAW_VARIANCE] * 3 + [0.5])                    # diag(s_b^2, s_b^2, s_b^2, s_C^2)


def test_scaling_law_mean_equals_explicit_basis_formulas():
    """R&W eq. 2.41-2.42 (basis h, coefficient prior N(0, B), b = 0) against our kernel + h^T S h,
    S = diag(s_b^2, s_b^2, s_b^2, s_C^2)."""
    X, y = make_data(30)
    Xs = make_data(6, seed=7)[0]
    hyp = {"amplitude": 0.8, "w_lengthscale": np.full(K, 0.6), "N_lengthscale": [0.7],
           "T_lengthscale": [1.1],
           "noise": 0.02, **LAW}
    g = gp.fit_gp(X, y, K, gp.Config(run_noise=False, scale_deviation=False), hyperparameters=hyp)
    ys = (y - g.y_mean) / g.y_scale
    P = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in hyp.items()}
    cfg0 = gp.Config(mean="constant", run_noise=False, scale_deviation=False)
    k0 = lambda A, B: gp._kernel(cfg0, P, torch.from_numpy(A), torch.from_numpy(B), K).numpy()
    Ky = k0(X, X) + 0.02 * np.eye(30)
    Ks, Kss, H, Hs = k0(X, Xs), k0(Xs, Xs), basis(X, 1.4, 0.6), basis(Xs, 1.4, 0.6)
    Kinv = np.linalg.inv(Ky)
    A = np.linalg.inv(S_LAW) + H @ Kinv @ H.T                            # B^-1 + H K^-1 H^T
    beta = np.linalg.solve(A, H @ Kinv @ ys)                             # eq. 2.42, b = 0
    R = Hs - H @ Kinv @ Ks                                               # (4, m)
    mean = Ks.T @ Kinv @ ys + R.T @ beta                                 # eq. 2.41/2.42
    cov = Kss - Ks.T @ Kinv @ Ks + R.T @ np.linalg.solve(A, R)
    m_ours, c_ours = gp.predict(g, Xs, full_cov=True)
    np.testing.assert_allclose(m_ours, g.y_mean + g.y_scale * mean, rtol=1e-9)
    np.testing.assert_allclose(c_ours, g.y_scale ** 2 * cov, rtol=1e-7, atol=1e-12)


def test_joint_scaling_law_posterior_equals_sklearn_kernel_plus_basis():
    """structure="joint" with the scaling-law mean: the posterior of the GP with kernel
    s^2 Matern(x, x') + h^T S h' (sklearn's Matern, the basis written out, dense numpy algebra),
    mean, variance and covariance to 1e-9; and the law's variances change the likelihood."""
    from sklearn.gaussian_process.kernels import Matern
    X, y = make_data(30)
    Xs = make_data(6, seed=7)[0]
    ls = np.array([0.3, 0.5, 0.9, 1.3, 2.0, 0.4, 0.8])
    hyp = {"amplitude": 0.8, "w_lengthscale": ls, "noise": 0.02, **LAW}
    cfg = gp.Config(structure="joint", run_noise=False, scale_deviation=False)
    g = gp.fit_gp(X, y, K, cfg, hyperparameters=hyp)
    k = lambda A, B: (0.8 * Matern(ls, nu=2.5)(A, B)
                      + basis(A, 1.4, 0.6).T @ S_LAW @ basis(B, 1.4, 0.6))
    mean, cov = explicit_posterior(k, X, y, Xs, 0.02, g.y_mean, g.y_scale)
    m_ours, c_ours = gp.predict(g, Xs, full_cov=True)
    np.testing.assert_allclose(m_ours, mean, rtol=1e-9)
    np.testing.assert_allclose(c_ours, cov, rtol=1e-9, atol=1e-12 * np.abs(cov).max())
    np.testing.assert_allclose(gp.predict(g, Xs)[1], np.diag(cov), rtol=1e-9)
    other = gp.fit_gp(X, y, K, cfg, hyperparameters={**hyp, "mean_coupling": 30.0})
    assert abs(other.log_marginal_likelihood - g.log_marginal_likelihood) > 1e-3


def test_scaling_law_coupling_is_fitted_only_where_the_data_have_one():
    """The coupling C / (N^alpha D^beta) has its own prior variance s_C^2, so the marginal
    likelihood decides whether it is there: on a loss surface additive in N and D (Chinchilla's
    form) its fitted variance is negligible beside C^2, and where the surface has the coupling C =
    1.5 it is not. 10 mixtures x 4 scales x 4 steps (4 checkpoints per run); with 2 levels per axis
    the basis functions could not be told apart."""
    rng = np.random.default_rng(0)
    n_w = 3
    W = rng.dirichlet(np.ones(n_w), 10)                                                   # (10, 3)
    u = np.linspace(0.0, 1.0, 4)
    u_N, u_T = (g.ravel() for g in np.meshgrid(u, u, indexing="ij"))             # (16,) scale-major
    X = np.column_stack([np.repeat(W, 16, axis=0), np.tile(u_N, 10), np.tile(u_T, 10)])  # (160, 5)
    mixture = 0.05 * ((X[:, :n_w] - np.array([0.5, 0.3, 0.2])) ** 2).sum(1)
    additive = 3.0 + np.exp(-2.0 * X[:, n_w]) + 0.8 * np.exp(-1.5 * X[:, n_w + 1]) + mixture
    coupled = additive + 1.5 * np.exp(-2.0 * X[:, n_w] - 1.5 * X[:, n_w + 1])
    runs = np.repeat(np.arange(40), 4)                                       # a run = 4 checkpoints
    s_C = {}
    for name, y in (("additive", additive), ("coupled", coupled)):
        g = gp.fit_gp(X, y + 0.005 * rng.normal(size=len(y)), n_w, runs=runs)
        s_C[name] = g.hyperparameters["mean_coupling"] * g.y_scale ** 2                   # y units
    assert s_C["additive"] < 1e-3 * 1.5 ** 2 and s_C["coupled"] > 0.1 * 1.5 ** 2, s_C   # C = 1.5


# ------------------------------------------------------------------ per-scale deviations

def test_scale_deviation_kernel_equals_gpytorch_coregionalization():
    """The default kernel against GPyTorch: Matern-5/2(w) x RBF(u_T) x IndexKernel over the discrete
    scales with B = s^2 K_N + s_d^2 I (covar_factor = s chol(K_N), var = s_d^2) [Bonilla et al.
    2008], plus s_l^2 1[N = N'] and h^T S h; and the posterior by dense numpy algebra on that
    kernel, 1e-9."""
    from gpytorch.kernels import IndexKernel, MaternKernel, RBFKernel
    X, y, runs = make_runs(6, [0.0, 0.4, 1.0], seed=1)
    Xs = make_runs(3, [0.0, 0.4, 1.0], seed=2)[0]
    hyp = {"amplitude": 0.8, "w_lengthscale": np.array([0.3, 0.5, 0.9, 1.3, 2.0]),
           "N_lengthscale": [0.7],
           "T_lengthscale": [1.1], "noise": 0.02, "scale_deviation": 0.6, "level_deviation": 0.3,
           **LAW}
    g = gp.fit_gp(X, y, K, gp.Config(run_noise=False), hyperparameters=hyp)
    scales = np.array([0.0, 0.4, 1.0])
    K_N = np.exp(-0.5 * (scales[:, None] - scales[None, :]) ** 2 / 0.7 ** 2)
    index = IndexKernel(num_tasks=3, rank=3).double()
    index.covar_factor.data = torch.from_numpy(np.sqrt(0.8) * np.linalg.cholesky(K_N))
    index.var = torch.full((3,), 0.8 * 0.6, dtype=torch.float64)                     # s_d^2 = q s^2
    level = IndexKernel(num_tasks=3, rank=1).double()
    level.covar_factor.data.zero_()
    level.var = torch.full((3,), 0.3, dtype=torch.float64)
    matern = MaternKernel(nu=2.5, ard_num_dims=K).double()
    matern.lengthscale = torch.from_numpy(hyp["w_lengthscale"])
    rbf_T = RBFKernel().double()
    rbf_T.lengthscale = torch.tensor(1.1, dtype=torch.float64)

    def k(A, B):
        ia, ib = (torch.from_numpy(np.searchsorted(scales, M[:, K])) for M in (A, B))
        t = lambda M: torch.from_numpy(M)
        with torch.no_grad():
            k_w = matern(t(A[:, :K]), t(B[:, :K])).to_dense()
            k_T = rbf_T(t(A[:, K + 1:]), t(B[:, K + 1:])).to_dense()
            mix = k_w * k_T * index(ia[:, None], ib[:, None]).to_dense()
            lev = level(ia[:, None], ib[:, None]).to_dense()
        return (mix + lev).numpy() + basis(A, 1.4, 0.6).T @ S_LAW @ basis(B, 1.4, 0.6)

    P = gp._params(g)
    ours = gp._kernel(g.config, P, torch.from_numpy(X), torch.from_numpy(Xs), K).numpy()
    np.testing.assert_allclose(ours, k(X, Xs), rtol=1e-12, atol=1e-14)
    mean, cov = explicit_posterior(k, X, y, Xs, 0.02, g.y_mean, g.y_scale)
    m_ours, c_ours = gp.predict(g, Xs, full_cov=True)
    np.testing.assert_allclose(m_ours, mean, rtol=1e-9)
    np.testing.assert_allclose(c_ours, cov, rtol=1e-9, atol=1e-12 * np.abs(cov).max())


def test_same_scale_is_exact_to_1e_9_and_an_unseen_scale_keeps_the_deviations():
    """1[N = N'] holds within 1e-9 and not beyond; at a scale with no data, the deviations are
    independent of every observation: the posterior variance there is at least (s_d^2 + s_l^2)
    y_scale^2 (k_w = k_T = 1 at a point itself), and a run at that scale lowers it."""
    X, y, runs = make_runs(8, [0.0, 0.5], seed=3)
    g = gp.fit_gp(X, y, K, gp.Config(mean="constant"), runs=runs,
                  restarts=1)   # k smooth but 1[N = N']
    h, P = g.hyperparameters, gp._params(g)
    x = X[:1].copy()
    near, far = x.copy(), x.copy()
    near[0, K] += 5e-10
    far[0, K] += 5e-9
    k = lambda A: gp._kernel(g.config, P, torch.from_numpy(x), torch.from_numpy(A), K).item()
    step = h["amplitude"] * h["scale_deviation"] + h["level_deviation"]
    assert abs(k(x) - k(near)) < 1e-4 * step                          # the other terms are smooth
    assert abs(k(x) - k(far) - step) < 1e-4 * step
    target = X[:4].copy()
    target[:, K] = 1.0
    var = gp.predict(g, target)[1]
    assert np.all(var >= step * g.y_scale ** 2)
    seen = gp.fit_gp(np.vstack([X, target[:1]]), np.append(y, y[0] - 0.5), K, g.config,
                     hyperparameters=h)
    assert gp.predict(seen, target)[1].max() < var.min()


def test_transfer_is_fitted_low_where_scales_disagree_and_high_where_they_agree():
    """The ratio q = s_d^2 / s^2 is a fitted quantity: on four scales sharing one mixture effect it
    is walked far below its prior's mode, and on four scales with independent effects far above it.
    """
    q = {}
    for transfer in (1.0, 0.0):
        X, y, runs = make_runs(16, [0.0, 0.33, 0.67, 1.0], seed=4, transfer=transfer)
        q[transfer] = gp.fit_gp(X, y, K, runs=runs, restarts=1).hyperparameters["scale_deviation"]
    mode = math.exp(gp.DEVIATION_PRIOR[0] - gp.DEVIATION_PRIOR[1] ** 2)
    assert q[1.0] < mode / 3 and q[0.0] > 3 * mode, q


def test_run_noise():
    X, y = make_data(30)
    hyp = {"amplitude": 1.3, "w_lengthscale": np.full(K, 0.7), "N_lengthscale": [0.5],
           "T_lengthscale": [0.9],
           "scale_deviation": 0.3, "level_deviation": 0.1, **LAW}
    # one observation per run: sigma^2 I + sigma_run^2 R is white noise, sigma^2 + sigma_run^2
    a = gp.fit_gp(X, y, K, hyperparameters={**hyp, "noise": 0.01, "run_noise": 0.02})
    b = gp.fit_gp(X, y, K, gp.Config(run_noise=False), hyperparameters={**hyp, "noise": 0.03})
    assert abs(a.log_marginal_likelihood - b.log_marginal_likelihood) < 1e-10
    np.testing.assert_allclose(gp.predict(a, X[:5])[1], gp.predict(b, X[:5])[1], rtol=1e-10)
    assert abs(a.noise_variance - b.noise_variance) < 1e-12 and a.run_noise_variance > 0
    # checkpoints of one run (same w and scale, different steps) share the offset by default
    Xc = np.repeat(X[:10], 3, axis=0)
    Xc[:, K + 1] = np.tile([0.0, 0.5, 1.0], 10)
    yc = np.repeat(y[:10], 3) + 0.1 * Xc[:, K + 1]
    noises = {"noise": 0.01, "run_noise": 0.02}
    fit = lambda runs: gp.fit_gp(Xc, yc, K, runs=runs, hyperparameters={**hyp, **noises})
    default, labelled, separate = fit(None), fit(np.arange(30) // 3), fit(np.arange(30))
    assert abs(default.log_marginal_likelihood - labelled.log_marginal_likelihood) < 1e-10
    assert abs(default.log_marginal_likelihood - separate.log_marginal_likelihood) > 1e-3


# ------------------------------------------------------------------ directional derivatives

@pytest.mark.parametrize("opts", [dict(), dict(kernel_w="rbf", structure="joint"),
                                  dict(kernel_w="sm")])
def test_directional_derivative_equals_finite_differences_and_monte_carlo(opts):
    """mean: 4th-order central differences of predict's mean (1e-6 relative); variance: the variance
    of the central difference of posterior draws of f at x +- h v (exact from predict's covariance,
    Richardson-extrapolated over h, 1e-5, and from 20,000 draws, within 4 Monte Carlo standard
    errors)."""
    X, y, runs = make_runs(10, [0.0, 0.5], seed=5)
    g = gp.fit_gp(X, y, K, gp.Config(**opts), runs=runs, restarts=1, maxiter=40)
    rng = np.random.default_rng(6)
    W = rng.dirichlet(np.full(K, 3.0), 4)
    x = np.vstack([np.column_stack([W, np.tile([1.0, 1.0], (4, 1))]), X[:1]])  # target; a seen row
    V = np.zeros_like(x)
    V[:, :K] = np.eye(K)[[0, 1, 2, 3, 4]] - x[:, :K]                       # weight towards domain j
    mean, var = gp.directional_derivative(g, x, V)
    f = lambda h: gp.predict(g, x + h * V)[0]
    h = 1e-3
    fd = (f(-2 * h) - 8 * f(-h) + 8 * f(h) - f(2 * h)) / (12 * h)             # error O(h^4)
    np.testing.assert_allclose(mean, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())
    D = lambda h: np.hstack([np.eye(5), -np.eye(5)]) / (2 * h)              # f(x+hv) - f(x-hv) / 2h
    var_fd = lambda h: np.diag(D(h) @ gp.predict(g, np.vstack([x + h * V, x - h * V]),
                                                 full_cov=True)[1] @ D(h).T)  # var + O(h^2)
    h = 1e-3
    richardson = (4 * var_fd(h) - var_fd(2 * h)) / 3                            # var + O(h^4)
    np.testing.assert_allclose(var, richardson, rtol=1e-5)
    cov = gp.predict(g, np.vstack([x + h * V, x - h * V]), full_cov=True)[1]   # (10, 10)
    evals, evecs = np.linalg.eigh(cov)
    draws = rng.standard_normal((20000, 10)) * np.sqrt(evals.clip(0)) @ evecs.T   # ~ N(0, cov)
    mc = (draws @ D(h).T).var(axis=0)
    assert np.all(np.abs(mc - var) < 4 * np.sqrt(2 / 20000) * var), (mc, var)
    with pytest.raises(ValueError, match="directions"):
        gp.directional_derivative(g, x, np.ones_like(x))


# ------------------------------------------------------------------ numerics and input checks

def test_cholesky_jitter_and_failure():
    v = np.array([[1.0, 1.0], [1.0, 1.0]])                     # PSD, singular: needs jitter
    L, jitter = gp._cholesky(torch.from_numpy(v))
    assert L is not None and jitter > 0
    L, jitter = gp._cholesky(torch.from_numpy(np.array([[1.0, 2.0], [2.0, 1.0]])))   # indefinite
    assert L is None and jitter is None


@pytest.mark.parametrize("case", ["n1", "duplicates", "constant", "tiny_noise", "one_domain"])
def test_degenerate_data_is_finite(case):
    X, y = make_data(12)
    X = discrete_scales(X, 2)
    if case == "n1":
        X, y = X[:1], y[:1]
    elif case == "duplicates":
        X, y = np.vstack([X, X, X]), np.concatenate([y, y + 0.01, y])
    elif case == "constant":
        y = np.full(12, 2.5)
    elif case == "tiny_noise":
        y = 2.5 + 1e-12 * np.random.default_rng(0).normal(size=12)
    elif case == "one_domain":
        X[:, :K] = 0.0
        X[:, 0] = 1.0
    for cfg in [gp.Config(), gp.Config(structure="joint", mean="constant")]:
        g = gp.fit_gp(X, y, K, cfg, restarts=2)
        Xs = make_data(5, seed=9)[0]
        out = [*gp.predict(g, Xs), *gp.predict(g, Xs, full_cov=True),
               *gp.cross_covariance(g, Xs, X)]
        assert all(np.all(np.isfinite(a)) for a in out) and math.isfinite(g.log_marginal_likelihood)
        assert np.all(gp.predict(g, Xs)[1] >= 0) and g.noise_variance > 0


def test_bad_input_raises_one_line():
    X, y = make_data(10)
    bad = []
    bad.append((X[:, :6], y))                                   # wrong width
    bad.append((X, y[:9]))                                      # wrong length of y
    Xo = X.copy(); Xo[3, 0] += 0.1; bad.append((Xo, y))         # weights off the simplex
    Xn = X.copy(); Xn[2, 6] = np.nan; bad.append((Xn, y))       # NaN in X
    yn = y.copy(); yn[4] = np.inf; bad.append((X, yn))          # inf in y
    for Xb, yb in bad:
        with pytest.raises(ValueError) as err:
            gp.fit_gp(Xb, yb, K)
        assert "\n" not in str(err.value)
    g = gp.fit_gp(X, y, K, restarts=1)
    with pytest.raises(ValueError):
        gp.predict(g, Xo)
    for opts in [dict(structure="additive"), dict(kernel_N="sm"),
                 dict(structure="joint", kernel_w="sm")]:
        with pytest.raises(ValueError) as err:
            gp.Config(**opts)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="lack"):
        gp.fit_gp(X, y, K, hyperparameters={"noise": 0.1})


def test_encode():
    X = gp.encode(np.array([[0.5, 0.5], [1.0, 0.0]]), [1e7, 1e9], [100, 100], (1e7, 1e9, 100, 100))
    np.testing.assert_allclose(X, [[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]], atol=1e-15)
    X = gp.encode(np.array([0.2, 0.8]), 1e8, 1000, (1e7, 1e9, 10, 1e5))
    np.testing.assert_allclose(X, [[0.2, 0.8, 0.5, 0.5]], atol=1e-15)
    U = gp.encode_fidelities([1e7, 1e8, 1e8], [10, 1000, 1e5], (1e7, 1e9, 10, 1e5))
    np.testing.assert_allclose(U, [[0.0, 0.0], [0.5, 0.5], [0.5, 1.0]], atol=1e-15)
    assert (gp.encode(np.eye(3), 1e8, [10, 1000, 1e5], (1e7, 1e9, 10, 1e5))[:, 3] == U[1, 0]).all()
    with pytest.raises(ValueError):
        gp.encode(np.array([0.2, 0.8]), -1.0, 1000, (1e7, 1e9, 10, 1e5))


def test_cross_scale_script_prints_tables(monkeypatch, capsys):
    """bench/cross_scale.py at a tiny size: per model and target-run count one row of means and one
    of standard errors, every coverage a share in [0, 1]."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import cross_scale
    monkeypatch.setattr(sys, "argv", ["cross_scale.py", "--case", "K5-S3-r0.9", "--mixtures", "8",
                                      "--repeats",
                                      "2", "--target-runs", "0", "2", "--models", "old", "new"])
    cross_scale.main()
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.startswith(("old ", "new "))]
    assert sorted((r[0], r[1]) for r in rows) == [("new", "0"), ("new", "2"), ("old", "0"),
                                                  ("old", "2")]
    assert sum(line.startswith("  +- se") for line in lines) == 4
    for cells in rows:                            # model, target runs, spearman, rmse, cov68, cov95
        spearman, rmse, cov68, cov95 = map(float, cells[2:6])
        assert -1 <= spearman <= 1 and rmse > 0 and 0 <= cov68 <= cov95 <= 1


@pytest.mark.parametrize("seed", [0, 2])
def test_one_run_per_mixture_keeps_the_mixture_effect(seed):
    """A design that runs each mixture once (a target run, then two rounds over six smaller scales,
    every checkpoint observed) cannot tell a run's offset from its mixture's effect. With a flat
    prior on the amplitude the MAP drops the effect (amplitude at its bound, the same prediction
    for every mixture); the amplitude's prior keeps it: the predicted spread of the mixtures'
    target losses is a good part of the simulator's true spread."""
    o = simulate.make_benchmark("loss-K5-L7-rho0.99")
    scales = [1e9] + [2e7, 4e7, 8e7, 1.5e8, 3e8, 6e8] * 2
    W = np.random.default_rng(seed).dirichlet(np.ones(5), len(scales))
    rows = [(w, N, c["steps"], c["loss"], i) for i, (w, N) in enumerate(zip(W, scales))
            for c in o.run(w, N, 20000, i)["checkpoints"]]
    w, N, T, y, runs = (np.array(column) for column in zip(*rows))
    bounds = (min(o.scales), max(o.scales), min(o.steps), max(o.steps))
    X = gp.encode(np.stack(w), N.astype(float), T.astype(float), bounds)
    specs, spread = gp._specs, {}
    for prior in (False, True):
        flat = lambda cfg, d, K, residual=1.0: [
            s if prior or s.name != "amplitude" else s._replace(prior=None)
            for s in specs(cfg, d, K, residual)]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(gp, "_specs", flat)
            model = gp.fit_gp(X, y, 5, runs=runs, seed=0)
        spread[prior] = gp.predict(model, gp.encode(W, 1e9, 20000, bounds))[0].std()
    true_spread = o.true_loss(W).std()
    assert spread[False] < 0.01 * true_spread
    assert spread[True] > 0.5 * true_spread


# ------------------------------------------------------------------ hyperparameter draws

def test_slice_sample_has_the_moments_of_known_densities():
    """The chain's moments equal closed forms within 5 Monte Carlo standard errors (from the
    chain's batch means): a correlated Gaussian (rho 0.8), an exponential of rate 2 cut at 3 by
    the box (mean 1/2 - 3 e^-6 / (1 - e^-6)), and a coordinate held by lower == upper."""
    cov = np.array([[1.0, 0.8], [0.8, 1.0]])
    precision = np.linalg.inv(cov)
    def log_density(x):
        return -0.5 * x[:2] @ precision @ x[:2] - 2.0 * x[2]
    lower, upper = np.array([-20.0, -20.0, 0.0, 0.7]), np.array([20.0, 20.0, 3.0, 0.7])
    chain = np.array(gp.slice_sample(lambda x: log_density(x), np.zeros(4), lower, upper, 6000,
                                     np.random.default_rng(0)))
    exp_mean = 0.5 - 3 * math.exp(-6) / (1 - math.exp(-6))
    batches = chain.reshape(60, 100, 4).mean(1)                        # batch means: the se
    se = batches.std(0, ddof=1) / math.sqrt(len(batches))
    assert np.all(np.abs(chain.mean(0)[:3] - [0.0, 0.0, exp_mean]) < 5 * se[:3])
    assert np.all(chain[:, 3] == 0.7)
    centred = chain[:, :2] - chain[:, :2].mean(0)
    assert np.allclose(centred.T @ centred / len(chain), cov, atol=0.1)
    assert np.all((chain >= lower) & (chain <= upper))
    with pytest.raises(ValueError, match="finite"):
        gp.slice_sample(lambda x: -math.inf, np.zeros(4), lower, upper, 1, np.random.default_rng(0))


def test_hyperparameter_draws_follow_the_fits_posterior_and_its_contract():
    """sample_hyperparameters: `draws` dicts with the fit's keys, inside the bounds, the held
    exponent (one step value) held, the same for the same seed; and as data grow the draws gather
    around the MAP (the posterior concentrates): the spread of log amplitude shrinks."""
    spread = {}
    for n_mixtures in (4, 24):
        X, y, runs = make_runs(n_mixtures, [0.0, 0.5, 1.0], seed=1)
        X[:, -1] = 1.0                                    # one step value: alpha_T is held
        model = gp.fit_gp(X, y, K, runs=runs, seed=0)
        draws = gp.sample_hyperparameters(model, 6, seed=3)
        assert len(draws) == 6 and all(d.keys() == model.hyperparameters.keys() for d in draws)
        for spec in gp._specs(model.config, X.shape[1], K):
            values = np.array([d[spec.name] for d in draws])
            assert np.all((values >= spec.lower * (1 - 1e-12)) & (values <= spec.upper))
        assert all(d["mean_alpha_T"] == model.hyperparameters["mean_alpha_T"] for d in draws)
        again = gp.sample_hyperparameters(model, 6, seed=3)
        assert all(np.array_equal(a["w_lengthscale"], b["w_lengthscale"])
                   for a, b in zip(draws, again))
        spread[n_mixtures] = np.std(np.log([d["amplitude"] for d in draws]))
    assert spread[24] < spread[4]


def test_predict_mixture_equals_monte_carlo_of_the_mixture():
    """predict_mixture of two GPs (other hyperparameters) equals the mean and variance of draws
    from the equal-weight mixture of their posteriors to 3 Monte Carlo standard errors."""
    X, y = make_data(30, seed=4)
    first = gp.fit_gp(X, y, K, seed=0)
    other = dict(first.hyperparameters, amplitude=4 * first.hyperparameters["amplitude"],
                 w_lengthscale=0.5 * first.hyperparameters["w_lengthscale"])
    second = gp.fit_gp(X, y, K, hyperparameters=other)
    Xs = make_data(3, seed=5)[0]
    mean, var = gp.predict_mixture([first, second], Xs)
    rng, n = np.random.default_rng(0), 400_000
    pick = rng.integers(0, 2, n)
    parts = [gp.predict(m, Xs) for m in (first, second)]
    means, variances = (np.array([p[k] for p in parts]) for k in (0, 1))          # (2, 3)
    samples = means[pick] + np.sqrt(variances[pick]) * rng.normal(size=(n, 3))
    assert np.all(np.abs(samples.mean(0) - mean) < 3 * np.sqrt(var / n))
    assert np.all(np.abs(samples.var(0) - var) < 3 * var * math.sqrt(2 / n) * 3)
