"""mixbo: choose a language model's pre-training data mixture by multi-fidelity, multi-scale Bayesian
optimization. A trial trains one mixture w (K weights on the simplex) at a model scale N for T steps;
the budget counts target-run equivalents (1.0 = one run at the target scale and steps).

    python mixbo.py --sim                              # the search on a simulator (mfkg, budget 5)
    python mixbo.py --table runs.csv --strategy ei     # replay a table of real runs
    python mixbo.py --objective my_objective.py        # your own loss(weights, scale, steps)
    from mixbo import optimize                         # the same from Python

Strategies: mfkg and kg, the knowledge gradient (Frazier, Powell & Dayanik 2009) over scales and steps
as in the multi-scale mixture paper (acquisition.py); ei, ucb; hyperband (Li et al., JMLR 2018, Alg. 1);
regression (RegMix, Liu et al. 2024, on Scheffe's 1958 quadratic mixture polynomial); random, sobol
(Owen-scrambled Sobol' points), uniform. Every trial is appended to a ledger (JSON lines, fsync'ed), and
everything random in trial t is seeded by (seed, t), so `--resume` continues a killed search exactly.
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
from scipy.stats import qmc

import simulate
# gp.py and acquisition.py (they import torch) are imported where a GP strategy first needs them,
# so the baselines and every input check start fast.

GP_STRATEGIES = ("mfkg", "kg", "ei", "ucb")
STRATEGIES = GP_STRATEGIES + ("random", "sobol", "uniform", "hyperband", "regression")
# The GP that reports the recommendation's loss +- sd (recommend): a constant mean and Matern-5/2 on
# u_N, u_T, whose intervals held their nominal rate on the loop's own ledgers where gp.fit_gp's default
# was too narrow (chosen by bench/calibration.py, see bench/README.md).
REPORTING_MODEL = dict(mean="constant", kernel_N="matern52", kernel_T="matern52")
LEDGER_VERSION = 1
RUN, STRATEGY, MODEL = 0, 1, 2     # what a derived seed is for (trial_seed)


def silent(*args, **kwargs):
    """An `out` that prints nothing."""


# ----------------------------------------------------------------------------------------------
# 1. options: each is declared once, as a dataclass field whose metadata holds its help; the CLI
#    flag is the field's name with dashes, and the ledger header records it under the same name.

def option(default, help, **argparse_options):
    """A dataclass field that is also the command-line option --name-with-dashes."""
    return dataclasses.field(default=default, metadata={"help": help, **argparse_options})


@dataclass(frozen=True)
class Settings:
    """Everything that decides which trials the search makes; --resume refuses a ledger whose
    header differs."""
    strategy: str = option("mfkg", f"one of {', '.join(STRATEGIES)}; --bench: a comma list "
                                   "(default there mfkg,ei,random)")
    budget: float = option(5.0, "in target-run equivalents (1.0 = one run at the target)")
    seed: int = option(0, "seeds every random choice of the search")
    n_init: int = option(0, "initial space-filling design size (0: the strategy's default)")
    refit_every: int = option(10, "refit GP hyperparameters every N trials; condition in between")
    candidates: int = option(256, "mixtures the acquisition scores per trial")
    fixed_cost: float = option(0.05, "mfkg: overhead added to every run's cost in KG / cost, in "
                                     "target-run equivalents (a decision floor, not charged)")
    mixture: tuple = option((), "a mixture to run first, e.g. wikipedia=0.5,github=0.5 (repeatable; "
                                "missing domains are 0)", action="append", metavar="D=W,...")
    eta: int = option(3, "hyperband: keep 1/eta of the runs at each rung")
    regression_share: float = option(0.5, "regression: share of the budget spent on proxy runs at "
                                          "the smallest scale")

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of "
                             f"{', '.join(STRATEGIES)}")
        if not (isinstance(self.budget, (int, float)) and math.isfinite(self.budget)
                and self.budget > 0):
            raise ValueError(f"budget must be a number > 0 (target-run equivalents); "
                             f"got {self.budget}")
        if (self.n_init < 0 or self.refit_every < 1 or self.candidates < 1 or self.eta < 2
                or not self.fixed_cost >= 0):
            raise ValueError("n_init must be >= 0, refit_every >= 1, candidates >= 1, eta >= 2 "
                             "and fixed_cost >= 0")
        if self.mixture and self.strategy not in GP_STRATEGIES + ("sobol",):
            raise ValueError(f"--mixture starts the design of {', '.join(GP_STRATEGIES)} and sobol; "
                             f"strategy {self.strategy} has no design to start")
        if not 0.0 < self.regression_share < 1.0:
            raise ValueError(f"regression_share must be in (0, 1); got {self.regression_share}")


@dataclass(frozen=True)
class Source:
    """Where the losses come from: exactly one of sim, objective, table, train."""
    sim: str = option("", "a synthetic benchmark of simulate.py (NAME default: default)",
                      nargs="?", const="default", metavar="NAME")
    objective: str = option("", "a Python file defining loss(weights, scale, steps) "
                                "(simulate.load_objective_file)", metavar="PATH.py")
    table: str = option("", "replay a table of real runs (simulate.load_table)", metavar="PATH.csv")
    metric: str = option("loss", "--table: the objective column")
    target_scale: float = option(None, "--table: the target scale (default: the largest)",
                                 type=float)
    train: bool = option(False, "real training runs with train_lm.py", action="store_true")
    corpus: str = option("data/corpus", "--train: corpus folder")
    sizes: str = option("", "--train: model sizes by name, comma-separated (train_lm.SIZES)")
    steps: str = option("", "--train: checkpoint step counts, comma-separated "
                            "(default 30,60,120,240, as data/runs_cpu.csv)")
    device: str = option("cpu", "--train: cpu, cuda, cuda:N or mps")


def parse_mixture(text, domains):
    """'wikipedia=0.5,github=0.5' -> weights (K,) in `domains` order (missing domains are 0). Typed
    weights summing to 1 within 1e-3 (e.g. three times 0.333) are renormalized; beyond that, an
    error."""
    w = np.zeros(len(domains))
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in domains:
            raise ValueError(f"--mixture {text!r}: unknown domain {name!r}; domains are "
                             f"{', '.join(domains)} (write name=weight pairs separated by commas)")
        try:
            w[domains.index(name)] = float(value)
        except ValueError:
            raise ValueError(f"--mixture {text!r}: weight of {name} is not a number: "
                             f"{value!r}") from None
    if abs(w.sum() - 1.0) <= 1e-3 and np.all(w >= 0):
        w = w / w.sum()
    weights = simulate.check_weights(w, len(domains), tol=1e-9, what=f"--mixture {text!r}")
    return tuple(weights.tolist())


# ----------------------------------------------------------------------------------------------
# 2. designs and seeds

def trial_seed(seed, t, purpose):
    """The seed of trial t for one purpose (the objective's run, the strategy's draws, the GP fit):
    a function of (seed, t, purpose) only, so resumed and uninterrupted runs draw the same numbers."""
    return int(np.random.SeedSequence([seed, t, purpose]).generate_state(1)[0])


def sobol_simplex(K, n, seed):
    """The first n points (n, K) of a scrambled Sobol sequence in [0,1)^K mapped to the simplex by
    w = e / sum(e), e_k = -log(1 - u_k): the exponential map turns uniforms into Dirichlet(1) draws,
    and it is smooth, so the sequence's even spread carries over. Prefixes agree: point t is the
    same for every n > t."""
    m = max(1, math.ceil(math.log2(max(n, 2))))
    u = qmc.Sobol(d=K, scramble=True, seed=seed).random_base2(m)[:n]          # (n, K) in [0, 1)
    e = -np.log1p(-u)                                                          # (n, K) Exp(1)
    return e / e.sum(1, keepdims=True)


def pool_choice(ctx, point, scale, steps, history, rng=None):
    """Table replay: a mixture of the table's pool that it holds at (scale, steps) and the history
    has not run there yet -- the nearest to `point` (Euclidean), or with point None a uniform draw
    by rng. None if none is left."""
    pool = np.asarray(ctx.objective.candidates)                                # (M, K)
    done = {tuple(r["weights"]) for r in history if (r["scale"], r["steps"]) == (scale, steps)}
    free = [i for i in range(len(pool))
            if tuple(pool[i].tolist()) not in done and ctx.available(pool[i], scale, steps)]
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
#     propose(ctx, history, t) -> Proposal, or None when nothing it would run is affordable,
# and the recommendation after each trial is recommend(ctx, history) -> dict. `ctx` holds the
# objective, the settings, the budget bookkeeping and (GP strategies) the current fitted GP.

@dataclass(frozen=True)
class Proposal:
    """What a strategy would run next, and why."""
    weights: np.ndarray     # (K,)
    scale: float
    steps: int
    decision: str


@dataclass
class Context:
    objective: object
    settings: Settings
    unit: float                     # cost(*target): the budget unit
    bounds: tuple                   # (scale_min, scale_max, steps_min, steps_max) for gp.encode
    model: object = None            # gp.GP fitted on the trials so far (GP strategies), else None
    refit: dict = dataclasses.field(default_factory=dict)   # fit_model's cache: options -> fit
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
    pairs = [(float(N), int(T)) for N in ctx.objective.scales for T in ctx.objective.steps
             if N <= N_t and T <= T_t]
    return sorted(pairs, key=lambda p: (ctx.cost(*p), p))


def _target(ctx):
    return float(ctx.objective.target[0]), int(ctx.objective.target[1])


def _n_init(ctx):
    """Initial design size: n_init, else 3 target runs for single-fidelity strategies and 2K cheap
    runs for mfkg (cheap runs at the smaller scales cost a few percent of a target run each)."""
    n = ctx.settings.n_init or (2 * ctx.K if ctx.settings.strategy == "mfkg" else 3)
    return max(n, len(ctx.settings.mixture))


def design_point(ctx, history, t, scale, steps):
    """Mixture t of the space-filling design at (scale, steps): the user's --mixture ones first, then
    the scrambled Sobol sequence (seeded by `seed`); on a table, the nearest pool mixture it holds
    there."""
    user = ctx.settings.mixture
    if t < len(user):
        w = np.asarray(user[t], dtype=np.float64)
    else:
        seed = trial_seed(ctx.settings.seed, 0, STRATEGY)
        w = sobol_simplex(ctx.K, t + 1 - len(user), seed)[t - len(user)]
    if ctx.objective.candidates is not None:
        w = pool_choice(ctx, w, scale, steps, history)
    return w


def _init_fidelity(ctx, i):
    """Fidelity of the i-th initial run. Single-fidelity strategies: the target. mfkg: round-robin
    over the scales below the target at the target's steps (so the GP sees the scale effect from the
    start); with a single scale, the shortest steps."""
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
        return Proposal(rng.dirichlet(np.ones(ctx.K)), *_target(ctx), "random")
    w = pool_choice(ctx, None, *_target(ctx), history, rng)
    return None if w is None else Proposal(w, *_target(ctx), "random")


def propose_sobol(ctx, history, t):
    """Point t of the scrambled Sobol sequence on the simplex, at the target."""
    w = design_point(ctx, history, t, *_target(ctx))
    return None if w is None else Proposal(w, *_target(ctx), "sobol")


def propose_uniform(ctx, history, t):
    """Equal weights at the target (on a table: the nearest pool mixture); every later trial repeats
    it with a new seed (a replicate that measures the seed noise; the recommendation never
    changes)."""
    w = np.full(ctx.K, 1.0 / ctx.K)
    if ctx.objective.candidates is not None:
        w = pool_choice(ctx, w, *_target(ctx), history=())
    return Proposal(w, *_target(ctx), "uniform" if t == 0 else "uniform (replicate)")


def _hyperband_rungs(ctx):
    """The resource ladder of Hyperband: from the target down, each rung the costliest (scale, steps)
    that costs <= 1/eta of the rung above, along the path (smallest scale, shortest steps) ->
    (smallest scale, target steps) -> (larger scales, target steps) -> target."""
    N_t, T_t = _target(ctx)
    scales = [float(N) for N in ctx.objective.scales if N <= N_t]
    steps = [int(T) for T in ctx.objective.steps if T <= T_t]
    path = [(scales[0], T) for T in steps] + [(N, T_t) for N in scales[1:]]
    rungs = [(N_t, T_t)]
    for p in reversed(path[:-1]):
        if ctx.cost(*p) <= ctx.cost(*rungs[0]) / ctx.settings.eta:
            rungs.insert(0, p)
    return rungs


def _bracket_configs(ctx, bracket, n, rung):
    """The n mixtures bracket `bracket` starts with: Dirichlet(1) draws, or on a table n pool
    mixtures it holds at the bracket's first rung."""
    rng = np.random.default_rng(trial_seed(ctx.settings.seed, bracket, STRATEGY))
    if ctx.objective.candidates is None:
        return list(rng.dirichlet(np.ones(ctx.K), n))
    pool = np.asarray(ctx.objective.candidates)
    free = [j for j in range(len(pool)) if ctx.available(pool[j], *rung)]
    return [pool[j] for j in rng.permutation(free)[:n]]


def propose_hyperband(ctx, history, t):
    """Hyperband (Li et al. 2018, Alg. 1) over the rung ladder, brackets b = b_max..0 repeated until
    the budget is spent. Replayed from the history: the k-th run of the (deterministic) schedule is
    history[k], so the next run is the first one the history does not hold yet."""
    rungs, eta = _hyperband_rungs(ctx), ctx.settings.eta
    b_max, k = len(rungs) - 1, 0
    for bracket in range(10 ** 6):
        b = b_max - bracket % (b_max + 1)
        # Alg. 1 line 3: n = ceil((b_max + 1) / (b + 1) * eta^b) configurations
        n = math.ceil((b_max + 1) / (b + 1) * eta ** b)
        configs = _bracket_configs(ctx, bracket, n, rungs[b_max - b])
        if not configs:
            return None
        for i in range(b + 1):                         # successive halving, Alg. 1 lines 5-9
            rung = rungs[b_max - b + i]
            configs = [c for c in configs if ctx.available(c, *rung)]   # tables: rows they hold
            losses = []
            for c in configs:
                if k == len(history):
                    return Proposal(c, *rung, f"hyperband bracket {bracket} rung {b_max - b + i}")
                r, k = history[k], k + 1
                losses.append(r["loss"] if r["status"] == "ok" else math.inf)
            keep = max(1, len(configs) // eta)          # the best n_i / eta go on
            configs = [configs[j] for j in np.argsort(losses, kind="stable")[:keep]]
    return None


def _scheffe_features(W):
    """Scheffe's quadratic mixture polynomial, y = sum_i b_i w_i + sum_{i<j} b_ij w_i w_j (no
    intercept: sum w = 1 absorbs it). W (n, K) -> (n, K + K(K-1)/2)."""
    iu = np.triu_indices(W.shape[1], k=1)
    return np.column_stack([W, W[:, iu[0]] * W[:, iu[1]]])


def _fit_regression(W, y):
    """Ridge regression of loss on _scheffe_features, the ridge chosen by leave-one-out error over a
    grid of ridges. Returns (coefficients, y_mean)."""
    F = _scheffe_features(W)                                               # (n, p)
    y_mean = y.mean()
    best = None
    for lam in 10.0 ** np.arange(-8, 3):
        A = F.T @ F + lam * np.eye(F.shape[1])
        H = F @ np.linalg.solve(A, F.T)                                    # (n, n) hat matrix
        # leave-one-out residuals of a linear smoother, e_i / (1 - H_ii) (ESL 2nd ed., Sec. 7.10.1)
        loo = (y - y_mean - H @ (y - y_mean)) / np.clip(1 - np.diag(H), 1e-9, None)
        score = float(np.mean(loo ** 2))
        if best is None or score < best[0]:
            best = (score, np.linalg.solve(A, F.T @ (y - y_mean)))
    return best[1], y_mean


def _regression_fidelity(ctx):
    return float(min(ctx.objective.scales)), _target(ctx)[1]


def _regression_ranking(ctx, history):
    """Candidate mixtures (M, K) sorted by the regression's predicted loss, and the predictions; None
    if there are too few proxy runs (fewer than the number of coefficients)."""
    proxy = _regression_fidelity(ctx)
    runs = [r for r in history if r["status"] == "ok" and (r["scale"], r["steps"]) == proxy]
    if len(runs) < ctx.K + ctx.K * (ctx.K - 1) // 2:
        return None
    W = np.array([r["weights"] for r in runs])
    coef, y_mean = _fit_regression(W, np.array([r["loss"] for r in runs]))
    pool = ctx.objective.candidates
    if pool is None:                                       # RegMix scores many random mixtures
        rng = np.random.default_rng(trial_seed(ctx.settings.seed, 0, MODEL))
        pool = rng.dirichlet(np.ones(ctx.K), 10 * ctx.settings.candidates)
    pool = np.asarray(pool)
    predicted = y_mean + _scheffe_features(pool) @ coef
    order = np.argsort(predicted, kind="stable")
    return pool[order], predicted[order]


def propose_regression(ctx, history, t):
    """RegMix: spend regression_share of the budget on runs of random mixtures at the smallest scale,
    fit the regression, then train its best-predicted mixtures at the target, best first."""
    proxy = _regression_fidelity(ctx)
    proxy_spent = sum(r["cost"] for r in history if (r["scale"], r["steps"]) == proxy)
    if (proxy_spent + ctx.cost(*proxy) <= ctx.settings.regression_share * ctx.settings.budget
            and proxy != _target(ctx)):
        rng = np.random.default_rng(trial_seed(ctx.settings.seed, t, STRATEGY))
        if ctx.objective.candidates is None:
            return Proposal(rng.dirichlet(np.ones(ctx.K)), *proxy, "regression proxy")
        w = pool_choice(ctx, None, *proxy, history, rng)
        if w is not None:
            return Proposal(w, *proxy, "regression proxy")
    ranking = _regression_ranking(ctx, history)
    if ranking is None:                                    # too few proxy runs to fit: random
        return propose_random(ctx, history, t)
    done = [r["weights"] for r in history if (r["scale"], r["steps"]) == _target(ctx)]
    for w, predicted in zip(*ranking):
        if not any(np.allclose(w, d) for d in done):
            return Proposal(w, *_target(ctx), f"regression argmin (pred {predicted:.4f} at proxy)")
    return None


def _observations(history):
    """Every checkpoint of every ok trial: W (n, K), N (n,), T (n,), y (n,), and runs (n,), the index
    of the trial each checkpoint comes from (gp.fit_gp's run labels: a run's checkpoints share its
    seed's offset; two trials of the same mixture and scale are two runs with independent
    offsets)."""
    rows = [(r["weights"], r["scale"], c["steps"], c["loss"], i)
            for i, r in enumerate(history) if r["status"] == "ok" for c in r["checkpoints"]]
    W, N, T, y, runs = zip(*rows)
    return (np.array(W), np.array(N, dtype=float), np.array(T, dtype=float),
            np.array(y, dtype=float), np.array(runs))


def fit_model(ctx, history, **options):
    """The GP (gp.fit_gp with the model `options`, e.g. mean="constant"; none: gp.fit_gp's defaults)
    on every ok checkpoint of the history. Hyperparameters are refitted (MAP, gp.fit_gp) when the
    number of trials c is a multiple of refit_every; in between, the GP is conditioned on all data
    with the hyperparameters of the last refit r = c - c % refit_every (fitted on the first r trials;
    cached in ctx.refit per options). So the model is a function of the history only, and a resumed
    run rebuilds it."""
    import gp
    if not any(x["status"] == "ok" for x in history):
        return None
    c = len(history)
    r = c - c % ctx.settings.refit_every
    if not any(x["status"] == "ok" for x in history[:r]):
        r = c                                                 # nothing to refit on yet: fit now
    key = tuple(sorted(options.items()))
    if ctx.refit.get(key, (None,))[0] != r:
        W, N, T, y, runs = _observations(history[:r])
        fit = gp.fit_gp(gp.encode(W, N, T, ctx.bounds), y, n_weights=ctx.K, runs=runs,
                        seed=trial_seed(ctx.settings.seed, r, MODEL), **options)
        ctx.refit[key] = (r, fit.hyperparameters)
    W, N, T, y, runs = _observations(history)
    return gp.fit_gp(gp.encode(W, N, T, ctx.bounds), y, n_weights=ctx.K, runs=runs,
                     hyperparameters=ctx.refit[key][1], **options)


def _evaluated_mixtures(history):
    """Distinct mixtures with at least one ok run, in first-run order: (m, K)."""
    import acquisition
    return acquisition.unique_rows(np.array([r["weights"] for r in history if r["status"] == "ok"]))


def propose_gp(ctx, history, t):
    """mfkg / kg / ei / ucb: one decision of acquisition.choose_next on the GP of the history, over
    simplex candidates (or the table's pool) and the fidelities the strategy may use and can
    afford."""
    import acquisition
    strategy = ctx.settings.strategy
    fids = _fidelities(ctx) if strategy == "mfkg" else [_target(ctx)]
    if not any(ctx.affordable(*f) for f in fids):
        return None
    seed = trial_seed(ctx.settings.seed, t, STRATEGY)
    evaluated = _evaluated_mixtures(history)                                # (E, K)
    if ctx.objective.candidates is None:
        cands = acquisition.simplex_candidates(ctx.K, ctx.settings.candidates, seed,
                                               incumbents=evaluated)
    else:
        cands = np.asarray(ctx.objective.candidates)
    allowed = None                                                          # None: any pair
    if ctx.objective.available is not None or not all(ctx.affordable(*f) for f in fids):
        allowed = lambda w, N, T: ctx.affordable(N, T) and ctx.available(w, N, T)
        if not any(allowed(w, N, T) for w in cands for N, T in fids):     # e.g. all too costly
            return None
    d = acquisition.choose_next(strategy, ctx.model, cands, evaluated,
                                scales=sorted({N for N, _ in fids}),
                                steps=sorted({T for _, T in fids}), target=_target(ctx),
                                bounds=ctx.bounds, cost=ctx.cost,
                                fixed_cost=ctx.settings.fixed_cost, available=allowed)
    why = {"mfkg": f"mfkg log(KG/cost) {d.value:.2f}", "kg": f"kg log KG {d.value:.2f}",
           "ei": f"ei log EI {d.value:.2f}", "ucb": f"ucb -LCB {d.value:.3f}"}[strategy]
    return Proposal(d.weights, d.scale, d.steps, why)


PROPOSE = {"random": propose_random, "sobol": propose_sobol, "uniform": propose_uniform,
           "hyperband": propose_hyperband, "regression": propose_regression,
           **{name: propose_gp for name in GP_STRATEGIES}}


def propose(ctx, history, t):
    """Trial t: the initial design first (GP strategies), then the strategy; None ends the search.
    A proposal the budget cannot pay for ends the search too. An initial run the budget cannot pay
    for ends the initial design instead: the acquisition then chooses among the fidelities still
    affordable."""
    in_init = (ctx.settings.strategy in GP_STRATEGIES and t < _n_init(ctx)
               and all(r["decision"].startswith("init") for r in history))  # design unbroken
    if in_init:
        N, T = _init_fidelity(ctx, t)
        in_init = ctx.affordable(N, T)
    if in_init:
        w = design_point(ctx, history, t, N, T)
        if w is None:                                     # a table without that row: the target
            N, T = _target(ctx)
            w = design_point(ctx, history, t, N, T)
        why = "init (sobol)" if t >= len(ctx.settings.mixture) else "init (--mixture)"
        p = None if w is None else Proposal(w, N, T, why)
    elif ctx.settings.strategy in GP_STRATEGIES and ctx.model is None:   # all failed: explore
        p = propose_sobol(ctx, history, t)
    else:
        p = PROPOSE[ctx.settings.strategy](ctx, history, t)
    if p is None or not ctx.affordable(p.scale, p.steps):
        return None
    return p


def _domain_losses_of(history, w):
    """Observed per-domain losses of mixture w at the highest fidelity it ran at, and where."""
    runs = [r for r in history if r["status"] == "ok" and list(r["weights"]) == list(w)]
    if not runs:
        return {}, "not run"
    top = max(runs, key=lambda r: (r["scale"], r["steps"]))
    return top["domain_losses"], f"observed at scale {fmt_scale(top['scale'])}, steps {top['steps']}"


def recommend(ctx, history):
    """The mixture the strategy returns now, at the target. GP strategies: argmin of the posterior
    mean at the target over the evaluated mixtures (acquisition.recommend, on the loop's GP); its
    loss +- sd is the posterior at the target of REPORTING_MODEL fitted to the same runs.
    Regression before any target run: the regression's argmin (a prediction at the proxy scale).
    Otherwise: the best observed loss at the target (or, if nothing ran at the target yet, at the
    highest fidelity reached)."""
    target = _target(ctx)
    ok = [r for r in history if r["status"] == "ok"]
    ran_target = any((r["scale"], r["steps"]) == target for r in ok)
    choice = {"weights": None, "loss": None, "sd": None, "source": "no successful run yet",
              "domain_losses": {}, "domain_losses_source": "not run"}
    if ctx.settings.strategy in GP_STRATEGIES and ctx.model is not None:
        import acquisition
        import gp
        mixtures = _evaluated_mixtures(history)
        i, _, _ = acquisition.recommend(ctx.model, mixtures, target, ctx.bounds)
        reporter = fit_model(ctx, history, **REPORTING_MODEL)
        mean, var = gp.predict(reporter, gp.encode(mixtures[i:i + 1], *target, ctx.bounds))
        choice.update(weights=mixtures[i].tolist(), loss=float(mean[0]), sd=float(np.sqrt(var[0])),
                      source="constant-mean GP posterior at the target")
    elif (ctx.settings.strategy == "regression" and not ran_target
          and _regression_ranking(ctx, history)):
        W, predicted = _regression_ranking(ctx, history)
        choice.update(weights=W[0].tolist(), loss=float(predicted[0]),
                      source="regression prediction at the proxy scale")
    elif ok:
        top = target if ran_target else max((r["scale"], r["steps"]) for r in ok)
        best = min((r for r in ok if (r["scale"], r["steps"]) == top), key=lambda r: r["loss"])
        where = ("the target" if ran_target
                 else f"scale {fmt_scale(top[0])}, steps {top[1]} (no target run yet)")
        choice.update(weights=list(best["weights"]), loss=best["loss"],
                      source=f"best observed at {where}")
    if choice["weights"] is not None:
        choice["domain_losses"], choice["domain_losses_source"] = _domain_losses_of(
            history, choice["weights"])
    return choice


# ----------------------------------------------------------------------------------------------
# 4. ledger: line 1 {"kind": "header", ...}; then per trial {"kind": "trial", ...} followed by
#    {"kind": "recommendation", ...}. The trial line is written (and fsync'ed) as soon as the run
#    returns, before the GP is refitted, so a kill while fitting loses no run.

def objective_description(objective):
    return {"name": objective.name, "domains": list(objective.domains),
            "scales": [float(s) for s in objective.scales],
            "steps": [int(s) for s in objective.steps],
            "target": [float(objective.target[0]), int(objective.target[1])]}


def ledger_header(settings, objective):
    header = {"kind": "header", "mixbo_ledger": LEDGER_VERSION,
              "settings": dataclasses.asdict(settings),
              "objective": objective_description(objective)}
    return json.loads(json.dumps(header))      # the form it takes after a round trip through the file


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
    for i, line in enumerate(lines[:-1]):       # after the last newline: nothing, or a torn line
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
        raise ValueError(f"ledger {path} is from another run: {what}; use another --ledger path "
                         f"or the same settings")
    trials = [r for r in records[1:] if r.get("kind") == "trial"]
    recommendations = [r for r in records[1:] if r.get("kind") == "recommendation"]
    if ([r["trial"] for r in trials] != list(range(len(trials)))
            or len(recommendations) > len(trials)
            or [r["after_trial"] for r in recommendations] != list(range(len(recommendations)))):
        raise ValueError(f"ledger {path} has trials out of order or repeated; "
                         f"it was not written by this version of mixbo")
    if good_end < len(data):                  # only now (the ledger is ours): cut the torn line away
        warn(f"mixbo: warning: ignoring the torn last line of {path} ({len(data) - good_end} "
             f"bytes; the run was killed while writing it)")
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    if not records:
        return None
    return trials, recommendations


def default_ledger_path(settings, objective, resume=False):
    """runs/<objective>-<strategy>-seed<seed>.jsonl; if that exists and we are not resuming, the first
    free runs/<objective>-<strategy>-seed<seed>-<i>.jsonl (a default path never overwrites)."""
    name = f"{objective.name}-{settings.strategy}-seed{settings.seed}".replace(os.sep, "_")
    base = os.path.join("runs", name)
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


def run_trial(ctx, t, proposal):
    """Run the objective once; any exception or non-finite loss makes a failed record (its cost is
    charged: the compute was spent)."""
    record = {"kind": "trial", "trial": t, "decision": proposal.decision,
              "weights": [float(x) for x in proposal.weights], "scale": float(proposal.scale),
              "steps": int(proposal.steps), "seed": trial_seed(ctx.settings.seed, t, RUN),
              "status": "ok", "loss": None, "domain_losses": {}, "checkpoints": [],
              "cost": ctx.cost(proposal.scale, proposal.steps), "spent": None, "wall_s": None,
              "error": None}
    start = time.perf_counter()
    try:
        out = ctx.objective.run(np.asarray(proposal.weights, dtype=np.float64),
                                record["scale"], record["steps"], record["seed"])
        loss = float(out["loss"])
        last = {"steps": record["steps"], "loss": loss,
                "domain_losses": out.get("domain_losses", {})}
        checkpoints = [{"steps": int(c["steps"]), "loss": float(c["loss"]),
                        "domain_losses": {k: float(v) for k, v in c.get("domain_losses", {}).items()}}
                       for c in out.get("checkpoints") or [last]]
        if not math.isfinite(loss):
            raise ValueError(f"the objective returned a non-finite loss ({loss})")
        checkpoints = [c for c in checkpoints if math.isfinite(c["loss"])
                       and all(map(math.isfinite, c["domain_losses"].values()))]
        per_domain = {k: float(v) for k, v in out.get("domain_losses", {}).items()}
        record.update(loss=loss, checkpoints=checkpoints,
                      domain_losses={k: v for k, v in per_domain.items() if math.isfinite(v)})
    except Exception as e:       # a failed training run must not stop the search: record it, go on
        record.update(status="failed", error=f"{type(e).__name__}: {e}".splitlines()[0][:500])
    record["wall_s"] = round(time.perf_counter() - start, 3)
    ctx.spent += record["cost"]
    record["spent"] = ctx.spent
    return record


def _open_ledger(ledger, resume, header, warn):
    """The ledger file opened for appending, and the (trials, recommendations) it holds already."""
    os.makedirs(os.path.dirname(os.path.abspath(ledger)), exist_ok=True)
    if os.path.exists(ledger) and not resume:
        raise ValueError(f"ledger {ledger} already exists; pass --resume to continue it, "
                         f"or choose another --ledger path")
    old = read_ledger(ledger, header, warn=warn) if os.path.exists(ledger) else None
    f = open(ledger, "a")
    if old is not None:
        return f, old
    f.truncate(0)
    _append(f, header)
    directory = os.open(os.path.dirname(os.path.abspath(ledger)), os.O_RDONLY)
    os.fsync(directory)                           # the new file's directory entry is on disk too
    os.close(directory)
    return f, ([], [])


def optimize(objective, strategy="mfkg", budget=Settings.budget, seed=0, ledger=None,
             resume=False, out=print, verbose=True, on_trial=None, **settings):
    """Run the search on `objective` (a simulate.Objective, or anything with its fields) and return
    a Result; `settings` are the other fields of Settings.
    ledger: a path to write (refused if it exists, unless resume=True, which continues it); None
    keeps the trials in memory only. out: a print-like function for the report (None: silent);
    verbose=False prints the summary only. on_trial(record, recommendation) is called after each
    new trial."""
    if "mixture" in settings:
        settings["mixture"] = tuple(tuple(float(x) for x in m) for m in settings["mixture"])
    settings = Settings(strategy=strategy, budget=float(budget), seed=int(seed), **settings)
    for i, m in enumerate(settings.mixture):
        simulate.check_weights(m, len(objective.domains), tol=1e-9, what=f"mixture {i}")
    summary = out or silent
    say = summary if verbose else silent
    ctx = Context(objective, settings, unit=float(objective.cost(*objective.target)),
                  bounds=(min(objective.scales), max(objective.scales),
                          min(objective.steps), max(objective.steps)))
    if not (math.isfinite(ctx.unit) and ctx.unit > 0):
        raise ValueError(f"cost(*target) must be a finite number > 0; got {ctx.unit}")
    f, (trials, recommendations) = None, ([], [])
    if ledger is not None:
        f, (trials, recommendations) = _open_ledger(ledger, resume,
                                                    ledger_header(settings, objective), summary)
    _print_header(say, settings, objective, ledger)
    for r in trials:
        ctx.spent += r["cost"]
    if trials:
        say(f"resumed {len(trials)} finished trial(s) from the ledger "
            f"({ctx.spent:.3f} of {settings.budget:g} spent)")
        for r, choice in zip(trials, recommendations):
            _print_trial(say, ctx, r, choice)
    gp_strategy = settings.strategy in GP_STRATEGIES
    try:
        ctx.model = fit_model(ctx, trials) if gp_strategy else None
        if len(recommendations) < len(trials):       # killed between a trial and its recommendation
            choice = {"kind": "recommendation", "after_trial": len(trials) - 1,
                      **recommend(ctx, trials)}
            if f:
                _append(f, choice)
            recommendations.append(choice)
            _print_trial(say, ctx, trials[-1], choice)
        while True:
            t = len(trials)
            proposal = propose(ctx, trials, t)
            if proposal is None:
                break
            say(f"trial {t}: {proposal.decision}: running scale {fmt_scale(proposal.scale)} "
                f"for {proposal.steps} steps ...")
            record = run_trial(ctx, t, proposal)
            if f:
                _append(f, record)
            trials.append(record)
            ctx.model = fit_model(ctx, trials) if gp_strategy else None
            choice = {"kind": "recommendation", "after_trial": t, **recommend(ctx, trials)}
            if f:
                _append(f, choice)
            recommendations.append(choice)
            _print_trial(say, ctx, record, choice)
            if on_trial:
                on_trial(record, choice)
    finally:
        if f:
            f.close()
    result = Result(settings, trials, recommendations, ctx.spent, ledger)
    _print_summary(summary, ctx, result)
    return result


# ----------------------------------------------------------------------------------------------
# 6. output for a person

def fmt_scale(n):
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def fmt_weights(w):
    return "[" + " ".join(f"{x:.2f}" for x in w) + "]" if w is not None else "-"


def _print_header(say, settings, objective, ledger):
    say(f"mixbo: strategy {settings.strategy}, seed {settings.seed}, "
        f"budget {settings.budget:g} target-run equivalents")
    say("settings: " + ", ".join(f"{k}={v}" + (" (strategy default)" if k == "n_init" and not v
                                              else "")
                                 for k, v in dataclasses.asdict(settings).items()
                                 if k not in ("strategy", "seed", "budget")))
    say(f"objective {objective.name}: domains {', '.join(objective.domains)}; "
        f"scales {', '.join(fmt_scale(s) for s in objective.scales)}; "
        f"steps {', '.join(map(str, objective.steps))}; "
        f"target scale {fmt_scale(objective.target[0])}, steps {objective.target[1]}")
    say(f"ledger: {ledger if ledger else '(none, in memory only)'}")
    say("columns: loss = observed at the trial's own scale and steps; recommendation = the mixture "
        "to train at the target, with its predicted target loss +- sd")
    say(f"{'trial':>5}  {'decision':<28} {'weights':<{6 + 5 * len(objective.domains)}} "
        f"{'scale':>6} {'steps':>6} {'loss':>8} {'spent/budget':>13}  "
        f"recommendation (weights, loss +- sd)")


def _print_trial(say, ctx, r, choice):
    loss = f"{r['loss']:.4f}" if r["status"] == "ok" else "FAILED"
    sd = f" +- {choice['sd']:.4f}" if choice.get("sd") is not None else ""
    predicted = f"{choice['loss']:.4f}{sd}" if choice.get("loss") is not None else "-"
    say(f"{r['trial']:>5}  {r['decision'][:28]:<28} {fmt_weights(r['weights']):<{6 + 5 * ctx.K}} "
        f"{fmt_scale(r['scale']):>6} {r['steps']:>6} {loss:>8} "
        f"{r['spent']:>6.3f}/{ctx.settings.budget:<6g}  {fmt_weights(choice['weights'])} {predicted}")
    if r["status"] == "failed":
        say(f"       failed: {r['error']} (recorded; its cost counts; the loop goes on)")


def _print_summary(say, ctx, result):
    choice = result.recommendation
    n_failed = sum(r["status"] == "failed" for r in result.trials)
    say(f"done: {len(result.trials)} trials ({n_failed} failed), "
        f"spent {result.spent:.3f} of {ctx.settings.budget:g} target-run equivalents")
    if choice is None or choice["weights"] is None:
        say("no recommendation: no trial succeeded")
        return
    sd = f" +- {choice['sd']:.4f}" if choice["sd"] is not None else ""
    N_t, T_t = ctx.objective.target
    say(f"RECOMMENDED MIXTURE at the target (scale {fmt_scale(N_t)}, steps {T_t}):")
    for d, w in zip(ctx.objective.domains, choice["weights"]):
        dl = choice["domain_losses"].get(d)
        say(f"  {d:<24} {w:.4f}" + (f"   domain loss {dl:.4f}" if dl is not None else ""))
    say(f"  loss {choice['loss']:.4f}{sd} ({choice['source']}); "
        f"domain losses {choice['domain_losses_source']}")
    if choice["sd"] is not None and not any(r["status"] == "ok" and r["scale"] == N_t
                                            and r["steps"] >= T_t for r in result.trials):
        say("  note: no run reached the target scale and steps: this loss +- sd is extrapolated "
            "from smaller or shorter runs")


# ----------------------------------------------------------------------------------------------
# 7. command line: the flags are generated from Settings and Source

class _Parser(argparse.ArgumentParser):
    def error(self, message):       # argparse prints usage + message; mixbo promises ONE line
        raise ValueError(f"{message} (see python mixbo.py --help)")


def add_options(group, options):
    """One flag per field of the dataclass `options`: --name-with-dashes, with its help and default.
    A flag that is not given is absent from the parsed arguments (given_options)."""
    for f in dataclasses.fields(options):
        kwargs = dict(f.metadata)
        text = kwargs.pop("help")
        if "action" not in kwargs:
            kwargs.setdefault("type", type(f.default))
        if f.default not in ("", (), None) and not isinstance(f.default, bool):
            text += f" (default {f.default})"
        group.add_argument("--" + f.name.replace("_", "-"), default=argparse.SUPPRESS,
                           help=text, **kwargs)


def given_options(args, options):
    """The fields of the dataclass `options` given on the command line: {name: value}."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(options)
            if hasattr(args, f.name)}


def build_parser():
    parser = _Parser(prog="mixbo.py", description="Choose a pre-training data mixture by "
                     "multi-fidelity, multi-scale Bayesian optimization.")
    add_options(parser.add_argument_group("objective (choose one)"), Source)
    add_options(parser.add_argument_group("search (the ledger header records these)"), Settings)
    output = parser.add_argument_group("ledger and output")
    output.add_argument("--ledger", help="JSON-lines ledger "
                        "(default runs/<objective>-<strategy>-seed<seed>.jsonl)")
    output.add_argument("--resume", action="store_true",
                        help="continue the ledger: finished trials are reused, never repeated")
    output.add_argument("--quiet", action="store_true", help="print only the final recommendation")
    parser.add_argument("--bench", action="store_true",
                        help="strategies x seeds scored through the true loss (bench/loop_bench.py; "
                             "its flags: python bench/loop_bench.py --help)")
    return parser


def build_objective(source):
    """The objective a Source names (exactly one of sim, objective, table, train)."""
    chosen = [f"--{name}" for name in ("sim", "objective", "table", "train")
              if getattr(source, name)]
    if len(chosen) != 1:
        raise ValueError("choose exactly one objective: --sim, --objective PATH.py, "
                         "--table PATH.csv or --train" + (f" (got {' '.join(chosen)})" if chosen
                                                          else ""))
    if source.sim:
        return simulate.make_benchmark(source.sim)
    if source.objective:
        return simulate.load_objective_file(source.objective)
    if source.table:
        return simulate.load_table(source.table, metric=source.metric,
                                   target_scale=source.target_scale)
    import torch
    try:
        device = torch.device(source.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {source.device!r} is not a device; use cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: MPS is not available on this machine; use --device cpu")
    import train_lm      # imported only here: the trainer is needed for --train alone
    kwargs = {"device": source.device}
    if source.sizes:
        kwargs["sizes"] = tuple(x.strip() for x in source.sizes.split(","))
    if source.steps:
        try:
            kwargs["steps"] = tuple(int(x) for x in source.steps.split(","))
        except ValueError:
            raise ValueError(f"--steps must be comma-separated integers; "
                             f"got {source.steps!r}") from None
    return train_lm.make_objective(source.corpus, **kwargs)


def one_thread(strategies, source):
    """One thread for the GP's small matrices, where more only spin against each other: torch's, and
    numpy's and scipy's OpenBLAS, which read their count at import, so it is set through OpenBLAS's
    own call (as threadpoolctl does). --train keeps the defaults: the trainer uses every core."""
    if source.train or not any(name in GP_STRATEGIES for name in strategies):
        return
    import ctypes
    import glob
    import scipy
    import torch
    torch.set_num_threads(1)
    for package in (np, scipy):
        for path in glob.glob(os.path.dirname(package.__file__) + ".libs/*openblas*"):
            library = ctypes.CDLL(path)
            for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                         "openblas_set_num_threads"):
                if hasattr(library, name):
                    getattr(library, name)(1)


def main(argv=None):
    """The CLI: parse, build the objective, run optimize (or the benchmark). Bad input: exit 2 with
    one line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser()
        if "--bench" in argv:
            from bench import loop_bench
            loop_bench.add_arguments(parser)
        args = parser.parse_args(argv)
        source = Source(**given_options(args, Source))
        objective = build_objective(source)
        chosen = given_options(args, Settings)
        chosen["mixture"] = tuple(parse_mixture(m, tuple(objective.domains))
                                  for m in chosen.get("mixture", ()))
        if args.bench:
            strategies = chosen.pop("strategy", "mfkg,ei,random").split(",")
            one_thread(strategies, source)
            return loop_bench.run(args, objective, strategies, chosen, argv, say=print)
        one_thread([chosen.get("strategy", Settings.strategy)], source)
        settings = Settings(**chosen)
        ledger = args.ledger or default_ledger_path(settings, objective, args.resume)
        optimize(objective, ledger=ledger, resume=args.resume, verbose=not args.quiet,
                 **dataclasses.asdict(settings))
        return 0
    except BrokenPipeError:
        # The reader closed our stdout (e.g. `| head`): not bad input. Point stdout at devnull so the
        # flush at exit cannot fail again, and exit 1 (the Python docs' "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("mixbo: output closed (broken pipe); the ledger holds every finished trial; "
              "--resume continues", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"mixbo: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mixbo: interrupted; the ledger holds every finished trial; --resume continues",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
