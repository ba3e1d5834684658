"""Benchmark: mixbo's GP (gp.py) beside scikit-learn's GaussianProcessRegressor on the same
7-d data, n = 50, 200, 500, 1000 observations shaped like a search's: runs of Dirichlet(1) mixtures
(K = 5) at one of 7 model scales, each seen at 4 checkpoints (u_T = 0, 1/3, 2/3, 1); the loss is a
scaling law in u_N, u_T plus a smooth mixture effect that drifts with scale, a run offset and
checkpoint noise.

Printed per n and model: fit time (s, one start each), objective evaluations (value and gradient),
MLL/n (log marginal likelihood of the standardized y at the fitted hyperparameters, per point,
without priors), predict time for 2000 points (mean and variance; the best of 3 calls). Models:
  sklearn          ConstantKernel * Matern(nu=2.5, ARD) + WhiteKernel, normalize_y=True, alpha=0,
                   sklearn's default L-BFGS-B (wrapped here only to count evaluations)
  mixbo joint      the same kernel and objective (priors=False): gp.Config(structure="joint", ...)
  mixbo no dev.    gp.Config(scale_deviation=False): the default without per-scale deviations
  mixbo default    gp.Config(): what mixbo.py uses
  previous code    with --previous-gp FILE: an earlier gp.py's fit_gp with its own defaults
Then one objective and gradient evaluation at n = 500 by R&W eq. 5.9 (as gp.py) and by autograd
through the Cholesky (transcribed here only to be timed); the knowledge gradient's covariances at
n = 300 (2000 mixtures x 28 fidelities, |A| = 76) by cross_covariance and cross_covariance_grid;
with --profile, cProfile's top entries of the default fit at n = 500.

Run: OMP_NUM_THREADS=1 python bench/bench_gp.py [--sizes 50 200 500 1000] [--profile]
     [--previous-gp FILE] [--skip-timings]
"""

import argparse
import cProfile
import importlib.util
import math
import pstats
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.optimize
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gp  # noqa: E402

K = 5
MODELS = {"mixbo joint": gp.Config(structure="joint", mean="constant", priors=False,
                                   run_noise=False, scale_deviation=False),
          "mixbo no dev.": gp.Config(scale_deviation=False),
          "mixbo default": gp.Config()}


def make_data(n, seed):
    """(X (n, 7), y (n,)): ceil(n / 4) runs of 4 checkpoints, the last one cut to n rows."""
    rng = np.random.default_rng(seed)
    runs = -(-n // 4)
    W = rng.dirichlet(np.ones(K), runs).repeat(4, axis=0)                           # (4 runs, K)
    u_N = rng.integers(0, 7, runs).repeat(4) / 6.0
    u_T = np.tile(np.arange(4) / 3.0, runs)
    effect = (np.sin(3 * W[:, 0]) + W[:, 1] ** 2 - 0.5 * W[:, 2] * W[:, 3] + 0.3 * W[:, 4] * u_N
              + 0.2 * np.cos(4 * W[:, 1] + 2 * u_N))
    y = (2.0 + 1.5 * np.exp(-1.3 * u_N) + 0.8 * np.exp(-1.2 * u_T) + 0.1 * effect
         + 0.01 * rng.normal(size=runs).repeat(4) + 0.003 * rng.normal(size=4 * runs))
    return np.column_stack([W, u_N, u_T])[:n], y[:n]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def counting_lbfgsb(counter):
    """sklearn's default optimizer (scipy L-BFGS-B on its log-theta, jac=True), counting
    evaluations."""
    def optimizer(obj_func, initial_theta, bounds):
        def counted(theta):
            counter[0] += 1
            return obj_func(theta)
        res = scipy.optimize.minimize(counted, initial_theta, method="L-BFGS-B", jac=True,
                                      bounds=bounds)
        return res.x, res.fun
    return optimizer


def fit_mixbo(X, y, config, module=gp):
    """module.fit_gp with one start, counting its objective evaluations; config None: the module's
    defaults through its own keyword signature (an earlier gp.py)."""
    calls, objective = [0], module._objective

    def counted(*args):
        calls[0] += 1
        return objective(*args)
    module._objective = counted
    try:
        if config is None:
            model = module.fit_gp(X, y, K, restarts=1, seed=0)
        else:
            model = module.fit_gp(X, y, K, config, restarts=1, seed=0)
    finally:
        module._objective = objective
    return model, calls[0]


def autograd_through_cholesky(theta_np, cfg, specs, X, y):
    """The alternative gradient: -lml by Alg. 2.1 with autograd differentiating the Cholesky itself.
    """
    theta = torch.tensor(theta_np, dtype=torch.float64, requires_grad=True)
    P = gp._unpack(theta, specs)
    Kmat = gp._kernel(cfg, P, X, X, K) + P["noise"] * torch.eye(X.shape[0], dtype=torch.float64)
    L = torch.linalg.cholesky(Kmat)
    alpha = torch.cholesky_solve(y[:, None], L)
    lml = (-0.5 * (y[:, None] * alpha).sum() - torch.log(L.diagonal()).sum()
           - 0.5 * len(y) * math.log(2 * math.pi))
    (-lml).backward()
    return lml.item(), theta.grad


def compare_fits(sizes, previous):
    Xs, _ = make_data(2000, seed=123)
    best3 = lambda fn: min(timed(fn)[1] for _ in range(3))
    print(f"torch threads {torch.get_num_threads()}, one start per fit")
    print(f"{'n':>5} {'model':<15} {'fit s':>7} {'evals':>6} {'MLL/n':>8} {'predict 2000 s':>15} "
          f"{'fit / sklearn':>14} {'predict / sklearn':>18}")
    for n in sizes:
        X, y = make_data(n, seed=n)
        kernel = ConstantKernel(1.0) * Matern(np.ones(7), nu=2.5) + WhiteKernel(1e-2)
        calls = [0]
        sk = GaussianProcessRegressor(kernel, alpha=0.0, normalize_y=True,
                                      optimizer=counting_lbfgsb(calls))
        _, t_sk = timed(lambda: sk.fit(X, y))
        p_sk = best3(lambda: sk.predict(Xs, return_std=True))
        sk_mll = sk.log_marginal_likelihood_value_ / n
        print(f"{n:>5} {'sklearn':<15} {t_sk:>7.3f} {calls[0]:>6} {sk_mll:>8.4f} {p_sk:>15.4f} "
              f"{1.0:>14.2f} {1.0:>18.2f}")
        rows = [(name, config, gp) for name, config in MODELS.items()]
        rows += [("previous code", None, previous)] if previous else []
        for name, config, module in rows:
            (g, evals), t = timed(lambda: fit_mixbo(X, y, config, module))
            p = best3(lambda: module.predict(g, Xs))
            print(f"{n:>5} {name:<15} {t:>7.3f} {evals:>6} {g.log_marginal_likelihood / n:>8.4f} "
                  f"{p:>15.4f} {t / t_sk:>14.2f} {p / p_sk:>18.2f}")


def gradient_and_grid_timings():
    X, y = make_data(500, seed=500)
    ys = torch.from_numpy((y - y.mean()) / y.std())
    cfg = MODELS["mixbo joint"]
    specs = gp._specs(cfg, 7, K)
    theta = gp._initial_theta(specs, np.random.default_rng(0), True)
    Xt = torch.from_numpy(X)
    known = gp._distinct(Xt), gp._distinct(Xt[:, K:])     # X's distinct rows, as fit_gp hands them
    f59, g59 = gp._objective(theta, cfg, specs, Xt, ys, K, None, known)
    lml, gac = autograd_through_cholesky(theta, cfg, specs, Xt, ys)
    assert abs(f59 + lml) < 1e-8 * abs(lml) and np.allclose(g59, gac.numpy(), rtol=1e-6, atol=1e-8)
    best = lambda fn, r: min(timed(fn)[1] for _ in range(r))
    t59 = best(lambda: gp._objective(theta, cfg, specs, Xt, ys, K, None, known), 10)
    tac = best(lambda: autograd_through_cholesky(theta, cfg, specs, Xt, ys), 10)
    print(f"gradient, n=500, joint Matern-5/2 (best of 10): eq. 5.9 as gp.py {1e3 * t59:.1f} ms, "
          f"autograd through Cholesky {1e3 * tac:.1f} ms")

    X, y = make_data(300, seed=300)
    g = gp.fit_gp(X, y, K, restarts=1, seed=0)
    rng = np.random.default_rng(1)
    W = rng.dirichlet(np.ones(K), 2000)                                                 # (M, K)
    scales, steps = np.meshgrid(np.geomspace(1e7, 1e9, 7), np.geomspace(1e3, 8e3, 4), indexing="ij")
    bounds = (1e7, 1e9, 1e3, 8e3)
    U = gp.encode_fidelities(scales.ravel(), steps.ravel(), bounds)                     # (28, 2)
    u_P = gp.encode_fidelities(1e9, 8e3, bounds)[0]
    XA = np.column_stack([rng.dirichlet(np.ones(K), 76), np.tile(u_P, (76, 1))])     # at the target
    Z = np.column_stack([W.repeat(len(U), axis=0), np.tile(U, (len(W), 1))])            # (M F, d)
    t_plain = best(lambda: gp.cross_covariance(g, XA, Z), 3)
    t_grid = best(lambda: gp.cross_covariance_grid(g, XA, W, U, u_P), 3)
    print(f"KG covariances, n=300, |A|=76, 2000 x 28 (best of 3): cross_covariance {t_plain:.3f} s,"
          f"cross_covariance_grid {t_grid:.3f} s")


def profile_default_fit(n=500, top=15):
    X, y = make_data(n, seed=n)
    profiler = cProfile.Profile()
    profiler.runcall(fit_mixbo, X, y, MODELS["mixbo default"])
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[50, 200, 500, 1000])
    ap.add_argument("--profile", action="store_true", help="cProfile the default fit at n = 500")
    ap.add_argument("--skip-timings", action="store_true", help="only the fit/predict table")
    ap.add_argument("--previous-gp", default=None,
                    help="an earlier gp.py (git show COMMIT:gp.py > FILE): 'previous code'")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    previous = None
    if args.previous_gp:
        spec = importlib.util.spec_from_file_location("previous_gp", args.previous_gp)
        previous = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(previous)
    compare_fits(args.sizes, previous)
    if not args.skip_timings:
        gradient_and_grid_timings()
    if args.profile:
        profile_default_fit()


if __name__ == "__main__":
    main()
