"""
mixbo.py -- choose a language model's pre-training data mixture by multi-fidelity, multi-scale Bayesian
optimization. The program users run; read it top to bottom.

    python mixbo.py --sim                                   # default benchmark, strategy mfkg, budget 5
    python mixbo.py --sim --strategy ei --budget 6 --seed 3
    python mixbo.py --table runs.csv --metric loss          # replay a table of real runs
    python mixbo.py --objective my_objective.py             # your own loss(weights, scale, steps)
    python mixbo.py --train --corpus data/corpus            # real training runs with train_lm.py
    python mixbo.py --sim --bench --strategy mfkg,ei,random --seeds 10 --json bench.json

    from mixbo import optimize                              # the same loop from Python
    result = optimize(objective, strategy="mfkg", budget=5, seed=0, ledger="runs/my.jsonl")

A trial is one training run: a mixture w (K weights on the simplex), a model scale N and a number of
steps T. Every trial is appended to a ledger (JSON lines, fsync'ed) before the next one starts, so a
killed run loses nothing and `--resume` continues exactly where it stopped.

The budget is counted in TARGET-RUN EQUIVALENTS: 1.0 is the cost of one run at the target (scale, steps).
A strategy only chooses among (scale, steps) it can still afford, so the budget is never exceeded; the
loop stops when nothing the strategy would run is affordable. A failed run (exception, non-finite loss)
is recorded as failed and its full cost is charged (the compute was spent).

What is in this file, in order:
  1. Settings               the loop's settings: field names are the CLI flags and the README words.
  2. designs                scrambled Sobol and Dirichlet mixtures on the simplex, seeds per trial.
  3. strategies             mfkg / kg / ei / ucb (GP + acquisition.py), random, sobol, uniform,
                            hyperband, regression; each one proposes the next trial and recommends.
  4. ledger                 header + one JSON line per trial and per recommendation, fsync'ed; resume.
  5. optimize               the loop (the Python entry point).
  6. bench                  strategies x seeds, regret and speed-ups scored through true_loss.
  7. main                   the command line.

Determinism: everything random in trial t is seeded by (seed, t) (np.random.SeedSequence), and the state
before trial t is a function of the ledger's first t trials only -- so a resumed run writes the same
ledger as an uninterrupted one (wall times aside).

References
  [FPD]  P. Frazier, W. Powell, S. Dayanik, The knowledge-gradient policy for correlated normal beliefs,
         INFORMS J. Computing 21(4), 2009 (kg, mfkg: see acquisition.py).
  [MS]   Data mixture optimization: a multi-scale, multi-fidelity Bayesian framework (the multi-scale
         paper; code at github.com/namkoong-lab/data-recipes): mfkg vs random and multi-fidelity BO.
  [HB]   L. Li, K. Jamieson, G. DeSalvo, A. Rostamizadeh, A. Talwalkar, Hyperband, JMLR 18, 2018, Alg. 1.
  [RM]   Q. Liu et al., RegMix: Data Mixture as Regression for Language Model Pre-training, 2024.
  [SCH]  H. Scheffe, Experiments with mixtures, JRSS-B 20, 1958 (the quadratic mixture polynomial).
  [SOB]  I. M. Sobol', 1967; scrambled by Owen (scipy.stats.qmc.Sobol).
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass

if __name__ == "__main__" and "--train" not in sys.argv[1:]:
    # One BLAS / OpenMP thread for the command line (set before numpy and torch start their pools; an
    # explicit setting wins). The GP's matrices are small, and extra threads only spin against each other:
    # measured on this shared 2-core box, `--sim --budget 2` took 6.3 s CPU with one thread and 145 s CPU
    # (191 s wall) with the libraries' default two. (--train keeps the defaults: the trainer uses every core.)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

import numpy as np
from scipy.stats import qmc

import simulate
# gp.py and acquisition.py (which import torch, ~1.5 s) are imported where a GP strategy first needs
# them (fit_model, propose_gp, recommend), so the baselines and every input check start fast.

GP_STRATEGIES = ("mfkg", "kg", "ei", "ucb")
STRATEGIES = GP_STRATEGIES + ("random", "sobol", "uniform", "hyperband", "regression")
# The GP that reports the recommendation's loss +- sd (recommend): a constant mean, and Matern-5/2 on
# u_N, u_T instead of gp.fit_gp's RBF. On mixbo's own ledgers, which hold no run at the target, the loop's
# scaling-law GP is too narrow there, and a constant-mean GP with RBF on u_N, u_T reverts towards the
# data's mean (+0.02 to +0.05 nats pessimistic at half the budget); this one held its nominal rate
# (bench/calibration.py, README "Calibration").
REPORTING_MODEL = dict(mean="constant", kernel_N="matern52", kernel_T="matern52")
LEDGER_VERSION = 1


# ----------------------------------------------------------------------------------------------
# 1. settings

@dataclass(frozen=True)
class Settings:
    """Everything that decides which trials the loop runs. Field names are the CLI flags
    (--n-init is n_init) and are written to the ledger header; --resume refuses a ledger whose header
    differs."""
    strategy: str = "mfkg"          # one of STRATEGIES
    budget: float = 5.0             # in target-run equivalents (1.0 = one run at the target scale and steps)
    seed: int = 0
    n_init: int = 0                 # initial space-filling design; 0 = the strategy's default (see _n_init)
    refit_every: int = 10           # refit GP hyperparameters every this many trials; condition in between
                                    # (--sim, 4 seeds: regret as good as refitting every trial, 3.5x less time)
    candidates: int = 256           # mixtures the acquisition scores per trial (acquisition.simplex_candidates)
    fixed_cost: float = 0.05        # mfkg: overhead added to every run's cost in KG / cost (target-run
                                    # equivalents; a decision floor, NOT charged to the budget)
    mixture: tuple = ()             # user mixtures evaluated first (tuples of K weights, domain order)
    eta: int = 3                    # hyperband: keep 1/eta of the runs at each rung [HB]
    regression_share: float = 0.5   # regression: share of the budget spent on smallest-scale proxy runs [RM]

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if not (isinstance(self.budget, (int, float)) and math.isfinite(self.budget) and self.budget > 0):
            raise ValueError(f"budget must be a number > 0 (target-run equivalents); got {self.budget}")
        if self.n_init < 0 or self.refit_every < 1 or self.candidates < 1 or self.eta < 2 or not self.fixed_cost >= 0:
            raise ValueError("n_init must be >= 0, refit_every >= 1, candidates >= 1, eta >= 2 and fixed_cost >= 0")
        if self.mixture and self.strategy not in GP_STRATEGIES + ("sobol",):
            raise ValueError(f"--mixture starts the design of {', '.join(GP_STRATEGIES)} and sobol; "
                             f"strategy {self.strategy} has no design to start")
        if not 0.0 < self.regression_share < 1.0:
            raise ValueError(f"regression_share must be in (0, 1); got {self.regression_share}")


def parse_mixture(text, domains):
    """'Wikipedia=0.5,Github=0.5' -> weights (K,) in `domains` order (missing domains are 0). Typed
    weights summing to 1 within 1e-3 (e.g. three times 0.333) are renormalized; beyond that, an error."""
    w = np.zeros(len(domains))
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in domains:
            raise ValueError(f"--mixture {text!r}: unknown domain {name!r}; domains are {', '.join(domains)} "
                             f"(write name=weight pairs separated by commas)")
        try:
            w[domains.index(name)] = float(value)
        except ValueError:
            raise ValueError(f"--mixture {text!r}: weight of {name} is not a number: {value!r}") from None
    if abs(w.sum() - 1.0) <= 1e-3 and np.all(w >= 0):
        w = w / w.sum()
    return tuple(simulate.check_weights(w, len(domains), tol=1e-9, what=f"--mixture {text!r}").tolist())


# ----------------------------------------------------------------------------------------------
# 2. designs and seeds

RUN, STRATEGY, MODEL = 0, 1, 2     # what a derived seed is for


def trial_seed(seed, t, purpose):
    """The seed of trial t for one purpose (the objective's run, the strategy's draws, the GP fit):
    a function of (seed, t, purpose) only, so resumed and uninterrupted runs draw the same numbers."""
    return int(np.random.SeedSequence([seed, t, purpose]).generate_state(1)[0])


def sobol_simplex(K, n, seed):
    """The first n points (n, K) of a scrambled Sobol sequence in [0,1)^K mapped to the simplex by
    w = e / sum(e), e_k = -log(1 - u_k): the exponential map turns uniforms into Dirichlet(1) draws, and
    it is smooth, so the sequence's even spread carries over. Prefixes agree: point t is the same for
    every n > t."""
    m = max(1, math.ceil(math.log2(max(n, 2))))
    u = qmc.Sobol(d=K, scramble=True, seed=seed).random_base2(m)[:n]          # (n, K) in [0, 1)
    e = -np.log1p(-u)                                                          # (n, K) Exp(1)
    return e / e.sum(1, keepdims=True)


def pool_choice(ctx, point, scale, steps, history, rng=None):
    """Table replay: a mixture of the table's pool that it holds at (scale, steps) and the history has not
    run there yet -- the nearest to `point` (Euclidean), or with point None a uniform draw by rng. None if
    none is left."""
    pool = np.asarray(ctx.objective.candidates)                                # (M, K)
    done = {tuple(r["weights"]) for r in history if (r["scale"], r["steps"]) == (scale, steps)}
    free = [i for i in range(len(pool)) if tuple(pool[i].tolist()) not in done and ctx.available(pool[i], scale, steps)]
    if not free:
        return None
    if point is None:
        return pool[free[int(rng.integers(len(free)))]]
    return pool[min(free, key=lambda i: float(((pool[i] - point) ** 2).sum()))]


# ----------------------------------------------------------------------------------------------
# 3. strategies
#
# A trial record (the ledger's "trial" line, a dict) carries: weights, scale, steps, status, loss,
# checkpoints [{steps, loss, domain_losses}], cost. Each strategy is a function
#     propose(ctx, history, t) -> (weights (K,), scale, steps, decision text) or None (nothing affordable)
# and the recommendation after each trial is recommend(ctx, history) -> dict. `ctx` holds the objective,
# the settings, the budget bookkeeping and (GP strategies) the current fitted GP.

@dataclass
class Context:
    objective: object
    settings: Settings
    unit: float                     # cost(*target): the budget unit
    bounds: tuple                   # (scale_min, scale_max, steps_min, steps_max) for gp.encode
    model: object = None            # gp.GP fitted on the trials so far (GP strategies), else None
    refit: dict = dataclasses.field(default_factory=dict)  # fit_model options -> (r, hyperparameters)
    spent: float = 0.0              # target-run equivalents spent so far

    @property
    def K(self):
        return len(self.objective.domains)

    def cost(self, scale, steps):
        """Cost of one run in target-run equivalents."""
        return float(self.objective.cost(scale, steps)) / self.unit

    def affordable(self, scale, steps):
        return self.spent + self.cost(scale, steps) <= self.settings.budget * (1 + 1e-12)

    def available(self, w, scale, steps):
        return self.objective.available is None or bool(self.objective.available(w, scale, steps))


def _fidelities(ctx):
    """Every (scale, steps) at or below the target, cheapest first."""
    N_t, T_t = ctx.objective.target
    pairs = [(float(N), int(T)) for N in ctx.objective.scales for T in ctx.objective.steps if N <= N_t and T <= T_t]
    return sorted(pairs, key=lambda p: (ctx.cost(*p), p))


def _target(ctx):
    return float(ctx.objective.target[0]), int(ctx.objective.target[1])


def _n_init(ctx):
    """Initial design size: n_init, else 3 target runs for single-fidelity strategies and 2K cheap runs
    for mfkg (cheap runs at the smaller scales cost a few percent of a target run each)."""
    n = ctx.settings.n_init or (2 * ctx.K if ctx.settings.strategy == "mfkg" else 3)
    return max(n, len(ctx.settings.mixture))


def design_point(ctx, history, t, scale, steps):
    """Mixture t of the space-filling design at (scale, steps): the user's --mixture ones first, then the
    scrambled Sobol sequence (seeded by `seed`); on a table, the nearest pool mixture it holds there."""
    user = ctx.settings.mixture
    if t < len(user):
        w = np.asarray(user[t], dtype=np.float64)
    else:
        w = sobol_simplex(ctx.K, t + 1 - len(user), trial_seed(ctx.settings.seed, 0, STRATEGY))[t - len(user)]
    if ctx.objective.candidates is not None:
        w = pool_choice(ctx, w, scale, steps, history)
    return w


def _init_fidelity(ctx, i):
    """Fidelity of the i-th initial run. Single-fidelity strategies: the target. mfkg: round-robin over
    the scales below the target at the target's steps (so the GP sees the scale effect from the start);
    with a single scale, the shortest steps."""
    N_t, T_t = _target(ctx)
    if ctx.settings.strategy != "mfkg":
        return N_t, T_t
    smaller = [float(N) for N in ctx.objective.scales if N < N_t]
    if smaller:
        return smaller[i % len(smaller)], T_t
    return N_t, int(min(ctx.objective.steps))


def propose_random(ctx, history, t):
    """Dirichlet(1) at the target (on a table: a uniform draw from the pool mixtures not run yet)."""
    rng = np.random.default_rng(trial_seed(ctx.settings.seed, t, STRATEGY))
    if ctx.objective.candidates is None:
        return rng.dirichlet(np.ones(ctx.K)), *_target(ctx), "random"
    w = pool_choice(ctx, None, *_target(ctx), history, rng)
    return None if w is None else (w, *_target(ctx), "random")


def propose_sobol(ctx, history, t):
    """Point t of the scrambled Sobol sequence on the simplex, at the target."""
    w = design_point(ctx, history, t, *_target(ctx))
    return None if w is None else (w, *_target(ctx), "sobol")


def propose_uniform(ctx, history, t):
    """Equal weights at the target (on a table: the nearest pool mixture); every later trial repeats it
    with a new seed (a replicate that measures the seed noise; the recommendation never changes)."""
    w = np.full(ctx.K, 1.0 / ctx.K)
    if ctx.objective.candidates is not None:
        w = pool_choice(ctx, w, *_target(ctx), history=())
    return w, *_target(ctx), "uniform" if t == 0 else "uniform (replicate)"


def _hyperband_rungs(ctx):
    """The resource ladder of [HB]: from the target down, each rung the costliest (scale, steps) that costs
    <= 1/eta of the rung above, along the path (smallest scale, shortest steps) -> (smallest scale,
    target steps) -> (larger scales, target steps) -> target."""
    N_t, T_t = _target(ctx)
    scales = [float(N) for N in ctx.objective.scales if N <= N_t]
    steps = [int(T) for T in ctx.objective.steps if T <= T_t]
    path = [(scales[0], T) for T in steps] + [(N, T_t) for N in scales[1:]]
    rungs = [(N_t, T_t)]
    for p in reversed(path[:-1]):
        if ctx.cost(*p) <= ctx.cost(*rungs[0]) / ctx.settings.eta:
            rungs.insert(0, p)
    return rungs


def propose_hyperband(ctx, history, t):
    """Hyperband [HB Alg. 1] over the rung ladder, brackets s = s_max..0 repeated until the budget is
    spent. Replayed from the history: the k-th run of the (deterministic) schedule is history[k], so the
    next run is the first one the history does not hold yet."""
    rungs, eta = _hyperband_rungs(ctx), ctx.settings.eta
    s_max, k = len(rungs) - 1, 0
    for bracket in range(10 ** 6):
        s = s_max - bracket % (s_max + 1)
        n = math.ceil((s_max + 1) / (s + 1) * eta ** s)                     # [HB] Alg. 1 line 3
        rng = np.random.default_rng(trial_seed(ctx.settings.seed, bracket, STRATEGY))
        if ctx.objective.candidates is None:
            configs = list(rng.dirichlet(np.ones(ctx.K), n))                  # n random mixtures
        else:                                                               # table: n pool mixtures held at rung 0
            pool = np.asarray(ctx.objective.candidates)
            free = [j for j in range(len(pool)) if ctx.available(pool[j], *rungs[s_max - s])]
            configs = [pool[j] for j in rng.permutation(free)[:n]]
        if not configs:
            return None
        for i in range(s + 1):                                             # successive halving, Alg. 1 lines 5-9
            rung = rungs[s_max - s + i]
            configs = [c for c in configs if ctx.available(c, *rung)]      # (tables: only rows they hold)
            losses = []
            for c in configs:
                if k == len(history):
                    return c, *rung, f"hyperband bracket {bracket} rung {s_max - s + i}"
                r, k = history[k], k + 1
                losses.append(r["loss"] if r["status"] == "ok" else math.inf)
            keep = max(1, len(configs) // eta)                              # top n_i / eta
            configs = [configs[j] for j in np.argsort(losses, kind="stable")[:keep]]
    return None


def _scheffe_features(W):
    """Scheffe's quadratic mixture polynomial [SCH]: y = sum_i b_i w_i + sum_{i<j} b_ij w_i w_j
    (no intercept: sum w = 1 absorbs it). W (n, K) -> (n, K + K(K-1)/2)."""
    iu = np.triu_indices(W.shape[1], k=1)
    return np.column_stack([W, W[:, iu[0]] * W[:, iu[1]]])


def _fit_regression(W, y):
    """Ridge regression of loss on _scheffe_features, the ridge chosen by leave-one-out error
    (closed form e_i / (1 - H_ii) for linear smoothers, Hastie, Tibshirani & Friedman, ESL 2nd ed.,
    Sec. 7.10.1) over a grid of ridges. Returns (coefficients, y_mean)."""
    F = _scheffe_features(W)                                               # (n, p)
    y_mean = y.mean()
    best = None
    for lam in 10.0 ** np.arange(-8, 3):
        A = F.T @ F + lam * np.eye(F.shape[1])
        H = F @ np.linalg.solve(A, F.T)                                    # (n, n) hat matrix
        loo = (y - y_mean - H @ (y - y_mean)) / np.clip(1 - np.diag(H), 1e-9, None)
        score = float(np.mean(loo ** 2))
        if best is None or score < best[0]:
            best = (score, np.linalg.solve(A, F.T @ (y - y_mean)))
    return best[1], y_mean


def _regression_ranking(ctx, history):
    """Candidate mixtures (M, K) sorted by the regression's predicted loss, and the predictions; None if
    there are too few proxy runs (fewer than the number of coefficients)."""
    proxy = _regression_fidelity(ctx)
    runs = [r for r in history if r["status"] == "ok" and (r["scale"], r["steps"]) == proxy]
    if len(runs) < ctx.K + ctx.K * (ctx.K - 1) // 2:
        return None
    W = np.array([r["weights"] for r in runs])
    coef, y_mean = _fit_regression(W, np.array([r["loss"] for r in runs]))
    pool = ctx.objective.candidates
    if pool is None:                                                       # RegMix scores many random mixtures
        rng = np.random.default_rng(trial_seed(ctx.settings.seed, 0, MODEL))
        pool = rng.dirichlet(np.ones(ctx.K), 10 * ctx.settings.candidates)
    pool = np.asarray(pool)
    pred = y_mean + _scheffe_features(pool) @ coef
    order = np.argsort(pred, kind="stable")
    return pool[order], pred[order]


def _regression_fidelity(ctx):
    return float(min(ctx.objective.scales)), _target(ctx)[1]


def propose_regression(ctx, history, t):
    """RegMix [RM]: spend regression_share of the budget on runs of random mixtures at the smallest scale,
    fit the regression, then train its best-predicted mixtures at the target, best first."""
    proxy = _regression_fidelity(ctx)
    proxy_spent = sum(r["cost"] for r in history if (r["scale"], r["steps"]) == proxy)
    if proxy_spent + ctx.cost(*proxy) <= ctx.settings.regression_share * ctx.settings.budget and proxy != _target(ctx):
        rng = np.random.default_rng(trial_seed(ctx.settings.seed, t, STRATEGY))
        if ctx.objective.candidates is None:
            return rng.dirichlet(np.ones(ctx.K)), *proxy, "regression proxy"
        w = pool_choice(ctx, None, *proxy, history, rng)
        if w is not None:
            return w, *proxy, "regression proxy"
    ranking = _regression_ranking(ctx, history)
    if ranking is None:                                                   # too few proxy runs to fit: random
        return propose_random(ctx, history, t)
    done = [r["weights"] for r in history if (r["scale"], r["steps"]) == _target(ctx)]
    for w, p in zip(*ranking):
        if not any(np.allclose(w, d) for d in done):
            return w, *_target(ctx), f"regression argmin (pred {p:.4f} at proxy)"
    return None


def _observations(history):
    """Every checkpoint of every ok trial: W (n, K), N (n,), T (n,), y (n,), and runs (n,), the index of
    the trial each checkpoint comes from (gp.fit_gp's run labels: a run's checkpoints share its seed's
    offset; two trials of the same mixture and scale are two runs with independent offsets)."""
    rows = [(r["weights"], r["scale"], c["steps"], c["loss"], i)
            for i, r in enumerate(history) if r["status"] == "ok" for c in r["checkpoints"]]
    W, N, T, y, runs = zip(*rows)
    return (np.array(W), np.array(N, dtype=float), np.array(T, dtype=float), np.array(y, dtype=float),
            np.array(runs))


def fit_model(ctx, history, **options):
    """The GP (gp.fit_gp with the model `options`, e.g. mean="constant"; none: gp.fit_gp's defaults) on every
    ok checkpoint of the history. Hyperparameters are refitted (MAP, gp.fit_gp) when the number of trials c
    is a multiple of refit_every; in between, the GP is conditioned on all data with the hyperparameters of
    the last refit r = c - c % refit_every (fitted on the first r trials; cached in ctx.refit per options).
    So the model is a function of the history only, and a resumed run rebuilds it."""
    import gp
    if not any(x["status"] == "ok" for x in history):
        return None
    c = len(history)
    r = c - c % ctx.settings.refit_every
    if not any(x["status"] == "ok" for x in history[:r]):
        r = c                                                       # nothing to refit on yet: fit now
    key = tuple(sorted(options.items()))
    if ctx.refit.get(key, (None,))[0] != r:
        W, N, T, y, runs = _observations(history[:r])
        hyp = gp.fit_gp(gp.encode(W, N, T, ctx.bounds), y, n_weights=ctx.K, runs=runs,
                        seed=trial_seed(ctx.settings.seed, r, MODEL), **options).hyperparameters
        ctx.refit[key] = (r, hyp)
    W, N, T, y, runs = _observations(history)
    return gp.fit_gp(gp.encode(W, N, T, ctx.bounds), y, n_weights=ctx.K, runs=runs,
                     hyperparameters=ctx.refit[key][1], **options)


def _evaluated_mixtures(history):
    """Distinct mixtures with at least one ok run, in first-run order: (m, K)."""
    import acquisition
    return acquisition.unique_rows(np.array([r["weights"] for r in history if r["status"] == "ok"]))


def propose_gp(ctx, history, t):
    """mfkg / kg / ei / ucb: one decision of acquisition.choose_next on the GP of the history, over
    simplex candidates (or the table's pool) and the fidelities the strategy may use and can afford."""
    import acquisition
    strategy = ctx.settings.strategy
    fids = _fidelities(ctx) if strategy == "mfkg" else [_target(ctx)]
    if not any(ctx.affordable(*f) for f in fids):
        return None
    seed = trial_seed(ctx.settings.seed, t, STRATEGY)
    evaluated = _evaluated_mixtures(history)                              # (E, K)
    if ctx.objective.candidates is None:
        cands = acquisition.simplex_candidates(ctx.K, ctx.settings.candidates, seed, incumbents=evaluated)
    else:
        cands = np.asarray(ctx.objective.candidates)
    allowed = None                                                        # None: every pair may be run
    if ctx.objective.available is not None or not all(ctx.affordable(*f) for f in fids):
        allowed = lambda w, N, T: ctx.affordable(N, T) and ctx.available(w, N, T)
        if not any(allowed(w, N, T) for w in cands for N, T in fids):   # e.g. a table's rows all too costly
            return None
    d = acquisition.choose_next(strategy, ctx.model, cands, evaluated,
                                scales=sorted({N for N, _ in fids}), steps=sorted({T for _, T in fids}),
                                target=_target(ctx), bounds=ctx.bounds, cost=ctx.cost,
                                fixed_cost=ctx.settings.fixed_cost, available=allowed)
    why = {"mfkg": f"mfkg log(KG/cost) {d.value:.2f}", "kg": f"kg log KG {d.value:.2f}",
           "ei": f"ei log EI {d.value:.2f}", "ucb": f"ucb -LCB {d.value:.3f}"}[strategy]
    return d.weights, d.scale, d.steps, why


PROPOSE = {"random": propose_random, "sobol": propose_sobol, "uniform": propose_uniform,
           "hyperband": propose_hyperband, "regression": propose_regression,
           **{s: propose_gp for s in GP_STRATEGIES}}


def propose(ctx, history, t):
    """Trial t: the initial design first (GP strategies), then the strategy; None ends the loop. A
    proposal the budget cannot pay for ends the loop too. An initial run the budget cannot pay for ends the
    initial design instead: the acquisition then chooses among the fidelities still affordable (before this,
    `--sim --budget 1` stopped after 5 trials with 0.41 of its budget unspent)."""
    in_init = (ctx.settings.strategy in GP_STRATEGIES and t < _n_init(ctx)
               and all(r["decision"].startswith("init") for r in history))    # the design is still unbroken
    if in_init:
        N, T = _init_fidelity(ctx, t)
        in_init = ctx.affordable(N, T)
    if in_init:
        w = design_point(ctx, history, t, N, T)
        if w is None:                                                   # a table without that row: at the target
            N, T = _target(ctx)
            w = design_point(ctx, history, t, N, T)
        p = None if w is None else (w, N, T, "init (sobol)" if t >= len(ctx.settings.mixture) else "init (--mixture)")
    elif ctx.settings.strategy in GP_STRATEGIES and ctx.model is None:   # every run so far failed: keep exploring
        p = propose_sobol(ctx, history, t)
    else:
        p = PROPOSE[ctx.settings.strategy](ctx, history, t)
    if p is None or not ctx.affordable(p[1], p[2]):
        return None
    return p


def _domain_losses_of(ctx, history, w):
    """Observed per-domain losses of mixture w at the highest fidelity it ran at, and where."""
    runs = [r for r in history if r["status"] == "ok" and list(r["weights"]) == list(w)]
    if not runs:
        return {}, "not run"
    r = max(runs, key=lambda r: (r["scale"], r["steps"]))
    return r["domain_losses"], f"observed at scale {fmt_scale(r['scale'])}, steps {r['steps']}"


def recommend(ctx, history):
    """The mixture the strategy returns now, at the target. GP strategies: argmin of the posterior mean at
    the target over the evaluated mixtures (acquisition.recommend, on the loop's GP); its loss +- sd is the
    posterior at the target of REPORTING_MODEL, a constant-mean GP fitted to the same runs: on the loop's
    own data the scaling-law GP's intervals there were too narrow and this one's held their nominal rate
    (bench/calibration.py, README "Calibration"). Regression before any target run: the regression's
    argmin (a prediction at the proxy scale). Otherwise: the best observed loss at the target (or, if
    nothing ran at the target yet, at the highest fidelity reached)."""
    s = ctx.settings.strategy
    tgt = _target(ctx)
    ok = [r for r in history if r["status"] == "ok"]
    rec = {"weights": None, "loss": None, "sd": None, "source": "no successful run yet",
           "domain_losses": {}, "domain_losses_source": "not run"}
    if s in GP_STRATEGIES and ctx.model is not None:
        import acquisition
        import gp
        mixtures = _evaluated_mixtures(history)
        i, _, _ = acquisition.recommend(ctx.model, mixtures, tgt, ctx.bounds)
        reporter = fit_model(ctx, history, **REPORTING_MODEL)                     # the calibrated +-
        mean, var = gp.predict(reporter, gp.encode(mixtures[i:i + 1], *tgt, ctx.bounds))  # (1,), (1,)
        rec.update(weights=mixtures[i].tolist(), loss=float(mean[0]), sd=float(np.sqrt(var[0])),
                   source="constant-mean GP posterior at the target")
    elif (s == "regression" and not any((r["scale"], r["steps"]) == tgt for r in ok)
          and _regression_ranking(ctx, history)):
        W, pred = _regression_ranking(ctx, history)
        rec.update(weights=W[0].tolist(), loss=float(pred[0]), source="regression prediction at the proxy scale")
    elif ok:
        top = max((r["scale"], r["steps"]) for r in ok) if not any((r["scale"], r["steps"]) == tgt for r in ok) else tgt
        best = min((r for r in ok if (r["scale"], r["steps"]) == top), key=lambda r: r["loss"])
        where = "the target" if top == tgt else f"scale {fmt_scale(top[0])}, steps {top[1]} (no target run yet)"
        rec.update(weights=list(best["weights"]), loss=best["loss"], source=f"best observed at {where}")
    if rec["weights"] is not None:
        rec["domain_losses"], rec["domain_losses_source"] = _domain_losses_of(ctx, history, rec["weights"])
    return rec


# ----------------------------------------------------------------------------------------------
# 4. ledger: line 1 {"kind": "header", ...}; then per trial {"kind": "trial", ...} followed by
#    {"kind": "recommendation", ...}. The trial line is written (and fsync'ed) as soon as the run returns,
#    before the GP is refitted, so a kill while fitting loses no run.

def objective_description(objective):
    return {"name": objective.name, "domains": list(objective.domains),
            "scales": [float(s) for s in objective.scales], "steps": [int(s) for s in objective.steps],
            "target": [float(objective.target[0]), int(objective.target[1])]}


def ledger_header(settings, objective):
    h = {"kind": "header", "mixbo_ledger": LEDGER_VERSION,
         "settings": dataclasses.asdict(settings), "objective": objective_description(objective)}
    return json.loads(json.dumps(h))             # the form it takes after a round trip through the file


def _append(f, record):
    """One JSON line, then flush and fsync: the line is on disk before the next trial starts."""
    f.write(json.dumps(record, allow_nan=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def read_ledger(path, header, warn=print):
    """Trials and recommendations of an existing ledger, after checking its header equals `header`.
    A torn last line (a kill mid-write) is ignored with a warning and truncated away, so appending
    continues from the last complete line. Anything else malformed is a one-line ValueError."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    good_end, records = 0, []
    for i, line in enumerate(lines):
        if i == len(lines) - 1:          # text after the last newline: empty, or a torn line (no newline yet)
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"ledger {path} line {i + 1} is not valid JSON; "
                             f"the ledger is damaged beyond its last line") from None
        good_end += len(line) + 1
    if records and records[0] != header:
        got = records[0].get("settings", {}) if isinstance(records[0], dict) else {}
        diff = [k for k in header["settings"] if got.get(k) != header["settings"][k]]
        what = f"settings differ ({', '.join(diff)})" if diff else "its objective or format differs"
        raise ValueError(f"ledger {path} is from another run: {what}; use another --ledger path or the same settings")
    trials = [r for r in records[1:] if r.get("kind") == "trial"]
    recs = [r for r in records[1:] if r.get("kind") == "recommendation"]
    if ([r["trial"] for r in trials] != list(range(len(trials))) or len(recs) > len(trials)
            or [r["after_trial"] for r in recs] != list(range(len(recs)))):
        raise ValueError(f"ledger {path} has trials out of order or repeated; "
                         f"it was not written by this version of mixbo")
    if good_end < len(data):                 # only now (the ledger is ours): cut the torn line away
        warn(f"mixbo: warning: ignoring the torn last line of {path} ({len(data) - good_end} bytes; "
             f"the run was killed while writing it)")
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    if not records:
        return None
    return trials, recs


def default_ledger_path(settings, objective, resume=False):
    """runs/<objective>-<strategy>-seed<seed>.jsonl; if that exists and we are not resuming, the first free
    runs/<objective>-<strategy>-seed<seed>-<i>.jsonl (a default path never overwrites or refuses)."""
    base = os.path.join("runs", f"{objective.name}-{settings.strategy}-seed{settings.seed}".replace(os.sep, "_"))
    path, i = base + ".jsonl", 1
    while os.path.exists(path) and not resume:
        path, i = f"{base}-{i}.jsonl", i + 1
    return path


# ----------------------------------------------------------------------------------------------
# 5. the loop

@dataclass(frozen=True)
class Result:
    settings: Settings
    trials: list               # trial records (dicts, as in the ledger)
    recommendations: list      # one per trial: the recommendation after it
    spent: float               # target-run equivalents
    ledger: str | None

    @property
    def recommendation(self):
        return self.recommendations[-1] if self.recommendations else None


def run_trial(ctx, t, weights, scale, steps, decision):
    """Run the objective once; any exception or non-finite loss makes a failed record (cost charged)."""
    obj = ctx.objective
    seed = trial_seed(ctx.settings.seed, t, RUN)
    rec = {"kind": "trial", "trial": t, "decision": decision, "weights": [float(x) for x in weights],
           "scale": float(scale), "steps": int(steps), "seed": seed, "status": "ok", "loss": None,
           "domain_losses": {}, "checkpoints": [], "cost": ctx.cost(scale, steps), "spent": None,
           "wall_s": None, "error": None}
    t0 = time.perf_counter()
    try:
        out = obj.run(np.asarray(weights, dtype=np.float64), float(scale), int(steps), seed)
        loss = float(out["loss"])
        last = {"steps": steps, "loss": loss, "domain_losses": out.get("domain_losses", {})}
        cks = [{"steps": int(c["steps"]), "loss": float(c["loss"]),
                "domain_losses": {k: float(v) for k, v in c.get("domain_losses", {}).items()}}
               for c in out.get("checkpoints") or [last]]
        if not math.isfinite(loss):
            raise ValueError(f"the objective returned a non-finite loss ({loss})")
        cks = [c for c in cks if math.isfinite(c["loss"]) and all(map(math.isfinite, c["domain_losses"].values()))]
        dl = {k: float(v) for k, v in out.get("domain_losses", {}).items()}
        rec.update(loss=loss, checkpoints=cks, domain_losses={k: v for k, v in dl.items() if math.isfinite(v)})
    except Exception as e:        # a failed training run must not stop the search: record it and go on
        rec.update(status="failed", error=f"{type(e).__name__}: {e}".splitlines()[0][:500])
    rec["wall_s"] = round(time.perf_counter() - t0, 3)
    ctx.spent += rec["cost"]
    rec["spent"] = ctx.spent
    return rec


def optimize(objective, strategy="mfkg", budget=Settings.budget, seed=0, ledger=None, resume=False,
             out=print, verbose=True, progress=False, on_trial=None, **settings):
    """Run the loop on `objective` (simulate.Objective or anything with its fields) and return a Result.
    settings: the other Settings fields (n_init, refit_every, candidates, fixed_cost, mixture, eta,
    regression_share).
    ledger: a path to write (refused if it exists, unless resume=True, which continues it); None keeps
    the trials in memory only. out: a print-like function for the report (None: silent); verbose=False
    prints the final recommendation only; progress: a line before each trial starts (long trials).
    on_trial(record, recommendation): called after each new trial (the benchmark scores it there)."""
    if "mixture" in settings:
        settings["mixture"] = tuple(tuple(float(x) for x in m) for m in settings["mixture"])
    settings = Settings(strategy=strategy, budget=float(budget), seed=int(seed), **settings)
    K = len(objective.domains)
    for i, m in enumerate(settings.mixture):
        simulate.check_weights(m, K, tol=1e-9, what=f"mixture {i}")
    summary = out or (lambda *a, **k: None)
    say = summary if verbose else (lambda *a, **k: None)
    N_t, T_t = objective.target
    ctx = Context(objective, settings, unit=float(objective.cost(N_t, T_t)),
                  bounds=(min(objective.scales), max(objective.scales), min(objective.steps), max(objective.steps)))
    if not (math.isfinite(ctx.unit) and ctx.unit > 0):
        raise ValueError(f"cost(*target) must be a finite number > 0; got {ctx.unit}")
    header = ledger_header(settings, objective)
    trials, recs = [], []
    f = None
    if ledger is not None:
        os.makedirs(os.path.dirname(os.path.abspath(ledger)), exist_ok=True)
        if os.path.exists(ledger) and not resume:
            raise ValueError(f"ledger {ledger} already exists; pass --resume to continue it, "
                             f"or choose another --ledger path")
        old = read_ledger(ledger, header, warn=summary) if os.path.exists(ledger) else None
        f = open(ledger, "a")
        if old is None:
            f.truncate(0)
            _append(f, header)
            dir_fd = os.open(os.path.dirname(os.path.abspath(ledger)), os.O_RDONLY)
            os.fsync(dir_fd)                                  # the new file's directory entry is on disk too
            os.close(dir_fd)
        else:
            trials, recs = old
    _print_header(say, settings, objective, ledger)
    for r in trials:
        ctx.spent += r["cost"]
    if trials:
        say(f"resumed {len(trials)} finished trial(s) from the ledger ({ctx.spent:.3f} of {settings.budget:g} spent)")
        for r, rec in zip(trials, recs):
            _print_trial(say, ctx, r, rec)
    try:
        ctx.model = fit_model(ctx, trials) if settings.strategy in GP_STRATEGIES else None
        if len(recs) < len(trials):                       # killed between a trial line and its recommendation
            rec = {"kind": "recommendation", "after_trial": len(trials) - 1, **recommend(ctx, trials)}
            if f:
                _append(f, rec)
            recs.append(rec)
            _print_trial(say, ctx, trials[-1], rec)
        while True:
            t = len(trials)
            p = propose(ctx, trials, t)
            if p is None:
                break
            w, scale, steps, decision = p
            if progress:
                say(f"trial {t}: {decision}: training scale {fmt_scale(scale)} for {steps} steps ...")
                sys.stdout.flush()
            r = run_trial(ctx, t, w, scale, steps, decision)
            if f:
                _append(f, r)
            trials.append(r)
            ctx.model = fit_model(ctx, trials) if settings.strategy in GP_STRATEGIES else None
            rec = {"kind": "recommendation", "after_trial": t, **recommend(ctx, trials)}
            if f:
                _append(f, rec)
            recs.append(rec)
            _print_trial(say, ctx, r, rec)
            if on_trial:
                on_trial(r, rec)
    finally:
        if f:
            f.close()
    result = Result(settings, trials, recs, ctx.spent, ledger)
    _print_summary(summary, ctx, result)
    return result


# ----------------------------------------------------------------------------------------------
# output for a person

def fmt_scale(n):
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def fmt_weights(w):
    return "[" + " ".join(f"{x:.2f}" for x in w) + "]" if w is not None else "-"


def _print_header(say, settings, objective, ledger):
    say(f"mixbo: strategy {settings.strategy}, seed {settings.seed}, budget {settings.budget:g} target-run equivalents")
    say("settings: " + ", ".join(f"{k}={v}" + (" (strategy default)" if k == "n_init" and v == 0 else "")
                                 for k, v in dataclasses.asdict(settings).items()
                                 if k not in ("strategy", "seed", "budget")))
    say(f"objective {objective.name}: domains {', '.join(objective.domains)}; "
        f"scales {', '.join(fmt_scale(s) for s in objective.scales)}; steps {', '.join(map(str, objective.steps))}; "
        f"target scale {fmt_scale(objective.target[0])}, steps {objective.target[1]}")
    say(f"ledger: {ledger if ledger else '(none, in memory only)'}")
    say("columns: loss = observed at the trial's own scale and steps; recommendation = the mixture to train "
        "at the target, with its predicted target loss +- sd")
    say(f"{'trial':>5}  {'decision':<28} {'weights':<{6 + 5 * len(objective.domains)}} {'scale':>6} {'steps':>6} "
        f"{'loss':>8} {'spent/budget':>13}  recommendation (weights, loss +- sd)")


def _print_trial(say, ctx, r, rec):
    loss = f"{r['loss']:.4f}" if r["status"] == "ok" else "FAILED"
    sd = f" +- {rec['sd']:.4f}" if rec.get("sd") is not None else ""
    rl = f"{rec['loss']:.4f}{sd}" if rec.get("loss") is not None else "-"
    say(f"{r['trial']:>5}  {r['decision'][:28]:<28} {fmt_weights(r['weights']):<{6 + 5 * ctx.K}} "
        f"{fmt_scale(r['scale']):>6} {r['steps']:>6} {loss:>8} {r['spent']:>6.3f}/{ctx.settings.budget:<6g}  "
        f"{fmt_weights(rec['weights'])} {rl}")
    if r["status"] == "failed":
        say(f"       failed: {r['error']} (recorded; its cost counts; the loop goes on)")


def _print_summary(say, ctx, result):
    rec = result.recommendation
    n_failed = sum(r["status"] == "failed" for r in result.trials)
    say(f"done: {len(result.trials)} trials ({n_failed} failed), "
        f"spent {result.spent:.3f} of {ctx.settings.budget:g} target-run equivalents")
    if rec is None or rec["weights"] is None:
        say("no recommendation: no trial succeeded")
        return
    sd = f" +- {rec['sd']:.4f}" if rec["sd"] is not None else ""
    N_t, T_t = ctx.objective.target
    say(f"RECOMMENDED MIXTURE at the target (scale {fmt_scale(N_t)}, steps {T_t}):")
    for d, w in zip(ctx.objective.domains, rec["weights"]):
        dl = rec["domain_losses"].get(d)
        say(f"  {d:<24} {w:.4f}" + (f"   domain loss {dl:.4f}" if dl is not None else ""))
    say(f"  loss {rec['loss']:.4f}{sd} ({rec['source']}); domain losses {rec['domain_losses_source']}")
    if rec["sd"] is not None and not any(r["status"] == "ok" and r["scale"] == N_t and r["steps"] >= T_t
                                         for r in result.trials):
        say("  note: no run reached the target scale and steps: this loss +- sd is extrapolated from smaller or "
            "shorter runs")


# ----------------------------------------------------------------------------------------------
# 6. bench: strategies x seeds on a benchmark whose true loss is known

def _quartiles(x):
    """(median, q25, q75) of values that may be inf ("not reached"): a quantile that falls on or
    interpolates towards an inf is inf."""
    x = np.where(np.isfinite(x), np.asarray(x, dtype=float), 1e300)
    return tuple(float(v) if v < 1e250 else math.inf for v in np.percentile(x, [50, 25, 75]))


def _cost_to_reach(curve, q):
    """The spent budget at which the recommendation's true loss first reaches <= q (inf if never)."""
    return next((spent for spent, loss in curve if loss <= q), math.inf)


_BENCH_OBJECTIVE = None      # the benchmark's objective, inherited by forked --jobs workers (closures do not pickle)


def _bench_run(task):
    """One (strategy, seed, budget, settings) run of the benchmark: the curve [(spent, true target loss of
    the recommendation)] after every trial, the share of cost per scale, and the wall time."""
    s, seed, budget, settings = task
    objective, curve, t0 = _BENCH_OBJECTIVE, [], time.perf_counter()
    def score(r, rec):
        true = math.inf if rec["weights"] is None else float(objective.true_loss(np.asarray(rec["weights"])))
        curve.append((r["spent"], true))
    res = optimize(objective, s, budget, seed, out=None, on_trial=score, **settings)
    share = [sum(r["cost"] for r in res.trials if r["scale"] == N) / res.spent for N in objective.scales]
    return curve, share, time.perf_counter() - t0


def _bench_worker_init():
    """A forked worker must not use an OpenMP pool its parent started (torch then hangs: seen here when the
    parent had run torch with two threads); with one thread it never needs the pool."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def bench(objective, strategies, seeds=10, budget=Settings.budget, jobs=2, out=print, **settings):
    """Run every strategy with seeds 0..seeds-1 (in `jobs` forked processes) and score the recommendation
    after every trial through objective.true_loss -- UNCHARGED: the benchmark peeks at the noise-free
    target loss, which a real search cannot. Returns a JSON-ready dict (fields in the README)."""
    global _BENCH_OBJECTIVE
    say = out or (lambda *a, **k: None)
    if objective.true_loss is None:
        raise ValueError(f"--bench needs an objective with a known true loss (a simulator or a table); "
                         f"{objective.name} has none")
    for s in strategies:
        Settings(strategy=s, budget=budget, **settings)           # bad settings -> one-line error before any run
    _BENCH_OBJECTIVE = objective
    tasks = [(s, seed, budget, settings) for s in strategies for seed in range(seeds)]
    if jobs > 1:
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(jobs, initializer=_bench_worker_init) as pool:
            runs = pool.map(_bench_run, tasks, chunksize=1)
    else:
        runs = [_bench_run(task) for task in tasks]
    runs = {s: runs[i * seeds:(i + 1) * seeds] for i, s in enumerate(strategies)}
    best = objective.optimum[1] if objective.optimum is not None else None
    final = {s: [c[-1][1] if c else math.inf for c, _, _ in runs[s]] for s in strategies}
    # q_ref: the reference's median final true loss -- the upper median for an even number of seeds, so
    # that at least half of the reference's own seeds reach it (with the mean of the middle two, exactly
    # half would, and the reference's own median cost to reach it would be "not reached")
    refs = {ref: float(np.percentile(final[ref], 50, method="higher")) for ref in ("random", "ei") if ref in strategies}
    table = {}
    for s in strategies:
        curves = [c for c, _, _ in runs[s]]
        wall = sum(w for _, _, w in runs[s])
        say(f"  {s}: {seeds} seeds, {wall:.1f} s of runs")
        row = {"final_true_loss": _quartiles(final[s]), "run_wall_s": round(wall, 2)}
        if best is not None:
            row["final_regret"] = _quartiles([x - best for x in final[s]])
            # regret of the recommendation when a quarter / half / all of the budget is spent
            at = lambda curve, f: next((loss for c, loss in reversed(curve) if c <= f * budget + 1e-12), math.inf)
            row["regret_at_budget_fraction"] = {f: _quartiles([at(curve, f) - best for curve in curves])
                                                for f in (0.25, 0.5, 1.0)}
        for ref, q in refs.items():
            c = _quartiles([_cost_to_reach(curve, q) for curve in curves])
            row[f"cost_to_reach_{ref}"] = c
            row[f"speedup_vs_{ref}"] = budget / c[0] if math.isfinite(c[0]) else None
        mean_share = np.mean([sh for _, sh, _ in runs[s]], axis=0)    # (scales,) mean over seeds
        row["cost_share_by_scale"] = {fmt_scale(N): float(v) for N, v in zip(objective.scales, mean_share) if v > 0}
        table[s] = row
    return {"objective": objective.name, "budget": budget, "seeds": seeds, "strategies": list(strategies),
            "optimum_loss": best, "reference_quality": refs, "settings": settings,
            "scoring": "recommendation after every trial scored by objective.true_loss at the target, uncharged",
            "results": table}


def _json_ready(x):
    """x with every non-finite float (a cost that was never reached) as null: strict JSON."""
    if isinstance(x, dict):
        return {k: _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def print_bench(say, b):
    """The --bench table: one row per strategy, median [q25, q75] over seeds."""
    def q(t, f="{:.4f}"):
        return "not reached" if not math.isfinite(t[0]) else f"{f.format(t[0])} [{f.format(t[1])}, {f.format(t[2])}]"
    refs = list(b["reference_quality"])
    say(f"bench: {b['objective']}, budget {b['budget']:g} target-run equivalents, {b['seeds']} seeds; "
        f"median [IQR] over seeds")
    say(f"scoring: {b['scoring']}")
    for ref, v in b["reference_quality"].items():
        say(f"q_{ref} = {ref}'s median true target loss at the budget = {v:.4f}; "
            f"speed-up vs {ref} = budget / median cost at which the recommendation first reaches <= q_{ref}")
    say(f"{'strategy':<11} {'final regret':<26} {'regret at 25%/50% budget':<25}"
        + "".join(f"{'cost to reach q_' + r:<24} {'x' + r:>11}  " for r in refs) + "cost share by scale")
    for s, row in b["results"].items():
        reg = q(row["final_regret"]) if "final_regret" in row else q(row["final_true_loss"])
        part = row.get("regret_at_budget_fraction", {})
        early = " / ".join(f"{part[f][0]:.4f}" if math.isfinite(part[f][0]) else "-" for f in (0.25, 0.5) if part)
        speed = {r: format(row["speedup_vs_" + r], ".2f") if row["speedup_vs_" + r] else "not reached" for r in refs}
        cols = "".join(f"{q(row['cost_to_reach_' + r], '{:.2f}'):<24} {speed[r]:>11}  " for r in refs)
        share = " ".join(f"{k}:{v:.2f}" for k, v in row["cost_share_by_scale"].items())
        say(f"{s:<11} {reg:<26} {early or '-':<25}{cols}{share}")


# ----------------------------------------------------------------------------------------------
# 7. command line

class _Parser(argparse.ArgumentParser):
    def error(self, message):        # argparse prints usage + message; mixbo promises ONE line and exit 2
        raise ValueError(f"{message} (see python mixbo.py --help)")


def build_parser():
    p = _Parser(prog="mixbo.py", description="Choose a pre-training data mixture by multi-fidelity, multi-scale "
                "Bayesian optimization. Budget in target-run equivalents (1.0 = one run at the target scale "
                "and steps).")
    src = p.add_argument_group("objective (choose one)")
    src.add_argument("--sim", nargs="?", const="default", metavar="NAME",
                     help="a synthetic benchmark of simulate.py (default: %(const)s)")
    src.add_argument("--objective", metavar="PATH.py",
                     help="a Python file defining loss(weights, scale, steps) (see simulate.py)")
    src.add_argument("--table", metavar="PATH.csv", help="replay a table of real runs (format: simulate.load_table)")
    src.add_argument("--metric", default="loss", help="--table: the objective column (default %(default)s)")
    src.add_argument("--target-scale", type=float, help="--table: the target scale (default: the largest)")
    src.add_argument("--train", action="store_true", help="real training runs with train_lm.py")
    src.add_argument("--corpus", default="data/corpus", help="--train: corpus folder (default %(default)s)")
    src.add_argument("--sizes", help="--train: model sizes by name, comma-separated (train_lm.SIZES)")
    src.add_argument("--steps", help="--train: checkpoint step counts, comma-separated "
                                     "(default 30,60,120,240, as data/runs_cpu.csv)")
    src.add_argument("--device", default="cpu", help="--train: cpu or cuda (default %(default)s)")
    s = p.add_argument_group("search (the ledger header records these)")
    s.add_argument("--strategy", default=None,
                   help=f"one of {', '.join(STRATEGIES)} (default mfkg); --bench: a comma list")
    s.add_argument("--budget", type=float, default=Settings.budget,
                   help="in target-run equivalents (default %(default)g)")
    s.add_argument("--seed", type=int, default=Settings.seed)
    s.add_argument("--n-init", type=int, default=Settings.n_init, help="initial design size (0: strategy default)")
    s.add_argument("--refit-every", type=int, default=Settings.refit_every,
                   help="refit GP hyperparameters every N trials")
    s.add_argument("--candidates", type=int, default=Settings.candidates, help="mixtures scored per acquisition")
    s.add_argument("--fixed-cost", type=float, default=Settings.fixed_cost,
                   help="mfkg: per-run overhead in KG/cost, target-run equivalents (not charged)")
    s.add_argument("--mixture", action="append", default=[], metavar="D=W,...",
                   help="a mixture to evaluate first, e.g. wikipedia=0.5,github=0.5 (repeatable; missing: 0)")
    s.add_argument("--eta", type=int, default=Settings.eta, help="hyperband: keep 1/eta per rung")
    s.add_argument("--regression-share", type=float, default=Settings.regression_share,
                   help="regression: budget share for proxies")
    o = p.add_argument_group("output")
    o.add_argument("--ledger", help="JSON-lines ledger (default runs/<objective>-<strategy>-seed<seed>.jsonl)")
    o.add_argument("--resume", action="store_true",
                   help="continue the ledger: finished trials are reused, never repeated")
    o.add_argument("--quiet", action="store_true", help="print only the final recommendation")
    b = p.add_argument_group("benchmark")
    b.add_argument("--bench", action="store_true", help="strategies x seeds, scored through the true loss (uncharged)")
    b.add_argument("--seeds", type=int, default=10, help="--bench: seeds 0..N-1 (default %(default)s)")
    b.add_argument("--json", metavar="PATH", help="--bench: write the table as JSON")
    b.add_argument("--jobs", type=int, default=2,
                   help="--bench: runs in parallel (forked processes; default %(default)s; same results)")
    return p


def build_objective(args):
    """The objective the flags name (exactly one source)."""
    sources = (("--sim", args.sim), ("--objective", args.objective), ("--table", args.table), ("--train", args.train))
    chosen = [flag for flag, value in sources if value]
    if len(chosen) != 1:
        raise ValueError("choose exactly one objective: --sim, --objective PATH.py, --table PATH.csv or --train"
                         + (f" (got {' '.join(chosen)})" if chosen else ""))
    if args.sim:
        return simulate.make_benchmark(args.sim)
    if args.objective:
        return simulate.load_objective_file(args.objective)
    if args.table:
        return simulate.load_table(args.table, metric=args.metric, target_scale=args.target_scale)
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: CUDA is not available on this machine; use --device cpu")
    import train_lm      # imported only here: the trainer is needed for --train alone
    kw = {"device": args.device}
    if args.sizes:
        kw["sizes"] = tuple(x.strip() for x in args.sizes.split(","))
    if args.steps:
        try:
            kw["steps"] = tuple(int(x) for x in args.steps.split(","))
        except ValueError:
            raise ValueError(f"--steps must be comma-separated integers; got {args.steps!r}") from None
    return train_lm.make_objective(args.corpus, **kw)


def main(argv=None):
    """The CLI: parse, build the objective, run optimize (or bench). Bad input -> exit 2 with one line."""
    say = print
    try:
        args = build_parser().parse_args(argv)
        objective = build_objective(args)
        strategies = (args.strategy or ("mfkg,ei,random" if args.bench else "mfkg")).split(",")
        kw = dict(n_init=args.n_init, refit_every=args.refit_every, candidates=args.candidates,
                  fixed_cost=args.fixed_cost,
                  mixture=tuple(parse_mixture(m, tuple(objective.domains)) for m in args.mixture),
                  eta=args.eta, regression_share=args.regression_share)
        if args.bench:
            if args.seeds < 1 or args.jobs < 1:
                raise ValueError(f"--seeds and --jobs must be >= 1; got {args.seeds} and {args.jobs}")
            say(f"mixbo --bench: {', '.join(strategies)} x {args.seeds} seeds on {objective.name}, "
                f"budget {args.budget:g}")
            b = bench(objective, strategies, args.seeds, args.budget, jobs=args.jobs, out=say, **kw)
            b["command"] = "python mixbo.py " + " ".join(sys.argv[1:] if argv is None else argv)
            print_bench(say, b)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(_json_ready(b), f, indent=1, allow_nan=False)
                say(f"wrote {args.json}")
            return 0
        if len(strategies) != 1:
            raise ValueError(f"--strategy takes one name unless --bench; got {args.strategy}")
        settings = Settings(strategy=strategies[0], budget=args.budget, seed=args.seed, **kw)
        ledger = args.ledger or default_ledger_path(settings, objective, args.resume)
        optimize(objective, ledger=ledger, resume=args.resume, out=say, verbose=not args.quiet,
                 progress=args.train, **dataclasses.asdict(settings))
        return 0
    except BrokenPipeError:
        # The reader closed our stdout (e.g. `| head`): not bad input. Point stdout at devnull so the flush
        # at exit cannot fail again, and exit 1 (the Python docs' recipe, "Note on SIGPIPE" in `signal`).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("mixbo: output closed (broken pipe); the ledger holds every finished trial; --resume continues",
              file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"mixbo: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mixbo: interrupted; the ledger holds every finished trial; --resume continues", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
