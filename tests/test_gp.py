"""Tests for gp.py, micrograd style: the same quantity computed by an oracle (scikit-learn, GPyTorch, a
direct transcription of the formula, finite differences) and compared tightly.
Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_gp.py"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gp  # noqa: E402

K = 5  # domains in the test data: X = [w_1..w_5, u_N, u_T]


def make_data(n, seed=0, noise=0.05):
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.dirichlet(np.ones(K), n), rng.uniform(size=(n, 2))])
    y = np.sin(3 * X[:, 0]) + X[:, 1] ** 2 - 2 * X[:, 5] + 0.5 * np.cos(4 * X[:, 6]) + noise * rng.normal(size=n)
    return X, y


def sklearn_gpr(kind, amplitude, ls, noise, X, y, restarts=None):
    """sklearn GPR with the same kernel: amplitude * {RBF, Matern-5/2}(ls) + White(noise), normalize_y."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Matern, WhiteKernel
    base = RBF(ls) if kind == "rbf" else Matern(ls, nu=2.5)
    kernel = ConstantKernel(amplitude) * base + WhiteKernel(noise)
    if restarts is None:   # condition only (optimizer=None)
        return GaussianProcessRegressor(kernel, alpha=0.0, normalize_y=True, optimizer=None).fit(X, y)
    return GaussianProcessRegressor(kernel, alpha=0.0, normalize_y=True, n_restarts_optimizer=restarts - 1,
                                    random_state=0).fit(X, y)


# ------------------------------------------------------------------ equality with scikit-learn

@pytest.mark.parametrize("kind", ["rbf", "matern52"])
def test_posterior_and_lml_equal_sklearn(kind):
    X, y = make_data(40)
    Xs, _ = make_data(15, seed=1)
    hyp = {"amplitude": 1.7, "w_lengthscale": np.array([0.3, 0.5, 0.9, 1.3, 2.0, 0.4, 0.8]), "noise": 0.01}
    g = gp.fit_gp(X, y, K, structure="joint", kernel_w=kind, priors=False, run_noise=False, mean="constant",
                  hyperparameters=hyp)
    sk = sklearn_gpr(kind, hyp["amplitude"], hyp["w_lengthscale"], hyp["noise"], X, y)
    mean, var = gp.predict(g, Xs)
    sk_mean, sk_std = sk.predict(Xs, return_std=True)
    # sklearn's std includes the WhiteKernel noise (its kernel diag); ours is the latent f's
    np.testing.assert_allclose(mean, sk_mean, rtol=1e-8, atol=0)
    np.testing.assert_allclose(np.sqrt(var + g.noise_variance), sk_std, rtol=1e-8, atol=0)
    np.testing.assert_allclose(g.log_marginal_likelihood, sk.log_marginal_likelihood(sk.kernel_.theta), rtol=1e-8)
    _, cov = gp.predict(g, Xs, full_cov=True)
    _, sk_cov = sk.predict(Xs, return_cov=True)
    np.testing.assert_allclose(cov + g.noise_variance * np.eye(len(Xs)), sk_cov, rtol=1e-8, atol=1e-12)


def test_rbf_product_over_groups_equals_joint_rbf():
    X, y = make_data(30)
    ls = np.array([0.3, 0.5, 0.9, 1.3, 2.0, 0.4, 0.8])
    joint = gp.fit_gp(X, y, K, structure="joint", kernel_w="rbf", run_noise=False, mean="constant",
                      hyperparameters={"amplitude": 2.0, "w_lengthscale": ls, "noise": 0.02})
    prod = gp.fit_gp(X, y, K, structure="product", kernel_w="rbf", kernel_N="rbf", kernel_T="rbf", run_noise=False,
                     mean="constant",
                     hyperparameters={"amplitude": 2.0, "w_lengthscale": ls[:K], "N_lengthscale": ls[K:K + 1],
                                      "T_lengthscale": ls[K + 1:], "noise": 0.02})
    Xs, _ = make_data(10, seed=3)
    for a, b in zip(gp.predict(joint, Xs, full_cov=True), gp.predict(prod, Xs, full_cov=True)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    assert abs(joint.log_marginal_likelihood - prod.log_marginal_likelihood) < 1e-9


def test_fitted_lml_at_least_sklearn():
    X, y = make_data(80, seed=2)
    for kind in ["rbf", "matern52"]:
        sk = sklearn_gpr(kind, 1.0, np.ones(7), 1e-2, X, y, restarts=2)
        g = gp.fit_gp(X, y, K, structure="joint", kernel_w=kind, priors=False, run_noise=False, mean="constant",
                      restarts=2, seed=0)
        sk_lml = sk.log_marginal_likelihood_value_
        assert g.log_marginal_likelihood >= sk_lml - 1e-6 * abs(sk_lml)


# ------------------------------------------------------------------ spectral mixture kernels

def test_spectral_mixture_equals_formula_and_k0():
    rng = np.random.default_rng(0)
    Q, p = 3, 4
    A, B = rng.uniform(size=(6, p)), rng.uniform(size=(5, p))
    w, ls, mu = rng.uniform(0.2, 1.0, Q), rng.uniform(0.2, 2.0, (Q, p)), rng.uniform(0.0, 2.0, (Q, p))
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


def test_spectral_mixture_product_equals_gpytorch():
    from gpytorch.kernels import SpectralMixtureKernel
    rng = np.random.default_rng(1)
    Q, p = 3, 2
    A, B = rng.uniform(size=(6, p)), rng.uniform(size=(5, p))
    w, s, mu = np.array([1.0, 0.6, 0.4]), rng.uniform(0.2, 2.0, (Q, p)), rng.uniform(0.0, 2.0, (Q, p))
    kern = SpectralMixtureKernel(num_mixtures=Q, ard_num_dims=p).double()
    kern.mixture_weights = torch.from_numpy(w)
    kern.mixture_scales = torch.from_numpy(s).reshape(Q, 1, p)
    kern.mixture_means = torch.from_numpy(mu).reshape(Q, 1, p)
    t = lambda a: torch.from_numpy(a)
    with torch.no_grad():
        oracle = kern(t(A), t(B)).to_dense().numpy()
        ours = gp.spectral_mixture_product(t(A), t(B), t(w), t(1 / (2 * math.pi * s)), t(mu)).numpy()
        k0 = gp.spectral_mixture_product(t(A[:1]), t(A[:1]), t(w), t(1 / (2 * math.pi * s)), t(mu)).item()
    np.testing.assert_allclose(ours, oracle, rtol=1e-10, atol=1e-12)
    assert abs(k0 - w.sum() ** p) < 1e-12                              # (sum w)^D = 4.0, not W&A's 2.0


# ------------------------------------------------------------------ gradients, PSD, recovery

MODELS = [dict(structure="joint", kernel_w="matern52", mean="constant", run_noise=False), dict(structure="product"),
          dict(structure="product", kernel_w="sm"), dict(structure="product", kernel_w="sm_product", kernel_N="rbf"),
          dict(structure="additive", mean="scaling_law"), dict(structure="product", mean="scaling_law")]


@pytest.mark.parametrize("opts", MODELS)
def test_gradient_equals_finite_differences(opts):
    X, y = make_data(25)
    ys = torch.from_numpy((y - y.mean()) / y.std())
    runs = np.arange(25) // 3                                  # groups of 3 observations share a run offset
    B = torch.from_numpy((runs[:, None] == runs[None, :]).astype(np.float64))
    cfg = gp.Config(**opts)
    specs = gp._specs(cfg, 7, K)
    rng = np.random.default_rng(0)
    theta = gp._initial_theta(specs, rng, True, cfg) + rng.normal(0.0, 0.3, len(gp._bounds(specs)))
    f, g = gp._objective(theta, cfg, specs, torch.from_numpy(X), ys, K, B)
    assert f != gp.PENALTY
    h = 1e-5
    fd = np.array([(gp._objective(theta + h * e, cfg, specs, torch.from_numpy(X), ys, K, B)[0]
                    - gp._objective(theta - h * e, cfg, specs, torch.from_numpy(X), ys, K, B)[0]) / (2 * h)
                   for e in np.eye(len(theta))])
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(fd).max()))


@pytest.mark.parametrize("opts", MODELS)
def test_kernel_matrix_is_psd(opts):
    X, _ = make_data(60, seed=4)
    cfg = gp.Config(**opts)
    specs = gp._specs(cfg, 7, K)
    theta = gp._initial_theta(specs, np.random.default_rng(5), False, cfg)
    Kmat = gp._kernel(cfg, gp._unpack(torch.from_numpy(theta), specs), torch.from_numpy(X), torch.from_numpy(X), K)
    np.testing.assert_allclose(Kmat.numpy(), Kmat.numpy().T, atol=1e-12)
    assert np.linalg.eigvalsh(Kmat.numpy()).min() > -1e-9 * Kmat.diagonal().max().item()


def test_anisotropic_lengthscales_recovered():
    rng = np.random.default_rng(3)
    X = np.column_stack([rng.dirichlet(np.ones(K), 60), rng.uniform(size=(60, 2))])
    y = np.sin(6 * X[:, K]) + 0.1 * X[:, K + 1] + 0.01 * rng.normal(size=60)   # fast in u_N, slow in u_T, none in w
    g = gp.fit_gp(X, y, K, structure="joint", kernel_w="rbf", restarts=2)
    ls = g.hyperparameters["w_lengthscale"]
    assert ls[K] < 0.5 and ls[K] < ls[K + 1] / 3 and ls[K] < ls[:K].min() / 3


def test_cross_covariance_equals_full_covariance_and_units():
    X, y = make_data(50)
    g = gp.fit_gp(X, 3.0 + 10.0 * y, K, restarts=1, structure="additive", mean="scaling_law")
    XA, XZ = make_data(7, seed=5)[0], make_data(9, seed=6)[0]
    cov_AZ, var_Z = gp.cross_covariance(g, XA, XZ, chunk=4)
    _, cov = gp.predict(g, np.vstack([XA, XZ]), full_cov=True)
    np.testing.assert_allclose(cov_AZ, cov[:7, 7:], rtol=1e-9, atol=1e-10 * np.abs(cov).max())
    np.testing.assert_allclose(var_Z, np.diag(cov)[7:], rtol=1e-9, atol=1e-10 * np.abs(cov).max())
    # same hyperparameters on y instead of 3 + 10 y: mean scales by 10 and shifts by 3, variances by 100
    g1 = gp.fit_gp(X, y, K, structure="additive", mean="scaling_law", hyperparameters=g.hyperparameters)
    m1, v1 = gp.predict(g1, XZ)
    m10, v10 = gp.predict(g, XZ)
    np.testing.assert_allclose(m10, 3.0 + 10.0 * m1, rtol=1e-9, atol=1e-10 * np.abs(m10).max())
    np.testing.assert_allclose(v10, 100.0 * v1, rtol=1e-8)
    assert abs(g.noise_variance - 100.0 * g1.noise_variance) < 1e-10 * g.noise_variance


@pytest.mark.parametrize("opts", MODELS)
@pytest.mark.parametrize("block", [1, 1024])   # one mixture per block; all in one block
def test_cross_covariance_grid_equals_plain_cross_covariance(opts, block):
    """The grid form (kernel factors per mixture and per fidelity, paired projection rows) against
    cross_covariance on the same M F full rows z_mf = [w_m, u_f], mixture-major, to 1e-10."""
    X, y = make_data(40)
    g = gp.fit_gp(X, 3.0 + 10.0 * y, K, restarts=1, maxiter=15, **opts)
    rng = np.random.default_rng(7)
    W = np.vstack([np.eye(K)[:1], rng.dirichlet(np.full(K, 0.3), 4)])          # (M, K) = (5, K), a vertex first
    U = rng.uniform(size=(3, 2))                                                 # (F, 2) [u_N, u_T]
    XA = make_data(4, seed=8)[0]                                                 # (|A|, d)
    XP = np.column_stack([W, np.ones((5, 2))])                                   # (M, d) each mixture at u = (1, 1)
    M, F = len(W), len(U)
    Z = np.column_stack([W.repeat(F, axis=0), np.tile(U, (M, 1))])              # (M F, d) mixture-major
    cov_plain, var_plain = gp.cross_covariance(g, np.vstack([XA, XP]), Z)       # (|A| + M, M F), (M F,)
    cov, own, var = gp.cross_covariance_grid(g, XA, W, U, XP[0, -2:], block=block)      # (M, F, |A|), (M, F), (M, F)
    tol = 1e-10 * np.abs(cov_plain).max()
    np.testing.assert_allclose(cov, cov_plain[:4].T.reshape(M, F, 4), rtol=0, atol=tol)
    np.testing.assert_allclose(own, cov_plain[4 + np.arange(M).repeat(F), np.arange(M * F)].reshape(M, F), rtol=0,
                               atol=tol)
    np.testing.assert_allclose(var, var_plain.reshape(M, F), rtol=0, atol=tol)
    for bad in [(W[:, 1:], U), (W, U[:, :1])]:      # a weight or a fidelity column missing
        with pytest.raises(ValueError, match="W must be"):
            gp.cross_covariance_grid(g, XA, *bad, XP[0, -2:])


def test_scaling_law_mean_equals_explicit_basis_formulas():
    """R&W eq. 2.41-2.42 (basis h, coefficient prior N(0, B), b = 0) against our kernel + h^T S h,
    S = diag(s_beta^2, s_beta^2, s_beta^2, s_C^2)."""
    X, y = make_data(30)
    Xs = make_data(6, seed=7)[0]
    hyp = {"amplitude": 0.8, "w_lengthscale": np.full(K, 0.6), "N_lengthscale": [0.7], "T_lengthscale": [1.1],
           "noise": 0.02, "mean_amplitude": 3.0, "mean_coupling": 0.5, "mean_alpha_N": 1.4, "mean_alpha_T": 0.6}
    g = gp.fit_gp(X, y, K, run_noise=False, hyperparameters=hyp)
    ys = (y - g.y_mean) / g.y_scale
    P = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in hyp.items()}
    cfg0 = gp.Config(mean="constant", run_noise=False)
    k0 = lambda A, B: gp._kernel(cfg0, P, torch.from_numpy(A), torch.from_numpy(B), K).numpy()
    h = lambda A: np.column_stack([np.ones(len(A)), np.exp(-1.4 * A[:, K]), np.exp(-0.6 * A[:, K + 1]),
                                   np.exp(-1.4 * A[:, K] - 0.6 * A[:, K + 1])]).T                # (4, n)
    Ky = k0(X, X) + 0.02 * np.eye(30)
    Ks, Kss, H, Hs = k0(X, Xs), k0(Xs, Xs), h(X), h(Xs)
    Kinv = np.linalg.inv(Ky)
    A = np.diag(1 / np.array([3.0, 3.0, 3.0, 0.5])) + H @ Kinv @ H.T      # B^-1 + H K^-1 H^T
    beta = np.linalg.solve(A, H @ Kinv @ ys)                             # eq. 2.42, b = 0
    R = Hs - H @ Kinv @ Ks                                               # (4, m)
    mean = Ks.T @ Kinv @ ys + R.T @ beta                                 # eq. 2.41/2.42
    cov = Kss - Ks.T @ Kinv @ Ks + R.T @ np.linalg.solve(A, R)
    m_ours, c_ours = gp.predict(g, Xs, full_cov=True)
    np.testing.assert_allclose(m_ours, g.y_mean + g.y_scale * mean, rtol=1e-9)
    np.testing.assert_allclose(c_ours, g.y_scale ** 2 * cov, rtol=1e-7, atol=1e-12)


def test_scaling_law_coupling_is_fitted_only_where_the_data_have_one():
    """The coupling C / (N^alpha D^beta) has its own prior variance s_C^2, so the marginal likelihood decides
    whether it is there: on a loss surface additive in N and D (Chinchilla's form) its fitted variance is a
    negligible share of s_beta^2; when the surface has the coupling, it is not. 10 mixtures x 4 scales x 4
    steps (4 checkpoints per run); with 2 levels per axis the four basis functions could not be told apart."""
    rng = np.random.default_rng(0)
    n_w = 3
    W = rng.dirichlet(np.ones(n_w), 10)                                                   # (10, 3)
    u = np.linspace(0.0, 1.0, 4)
    u_N, u_T = (g.ravel() for g in np.meshgrid(u, u, indexing="ij"))                      # (16,) scale-major
    X = np.column_stack([np.repeat(W, 16, axis=0), np.tile(u_N, 10), np.tile(u_T, 10)])  # (160, 5)
    mixture = 0.05 * ((X[:, :n_w] - np.array([0.5, 0.3, 0.2])) ** 2).sum(1)
    additive = 3.0 + np.exp(-2.0 * X[:, n_w]) + 0.8 * np.exp(-1.5 * X[:, n_w + 1]) + mixture
    coupled = additive + 1.5 * np.exp(-2.0 * X[:, n_w] - 1.5 * X[:, n_w + 1])
    runs = np.repeat(np.arange(40), 4)                                                     # a run = 4 checkpoints
    share = {}
    for name, y in (("additive", additive), ("coupled", coupled)):
        h = gp.fit_gp(X, y + 0.005 * rng.normal(size=len(y)), n_w, runs=runs).hyperparameters
        share[name] = h["mean_coupling"] / h["mean_amplitude"]                             # s_C^2 / s_beta^2
    assert share["additive"] < 1e-2 and share["coupled"] > 0.5, share


def test_run_noise():
    X, y = make_data(30)
    hyp = {"amplitude": 1.3, "w_lengthscale": np.full(K, 0.7), "N_lengthscale": [0.5], "T_lengthscale": [0.9],
           "mean_amplitude": 2.0, "mean_coupling": 0.4, "mean_alpha_N": 1.5, "mean_alpha_T": 0.7}
    # one observation per run: sigma^2 I + sigma_run^2 B is white noise of variance sigma^2 + sigma_run^2
    a = gp.fit_gp(X, y, K, hyperparameters={**hyp, "noise": 0.01, "run_noise": 0.02})
    b = gp.fit_gp(X, y, K, run_noise=False, hyperparameters={**hyp, "noise": 0.03})
    assert abs(a.log_marginal_likelihood - b.log_marginal_likelihood) < 1e-10
    np.testing.assert_allclose(gp.predict(a, X[:5])[1], gp.predict(b, X[:5])[1], rtol=1e-10)
    assert abs(a.noise_variance - b.noise_variance) < 1e-12 and a.run_noise_variance > 0
    # checkpoints of one run (same w and scale, different steps) share the offset by default
    Xc = np.repeat(X[:10], 3, axis=0)
    Xc[:, K + 1] = np.tile([0.0, 0.5, 1.0], 10)
    yc = np.repeat(y[:10], 3) + 0.1 * Xc[:, K + 1]
    default = gp.fit_gp(Xc, yc, K, hyperparameters={**hyp, "noise": 0.01, "run_noise": 0.02})
    labelled = gp.fit_gp(Xc, yc, K, runs=np.arange(30) // 3, hyperparameters={**hyp, "noise": 0.01, "run_noise": 0.02})
    separate = gp.fit_gp(Xc, yc, K, runs=np.arange(30), hyperparameters={**hyp, "noise": 0.01, "run_noise": 0.02})
    assert abs(default.log_marginal_likelihood - labelled.log_marginal_likelihood) < 1e-10
    assert abs(default.log_marginal_likelihood - separate.log_marginal_likelihood) > 1e-3


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
    for opts in [dict(), dict(structure="additive", mean="scaling_law")]:
        g = gp.fit_gp(X, y, K, restarts=2, **opts)
        Xs = make_data(5, seed=9)[0]
        out = [*gp.predict(g, Xs), *gp.predict(g, Xs, full_cov=True), *gp.cross_covariance(g, Xs, X)]
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
    with pytest.raises(ValueError):
        gp.fit_gp(X, y, K, structure="nope")
    with pytest.raises(ValueError):
        gp.fit_gp(X, y, K, hyperparameters={"noise": 0.1})


def test_encode():
    X = gp.encode(np.array([[0.5, 0.5], [1.0, 0.0]]), [1e7, 1e9], [100, 100], (1e7, 1e9, 100, 100))
    np.testing.assert_allclose(X, [[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]], atol=1e-15)
    X = gp.encode(np.array([0.2, 0.8]), 1e8, 1000, (1e7, 1e9, 10, 1e5))
    np.testing.assert_allclose(X, [[0.2, 0.8, 0.5, 0.5]], atol=1e-15)
    with pytest.raises(ValueError):
        gp.encode(np.array([0.2, 0.8]), -1.0, 1000, (1e7, 1e9, 10, 1e5))


def test_cross_scale_script_prints_means_and_standard_errors(monkeypatch, capsys):
    """bench/cross_scale.py (the README's issue-8 table) at a tiny size: one row of means and one of standard
    errors over splits per model, every coverage a share in [0, 1] and the ceiling a rank correlation."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import cross_scale
    monkeypatch.setattr(sys, "argv", ["cross_scale.py", "--mixtures", "8", "--repeats", "2", "--restarts", "1",
                                      "--models", "product", "product+law"])
    cross_scale.main()
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines if line.startswith(("product ", "product+law "))}
    assert set(rows) == {"product", "product+law"}
    assert sum(line.startswith("  +- se") for line in lines) == 2
    for line in rows.values():
        cells = line.replace("|", " ").split()[1:]                   # spearman rmse cov68 cov95 fit_s | truth x4
        spearman, rmse, cov68, cov95 = map(float, cells[:4])
        assert -1 <= spearman <= 1 and rmse > 0 and 0 <= cov68 <= cov95 <= 1
    ceiling = float(next(line for line in lines if line.startswith("ceiling")).split("=")[1].split(";")[0])
    assert -1 <= ceiling <= 1
