"""Benchmark: mixbo's GP (gp.py) beside scikit-learn's GaussianProcessRegressor on the same 7-d data
(5 mixture weights + u_N + u_T, a smooth function plus noise), n = 50, 200, 500, 1000.

Printed per n and model: fit time (s, equal restarts), MLL/n (log marginal likelihood of the standardized y
at the fitted hyperparameters, per point, without priors), predict time for 2000 points (mean + variance).
Models:
  sklearn          ConstantKernel * Matern(nu=2.5, ARD) + WhiteKernel, normalize_y=True, alpha=0 (the
                   WhiteKernel is the noise), L-BFGS-B, n_restarts_optimizer = restarts - 1
  mixbo joint      the same kernel, the same objective (priors=False): structure="joint"
  mixbo default    gp.fit_gp's defaults (what mixbo.py uses), MAP with the LogNormal priors
Then the gradient's cost: one objective + gradient evaluation at n = 500, by R&W eq. 5.9 as gp.py does it,
and by autograd through the Cholesky (the alternative, transcribed here only to be timed). Last, the knowledge
gradient's posterior covariances at n = 300 (default model): 2000 mixtures x 28 fidelities, |A| = 76, by
gp.cross_covariance on the 56,000 full rows and by gp.cross_covariance_grid (what acquisition.py calls).

Run: OMP_NUM_THREADS=1 python bench/bench_gp.py [--restarts R] [--sizes 50 200 500 1000]
"""

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gp  # noqa: E402

K = 5


def make_data(n, seed):
    """Dirichlet(1) mixtures, uniform u_N, u_T; a smooth function of all 7 inputs plus N(0, 0.05^2)."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.dirichlet(np.ones(K), n), rng.uniform(size=(n, 2))])          # (n, 7)
    f = (np.sin(3 * X[:, 0]) + X[:, 1] ** 2 - 0.5 * X[:, 2] * X[:, 3] - 2 * X[:, 5]
         + 0.5 * np.cos(4 * X[:, 6]) + 0.3 * X[:, 4] * X[:, 5])
    return X, f + 0.05 * rng.normal(size=n)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def autograd_through_cholesky(theta_np, cfg, specs, X, y):
    """The alternative gradient: -lml by Alg. 2.1 with autograd differentiating the Cholesky itself."""
    theta = torch.tensor(theta_np, dtype=torch.float64, requires_grad=True)
    P = gp._unpack(theta, specs)
    Kmat = gp._kernel(cfg, P, X, X, K) + P["noise"] * torch.eye(X.shape[0], dtype=torch.float64)
    L = torch.linalg.cholesky(Kmat)
    alpha = torch.cholesky_solve(y[:, None], L)
    lml = -0.5 * (y[:, None] * alpha).sum() - torch.log(L.diagonal()).sum() - 0.5 * len(y) * math.log(2 * math.pi)
    (-lml).backward()
    return lml.item(), theta.grad


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 500, 1000])
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    Xs, _ = make_data(2000, seed=123)
    print(f"torch threads {torch.get_num_threads()}, restarts {args.restarts}")
    print(f"{'n':>5} {'model':<14} {'fit s':>8} {'MLL/n':>9} {'predict 2000 s':>15} {'fit vs sklearn':>15}")
    for n in args.sizes:
        X, y = make_data(n, seed=n)
        kernel = ConstantKernel(1.0) * Matern(np.ones(7), nu=2.5) + WhiteKernel(1e-2)
        sk, t_sk = timed(lambda: GaussianProcessRegressor(kernel, alpha=0.0, normalize_y=True, random_state=0,
                                                          n_restarts_optimizer=args.restarts - 1).fit(X, y))
        _, p_sk = timed(lambda: sk.predict(Xs, return_std=True))
        sk_mll = sk.log_marginal_likelihood_value_ / n
        print(f"{n:>5} {'sklearn':<14} {t_sk:>8.3f} {sk_mll:>9.4f} {p_sk:>15.3f} {1.0:>15.2f}")
        joint = dict(structure="joint", mean="constant", priors=False, run_noise=False)   # sklearn's model
        for name, opts in [("mixbo joint", joint), ("mixbo default", {})]:
            g, t = timed(lambda: gp.fit_gp(X, y, K, restarts=args.restarts, seed=0, **opts))
            _, p = timed(lambda: gp.predict(g, Xs))
            print(f"{n:>5} {name:<14} {t:>8.3f} {g.log_marginal_likelihood / n:>9.4f} {p:>15.3f} {t / t_sk:>15.2f}")

    # one objective + gradient evaluation, n = 500, joint Matern-5/2: eq. 5.9 (gp.py) vs autograd through chol
    X, y = make_data(500, seed=500)
    ys = torch.from_numpy((y - y.mean()) / y.std())
    cfg = gp.Config(structure="joint", mean="constant", priors=False, run_noise=False)
    specs = gp._specs(cfg, 7, K)
    theta = gp._initial_theta(specs, np.random.default_rng(0), True, cfg)
    Xt = torch.from_numpy(X)
    f59, g59 = gp._objective(theta, cfg, specs, Xt, ys, K, None)
    lml, gac = autograd_through_cholesky(theta, cfg, specs, Xt, ys)
    assert abs(f59 + lml) < 1e-8 * abs(lml) and np.allclose(g59, gac.numpy(), rtol=1e-6, atol=1e-8)
    best = lambda fn: min(timed(fn)[1] for _ in range(10))
    t59 = best(lambda: gp._objective(theta, cfg, specs, Xt, ys, K, None))
    tac = best(lambda: autograd_through_cholesky(theta, cfg, specs, Xt, ys))
    print(f"gradient, n=500 (best of 10): eq. 5.9 as in gp.py {1e3 * t59:.1f} ms, "
          f"autograd through Cholesky {1e3 * tac:.1f} ms")

    # the knowledge gradient's covariances: A = 75 mixtures + 1 projection, Z = 2000 mixtures x 28 fidelities
    X, y = make_data(300, seed=300)
    g = gp.fit_gp(X, y, K, restarts=1, seed=0)
    rng = np.random.default_rng(1)
    W = rng.dirichlet(np.ones(K), 2000)                                                     # (M, K)
    U = np.stack(np.meshgrid(np.linspace(0, 1, 7), np.linspace(0, 1, 4), indexing="ij"), -1).reshape(-1, 2)  # (28, 2)
    XA = np.column_stack([rng.dirichlet(np.ones(K), 76), np.ones((76, 2))])                # (|A|, d) at the target
    Z = np.column_stack([W.repeat(len(U), axis=0), np.tile(U, (len(W), 1))])                # (M F, d) full rows
    best3 = lambda fn: min(timed(fn)[1] for _ in range(3))
    t_plain = best3(lambda: gp.cross_covariance(g, XA, Z))
    t_grid = best3(lambda: gp.cross_covariance_grid(g, XA, W, U, np.ones(2)))
    print(f"KG covariances, n=300, |A|=76, 2000 x 28 (best of 3): cross_covariance {t_plain:.3f} s, "
          f"cross_covariance_grid {t_grid:.3f} s")


if __name__ == "__main__":
    main()
