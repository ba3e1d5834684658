"""Cross-scale diagnostics (issue 8): do small runs predict the target-scale ranking?

Setting (as in the issue): many mixtures are run at the small scales (every checkpoint is an observation),
and at most `--target-runs` (default 2) of them also at the target fidelity. The GP is fitted on exactly
that. For every other mixture the target-fidelity run is held back and predicted:
  spearman   rank correlation of the predicted mean with the held-back target loss
  rmse       root mean squared error of the predicted mean (nats)
  cov68/95   share of held-back losses inside the 68% / 95% predictive interval (the GP's latent variance
             plus its noise variance: the held-back losses are noisy runs too)
  vs truth   (benchmarks only) the same against the noise-free target loss, latent interval only
and the "ceiling": the rank correlation of the held-back mixtures' own losses at the largest small scale
(final step) with their target losses -- what a model that copies the small-scale ranking would get.

Data: a synthetic benchmark of simulate.py (make_benchmark(name), `--benchmark`, default "default"):
`--mixtures` Dirichlet(1) mixtures (half of them Dirichlet(0.3), to reach the faces), run at the
`--small-scales` smallest scales to the last steps; or a run table (`--table runs.csv`, simulate.load_table):
its candidate mixtures, every (scale < target) run the table holds.

Run: OMP_NUM_THREADS=1 python bench/cross_scale.py [--benchmark default] [--table PATH] [--mixtures 48]
     [--small-scales 2] [--target-runs 2] [--restarts 2] [--seed 0]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import norm, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gp  # noqa: E402
import simulate  # noqa: E402

MODELS = {   # name -> gp.fit_gp options; "product" is the plain product kernel with a constant mean
    "product": dict(structure="product", mean="constant"),
    "product+law": dict(structure="product", mean="scaling_law"),
    "additive": dict(structure="additive", mean="constant"),
    "additive+law": dict(structure="additive", mean="scaling_law"),
}


def largest_available_steps(obj, w, scale):
    """The longest run of mixture w at this scale that the objective can make, or None."""
    ok = [s for s in obj.steps if obj.available is None or obj.available(w, scale, s)]
    return max(ok) if ok else None


def observations(obj, mixtures, scales, seed):
    """Run every mixture at every scale in `scales` (to its largest available steps); each checkpoint is one
    observation. Returns W (n, K), N (n,), T (n,), y (n,) and final[i, j] = final loss of mixture i at scale j."""
    W, N, T, y = [], [], [], []
    final = np.full((len(mixtures), len(scales)), np.nan)
    for i, w in enumerate(mixtures):
        for j, scale in enumerate(scales):
            steps = largest_available_steps(obj, w, scale)
            if steps is None:
                continue
            out = obj.run(w, scale, steps, seed)
            for c in out["checkpoints"]:
                W.append(w), N.append(scale), T.append(c["steps"]), y.append(c["loss"])
            final[i, j] = out["loss"]
    return np.array(W), np.array(N, dtype=float), np.array(T, dtype=float), np.array(y), final


def coverage(y, mean, sd, level):
    z = norm.ppf(0.5 + level / 2)                                        # 0.994 for 68%, 1.960 for 95%
    return float(np.mean(np.abs(y - mean) <= z * sd))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", default="default", choices=simulate.BENCHMARKS)
    ap.add_argument("--table", default=None, help="run table CSV (simulate.load_table) instead of a benchmark")
    ap.add_argument("--mixtures", type=int, default=48)
    ap.add_argument("--small-scales", type=int, default=2)
    ap.add_argument("--target-runs", type=int, default=2)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    if args.table:
        obj = simulate.load_table(args.table)
        mixtures = np.asarray(obj.candidates, dtype=float)
        small = [s for s in obj.scales if s < obj.target[0]]
    else:
        obj = simulate.make_benchmark(args.benchmark)
        K = len(obj.domains)
        half = args.mixtures // 2
        mixtures = np.concatenate([rng.dirichlet(np.ones(K), args.mixtures - half),
                                   rng.dirichlet(np.full(K, 0.3), half)])
        small = list(obj.scales[:args.small_scales])
    K = mixtures.shape[1]
    bounds = (obj.scales[0], obj.scales[-1], obj.steps[0], obj.steps[-1])

    # small-scale runs of every mixture; target runs of a few (seen) and of the rest (held back)
    Ws, Ns, Ts, ys, final_small = observations(obj, mixtures, small, args.seed)
    Wt, Nt, Tt, yt, final_target = observations(obj, mixtures, [obj.target[0]], args.seed)
    at_target = (Nt == obj.target[0]) & (Tt == obj.target[1])           # target-fidelity checkpoints
    has_target = np.isfinite(final_target[:, 0]) & (final_target[:, 0] == final_target[:, 0])
    seen = rng.choice(np.flatnonzero(has_target), size=min(args.target_runs, has_target.sum() - 3), replace=False)
    held = np.setdiff1d(np.flatnonzero(has_target), seen)
    seen_rows = np.isin(np.arange(len(Wt)), [r for r in range(len(Wt))
                                             if any(np.array_equal(Wt[r], mixtures[i]) for i in seen)])
    W = np.concatenate([Ws, Wt[seen_rows]])
    X = gp.encode(W, np.concatenate([Ns, Nt[seen_rows]]), np.concatenate([Ts, Tt[seen_rows]]), bounds)
    y = np.concatenate([ys, yt[seen_rows]])
    y_held = final_target[held, 0]                                        # (h,) held-back noisy target losses
    X_held = gp.encode(mixtures[held], obj.target[0], obj.target[1], bounds)
    truth = obj.true_loss(mixtures[held]) if obj.true_loss is not None and not args.table else None
    last_small = final_small[held, -1]
    ok = np.isfinite(last_small)
    ceiling = spearmanr(last_small[ok], y_held[ok])[0]

    name = args.table or f"benchmark {args.benchmark}"
    print(f"{name}: {len(mixtures)} mixtures at scales {[f'{s:.3g}' for s in small]} (all checkpoints), "
          f"{len(seen)} at the target {obj.target}; n = {len(y)} observations, {len(held)} held back")
    print(f"ceiling: spearman(loss at {small[-1]:.3g} final step, target loss) = {ceiling:.3f}"
          + (f"; vs noise-free target {spearmanr(last_small[ok], truth[ok])[0]:.3f}" if truth is not None else ""))
    head = f"{'model':<14} {'spearman':>8} {'rmse':>8} {'cov68':>6} {'cov95':>6} {'fit s':>6}"
    if truth is not None:
        head += f" | vs truth: {'spearman':>8} {'rmse':>8} {'cov68':>6} {'cov95':>6}"
    print(head)
    for m in args.models:
        t = time.perf_counter()
        g = gp.fit_gp(X, y, K, seed=args.seed, restarts=args.restarts, **MODELS[m])
        t = time.perf_counter() - t
        mean, var = gp.predict(g, X_held)
        sd_y = np.sqrt(var + g.noise_variance)                              # predictive sd of a new run
        row = (f"{m:<14} {spearmanr(mean, y_held)[0]:>8.3f} {np.sqrt(np.mean((mean - y_held) ** 2)):>8.4f} "
               f"{coverage(y_held, mean, sd_y, 0.68):>6.2f} {coverage(y_held, mean, sd_y, 0.95):>6.2f} {t:>6.1f}")
        if truth is not None:
            sd_f = np.sqrt(var)
            row += (f" | {'':>9} {spearmanr(mean, truth)[0]:>8.3f} {np.sqrt(np.mean((mean - truth) ** 2)):>8.4f} "
                    f"{coverage(truth, mean, sd_f, 0.68):>6.2f} {coverage(truth, mean, sd_f, 0.95):>6.2f}")
        print(row, flush=True)


if __name__ == "__main__":
    main()
