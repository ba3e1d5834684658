"""Cross-scale diagnostics: do small runs predict the target, and does the GP say how far they do?

Many mixtures are run at the small scales (every checkpoint is an observation) and a few of them at
the target fidelity too: each count in `--target-runs` is its own fit on the same small-scale runs
(the seen target runs nested, the same mixtures held back). The held-back target values are
predicted: spearman (rank correlation with the prediction), rmse, and cov68 / cov95, the share
inside the 68% / 95% interval: of the noise-free value (benchmarks, cases; latent interval) or, on a
run table, of the observed target run (the interval adds the GP's noise variance). The ceiling is
the Spearman correlation of the held-back mixtures' values at the largest small scale with the
target's.

Data, one of:
  --benchmark NAME  a simulate.py benchmark: `--mixtures` mixtures, Dirichlet(1) and (0.3), at the
                    `--small-scales` smallest scales, to the last steps;
  --table PATH      a run table (simulate.load_table): the runs below the target scale, and the
                    target runs of its candidates;
  --case NAME ...   controlled transfer, generated here (`transfer_case`); "all" = the study's list.
Each of `--repeats` splits draws its own mixtures, target runs, run seeds and random functions. The
tables give the mean over splits (and, without --compact, the standard error): the held-back
mixtures of one split share the error of the target's level, so one split's coverage is one draw.

Run: OMP_NUM_THREADS=1 python bench/cross_scale.py [--benchmark default | --table PATH |
     --case NAME ...] [--mixtures 24] [--small-scales 2] [--target-runs 0 1 2 4] [--repeats 8]
     [--restarts 1] [--models old new constant] [--previous-gp FILE] [--compact]
"""

import argparse
import importlib.util
import math
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from scipy.stats import norm, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gp  # noqa: E402
import simulate  # noqa: E402

MODELS = {   # name -> gp.Config; "previous" (--previous-gp) is an earlier gp.py's own default
    "old": gp.Config(scale_deviation=False),                 # the default without the deviations
    "new": gp.Config(),                                      # the default
    "constant": gp.Config(mean="constant"),
    "old constant": gp.Config(mean="constant", scale_deviation=False),
}
LADDERS = {2: (1e9 / 60, 1e9), 3: (0.18e9, 0.48e9, 1e9), 7: simulate.DEFAULT_SCALES}
STEPS = simulate.DEFAULT_STEPS
STUDY = ([f"K5-S{s}-r{rho}" for s in (2, 3, 7) for rho in (0.99, 0.9, 0.7, 0.5, 0.2)]
         + [f"K20-S3-r{rho}" for rho in (0.99, 0.9, 0.7, 0.5, 0.2)]
         + ["K5-S2-r0.9-jump", "K5-S3-r0.9-jump", "K5-S3-r0.9-accuracy", "K20-S7-r0.9"])


# --------------------------------------------------------- the controlled-transfer generator

def random_function(K, rng, lengthscale=0.3, features=256):
    """w (n, K) -> (n,): a draw of a unit-variance GP with an RBF kernel, by random Fourier
    features."""
    omega = rng.normal(0.0, 1.0 / lengthscale, size=(features, K))
    phase = rng.uniform(0.0, 2 * math.pi, size=features)
    amplitude = rng.normal(size=features) * math.sqrt(2.0 / features)
    return lambda W: np.cos(np.atleast_2d(W) @ omega.T + phase) @ amplitude


def level_of(kind, scale, steps, target_scale):
    """The mixture-independent level: Chinchilla's L(N, D), D = steps x 2^19 tokens, or its
    variants."""
    if kind == "accuracy":
        emergence = 0.4 / (1 + math.exp(-4 * (math.log10(scale) - 8.8)))       # a sigmoid in log N
        return -(0.3 + emergence + 0.05 * math.log2(steps / STEPS[0]))
    law = 1.69 + 406.4 / scale ** 0.34 + 410.7 / (steps * simulate.TOKENS_PER_STEP) ** 0.28
    return law - (0.1 if kind == "jump" and scale == target_scale else 0.0)


def transfer_case(name, seed):
    """Case NAME = K{domains}-S{scales}-r{rho}[-jump|-accuracy] for split `seed`, with the fields of
    simulate.Objective that this script reads. loss(w, N, T) = level(N, T) + 0.05 g_N(w), where
    g_N = sqrt(r) g + sqrt(1 - r) h_N with g and every h_N independent unit-variance smooth random
    functions on the simplex, so that two scales' effects correlate at r = 2 sin(pi rho / 6) (their
    Spearman correlation is then rho); level: Chinchilla's law (Hoffmann et al. 2022, eq. 10), or
    "jump" (the target 0.1 below it), or "accuracy" (minus an accuracy that rises as a sigmoid in
    log N, effect sd 0.02: not a power law). Scales: 2 = (1B / 60, 1B), a cost ratio of 1:60;
    3 = (180M, 480M, 1B), 0.18 : 0.48 : 1; 7 = simulate's ladder 20M..1B; steps 2500..20000. Noise:
    an offset per run (sd 0.01) and per checkpoint (sd 0.003)."""
    parts = name.split("-")
    K, n_scales, rho = int(parts[0][1:]), int(parts[1][1:]), float(parts[2][1:])
    kind = parts[3] if len(parts) > 3 else "law"
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    scales, r = LADDERS[n_scales], 2 * math.sin(math.pi * rho / 6)
    shared, own = random_function(K, rng), [random_function(K, rng) for _ in scales]
    effect_sd = 0.02 if kind == "accuracy" else 0.05
    target = (scales[-1], STEPS[-1])

    def true_loss(weights, scale=None, steps=None):
        scale = target[0] if scale is None else scale
        steps = target[1] if steps is None else steps
        g = math.sqrt(r) * shared(weights) + math.sqrt(1 - r) * own[scales.index(scale)](weights)
        return level_of(kind, scale, steps, target[0]) + effect_sd * g

    def run(weights, scale, steps, run_seed):
        noise = np.random.default_rng([seed, run_seed, scales.index(scale),
                                       zlib.crc32(weights.tobytes())])
        offset = 0.01 * noise.normal()
        checkpoints = [{"steps": s, "loss": float(true_loss(weights, scale, s)[0] + offset
                                                  + 0.003 * noise.normal())}
                       for s in STEPS if s <= steps]
        return {"loss": checkpoints[-1]["loss"], "checkpoints": checkpoints}

    return SimpleNamespace(domains=tuple(range(K)), scales=scales, steps=STEPS, target=target,
                           run=run, available=None, true_loss=true_loss)


# ------------------------------------------------------------------ one split

def largest_available_steps(obj, w, scale, only=None):
    """The longest run of mixture w at this scale the objective can make (or `only`), or None."""
    ok = [s for s in obj.steps
          if (only is None or s == only) and (obj.available is None or obj.available(w, scale, s))]
    return max(ok) if ok else None


def observations(obj, mixtures, scales, seed, only_steps=None):
    """Run every mixture at every scale in `scales` (to its largest available steps, or
    `only_steps`); each checkpoint is one observation. Returns W (n, K), N (n,), T (n,), y (n,),
    mixture index (n,) and final[i, j] = final loss of mixture i at scale j (NaN where there is no
    such run)."""
    W, N, T, y, index = [], [], [], [], []
    final = np.full((len(mixtures), len(scales)), np.nan)
    for i, w in enumerate(mixtures):
        for j, scale in enumerate(scales):
            steps = largest_available_steps(obj, w, scale, only_steps)
            if steps is None:
                continue
            out = obj.run(w, scale, steps, seed)
            for c in out["checkpoints"]:
                W.append(w), N.append(scale), T.append(c["steps"]), y.append(c["loss"])
                index.append(i)
            final[i, j] = out["loss"]
    return (np.array(W), np.array(N, dtype=float), np.array(T, dtype=float), np.array(y),
            np.array(index), final)


def coverage(y, mean, sd, level):
    z = norm.ppf(0.5 + level / 2)                                     # 0.994 for 68%, 1.960 for 95%
    return float(np.mean(np.abs(y - mean) <= z * sd))


def one_split(obj, args, seed, table):
    """One experiment. Returns (ceiling, {(target runs, model): [spearman, rmse, cov68, cov95, fit
    s]}), ceiling = Spearman of the held-back mixtures' values at the largest small scale with the
    target's."""
    rng = np.random.default_rng(seed)
    if table:
        mixtures = np.asarray(simulate.read_table(table).mixtures, dtype=float)
        small = [s for s in obj.scales if s < obj.target[0]]
    else:
        K = len(obj.domains)
        half = args.mixtures // 2
        mixtures = np.concatenate([rng.dirichlet(np.ones(K), args.mixtures - half),
                                   rng.dirichlet(np.full(K, 0.3), half)])
        small = list(obj.scales[:-1] if args.case else obj.scales[:args.small_scales])
    K = mixtures.shape[1]
    bounds = (obj.scales[0], obj.scales[-1], obj.steps[0], obj.steps[-1])
    Ws, Ns, Ts, ys, _, final_small = observations(obj, mixtures, small, seed)
    Wt, Nt, Tt, yt, it, final_target = observations(obj, mixtures, [obj.target[0]], seed,
                                                    only_steps=obj.target[1])
    has_target = np.flatnonzero(np.isfinite(final_target[:, 0]))
    order = rng.permutation(has_target)
    most = min(max(args.target_runs), len(has_target) - 3)
    held = np.sort(order[most:])
    if table:
        truth, latent = final_target[held, 0], False                       # noisy target runs
    else:
        truth, latent = obj.true_loss(mixtures[held]), True               # noise-free target values
    last_small = final_small[held, -1]
    ok = np.isfinite(last_small)
    ceiling = spearmanr(last_small[ok], truth[ok])[0]
    X_held = gp.encode(mixtures[held], obj.target[0], obj.target[1], bounds)
    results = {}
    for t in args.target_runs:
        rows = np.isin(it, order[:min(t, most)])                           # target rows of the seen
        X = gp.encode(np.concatenate([Ws, Wt[rows]]), np.concatenate([Ns, Nt[rows]]),
                      np.concatenate([Ts, Tt[rows]]), bounds)
        y = np.concatenate([ys, yt[rows]])
        for m in args.models:
            start = time.perf_counter()
            if m == "previous":
                g = args.previous.fit_gp(X, y, K, seed=seed, restarts=args.restarts)
            else:
                g = gp.fit_gp(X, y, K, MODELS[m], seed=seed, restarts=args.restarts)
            elapsed = time.perf_counter() - start
            mean, var = (args.previous if m == "previous" else gp).predict(g, X_held)
            sd = np.sqrt(var if latent else var + g.noise_variance)
            results[t, m] = [spearmanr(mean, truth)[0], np.sqrt(np.mean((mean - truth) ** 2)),
                             coverage(truth, mean, sd, 0.68), coverage(truth, mean, sd, 0.95),
                             elapsed]
    return ceiling, results


def report(title, splits, args):
    """The table of one data set: per (target runs, model) the mean over splits and its standard
    error."""
    ceilings = np.array([c for c, _ in splits])
    se = ceilings.std(ddof=1) / math.sqrt(len(splits)) if len(splits) > 1 else 0.0
    print(f"{title}: {args.repeats} splits; ceiling (Spearman, largest small scale vs target) "
          f"{ceilings.mean():.3f} +- {se:.3f}")
    print(f"{'model':<14} {'target runs':>11} {'spearman':>8} {'rmse':>8} {'cov68':>6} "
          f"{'cov95':>6} {'fit s':>6}")
    for t in args.target_runs:
        for m in args.models:
            per_split = np.array([res[t, m] for _, res in splits])        # (repeats, 5)
            rows = [(m, per_split.mean(axis=0))]
            if len(splits) > 1:
                rows.append(("  +- se", per_split.std(axis=0, ddof=1) / math.sqrt(len(splits))))
            for name, r in rows:
                print(f"{name:<14} {t:>11} {r[0]:>8.3f} {r[1]:>8.4f} {r[2]:>6.2f} {r[3]:>6.2f} "
                      f"{r[4]:>6.2f}")


def report_compact(title, splits, args, header):
    """One line per target-run count: the mean over splits of spearman, rmse, cov68, cov95 per
    model."""
    if header:
        print(f"{'case':<22} {'ceil':>5} {'t':>2} | " + " | ".join(f"{m + ': sp rmse c68 c95':<30}"
                                                            for m in args.models))
    ceiling = np.mean([c for c, _ in splits])
    for t in args.target_runs:
        cells = [np.mean([res[t, m] for _, res in splits], axis=0) for m in args.models]
        print(f"{title:<22} {ceiling:>5.2f} {t:>2} | " + " | ".join(
            f"{r[0]:>5.2f} {r[1]:>6.3f} {r[2]:>4.2f} {r[3]:>4.2f}{'':<9}" for r in cells),
              flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = ap.add_mutually_exclusive_group()
    source.add_argument("--benchmark", default="default", choices=simulate.BENCHMARKS)
    source.add_argument("--table", default=None, help="run table CSV (simulate.load_table)")
    source.add_argument("--case", nargs="+", default=None, help="transfer cases, or 'all'")
    ap.add_argument("--mixtures", type=int, default=24)
    ap.add_argument("--small-scales", type=int, default=2, help="(benchmarks) small scales used")
    ap.add_argument("--target-runs", type=int, nargs="+", default=[0, 1, 2, 4])
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=8, help="independent splits (seeds seed, ...)")
    ap.add_argument("--models", nargs="+", default=["old", "new", "constant"],
                    choices=list(MODELS) + ["previous"])
    ap.add_argument("--compact", action="store_true", help="(cases) one line per target-run count")
    ap.add_argument("--previous-gp", default=None,
                    help="an earlier gp.py (git show COMMIT:gp.py > FILE): model 'previous', its "
                         "fit_gp with its own defaults")
    args = ap.parse_args()
    if args.previous_gp:
        spec = importlib.util.spec_from_file_location("previous_gp", args.previous_gp)
        args.previous = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(args.previous)
    if args.case:
        for i, name in enumerate(STUDY if args.case == ["all"] else args.case):
            splits = [one_split(transfer_case(name, args.seed + r), args, args.seed + r, None)
                      for r in range(args.repeats)]
            if args.compact:
                report_compact(name, splits, args, header=i == 0)
            else:
                report(f"case {name}, {args.mixtures} mixtures", splits, args)
        return
    obj = simulate.load_table(args.table) if args.table else simulate.make_benchmark(args.benchmark)
    splits = [one_split(obj, args, args.seed + r, args.table) for r in range(args.repeats)]
    title = args.table or (f"benchmark {args.benchmark}, {args.mixtures} mixtures at "
                           f"{args.small_scales} scales")
    report(title, splits, args)


if __name__ == "__main__":
    main()
