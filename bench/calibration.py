"""Calibration of mfkg's target-scale predictions inside the loop: which GP model options give honest sds?

bench/cross_scale.py fits each model on a designed split (many small runs, 2 target runs). Here the data
are what mixbo's own loop collected: for each seed, `mixbo.optimize(make_benchmark(name), "mfkg",
budget, seed)` (default model, ledger in memory). The ledger is then cut after `--fractions` of the
budget, and every candidate model is fitted on the cut history by mixbo.fit_model itself (hyperparameters
by gp.fit_gp on the first r = c - c % refit_every trials with seed trial_seed(seed, r, MODEL), then
conditioned on all c trials). At the target fidelity, for the E mixtures evaluated so far:
  bias       mean of (posterior mean - noise-free true loss), nats (negative: too optimistic)
  rmse       root mean squared error of the posterior mean against the true loss
  sd         mean latent posterior sd
  |z|<1, <2  share of mixtures with |mean - true| / sd below 1 and 2 (Gaussian: 0.68, 0.95)
  |zc|<1, <2 the same for the differences from the mixtures' average, f_i - mean_j f_j (a common offset
             is removed: these are the intervals that a ranking, and so the next decision, depends on)
  rec<1, <2  share of seeds in which the true loss of the mixture mixbo recommends (the DEFAULT model's
             argmin) lies within 1 and 2 sd of this model's prediction for it (the "reported +-" row
             is what mixbo prints)
  regret     true loss of the recommendation (argmin posterior mean over the E mixtures, as
             acquisition.recommend) minus the benchmark's optimum
  fit s      seconds for this row's GP (near 0 where an earlier row with the same gp.fit_gp options left
             its hyperparameters in mixbo.fit_model's cache)
Every row is the mean over seeds of the per-ledger numbers; `regret` also shows the median. The ledgers
come from the default model's decisions, so `regret` compares recommendations on the same runs; the
loop under another model (different decisions) is measured by `python mixbo.py --sim --bench`.

Run: python bench/calibration.py [--benchmark default | --table runs.csv] [--seeds 4] [--budget 5]
     [--fractions 0.5,1] [--jobs 2]   (one BLAS/torch thread per process; seeds run in `--jobs` forked
     processes). With --table the loop replays a run table (simulate.load_table) and "true" is the table's
     mean over replicates at the target: measured, so it carries their seed noise.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")      # small matrices: one thread each (as mixbo's CLI)

import argparse  # noqa: E402
import multiprocessing  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gp  # noqa: E402
import mixbo  # noqa: E402
import simulate  # noqa: E402

# name -> gp.fit_gp options (fit) and, optionally, hyperparameter overrides applied before conditioning
MODELS = {
    "default (gp.fit_gp's)": dict(fit={}),       # structure="product", mean="scaling_law", RBF on u_N, u_T
    "reported +- (mixbo's)": dict(fit=mixbo.REPORTING_MODEL),   # mean="constant", Matern-5/2 on u_N, u_T
    "constant, rbf N,T": dict(fit=dict(mean="constant")),
    "law, matern N,T": dict(fit=dict(kernel_N="matern52", kernel_T="matern52")),   # the default before RBF
    "additive+law": dict(fit=dict(structure="additive", mean="scaling_law")),
    "additive, mean=constant": dict(fit=dict(structure="additive", mean="constant")),
    # a 100x wider prior on the scaling-law coefficients beta (s_beta^2 x 100), everything else as fitted:
    # does more room for the law's coefficients absorb the extrapolation bias?
    "product+law, s_beta^2 x100": dict(fit=dict(mean="scaling_law"), scale={"mean_amplitude": 100.0}),
    "product+law, no priors": dict(fit=dict(mean="scaling_law", priors=False)),
    # the fitted N and T lengthscales of the mixture term are long (the mixture effect is nearly the same
    # at every scale); a quarter of them lets it change with scale and steps
    "product+law, l_N, l_T / 4": dict(fit=dict(mean="scaling_law"), scale={"N_lengthscale": 0.25,
                                                                            "T_lengthscale": 0.25}),
}


def fit_as_mixbo(ctx, history, fit, scale=None):
    """mixbo.fit_model with the model options `fit`; `scale` (a diagnostic) multiplies the named
    hyperparameters of that fit, and the GP is conditioned on the same data with the scaled ones."""
    g = mixbo.fit_model(ctx, history, **fit)
    if scale is None:
        return g
    hyp = {name: value * scale.get(name, 1.0) for name, value in g.hyperparameters.items()}
    W, N, T, y, runs = mixbo._observations(history)
    return gp.fit_gp(gp.encode(W, N, T, ctx.bounds), y, n_weights=ctx.K, runs=runs, hyperparameters=hyp, **fit)


def evaluate(task):
    """One seed: run mfkg, then for each budget fraction and model the calibration numbers (dict)."""
    source, seed, budget, fractions = task
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    kind, name = source                                                   # ("table", path) or ("benchmark", name)
    obj = simulate.load_table(name) if kind == "table" else simulate.make_benchmark(name)
    t0 = time.perf_counter()
    res = mixbo.optimize(obj, "mfkg", budget, seed, ledger=None, out=None)
    run_s = time.perf_counter() - t0
    bounds = (min(obj.scales), max(obj.scales), min(obj.steps), max(obj.steps))
    ctx = mixbo.Context(obj, res.settings, unit=float(obj.cost(*obj.target)), bounds=bounds)  # as optimize's
    out = {}
    for f in fractions:
        history = [r for r in res.trials if r["spent"] <= f * budget + 1e-12]
        mixtures = mixbo._mixtures(history)                                  # (E, K)
        true = obj.true_loss(mixtures)                                        # (E,) noise-free target loss
        target_runs = sum(r["status"] == "ok" and r["scale"] == obj.target[0] and r["steps"] >= obj.target[1]
                          for r in history)                                   # runs that reached the target
        Xs = gp.encode(mixtures, obj.target[0], obj.target[1], bounds)       # (E, K+2)
        recommended = None                            # the default model's recommendation, as mixbo reports it
        for model, opts in MODELS.items():
            t1 = time.perf_counter()
            g = fit_as_mixbo(ctx, history, **opts)
            mean, cov = gp.predict(g, Xs, full_cov=True)                      # (E,), (E, E)
            err = mean - true
            z = np.abs(err) / np.sqrt(np.maximum(np.diag(cov), 1e-24))
            # differences between mixtures, d_i = f_i - (1/E) sum_j f_j: the part of the prediction that
            # decides a ranking (a common offset changes no decision). J = I - 11^T / E; Var(J f) = J C J.
            J = np.eye(len(mean)) - 1.0 / len(mean)
            zc = np.abs(J @ err) / np.sqrt(np.maximum(np.diag(J @ cov @ J), 1e-24))
            recommended = int(np.argmin(mean)) if recommended is None else recommended
            out[f, model] = dict(bias=err.mean(), rmse=np.sqrt((err ** 2).mean()), sd=np.sqrt(np.diag(cov)).mean(),
                                 z1=(z < 1).mean(), z2=(z < 2).mean(), zc1=(zc < 1).mean(), zc2=(zc < 2).mean(),
                                 rec1=float(z[recommended] < 1), rec2=float(z[recommended] < 2),
                                 regret=true[np.argmin(mean)] - obj.optimum[1], target_runs=target_runs,
                                 E=len(mixtures), n=len(g.y), fit_s=time.perf_counter() - t1)
    return out, run_s


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmark", default="default", choices=simulate.BENCHMARKS)
    p.add_argument("--table", help="a run table CSV (simulate.load_table) instead of a benchmark")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--budget", type=float, default=5.0)
    p.add_argument("--fractions", default="0.5,1", help="budget fractions at which the ledger is cut")
    p.add_argument("--jobs", type=int, default=2)
    a = p.parse_args(argv)
    fractions = [float(x) for x in a.fractions.split(",")]
    source = ("table", a.table) if a.table else ("benchmark", a.benchmark)
    tasks = [(source, s, a.budget, fractions) for s in range(a.seeds)]
    t0 = time.perf_counter()
    if a.jobs > 1:
        with multiprocessing.get_context("fork").Pool(a.jobs) as pool:
            runs = pool.map(evaluate, tasks, chunksize=1)
    else:
        runs = [evaluate(t) for t in tasks]
    print(f"{source[0]} {source[1]}: mfkg, budget {a.budget:g}, seeds 0..{a.seeds - 1}; ledgers "
          f"{sum(s for _, s in runs):.0f} s of runs; predictions at the target for the evaluated mixtures vs "
          f"the noise-free true loss; mean over seeds (regret: mean / median)")
    for f in fractions:
        E = np.mean([out[f, next(iter(MODELS))]["E"] for out, _ in runs])
        n = np.mean([out[f, next(iter(MODELS))]["n"] for out, _ in runs])
        runs_at_target = np.mean([out[f, next(iter(MODELS))]["target_runs"] for out, _ in runs])
        print(f"\nledger cut at {f:g} of the budget: E = {E:.1f} mixtures, n = {n:.0f} observations, "
              f"{runs_at_target:.1f} runs at the target fidelity (means)")
        print(f"{'model':28s} {'bias':>8s} {'rmse':>7s} {'sd':>7s} {'|z|<1':>6s} {'|z|<2':>6s} {'|zc|<1':>6s}"
              f" {'|zc|<2':>6s} {'rec<1':>6s} {'rec<2':>6s} {'regret mean / median':>21s} {'fit s':>6s}")
        for model in MODELS:
            rows = [out[f, model] for out, _ in runs]
            m = {k: np.mean([r[k] for r in rows]) for k in rows[0]}
            med = np.median([r["regret"] for r in rows])
            print(f"{model:28s} {m['bias']:8.4f} {m['rmse']:7.4f} {m['sd']:7.4f} {m['z1']:6.2f} {m['z2']:6.2f}"
                  f" {m['zc1']:6.2f} {m['zc2']:6.2f} {m['rec1']:6.2f} {m['rec2']:6.2f} {m['regret']:10.4f} / {med:.4f}"
                  f" {m['fit_s']:6.1f}")
        print("per seed (bias, |z|<1, regret):")
        for model in MODELS:
            cells = "  ".join(f"{out[f, model]['bias']:+.4f} {out[f, model]['z1']:.2f} {out[f, model]['regret']:.4f}"
                              for out, _ in runs)
            print(f"  {model:26s} {cells}")
    print(f"\nwall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
