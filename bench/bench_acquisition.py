"""
Benchmark of one mixbo acquisition step beside BoTorch (a script, not a test).

  1. mixbo 'mfkg' step: simplex candidates, then the exact knowledge gradient of every candidate mixture at
     every (scale, steps) fidelity, divided by its cost, and the argmax (acquisition.choose_next). Also split
     into its two parts: the GP's posterior cross-covariances (gp.cross_covariance_grid) and the envelopes (KG).
  2. BoTorch qKnowledgeGradient (one-shot KG, Monte Carlo fantasies) optimized by optimize_acqf on a
     SingleTaskGP on the same data (its initial hyperparameters: fitting it is not part of the step), with
     sum(w) = 1 as an equality constraint, small num_fantasies / restarts so it finishes.
  3. log-EI over 10,000 points at n = 500: mixbo's (gp.predict + log_expected_improvement) beside BoTorch's
     analytic LogExpectedImprovement on a SingleTaskGP of the same size.

Run from the repository root:  OMP_NUM_THREADS=1 python bench/bench_acquisition.py --repeat 3
(1 thread on a shared box: 2 torch threads on 2 busy cores oversubscribe them and run many times slower)
(--no-botorch: mixbo only; --fantasies, --restarts, --raw-samples: BoTorch qKG settings). Wall-clock,
best of --repeat for mixbo (one run for BoTorch qKG). The machine is shared: note its load beside the table.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import acquisition as acq  # noqa: E402
import gp  # noqa: E402

K = 5  # domains: 5 weights + scale + steps = 7 GP inputs (as bench_gp.py)
SCALES = tuple(float(s) for s in np.geomspace(1e6, 6.4e7, 7))  # 7 model scales (parameters)
STEPS = (250, 500, 1000, 2000)  # 4 checkpoint step counts
TARGET = (SCALES[-1], STEPS[-1])
BOUNDS = (SCALES[0], SCALES[-1], STEPS[0], STEPS[-1])


def cost(scale, steps):
    """6 N D FLOPs in units of the target run (D proportional to steps)."""
    return scale * steps / (TARGET[0] * TARGET[1])


def synthetic_runs(n_obs, seed):
    """n_obs observations from n_obs / 4 runs: each run a Dirichlet mixture at a random scale, observed at all
    4 checkpoints. Loss: a Chinchilla-style scale/steps law plus a mixture effect that grows with scale."""
    rng = np.random.default_rng(seed)
    runs = n_obs // len(STEPS)
    W = rng.dirichlet(np.ones(K), size=runs)  # (runs, K)
    S = rng.choice(SCALES, size=runs)  # (runs,)
    Wn, Sn = np.tile(W, (len(STEPS), 1)), np.tile(S, len(STEPS))  # (n, K), (n,)
    Tn = np.repeat(np.array(STEPS, dtype=np.float64), runs)  # (n,)
    w_star = np.array([0.35, 0.25, 0.2, 0.15, 0.05])
    y = (1.8 + 400.0 / Sn ** 0.34 + 8.0 / Tn ** 0.3 + (1.0 + 0.1 * np.log(Sn / SCALES[0])) * ((Wn - w_star) ** 2).sum(1)
         + 0.005 * rng.normal(size=len(Sn)))
    return gp.encode(Wn, Sn, Tn, BOUNDS), y, W


def best_of(fn, repeat):
    """Best wall time of `repeat` calls (the machine is shared: the minimum is the least disturbed) and the result."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--n", type=int, default=300, help="GP observations for the KG step")
    p.add_argument("--mixtures", type=int, default=2000, help="candidate mixtures")
    p.add_argument("--n-ei", type=int, default=500, help="GP observations for the log-EI comparison")
    p.add_argument("--ei-points", type=int, default=10000)
    p.add_argument("--fantasies", type=int, default=16, help="BoTorch qKG num_fantasies")
    p.add_argument("--restarts", type=int, default=2, help="BoTorch qKG num_restarts")
    p.add_argument("--raw-samples", type=int, default=64, help="BoTorch qKG raw_samples")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-botorch", action="store_true")
    args = p.parse_args()
    rows = []  # (what, seconds, note)
    t_all = time.perf_counter()

    # ---- 1. mixbo: one mfkg step at n observations
    X, y, W_runs = synthetic_runs(args.n, seed=0)
    t_fit, model = best_of(lambda: gp.fit_gp(X, y, K, seed=0, restarts=1), 1)
    rows.append((f"mixbo gp.fit_gp, n={args.n}, 1 start (context)", t_fit, ""))
    incumbent = W_runs[[acq.recommend(model, W_runs, TARGET, BOUNDS)[0]]]  # (1, K)
    n_local = args.mixtures // 10
    n_global = args.mixtures - (K + 1) - 1 - n_local  # vertices + uniform + incumbent + local = mixtures

    def candidates():
        return acq.simplex_candidates(K, n_global, seed=1, incumbents=incumbent, n_local=n_local)

    t_cand, C = best_of(candidates, args.repeat)
    F = len(SCALES) * len(STEPS)
    E = len(np.unique(W_runs, axis=0))
    rows.append((f"candidates: {len(C)} mixtures on the simplex", t_cand, ""))

    def step():
        return acq.choose_next("mfkg", model, candidates(), W_runs, SCALES, STEPS, TARGET, BOUNDS, cost=cost)

    spent = {"gp.cross_covariance_grid": 0.0, "acquisition.log_knowledge_gradient": 0.0}  # time inside each

    def timed(fn, key):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            spent[key] += time.perf_counter() - t0
            return out
        return wrapper

    # choose_next looks both functions up at call time, so these wrappers see every call of the step
    cross_covariance, log_kg = gp.cross_covariance_grid, acq.log_knowledge_gradient
    gp.cross_covariance_grid = timed(cross_covariance, "gp.cross_covariance_grid")
    acq.log_knowledge_gradient = timed(log_kg, "acquisition.log_knowledge_gradient")
    best = None  # (seconds, decision, split) of the fastest repeat
    for _ in range(args.repeat):
        spent.update({key: 0.0 for key in spent})
        t_step, d = best_of(step, 1)
        if best is None or t_step < best[0]:
            best = (t_step, d, dict(spent))
    gp.cross_covariance_grid, acq.log_knowledge_gradient = cross_covariance, log_kg
    t_step, d, split = best
    rows.append((f"mixbo mfkg step: {len(C)} mixtures x {F} fidelities = {len(C) * F} KGs, |A| = {E}+1", t_step,
                 f"chose scale {d.scale:.3g}, steps {d.steps}, KG {d.kg:.3g}, cost {d.cost:.3g}"))
    for key, sec in split.items():
        rows.append((f"  of which {key}", sec, "same step"))
    t_kg1, _ = best_of(lambda: acq.choose_next("kg", model, C, W_runs, SCALES, STEPS, TARGET, BOUNDS), args.repeat)
    rows.append((f"mixbo kg step (target only, {len(C)} KGs)", t_kg1, ""))

    # ---- 3a. mixbo log-EI at n_ei
    X5, y5, W5 = synthetic_runs(args.n_ei, seed=1)
    model5 = gp.fit_gp(X5, y5, K, seed=0, restarts=1)
    rng = np.random.default_rng(2)
    Xe = gp.encode(rng.dirichlet(np.ones(K), size=args.ei_points), *TARGET, BOUNDS)  # (10000, d)
    best = float(gp.predict(model5, gp.encode(W5, *TARGET, BOUNDS))[0].min())
    t_post, (mu, v) = best_of(lambda: gp.predict(model5, Xe), args.repeat)
    t_lei, _ = best_of(lambda: acq.log_expected_improvement(mu, np.sqrt(v), best), args.repeat)
    rows.append((f"mixbo log-EI, {args.ei_points} points, n={args.n_ei}: posterior + log-EI", t_post + t_lei, ""))
    rows.append(("  of which log-EI itself (log_expected_improvement)", t_lei, ""))

    if not args.no_botorch:
        import torch
        from botorch.acquisition import LogExpectedImprovement, qKnowledgeGradient
        from botorch.models import SingleTaskGP
        from botorch.optim import optimize_acqf

        torch.manual_seed(0)
        # ---- 2. BoTorch qKG on the same data (BoTorch maximizes: model -y)
        tX, tY = torch.from_numpy(X), torch.from_numpy(-y)[:, None]
        bt = SingleTaskGP(tX, tY)  # BoTorch's default priors and initial hyperparameters: the fit is not timed
        qkg = qKnowledgeGradient(bt, num_fantasies=args.fantasies)
        bounds = torch.tensor([[0.0] * (K + 2), [1.0] * (K + 2)], dtype=torch.float64)
        simplex = [(torch.arange(K), torch.ones(K, dtype=torch.float64), 1.0)]  # sum_k w_k = 1

        def botorch_kg():
            return optimize_acqf(qkg, bounds, q=1, num_restarts=args.restarts, raw_samples=args.raw_samples,
                                 equality_constraints=simplex)

        t_bkg, _ = best_of(botorch_kg, 1)
        rows.append((f"BoTorch qKnowledgeGradient + optimize_acqf, n={args.n}", t_bkg,
                     f"num_fantasies={args.fantasies}, num_restarts={args.restarts}, raw_samples={args.raw_samples}"))
        # ---- 3b. BoTorch analytic LogEI at n_ei
        bt5 = SingleTaskGP(torch.from_numpy(X5), torch.from_numpy(-y5)[:, None])
        bt5.eval()
        lei = LogExpectedImprovement(bt5, best_f=torch.tensor(-best, dtype=torch.float64))
        Xt = torch.from_numpy(Xe)[:, None, :]  # (10000, 1, d)

        def botorch_lei():
            with torch.no_grad():
                return lei(Xt)

        botorch_lei()  # first call builds the prediction caches
        t_blei, _ = best_of(botorch_lei, args.repeat)
        rows.append((f"BoTorch LogExpectedImprovement, {args.ei_points} points, n={args.n_ei}", t_blei,
                     "posterior + log-EI, caches warm"))

    threads = sys.modules["torch"].get_num_threads()
    print(f"torch threads {threads}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, best of {args.repeat}")
    print(f"| {'what':<78} | {'seconds':>8} | note |")
    print(f"|{'-' * 80}|{'-' * 10}|------|")
    for what, sec, note in rows:
        print(f"| {what:<78} | {sec:8.4f} | {note} |")
    print(f"whole script {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
