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
every run of every mixture below the target scale, and the target-fidelity runs of its candidates.

Run: OMP_NUM_THREADS=1 python bench/cross_scale.py [--benchmark default] [--table PATH] [--mixtures 48]
     [--small-scales 2] [--target-runs 2] [--restarts 2] [--seed 0] [--repeats 3]
Each of `--repeats` splits draws its own mixtures, seen target runs and run seeds; the table is the mean, and
under it the standard error over splits (sd / sqrt(repeats)). The coverage of one split is one draw: its
held-back mixtures share the error of the common offset learnt from 2 target runs, so it varies from split
to split by about 0.2 at 68%, and only the mean over many splits can be held to +-10 points.
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
    # the defaults' kernels are Matern-5/2 on the weights and RBF on u_N, u_T; this row has Matern-5/2 on all
    "law, matern N,T": dict(structure="product", mean="scaling_law", kernel_N="matern52", kernel_T="matern52"),
}


def largest_available_steps(obj, w, scale, only=None):
    """The longest run of mixture w at this scale that the objective can make (or `only`, if it can), or None."""
    ok = [s for s in obj.steps if (only is None or s == only) and (obj.available is None or obj.available(w, scale, s))]
    return max(ok) if ok else None


def observations(obj, mixtures, scales, seed, only_steps=None):
    """Run every mixture at every scale in `scales` (to its largest available steps, or to `only_steps`);
    each checkpoint is one observation. Returns W (n, K), N (n,), T (n,), y (n,) and final[i, j] = final
    loss of mixture i at scale j (NaN where there is no such run)."""
    W, N, T, y = [], [], [], []
    final = np.full((len(mixtures), len(scales)), np.nan)
    for i, w in enumerate(mixtures):
        for j, scale in enumerate(scales):
            steps = largest_available_steps(obj, w, scale, only_steps)
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


def one_split(obj, args, seed, table):
    """One experiment: mixtures, runs, the GP fits. Returns (header line, ceilings, {model: metrics})."""
    rng = np.random.default_rng(seed)
    if table:
        mixtures = np.asarray(simulate.read_table(table).mixtures, dtype=float)    # every mixture of the table
        small = [s for s in obj.scales if s < obj.target[0]]
    else:
        K = len(obj.domains)
        half = args.mixtures // 2
        mixtures = np.concatenate([rng.dirichlet(np.ones(K), args.mixtures - half),
                                   rng.dirichlet(np.full(K, 0.3), half)])
        small = list(obj.scales[:args.small_scales])
    K = mixtures.shape[1]
    bounds = (obj.scales[0], obj.scales[-1], obj.steps[0], obj.steps[-1])

    # small-scale runs of every mixture; target runs of a few (seen by the GP) and of the rest (held back)
    Ws, Ns, Ts, ys, final_small = observations(obj, mixtures, small, seed)
    Wt, Nt, Tt, yt, final_target = observations(obj, mixtures, [obj.target[0]], seed, only_steps=obj.target[1])
    has_target = np.flatnonzero(np.isfinite(final_target[:, 0]))
    seen = rng.choice(has_target, size=min(args.target_runs, len(has_target) - 3), replace=False)
    held = np.setdiff1d(has_target, seen)
    seen_rows = (Wt[:, None, :] == mixtures[seen][None, :, :]).all(-1).any(-1)   # target rows of seen mixtures
    X = gp.encode(np.concatenate([Ws, Wt[seen_rows]]), np.concatenate([Ns, Nt[seen_rows]]),
                  np.concatenate([Ts, Tt[seen_rows]]), bounds)                     # (n, K+2)
    y = np.concatenate([ys, yt[seen_rows]])
    y_held = final_target[held, 0]                                                 # (h,) noisy target losses
    X_held = gp.encode(mixtures[held], obj.target[0], obj.target[1], bounds)
    truth = None if table or obj.true_loss is None else obj.true_loss(mixtures[held])
    last_small = final_small[held, -1]                                             # largest small scale
    ok = np.isfinite(last_small)
    ceilings = [spearmanr(last_small[ok], y_held[ok])[0]]
    if truth is not None:
        ceilings.append(spearmanr(last_small[ok], truth[ok])[0])
    header = (f"{len(mixtures)} mixtures at scales {[f'{s:.3g}' for s in small]} (all checkpoints), {len(seen)} at "
              f"the target {obj.target}; n = {len(y)} observations, {len(held)} held back")
    results = {}
    for m in args.models:
        t = time.perf_counter()
        g = gp.fit_gp(X, y, K, seed=seed, restarts=args.restarts, **MODELS[m])
        t = time.perf_counter() - t
        mean, var = gp.predict(g, X_held)
        sd_y = np.sqrt(var + g.noise_variance)                                     # predictive sd of a new run
        row = [spearmanr(mean, y_held)[0], np.sqrt(np.mean((mean - y_held) ** 2)),
               coverage(y_held, mean, sd_y, 0.68), coverage(y_held, mean, sd_y, 0.95), t]
        if truth is not None:
            sd_f = np.sqrt(var)                                                    # latent f: noise-free truth
            row += [spearmanr(mean, truth)[0], np.sqrt(np.mean((mean - truth) ** 2)),
                    coverage(truth, mean, sd_f, 0.68), coverage(truth, mean, sd_f, 0.95)]
        results[m] = row
    return header, ceilings, results


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", default="default", choices=simulate.BENCHMARKS)
    ap.add_argument("--table", default=None, help="run table CSV (simulate.load_table) instead of a benchmark")
    ap.add_argument("--mixtures", type=int, default=48)
    ap.add_argument("--small-scales", type=int, default=2)
    ap.add_argument("--target-runs", type=int, default=2)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3,
                    help="independent splits (seeds seed, seed+1, ...); means printed")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = ap.parse_args()
    obj = simulate.load_table(args.table) if args.table else simulate.make_benchmark(args.benchmark)
    runs = [one_split(obj, args, args.seed + r, args.table) for r in range(args.repeats)]
    print(f"{args.table or 'benchmark ' + args.benchmark}: {runs[0][0]}; mean over {args.repeats} splits")
    ceil = np.mean([c for _, c, _ in runs], axis=0)
    print(f"ceiling: spearman(loss at the largest small scale, target loss) = {ceil[0]:.3f}"
          + (f"; vs noise-free target {ceil[1]:.3f}" if len(ceil) > 1 else ""))
    head = f"{'model':<16} {'spearman':>8} {'rmse':>8} {'cov68':>6} {'cov95':>6} {'fit s':>6}"
    if len(ceil) > 1:
        head += f" | vs truth: {'spearman':>8} {'rmse':>8} {'cov68':>6} {'cov95':>6}"
    print(head)
    for r, (_, c, res) in enumerate(runs):
        print(f"  split seed {args.seed + r}: ceiling {c[0]:.3f}; spearman / cov68"
              + (" vs truth" if len(c) > 1 else "") + " "
              + ", ".join(f"{m} {res[m][0]:.3f} / {res[m][7 if len(c) > 1 else 2]:.2f}" for m in args.models))
    for m in args.models:
        per_split = np.array([res[m] for _, _, res in runs])                      # (repeats, columns)
        rows = [(m, per_split.mean(axis=0))]
        if args.repeats > 1:     # the splits are independent; the held-back mixtures within one split are not
            rows.append(("  +- se", per_split.std(axis=0, ddof=1) / np.sqrt(args.repeats)))
        for name, r in rows:
            row = f"{name:<16} {r[0]:>8.3f} {r[1]:>8.4f} {r[2]:>6.2f} {r[3]:>6.2f} {r[4]:>6.1f}"
            if len(r) > 5:
                row += f" | {'':>9} {r[5]:>8.3f} {r[6]:>8.4f} {r[7]:>6.2f} {r[8]:>6.2f}"
            print(row)


if __name__ == "__main__":
    main()
