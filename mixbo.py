"""mixbo: choose a language model's pre-training data mixture by multi-fidelity, multi-scale
Bayesian optimization. A trial trains a mixture w (K weights on the simplex) at a model scale N for
T steps; the budget counts target-run equivalents (1.0 = one run at the target scale and steps).

    python mixbo.py --sim                                   # the search, on a simulator
    python mixbo.py ask --ledger L --objective space.py     # ask for a trial, run it yourself,
    python mixbo.py tell --ledger L --trial 0 --loss 3.2    # and tell its result
    python mixbo.py --objective space.py --launch 'sbatch --wait job.sh {weights_json} {result}'
    from mixbo import optimize, Search                      # the same from Python

Strategies: mfkg and kg, the knowledge gradient (Frazier, Powell & Dayanik 2009) over scales and
steps as in the multi-scale mixture paper (acquisition.py); ei; ucb; hyperband (Li et al., JMLR
2018, Alg. 1); regression (RegMix, Liu et al. 2024, on Scheffe's 1958 mixture polynomial); random;
sobol; uniform. Pending trials enter the GP by kriging believer (Ginsbourger, Le Riche & Carraro
2010). The ledger (JSON lines, fsync'ed, locked) is the single source of truth; trial t is seeded by
(seed, t)."""

import argparse
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
from scipy.stats import qmc

import simulate
# gp.py and acquisition.py (they import torch) are imported where a GP strategy first needs them.

GP_STRATEGIES = ("mfkg", "kg", "ei", "ucb")
STRATEGIES = GP_STRATEGIES + ("random", "sobol", "uniform", "hyperband", "regression")
LEDGER_VERSION = 2
LOSS_LIMIT = 1e100      # a larger |loss| is refused: the GP's sums of squares must stay finite
DESIGN_SHARE = 0.2      # mfkg's initial design spends at most this share below the target
TARGET_IN_DESIGN = 5.0  # mfkg's design includes one target run from this budget on
DESIGN_SCALES = 3       # mfkg's design below the target uses this many of the smallest scales
VERIFY_SHARE = 0.25     # mfkg keeps this share of the budget (>= one target run) for target runs
RESERVE_DECISIONS = ("verify (the recommendation)", "kg log KG")   # mfkg's runs in the reserve
WAIT = "wait"           # a strategy's answer while it needs the result of a pending trial
RUN, STRATEGY, MODEL, DRAWS = 0, 1, 2, 3     # what a derived seed is for (trial_seed)


def silent(*args, **kwargs):
    """An `out` that prints nothing."""


class TooManyFailures(RuntimeError):
    """max_failures trials in a row failed; the search stopped (--resume continues it)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it stops as Ctrl-C stops it."""


# ----------------------------------------------------------------------------------------------
# 1. options: each is declared once, as a dataclass field holding its help; the CLI flag is the
#    field's name with dashes, and the ledger header records it under the same name.

def option(default, help, **argparse_options):
    """A dataclass field that is also the command-line option --name-with-dashes."""
    return dataclasses.field(default=default, metadata={"help": help, **argparse_options})


@dataclass(frozen=True)
class Settings:
    """What decides the trials; a resumed ledger must agree on all of it but the budget."""
    strategy: str = option("mfkg", f"one of {', '.join(STRATEGIES)} (--bench: a comma list)")
    budget: float = option(5.0, "in target-run equivalents (1.0 = one run at the target)")
    seed: int = option(0, "seeds every random choice of the search")
    n_init: int = option(0, "initial space-filling design size (0: the strategy's default)")
    refit_growth: float = option(1.25, "refit the GP's hyperparameters when the finished trials "
                                       "have grown by this factor (1: every trial); condition "
                                       "in between")
    candidates: int = option(256, "mixtures the acquisition scores per trial")
    fixed_cost: float = option(0.05, "mfkg: overhead added to every run's cost in KG / cost "
                                     "(target-run equivalents; not charged)")
    mixture: tuple = option((), "a mixture to run first, e.g. web=0.5,code=0.5 (repeatable; "
                                "missing domains are 0)", action="append", metavar="D=W,...")
    eta: int = option(3, "hyperband: keep 1/eta of the runs at each rung")
    regression_share: float = option(0.5, "regression: budget share for smallest-scale proxies")
    aggregate: str = option("", "minimize this aggregate of the per-domain losses: mean, worst, "
                                "weighted:D=W,... or domain:D (default: the objective's loss)")
    hyperparameter_draws: int = option(4, "GP strategies: the recommendation's +- averages the "
                                          "GP over this many posterior draws of its "
                                          "hyperparameters (0: at their MAP only)")

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of "
                             f"{', '.join(STRATEGIES)}")
        if not (isinstance(self.budget, (int, float)) and 0 < self.budget < math.inf):
            raise ValueError(f"budget must be a number > 0 (target-run equivalents); "
                             f"got {self.budget}")
        if (self.n_init < 0 or not self.refit_growth >= 1 or self.candidates < 1 or self.eta < 2
                or not self.fixed_cost >= 0 or not 0 < self.regression_share < 1
                or self.hyperparameter_draws < 0):
            raise ValueError("n_init must be >= 0, refit_growth >= 1, candidates >= 1, eta >= 2, "
                             "fixed_cost >= 0, regression_share in (0, 1) and "
                             "hyperparameter_draws >= 0")
        if self.mixture and self.strategy not in GP_STRATEGIES + ("sobol",):
            raise ValueError(f"--mixture starts the design of {', '.join(GP_STRATEGIES)} and "
                             f"sobol; strategy {self.strategy} has no design to start")


@dataclass(frozen=True)
class Runner:
    """How the trials run and what is written besides the ledger; free to change between calls."""
    launch: str = option("", "run each trial as this shell command, with the placeholders {trial} "
                             "{seed} {scale} {steps} {weights_json} {result} {w_<domain>} "
                             "(mixbo.fill_template)", metavar="TEMPLATE")
    parallel: int = option(1, "--launch: trials in flight at once")
    trial_timeout: float = option(0.0, "--launch: seconds after which a trial's command is "
                                       "killed and the trial failed (0: no limit)")
    max_failures: int = option(3, "stop after this many failed trials in a row (0: never)")
    plot: str = option("", "at the end of the search, write PNG plots of it to this folder "
                           "(plot_search; pip install -r requirements-plot.txt)", metavar="DIR")

    def __post_init__(self):
        if self.parallel < 1 or not self.trial_timeout >= 0 or self.max_failures < 0:
            raise ValueError("parallel must be >= 1, trial_timeout >= 0 and max_failures >= 0")
        if self.parallel > 1 and not self.launch:
            raise ValueError("--parallel needs --launch (in this process trials run one by one)")


@dataclass(frozen=True)
class Source:
    """Where the losses come from: exactly one of sim, objective, table, train."""
    sim: str = option("", "a synthetic benchmark of simulate.py (NAME default: default)",
                      nargs="?", const="default", metavar="NAME")
    objective: str = option("", "a Python file defining the search space and loss(weights, scale, "
                                "steps) (simulate.load_objective_file)", metavar="PATH.py")
    table: str = option("", "replay a table of real runs (simulate.load_table)", metavar="PATH.csv")
    metric: str = option("loss", "--table: the objective column")
    target_scale: float = option(None, "--table: the target scale (default: the largest)",
                                 type=float)
    train: bool = option(False, "real training runs with train_lm.py", action="store_true")
    corpus: str = option("data/corpus", "--train: corpus folder")
    sizes: str = option("", "--train: model sizes by name, comma-separated (train_lm.SIZES)")
    steps: str = option("", "--train: checkpoint steps, comma-separated (default 30,60,120,240); "
                            "tell: the steps of a run made outside mixbo")
    device: str = option("cpu", "--train: cpu, cuda, cuda:N or mps")


def parse_mixture(text, domains, flag="--mixture"):
    """'web=0.5,code=0.5' -> weights (K,) in `domains` order (missing domains are 0). Weights
    summing to 1 within 1e-3 (three times 0.333) are renormalized; beyond that, an error."""
    w = np.zeros(len(domains))
    for part in text.split(","):
        name, sep, value = (x.strip() for x in part.partition("="))
        if not sep or name not in domains:
            raise ValueError(f"{flag} {text!r}: unknown domain {name!r}; domains are "
                             f"{', '.join(domains)} (write name=weight pairs separated by commas)")
        try:
            w[domains.index(name)] = float(value)
        except ValueError:
            raise ValueError(f"{flag} {text!r}: the weight of {name} is not a number") from None
    return tuple(simulate.check_weights(w, len(domains), f"{flag} {text!r}").tolist())


# ----------------------------------------------------------------------------------------------
# 2. designs and seeds

def trial_seed(seed, t, purpose):
    """The seed of trial t for one purpose (RUN, STRATEGY, MODEL, DRAWS): a function of (seed, t,
    purpose) only, so resumed and uninterrupted searches draw the same numbers."""
    return int(np.random.SeedSequence([seed, t, purpose]).generate_state(1)[0])


def sobol_simplex(K, n, seed):
    """The first n points (n, K) of a scrambled Sobol sequence in [0,1)^K mapped to the simplex by
    w = e / sum(e), e_k = -log(1 - u_k): the exponential map turns uniforms into Dirichlet(1)
    draws and is smooth, so the even spread carries over. Point t is the same for every n > t."""
    m = max(1, math.ceil(math.log2(max(n, 2))))
    u = qmc.Sobol(d=K, scramble=True, seed=seed).random_base2(m)[:n]          # (n, K) in [0, 1)
    e = -np.log1p(-u)                                                          # (n, K) Exp(1)
    return e / e.sum(1, keepdims=True)


def pool_choice(ctx, point, scale, steps, history, rng=None):
    """Table replay: a pool mixture the table holds at (scale, steps) that no trial ran there --
    the nearest to `point`, or with point None a uniform draw by rng; None if none is left."""
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
# 3. strategies. A trial record (a dict) carries weights, scale, steps, seed, cost, decision,
#    status ("pending", "ok" or "failed"), loss, domain_losses, checkpoints [{steps, loss,
#    domain_losses}]. A strategy is propose_x(ctx, history, t) -> Proposal, WAIT, or None when
#    nothing it would run is affordable; history holds every trial asked so far, by id.

@dataclass(frozen=True)
class Proposal:
    weights: np.ndarray     # (K,)
    scale: float
    steps: int
    decision: str           # why, for the ledger and the console


@dataclass
class Context:
    objective: object
    settings: Settings
    unit: float                     # cost(*target): the budget unit
    bounds: tuple                   # (scale_min, scale_max, steps_min, steps_max) for gp.encode
    model: object = None            # gp.GP of the finished trials (GP strategies), else None
    draws: list = dataclasses.field(default_factory=list)   # gp.GP per hyperparameter draw
    refit: dict = dataclasses.field(default_factory=dict)   # fit_model's hyperparameter cache
    spent: float = 0.0              # target-run equivalents of every trial asked so far

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
    runs for mfkg; the budget caps it (_design_affordable)."""
    n = ctx.settings.n_init or (2 * ctx.K if ctx.settings.strategy == "mfkg" else 3)
    return max(n, len(ctx.settings.mixture))


def _init_fidelity(ctx, i):
    """The i-th initial run's fidelity: the target; for mfkg, run 0 at the target when the budget
    holds TARGET_IN_DESIGN target runs, the others round-robin over the DESIGN_SCALES smallest
    scales below it at its steps, or a table's longest below them (the GP sees the scale effect
    from the start; the acquisition prices the larger ones); one scale: the shortest steps."""
    N_t, T_t = _target(ctx)
    smaller = sorted(float(N) for N in ctx.objective.scales if N < N_t)[:DESIGN_SCALES]
    if ctx.settings.strategy != "mfkg":
        return N_t, T_t
    if ctx.settings.budget >= TARGET_IN_DESIGN:
        if i == 0:
            return N_t, T_t
        i -= 1
    if not smaller:
        return N_t, int(min(ctx.objective.steps))
    N = smaller[i % len(smaller)]
    if ctx.objective.candidates is None:
        return N, T_t
    held = [T for T in ctx.objective.steps if T <= T_t
            and any(ctx.available(w, N, T) for w in ctx.objective.candidates)]
    return N, int(max(held, default=T_t))       # a table may hold each scale at its own tokens


def _design_affordable(ctx, history, scale, steps):
    """The design's rule: its runs below the target spend at most DESIGN_SHARE of the budget (mfkg);
    a single-fidelity design at most 2 DESIGN_SHARE (and at least one run); mfkg's one design run
    at the target needs only to be affordable."""
    if ctx.settings.strategy != "mfkg":
        cap = max(2 * DESIGN_SHARE * ctx.settings.budget, ctx.cost(scale, steps))
        return ctx.spent + ctx.cost(scale, steps) <= cap + 1e-12
    if (scale, steps) == _target(ctx):
        return ctx.affordable(scale, steps)
    spent = sum(r["cost"] for r in history if r["decision"].startswith("init")
                and (r["scale"], r["steps"]) != _target(ctx))
    return spent + ctx.cost(scale, steps) <= DESIGN_SHARE * ctx.settings.budget + 1e-12


def _reserve(ctx):
    """mfkg's verification reserve: the budget kept for runs at the target, VERIFY_SHARE of it and
    at least one target run (none below a budget of 2)."""
    budget = ctx.settings.budget
    return max(VERIFY_SHARE * budget, 1.0) if budget >= 2.0 else 0.0


def pool_draw(ctx, history, t, scale, steps):
    """Table replay: trial t's uniform draw from the pool rows held at (scale, steps) that no trial
    ran there (random search's, and the design's), or None."""
    rng = np.random.default_rng(trial_seed(ctx.settings.seed, t, STRATEGY))
    return pool_choice(ctx, None, scale, steps, history, rng)


def design_point(ctx, history, t, scale, steps):
    """Mixture t of the design at (scale, steps): the --mixture ones, then the scrambled Sobol
    sequence. On a table, the pool mixture held there nearest to a --mixture one, else a uniform
    draw from the pool (random search's draw for trial t): with many domains the pool row near
    equal weights is the nearest to most points, so nearest-to-Sobol keeps choosing it. None if
    the table holds no row left there."""
    user, table = ctx.settings.mixture, ctx.objective.candidates is not None
    if t < len(user):
        w = np.asarray(user[t], dtype=np.float64)
        return pool_choice(ctx, w, scale, steps, history) if table else w
    if table:
        return pool_draw(ctx, history, t, scale, steps)
    seed = trial_seed(ctx.settings.seed, 0, STRATEGY)
    return sobol_simplex(ctx.K, t + 1 - len(user), seed)[t - len(user)]


def propose_random(ctx, history, t):
    """Dirichlet(1) at the target (on a table: a uniform draw from the pool mixtures not run)."""
    if ctx.objective.candidates is None:
        rng = np.random.default_rng(trial_seed(ctx.settings.seed, t, STRATEGY))
        return Proposal(rng.dirichlet(np.ones(ctx.K)), *_target(ctx), "random")
    w = pool_draw(ctx, history, t, *_target(ctx))
    return None if w is None else Proposal(w, *_target(ctx), "random")


def propose_sobol(ctx, history, t):
    """Point t of the scrambled Sobol sequence on the simplex at the target (a table: design_point's
    pool draw, the same as random search's)."""
    w = design_point(ctx, history, t, *_target(ctx))
    return None if w is None else Proposal(w, *_target(ctx), "sobol")


def propose_uniform(ctx, history, t):
    """Equal weights at the target (a table: the nearest pool mixture), repeated with new seeds."""
    w = np.full(ctx.K, 1.0 / ctx.K)
    if ctx.objective.candidates is not None:
        w = pool_choice(ctx, w, *_target(ctx), history=())
    return Proposal(w, *_target(ctx), "uniform" if t == 0 else "uniform (replicate)")


def _hyperband_rungs(ctx):
    """Hyperband's resource ladder: from the target down, each rung the costliest (scale, steps)
    costing <= 1/eta of the rung above, along (smallest scale, shortest steps) -> (smallest scale,
    target steps) -> (larger scales, target steps) -> target."""
    N_t, T_t = _target(ctx)
    scales = [float(N) for N in ctx.objective.scales if N <= N_t]
    path = [(scales[0], int(T)) for T in ctx.objective.steps if T <= T_t]
    path += [(N, T_t) for N in scales[1:]]
    rungs = [(N_t, T_t)]
    for p in reversed(path[:-1]):
        if ctx.cost(*p) <= ctx.cost(*rungs[0]) / ctx.settings.eta:
            rungs.insert(0, p)
    return rungs


def propose_hyperband(ctx, history, t):
    """Hyperband (Li et al. 2018, Alg. 1) over the rung ladder, brackets b = b_max..0 repeated.
    Replayed from the history: the k-th run of the deterministic schedule is history[k], so the next
    run is the first one the history does not hold; WAIT while a rung needs a pending loss."""
    rungs, eta = _hyperband_rungs(ctx), ctx.settings.eta
    b_max, k = len(rungs) - 1, 0
    for bracket in range(10 ** 6):
        b = b_max - bracket % (b_max + 1)
        # Alg. 1 line 3: n = ceil((b_max + 1) / (b + 1) * eta^b) configurations
        n = math.ceil((b_max + 1) / (b + 1) * eta ** b)
        rng = np.random.default_rng(trial_seed(ctx.settings.seed, bracket, STRATEGY))
        if ctx.objective.candidates is None:
            configs = list(rng.dirichlet(np.ones(ctx.K), n))
        else:                                           # a table: pool mixtures held at rung 0
            pool = np.asarray(ctx.objective.candidates)
            free = [j for j in range(len(pool)) if ctx.available(pool[j], *rungs[b_max - b])]
            configs = [pool[j] for j in rng.permutation(free)[:n]]
        if not configs:
            return None
        for i in range(b + 1):                         # successive halving, Alg. 1 lines 5-9
            rung = rungs[b_max - b + i]
            configs = [c for c in configs if ctx.available(c, *rung)]   # tables: rows they hold
            for c in configs[len(history) - k:]:
                return Proposal(c, *rung, f"hyperband bracket {bracket} rung {b_max - b + i}")
            runs, k = history[k:k + len(configs)], k + len(configs)
            if any(r["status"] == "pending" for r in runs):
                return WAIT
            losses = [r["loss"] if r["status"] == "ok" else math.inf for r in runs]
            keep = max(1, len(configs) // eta)          # the best n_i / eta go on
            configs = [configs[j] for j in np.argsort(losses, kind="stable")[:keep]]
    return None


def _scheffe_features(W):
    """Scheffe's quadratic mixture polynomial, y = sum_i b_i w_i + sum_{i<j} b_ij w_i w_j (no
    intercept: sum w = 1 absorbs it). W (n, K) -> (n, K + K(K-1)/2)."""
    iu = np.triu_indices(W.shape[1], k=1)
    return np.column_stack([W, W[:, iu[0]] * W[:, iu[1]]])


def _ridge_by_loo(F, y):
    """Coefficients (p,) of ridge regression of y - mean(y) (n,) on F (n, p), the ridge chosen
    from 1e-8, 1e-7, .., 1e2 by the mean squared leave-one-out residual."""
    r, best, FtF = y - y.mean(), None, F.T @ F                              # r (n,)
    for lam in 10.0 ** np.arange(-8, 3):
        G = np.linalg.solve(FtF + lam * np.eye(F.shape[1]), F.T)          # (p, n): H = F G
        beta = G @ r                                                       # (p,)
        # leave-one-out residuals of a linear smoother, e_i / (1 - H_ii) (ESL 2nd ed., 7.10.1);
        # H_ii = F_i . G_i without forming the (n, n) hat matrix
        loo = (r - F @ beta) / np.clip(1 - np.einsum("ij,ji->i", F, G), 1e-9, None)
        if best is None or np.mean(loo ** 2) < best[0]:
            best = (float(np.mean(loo ** 2)), beta)
    return best[1]


def _regression_ranking(ctx, history):
    """Candidate mixtures (M, K) sorted by the regression's predicted loss, and the predictions;
    None while there are fewer proxy runs than coefficients. The regression is _ridge_by_loo on
    _scheffe_features."""
    proxy = (float(min(ctx.objective.scales)), _target(ctx)[1])
    runs = [r for r in history if r["status"] == "ok" and (r["scale"], r["steps"]) == proxy]
    if len(runs) < ctx.K + ctx.K * (ctx.K - 1) // 2:
        return None
    y = np.array([r["loss"] for r in runs])
    beta = _ridge_by_loo(_scheffe_features(np.array([r["weights"] for r in runs])), y)
    pool = ctx.objective.candidates
    if pool is None:                                       # RegMix scores many random mixtures
        rng = np.random.default_rng(trial_seed(ctx.settings.seed, 0, MODEL))
        pool = rng.dirichlet(np.ones(ctx.K), 10 * ctx.settings.candidates)
    predicted = y.mean() + _scheffe_features(np.asarray(pool)) @ beta
    order = np.argsort(predicted, kind="stable")
    return np.asarray(pool)[order], predicted[order]


def propose_regression(ctx, history, t):
    """RegMix: spend regression_share of the budget on random mixtures at the smallest scale, fit
    the regression, then train its best-predicted mixtures at the target, best first."""
    proxy = (float(min(ctx.objective.scales)), _target(ctx)[1])
    at_proxy = [r for r in history if (r["scale"], r["steps"]) == proxy]
    if (sum(r["cost"] for r in at_proxy) + ctx.cost(*proxy)
            <= ctx.settings.regression_share * ctx.settings.budget and proxy != _target(ctx)):
        rng = np.random.default_rng(trial_seed(ctx.settings.seed, t, STRATEGY))
        w = (rng.dirichlet(np.ones(ctx.K)) if ctx.objective.candidates is None
             else pool_choice(ctx, None, *proxy, history, rng))
        if w is not None:
            return Proposal(w, *proxy, "regression proxy")
    if any(r["status"] == "pending" for r in at_proxy):
        return WAIT
    ranking = _regression_ranking(ctx, history)
    if ranking is None:                                    # too few proxy runs to fit: random
        return propose_random(ctx, history, t)
    done = [r["weights"] for r in history if (r["scale"], r["steps"]) == _target(ctx)]
    for w, predicted in zip(*ranking):
        if not any(np.allclose(w, d) for d in done):
            return Proposal(w, *_target(ctx), f"regression argmin (pred {predicted:.4f} at proxy)")
    return None


def _observations(history, domain=None):
    """The GP's data: every checkpoint of every ok trial, and each failed trial as one pessimistic
    observation at its (scale, steps), the largest loss observed at that fidelity (else anywhere):
    the failing region then looks bad and is not re-picked endlessly (the constant liar at its
    maximum, Ginsbourger, Le Riche & Carraro 2010, kept for a run that cannot succeed). Returns
    W (n, K), N, T, y and runs (n,): the index in history of each row's trial (gp.fit_gp's runs).
    With a domain, y is that domain's loss (checkpoints without it are left out)."""
    value = (lambda c: c["loss"]) if domain is None else (lambda c: c["domain_losses"].get(domain))
    rows = [(r["weights"], r["scale"], c["steps"], value(c), i) for i, r in enumerate(history)
            if r["status"] == "ok" for c in r["checkpoints"] if value(c) is not None]
    worst = {}
    for _, N, T, y, _ in rows:
        worst[N, T] = max(y, worst.get((N, T), -math.inf))
    rows += [(r["weights"], r["scale"], r["steps"], worst.get((r["scale"], r["steps"]),
                                                               max(worst.values())), i)
             for i, r in enumerate(history) if r["status"] == "failed" and worst]
    W, N, T, y, runs = zip(*sorted(rows, key=lambda row: row[4]))
    return (np.array(W), np.array(N, dtype=float), np.array(T, dtype=float),
            np.array(y, dtype=float), np.array(runs))


def refit_point(c, growth):
    """How many of c finished trials the hyperparameters are fitted on: the largest r <= c of the
    schedule 1, 2, ..., r' = max(r + 1, ceil(growth r)), so they are refitted whenever the data
    have grown by the factor `growth` (all refits cost a fixed multiple of the last one)."""
    r = 1
    while max(r + 1, math.ceil(growth * r)) <= c:
        r = max(r + 1, math.ceil(growth * r))
    return r


def fit_model(ctx, history, domain=None, restarts=2, draws=0, **options):
    """gp.fit_gp (with the model `options`) on the finished trials `history`; (None, []) before any
    ok one. Hyperparameters are fitted (MAP, from `restarts` starts) on the first r =
    refit_point(c, refit_growth) of the c trials (cached in ctx.refit), and the GP is conditioned
    on all of them with those: a function of the finished trials only. With a domain, the GP of
    that domain's losses (_observations). Returns (GP, [GP] * draws): the list conditioned likewise
    on hyperparameters drawn from their posterior on those r (gp.sample_hyperparameters)."""
    import gp
    if not any(x["status"] == "ok" for x in history):
        return None, []
    c = len(history)
    r = refit_point(c, ctx.settings.refit_growth)
    if not any(x["status"] == "ok" for x in history[:r]):
        r = c                                                 # nothing to refit on yet: fit now
    key = (domain, restarts, draws, *sorted(options.items()))
    fitted_on = [x.get("trial") for x in history[:r]]
    if ctx.refit.get(key, (None,))[0] != fitted_on:
        W, N, T, y, runs = _observations(history[:r], domain)
        fit = gp.fit_gp(gp.encode(W, N, T, ctx.bounds), y, ctx.K, gp.Config(**options), runs=runs,
                        seed=trial_seed(ctx.settings.seed, r, MODEL), restarts=restarts)
        drawn = gp.sample_hyperparameters(fit, draws, trial_seed(ctx.settings.seed, r, DRAWS)) \
            if draws else []
        ctx.refit[key] = (fitted_on, fit.hyperparameters, drawn)
    W, N, T, y, runs = _observations(history, domain)
    condition = lambda h: gp.fit_gp(gp.encode(W, N, T, ctx.bounds), y, ctx.K, gp.Config(**options),
                                    runs=runs, hyperparameters=h)
    model = condition(ctx.refit[key][1])
    return model, [condition(h) for h in ctx.refit[key][2]]


def kriging_believer(ctx, finished, pending):
    """The model for proposals while trials are pending: the GP of the finished trials, its
    hyperparameters fixed, conditioned on every checkpoint each pending trial will report at its
    current posterior mean -- the kriging believer (Ginsbourger, Le Riche & Carraro 2010). The
    pending points' variance collapses to the noise, so the next proposal goes elsewhere."""
    import gp
    W, N, T, y, runs = _observations(finished)
    rows = [(r["weights"], r["scale"], s, len(finished) + j) for j, r in enumerate(pending)
            for s in simulate.checkpoint_steps(ctx.objective.steps, r["steps"])]
    W_p, N_p, T_p, runs_p = (np.array(column) for column in zip(*rows))
    X_p = gp.encode(W_p, N_p.astype(float), T_p.astype(float), ctx.bounds)
    X = np.vstack([gp.encode(W, N, T, ctx.bounds), X_p])
    y = np.concatenate([y, gp.predict(ctx.model, X_p)[0]])
    return gp.fit_gp(X, y, ctx.K, ctx.model.config, runs=np.concatenate([runs, runs_p]),
                     hyperparameters=ctx.model.hyperparameters)


def _mixtures(history, statuses=("ok",)):
    """Distinct mixtures of the trials with these statuses, in first-run order: (m, K)."""
    import acquisition
    return acquisition.unique_rows(np.array([r["weights"] for r in history
                                             if r["status"] in statuses]))


def _unverified_recommendation(ctx, history):
    """The model's recommendation if no finished or pending trial ran it at the target and it can
    run there, else None: in the reserve, mfkg first runs what it would recommend where it will
    be used."""
    import acquisition
    mixtures = _mixtures(history)
    i, _, _ = acquisition.recommend(ctx.model, mixtures, _target(ctx), ctx.bounds)
    ran = any(np.array_equal(r["weights"], mixtures[i]) and (r["scale"], r["steps"]) == _target(ctx)
              for r in history if r["status"] in ("ok", "pending"))
    return None if ran or not ctx.available(mixtures[i], *_target(ctx)) else mixtures[i]


def propose_gp(ctx, history, t):
    """mfkg / kg / ei / ucb: one acquisition.choose_next on ctx.model over simplex candidates (or
    the table's pool) and the fidelities the strategy may use and can afford. mfkg's runs below the
    target may not eat into the reserve (_reserve); the target competes with them by KG / cost,
    and once it wins a run that the budget above the reserve cannot pay for, that budget joins the
    reserve and every later run is at the target (_propose_in_reserve)."""
    strategy, target = ctx.settings.strategy, _target(ctx)
    if strategy != "mfkg":
        return _choose(ctx, history, t, strategy, [target])
    room = ctx.settings.budget - _reserve(ctx) - ctx.spent
    fids = [f for f in _fidelities(ctx) if f == target or ctx.cost(*f) <= room + 1e-12]
    if fids == [target] or any(r["decision"].startswith(RESERVE_DECISIONS) for r in history):
        return _propose_in_reserve(ctx, history, t)
    p = _choose(ctx, history, t, strategy, fids)
    if p is not None and (p.scale, p.steps) == target and ctx.cost(*target) > room + 1e-12:
        return _propose_in_reserve(ctx, history, t)
    return p


def _propose_in_reserve(ctx, history, t):
    """mfkg in its reserve: the recommendation at the target if no run has, then KG there."""
    if ctx.affordable(*_target(ctx)):
        best = _unverified_recommendation(ctx, history)
        if best is not None:
            return Proposal(best, *_target(ctx), RESERVE_DECISIONS[0])
    return _choose(ctx, history, t, "kg", [_target(ctx)])


def _choose(ctx, history, t, strategy, fids):
    """The strategy's acquisition over the candidates at the affordable fidelities of fids; pending
    trials' mixtures join the evaluated set; a pending (mixture, scale, steps) is not proposed
    again. None when nothing there is affordable."""
    import acquisition
    if not any(ctx.affordable(*f) for f in fids):
        return None
    evaluated = _mixtures(history, ("ok", "pending"))                      # (E, K)
    if ctx.objective.candidates is None:
        cands = acquisition.simplex_candidates(ctx.K, ctx.settings.candidates,
                                               trial_seed(ctx.settings.seed, t, STRATEGY),
                                               incumbents=evaluated)
    else:
        cands = np.asarray(ctx.objective.candidates)
    taken = {(tuple(r["weights"]), r["scale"], r["steps"]) for r in history
             if r["status"] == "pending"}
    scales, steps = sorted({N for N, _ in fids}), sorted({T for _, T in fids})
    allowed = None                                                          # None: any pair
    if (ctx.objective.available is not None or taken or len(fids) < len(scales) * len(steps)
            or not all(ctx.affordable(*f) for f in fids)):
        fids_set = set(fids)                                                # the grid's pairs
        allowed = lambda w, N, T: ((N, T) in fids_set and ctx.affordable(N, T)
                                   and ctx.available(w, N, T)
                                   and (tuple(w.tolist()), N, T) not in taken)
        if not any(allowed(w, N, T) for w in cands for N, T in fids):     # e.g. all too costly
            return None
    d = acquisition.choose_next(strategy, ctx.model, cands, evaluated,
                                scales=scales, steps=steps, target=_target(ctx),
                                bounds=ctx.bounds, cost=ctx.cost,
                                fixed_cost=ctx.settings.fixed_cost, available=allowed)
    why = {"mfkg": f"mfkg log(KG/cost) {d.value:.2f}", "kg": f"kg log KG {d.value:.2f}",
           "ei": f"ei log EI {d.value:.2f}", "ucb": f"ucb -LCB {d.value:.3f}"}[strategy]
    return Proposal(d.weights, d.scale, d.steps, why)


PROPOSE = {"random": propose_random, "sobol": propose_sobol, "uniform": propose_uniform,
           "hyperband": propose_hyperband, "regression": propose_regression,
           **{name: propose_gp for name in GP_STRATEGIES}}


def propose(ctx, history, t):
    """Trial t: the initial design first (GP strategies), then the strategy. A Proposal, WAIT, or
    None: nothing affordable, the search is over. An initial run the budget cannot pay for, or a
    table does not hold, ends the design instead; the acquisition then chooses among the
    fidelities still affordable."""
    in_init = (ctx.settings.strategy in GP_STRATEGIES and t < _n_init(ctx)
               and all(r["decision"].startswith("init") for r in history))  # design unbroken
    if in_init:
        N, T = _init_fidelity(ctx, t)
        in_init = ctx.affordable(N, T) and _design_affordable(ctx, history, N, T)
    w = design_point(ctx, history, t, N, T) if in_init else None
    if w is not None:                        # (a table without that row ends the design)
        why = "init (sobol)" if t >= len(ctx.settings.mixture) else "init (--mixture)"
        p = Proposal(w, N, T, why)
    elif ctx.settings.strategy in GP_STRATEGIES and ctx.model is None:   # no ok trial yet:
        pending = any(r["status"] == "pending" for r in history)         # wait for one, or
        p = WAIT if pending else propose_sobol(ctx, history, t)          # (all failed) explore
    else:
        p = PROPOSE[ctx.settings.strategy](ctx, history, t)
    return p if p is WAIT or p is None or ctx.affordable(p.scale, p.steps) else None


def recommend(ctx, history):
    """The mixture to train at the target, from the finished trials. GP strategies: the argmin of
    ctx.model's posterior mean at the target over the evaluated mixtures, with the mean +- sd there
    of the GPs on the hyperparameter draws (ctx.draws; ctx.model's with none). Regression before
    any target run: its argmin (a proxy-scale prediction). Otherwise the best loss observed at the
    target, else at the highest fidelity reached."""
    target, ok = _target(ctx), [r for r in history if r["status"] == "ok"]
    ran_target = any((r["scale"], r["steps"]) == target for r in ok)
    ranking = (_regression_ranking(ctx, history)
               if ctx.settings.strategy == "regression" and not ran_target else None)
    choice = {"weights": None, "loss": None, "sd": None, "source": "no successful run yet",
              "domain_losses": {}, "domain_losses_source": "not run"}
    if ctx.settings.strategy in GP_STRATEGIES and ctx.model is not None:
        import acquisition
        mixtures = _mixtures(history)
        i, mean, sd = acquisition.recommend(ctx.model, mixtures, target, ctx.bounds, ctx.draws)
        choice.update(weights=mixtures[i].tolist(), loss=mean, sd=sd,
                      source="GP posterior at the target")
    elif ranking:
        W, predicted = ranking
        choice.update(weights=W[0].tolist(), loss=float(predicted[0]),
                      source="regression prediction at the proxy scale")
    elif ok:
        top = target if ran_target else max((r["scale"], r["steps"]) for r in ok)
        best = min((r for r in ok if (r["scale"], r["steps"]) == top), key=lambda r: r["loss"])
        where = ("the target" if ran_target
                 else f"scale {fmt_scale(top[0])}, steps {top[1]} (no target run yet)")
        choice.update(weights=list(best["weights"]), loss=best["loss"],
                      source=f"best observed at {where}")
    runs = [r for r in ok if list(r["weights"]) == list(choice["weights"] or ())]
    if runs:                    # observed per-domain losses at the highest fidelity it ran at
        top = max(runs, key=lambda r: (r["scale"], r["steps"]))
        choice.update(domain_losses=top["domain_losses"], domain_losses_source=f"observed at "
                      f"scale {fmt_scale(top['scale'])}, steps {top['steps']}")
    return choice


def insight(ctx, history, weights):
    """What the GP says about the mixture `weights` at the target (GP strategies; {} otherwise):
      tradeoffs   for it, uniform and each --mixture: the predicted target objective +- sd (as
                  the recommendation's) and each domain's predicted target loss +- sd (one GP
                  per domain on its own losses, the same options and refit schedule, one start)
      utilities   per domain, the predicted change of the target objective per unit of weight moved
                  to it from the others in proportion, D_v f(w) with v = e_k - w, +- the sd of the
                  GP's derivative posterior (gp.directional_derivative; R&W sec. 9.4)
      optimum_by_scale  per scale at the target's steps, the argmin of the posterior mean over the
                  evaluated mixtures and its total-variation distance from the target's argmin"""
    import gp
    if ctx.model is None or weights is None:
        return {}
    target, K, domains = _target(ctx), ctx.K, ctx.objective.domains
    named = {"recommended": np.asarray(weights), "uniform": np.full(K, 1.0 / K)}
    named.update({f"--mixture {i}": np.asarray(m) for i, m in enumerate(ctx.settings.mixture)})
    X = gp.encode(np.array(list(named.values())), *target, ctx.bounds)          # (M, K + 2)
    ok = [r for r in history if r["status"] == "ok"]
    models = {"objective": ctx.model}
    models.update({d: fit_model(ctx, history, domain=d, restarts=1)[0] for d in domains
                   if any(d in c["domain_losses"] for r in ok for c in r["checkpoints"])})
    predictions = {k: gp.predict(m, X) for k, m in models.items()}              # (M,), (M,)
    if ctx.draws:                                   # as the recommendation's: over the draws
        predictions["objective"] = gp.predict_mixture(ctx.draws, X)
    tradeoffs = {name: {k: [float(mean[i]), float(np.sqrt(var[i]))]
                        for k, (mean, var) in predictions.items()} for i, name in enumerate(named)}
    V = np.column_stack([np.eye(K) - named["recommended"], np.zeros((K, 2))])   # (K, K + 2)
    mean, var = gp.directional_derivative(ctx.model, np.repeat(X[:1], K, axis=0), V)
    utilities = {d: [float(mean[k]), float(np.sqrt(var[k]))] for k, d in enumerate(domains)}
    mixtures = _mixtures(history)
    best = {}
    for N in [N for N in ctx.objective.scales if N <= target[0]]:
        i = int(np.argmin(gp.predict(ctx.model, gp.encode(mixtures, N, target[1], ctx.bounds))[0]))
        best[N] = mixtures[i]
    optimum_by_scale = {fmt_scale(N): {"weights": w.tolist(),
                                       "distance": float(0.5 * np.abs(w - best[target[0]]).sum())}
                        for N, w in best.items()}
    return {"tradeoffs": tradeoffs, "utilities": utilities, "optimum_by_scale": optimum_by_scale}


# ----------------------------------------------------------------------------------------------
# 4. results and the ledger: JSON lines, each fsync'ed before anything depends on it. Line 1 is the
#    header; then {"kind": "ask", ...} when a trial is handed out (pending), {"kind": "tell", ...}
#    when its outcome is in, each tell followed by its {"kind": "recommendation", ...}, and
#    {"kind": "budget", "budget": B} when a resumed search gets another budget.

def check_result(result, steps, aggregate=None):
    """A run's result {"loss": x, "domain_losses": {domain: x}, "checkpoints": [{"steps": s,
    "loss": x, "domain_losses": {...}}, ...]}, only loss required -> (loss, domain_losses,
    checkpoints ascending in 1..steps; default the loss at `steps`). Every loss must be a finite
    number within +-LOSS_LIMIT; anything else is a one-line ValueError saying what. With an
    `aggregate` (simulate.Aggregate) every loss is that aggregate of its domain losses."""
    def number(x, what):
        if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
            raise ValueError(f"the result's {what} must be a number; got {str(x)[:80]!r}")
        if not (math.isfinite(x) and abs(x) <= LOSS_LIMIT):
            raise ValueError(f"the result's {what} must be finite and within +-{LOSS_LIMIT:g}; "
                             f"got {x}")
        return float(x)

    def per_domain(losses, what):
        if not isinstance(losses, dict):
            raise ValueError(f"the result's {what} must be an object {{domain: loss}}")
        return {str(k): number(v, f"{what}[{k!r}]") for k, v in losses.items()}

    if not isinstance(result, dict) or "loss" not in result:
        raise ValueError(f"a result must be a JSON object with a \"loss\"; "
                         f"got {str(result)[:80]!r}")
    loss = number(result["loss"], "loss")
    losses = per_domain(result.get("domain_losses") or {}, "domain_losses")
    checkpoints = []
    for c in result.get("checkpoints") or [{"steps": steps, "loss": loss, "domain_losses": losses}]:
        s = c.get("steps") if isinstance(c, dict) else None
        if (isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 < s <= steps
                or (checkpoints and s <= checkpoints[-1]["steps"]) or "loss" not in c):
            raise ValueError(f"the result's checkpoints must be {{\"steps\", \"loss\"}} objects, "
                             f"steps ascending in 1..{steps}; got {str(c)[:80]!r}")
        checkpoints.append({"steps": int(s), "loss": number(c["loss"], f"checkpoint {s} loss"),
                            "domain_losses": per_domain(c.get("domain_losses") or {},
                                                        f"checkpoint {s} domain_losses")})
    if aggregate is not None:
        loss = simulate.aggregate(aggregate, losses)
        for c in checkpoints:
            c["loss"] = simulate.aggregate(aggregate, c["domain_losses"])
    return loss, losses, checkpoints


def check_outcome(steps, result=None, loss=None, failed=None, aggregate=None):
    """The tell fields of a trial's outcome: exactly one of result (check_result), loss, failed."""
    if sum(x is not None for x in (result, loss, failed)) != 1:
        raise ValueError("tell needs exactly one of a result, a loss or a failure reason")
    if failed is not None:
        return {"status": "failed", "loss": None, "domain_losses": {}, "checkpoints": [],
                "error": " ".join(str(failed).split())[:500] or "failed"}
    if loss is not None and aggregate is not None:
        raise ValueError(f"--aggregate {aggregate.text} needs per-domain losses: tell a --result")
    value, losses, checkpoints = check_result({"loss": loss} if result is None else result, steps,
                                              aggregate)
    return {"status": "ok", "loss": value, "domain_losses": losses, "checkpoints": checkpoints,
            "error": None}


def _append(f, record):
    """One JSON line, then flush and fsync: the line is on disk before anything depends on it."""
    f.write((json.dumps(record, allow_nan=False) + "\n").encode())
    f.flush()
    os.fsync(f.fileno())


def ledger_header(settings, objective, source=None, sha256=None):
    """The header: the settings, the objective's origin (source with resolved paths, the sha256 of
    its file, table or corpus manifest; None from Python) and the search space."""
    header = {"kind": "header", "mixbo_ledger": LEDGER_VERSION,
              "settings": dataclasses.asdict(settings), "source": source, "sha256": sha256,
              "objective": {"name": objective.name, "domains": list(objective.domains),
                            "scales": [float(s) for s in objective.scales],
                            "steps": [int(s) for s in objective.steps],
                            "target": [float(objective.target[0]), int(objective.target[1])]}}
    return json.loads(json.dumps(header))      # as it reads after a round trip through the file


def header_difference(old, new):
    """What differs between a ledger's header and this search's, e.g. 'settings.seed (ledger 0,
    now 1)', or None: the format, the settings but the budget, the search space (not the display
    name), and the source and the sha256 where both headers have them. A setting the ledger's
    header lacks (it predates the option) counts as the option's default."""
    if not isinstance(old, dict) or old.get("mixbo_ledger") != LEDGER_VERSION:
        found = old.get("mixbo_ledger") if isinstance(old, dict) else None
        return f"format (ledger version {found}, this mixbo writes {LEDGER_VERSION})"
    for part in ("settings", "objective", "source"):
        a, b = old.get(part) or {}, new.get(part) or {}
        if part == "settings" and a:
            a = {**json.loads(json.dumps(dataclasses.asdict(Settings()))), **a}
        for key in sorted((set(a) | set(b)) - {"budget", "name"} if a and b else ()):
            if a.get(key) != b.get(key):
                return f"{part}.{key} (ledger {a.get(key)!r}, now {b.get(key)!r})"
    if old.get("sha256") and new.get("sha256") and old["sha256"] != new["sha256"]:
        return "sha256 (the objective file or table changed since the ledger was started)"
    return None


def open_ledger(path, resume, header, warn):
    """The ledger at `path` opened for appending and locked (fcntl.flock, exclusive, held while the
    file is open; Linux emulates it on NFS with byte-range locks), and its records, header first.
    A new or empty ledger gets `header`; an existing one needs resume and no header_difference.
    A torn last line (a kill mid-write) is cut away with a warning; other damage is a ValueError."""
    if os.path.exists(path) and os.path.getsize(path) and not resume:
        raise ValueError(f"ledger {path} already exists; pass --resume to continue it, "
                         f"or choose another --ledger path")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    f = open(path, "a+b")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"ledger {path} is in use by another mixbo process; wait for it to "
                             f"finish, or use another --ledger path") from None
        f.seek(0)
        data = f.read()
        lines = data.split(b"\n")[:-1]             # after the last newline: nothing, or torn
        try:
            records = [json.loads(line) for line in lines]
        except json.JSONDecodeError:
            raise ValueError(f"ledger {path} has a line that is not JSON before its last line; "
                             f"it is damaged") from None
        if not records:
            f.truncate(0)
            _append(f, header)
            directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
            os.fsync(directory)                    # the new file's directory entry is on disk too
            os.close(directory)
            return f, [header]
        if difference := header_difference(records[0], header):
            raise ValueError(f"ledger {path} is from another search: {difference} differs; use "
                             f"another --ledger path, or the ledger's settings")
        if sum(len(line) + 1 for line in lines) < len(data):     # only now (it is ours): cut it
            warn(f"mixbo: warning: ignoring the torn last line of {path} (the run was killed "
                 f"while writing it)")
            f.truncate(sum(len(line) + 1 for line in lines))
            os.fsync(f.fileno())
        return f, records
    except BaseException:
        f.close()
        raise


def peek_ledger(path):
    """(header, budget) of the ledger at `path` without taking its lock; (None, None) for a missing
    or empty file. The budget is the last one recorded."""
    if not (os.path.exists(path) and os.path.getsize(path)):
        return None, None
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    try:
        header = json.loads(lines[0])
        assert header["mixbo_ledger"] == LEDGER_VERSION
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError):
        raise ValueError(f"ledger {path} does not start with a version-{LEDGER_VERSION} mixbo "
                         f"header line") from None
    budgets = [json.loads(line)["budget"] for line in lines
               if line.startswith(b'{"kind": "budget"')]
    return header, (budgets or [header["settings"]["budget"]])[-1]


def default_ledger_path(settings, objective, resume=False):
    """runs/<objective>-<strategy>-seed<seed>.jsonl; if that exists and we are not resuming, the
    first free runs/<objective>-<strategy>-seed<seed>-<i>.jsonl (it never overwrites)."""
    name = f"{objective.name}-{settings.strategy}-seed{settings.seed}".replace(os.sep, "_")
    path, i = os.path.join("runs", name + ".jsonl"), 1
    while os.path.exists(path) and not resume:
        path, i = os.path.join("runs", f"{name}-{i}.jsonl"), i + 1
    return path


# ----------------------------------------------------------------------------------------------
# 5. ask / tell

@dataclass(frozen=True)
class Trial:
    """A trial handed out by Search.ask: train `weights` at (scale, steps) with `seed`."""
    trial: int
    weights: tuple
    scale: float
    steps: int
    seed: int | None
    decision: str

    def as_json(self, domains):
        return {"trial": self.trial, "weights": dict(zip(domains, self.weights)),
                "scale": self.scale, "steps": self.steps, "seed": self.seed}


@dataclass(frozen=True)
class Result:
    settings: Settings
    trials: list               # the finished trial records, by id
    recommendations: list      # one per tell, in tell order: the recommendation after it
    spent: float               # target-run equivalents
    ledger: str | None
    insight: dict = dataclasses.field(default_factory=dict)   # mixbo.insight at the end

    @property
    def recommendation(self):
        return self.recommendations[-1] if self.recommendations else None


class Search:
    """Ask/tell on one objective, with the ledger as the single source of truth: the state (every
    trial asked, pending until told; the recommendations; the GP; the open, locked ledger) is a
    function of the ledger alone.

        with Search(objective, Settings(budget=3), ledger="runs/a.jsonl") as search:
            for trial in search.ask(4): ...           # run them anywhere, tell in any order
            search.tell(0, result={"loss": 3.2})      # or loss=3.2, or failed="why"

    ledger: a path (refused if it exists unless resume=True, which continues it); None keeps the
    trials in memory. source, sha256: the objective's origin (ledger_header), checked on resume."""

    def __init__(self, objective, settings=None, ledger=None, resume=False, source=None,
                 sha256=None, warn=print):
        self.objective, self.settings, self.ledger = objective, settings or Settings(), ledger
        for i, m in enumerate(self.settings.mixture):
            simulate.check_weights(m, len(objective.domains), what=f"mixture {i}")
        self.aggregate = (simulate.parse_aggregate(self.settings.aggregate, objective.domains)
                          if self.settings.aggregate else None)
        for N, T in ((N, T) for N in objective.scales for T in objective.steps):
            if not 0 < float(objective.cost(N, T)) < math.inf:
                raise ValueError(f"cost({N:g}, {T}) must be a finite number > 0; "
                                 f"got {objective.cost(N, T)}")
        self.ctx = Context(objective, self.settings, unit=float(objective.cost(*objective.target)),
                           bounds=(min(objective.scales), max(objective.scales),
                                   min(objective.steps), max(objective.steps)))
        self.records, self.recommendations, self.told = [], [], []   # by id; by tell; told ids
        self.spent_told, self.failures_in_a_row, self.waiting = 0.0, 0, False
        self.summary = None                          # the last {"kind": "summary"} record
        header = ledger_header(self.settings, objective, source, sha256)
        self.file, lines = None, [header]
        if ledger is not None:
            self.file, lines = open_ledger(ledger, resume, header, warn)
        try:
            self._replay(lines)
        except BaseException:
            self.close()
            raise

    def _replay(self, lines):
        """Rebuild the state from the ledger's records (header first), checking their order."""
        budget = lines[0]["settings"]["budget"]
        for r in lines[1:]:
            kind, t = r.get("kind"), r.get("trial", r.get("after_trial"))
            owed = len(self.recommendations) < len(self.told)
            if kind == "ask" and t == len(self.records):
                self._add(r)
            elif kind == "tell" and not owed and t in range(len(self.records)) and (
                    self.records[t]["status"] == "pending"):
                self._finish(r)
            elif kind == "recommendation" and owed and t == self.told[-1]:
                self.recommendations.append(r)
            elif kind == "budget":
                budget = r["budget"]
            elif kind == "summary":                      # a finished search's insight
                self.summary = r
            else:
                raise ValueError(f"ledger {self.ledger} has a {kind!r} line out of order (trial "
                                 f"{t}); it was not written by this version of mixbo")
        if budget != self.settings.budget:               # a resumed search, another budget
            self._write({"kind": "budget", "budget": self.settings.budget})
        self._refit()
        if len(self.recommendations) < len(self.told):  # killed between a tell and its advice
            self._recommend(self.told[-1])

    @property
    def finished(self):
        return [r for r in self.records if r["status"] != "pending"]

    @property
    def pending(self):
        return [Trial(*(r[k] for k in ("trial", "weights", "scale", "steps", "seed", "decision")))
                for r in self.records if r["status"] == "pending"]

    def _write(self, record):
        if self.file:
            _append(self.file, record)

    def _add(self, ask):
        self.records.append({**ask, "kind": "trial", "status": "pending", "loss": None,
                             "domain_losses": {}, "checkpoints": [], "error": None, "spent": None,
                             "started": None, "finished": None, "wall_s": None})
        self.ctx.spent += ask["cost"]

    def _finish(self, tell):
        self.records[tell["trial"]].update({k: v for k, v in tell.items() if k != "kind"})
        self.told.append(tell["trial"])
        self.spent_told = tell["spent"]

    def _refit(self):
        gp_strategy = self.settings.strategy in GP_STRATEGIES
        self.ctx.model, self.ctx.draws = (fit_model(self.ctx, self.finished,
                                                    draws=self.settings.hyperparameter_draws)
                                          if gp_strategy else (None, []))

    def _recommend(self, t):
        choice = {"kind": "recommendation", "after_trial": t, **recommend(self.ctx, self.finished)}
        self._write(choice)
        self.recommendations.append(choice)
        return choice

    def _ask(self, weights, scale, steps, decision, seed):
        t = len(self.records)
        ask = {"kind": "ask", "trial": t, "decision": decision,
               "weights": [float(x) for x in weights], "scale": float(scale), "steps": int(steps),
               "seed": seed, "cost": self.ctx.cost(scale, steps)}
        self._write(ask)
        self._add(ask)
        return Trial(t, tuple(ask["weights"]), ask["scale"], ask["steps"], seed, decision)

    def ask(self, n=1):
        """Up to n new trials, each recorded as pending before it is returned. Fewer when the
        budget cannot pay for more (the search is over once the pending ones are told) or when
        the strategy needs a pending trial's result first (then self.waiting is True)."""
        trials = []
        for _ in range(n):
            pending = [r for r in self.records if r["status"] == "pending"]
            ctx = self.ctx
            if pending and ctx.model is not None:
                ctx = dataclasses.replace(ctx, model=kriging_believer(ctx, self.finished, pending))
            proposal = propose(ctx, self.records, len(self.records))
            self.waiting = proposal is WAIT
            if proposal is None or proposal is WAIT:
                break
            seed = trial_seed(self.settings.seed, len(self.records), RUN)
            trials.append(self._ask(proposal.weights, proposal.scale, proposal.steps,
                                    proposal.decision, seed))
        return trials

    def tell(self, trial, result=None, loss=None, failed=None, started=None, finished=None):
        """Record the outcome of pending trial `trial` (check_outcome: exactly one of result,
        loss, failed), with its Unix start and end times. Returns (trial record, recommendation).
        A bad call is a one-line ValueError and writes nothing."""
        if not (isinstance(trial, int) and 0 <= trial < len(self.records)):
            raise ValueError(f"unknown trial {trial!r}; this ledger has trials "
                             f"0..{len(self.records) - 1}")
        record = self.records[trial]
        if record["status"] != "pending":
            raise ValueError(f"trial {trial} was told already ({record['status']}); a trial is "
                             f"told once")
        finished = time.time() if finished is None else finished
        tell = {"kind": "tell", "trial": trial,
                **check_outcome(record["steps"], result, loss, failed, self.aggregate),
                "spent": self.spent_told + record["cost"], "started": started,
                "finished": finished,
                "wall_s": None if started is None else round(finished - started, 3)}
        self._write(tell)
        self._finish(tell)
        self.failures_in_a_row = self.failures_in_a_row + 1 if tell["error"] else 0
        self._refit()
        return record, self._recommend(trial)

    def attach(self, weights, scale, steps, result=None, loss=None, failed=None):
        """Record a run made outside mixbo (its weights, scale and steps) as a new trial and tell
        it; returns what tell returns. Its cost counts against the budget."""
        weights = simulate.check_weights(weights, self.ctx.K, what="the run's weights")
        low_N, high_N, low_T, high_T = self.ctx.bounds
        if not (low_N <= scale <= high_N and low_T <= steps <= high_T and steps == int(steps)):
            raise ValueError(f"the run's scale {scale:g} and steps {steps} must lie within the "
                             f"objective's scales {low_N:g}..{high_N:g}, steps {low_T}..{high_T}")
        check_outcome(int(steps), result, loss, failed, self.aggregate)  # bad: nothing written
        trial = self._ask(weights, scale, steps, "told (run outside mixbo)", seed=None)
        return self.tell(trial.trial, result, loss, failed)

    def result(self, summarize=False):
        """The Result; with summarize, also mixbo.insight at the last recommendation, written to
        the ledger as its {"kind": "summary"} record."""
        info = {}
        if summarize and self.recommendations:
            last = self.recommendations[-1]
            if self.summary and self.summary["after_trial"] == last["after_trial"]:
                info = {k: v for k, v in self.summary.items() if k not in ("kind", "after_trial")}
            else:
                info = insight(self.ctx, self.finished, last["weights"])
                self.summary = {"kind": "summary", "after_trial": last["after_trial"], **info}
                self._write(self.summary)
        return Result(self.settings, self.finished, list(self.recommendations), self.ctx.spent,
                      self.ledger, info)

    def close(self):
        """Close the ledger; its lock goes with it."""
        if self.file:
            self.file.close()
            self.file = None

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self.close()


# ----------------------------------------------------------------------------------------------
# 6. running trials: in this process, or as shell commands; the closed loop

def run_objective(objective, trial, aggregate=None):
    """Run `trial` in this process; returns tell's keyword arguments. An exception or sys.exit in
    the objective, or a result check_result refuses, is a failed trial; KeyboardInterrupt stops the
    search and leaves the trial pending (a resumed search runs it again with the same seed)."""
    started = time.time()
    try:
        result = objective.run(np.asarray(trial.weights, dtype=np.float64), trial.scale,
                               trial.steps, trial.seed)
        check_result(result, trial.steps, aggregate)
        return dict(result=result, started=started, finished=time.time())
    except (Exception, SystemExit) as e:        # a failed run must not stop the search
        why = (f"the objective called sys.exit({e.code!r})" if isinstance(e, SystemExit)
               else f"{type(e).__name__}: {e}")
        return dict(failed=why.splitlines()[0], started=started, finished=time.time())


def fill_template(template, trial, domains, result):
    """The shell command of one trial: each {name} of the template (not ${name}, the shell's)
    replaced by the trial's {trial}, {seed}, {scale}, {steps} or {w_<domain>}, plain numbers, or
    by {weights_json}, a JSON object {domain: weight}, or {result}, the path the command must write
    its result JSON to (check_result), both shell-quoted. An unknown name is a ValueError."""
    scale = str(int(trial.scale)) if trial.scale == int(trial.scale) else repr(trial.scale)
    values = {"trial": str(trial.trial), "seed": str(trial.seed), "steps": str(trial.steps),
              "scale": scale, "result": shlex.quote(result),
              "weights_json": shlex.quote(json.dumps(dict(zip(domains, trial.weights)))),
              **{f"w_{d}": repr(float(w)) for d, w in zip(domains, trial.weights)}}

    def value(match):
        if match.group(1) not in values:
            raise ValueError(f"--launch: unknown placeholder {{{match.group(1)}}}; the template "
                             f"may use {' '.join('{' + k + '}' for k in values)}")
        return values[match.group(1)]
    return re.sub(r"(?<!\$)\{([A-Za-z_][^{}\s\"']*)\}", value, template)


def _start(trial, template, folder, domains):
    """Start trial's command in its own process group, output to <folder>/trial-<id>-<attempt>.log;
    each attempt has its own result path, so a command a killed mixbo left running cannot write
    into a relaunched attempt's result."""
    attempt = 1
    while os.path.exists(os.path.join(folder, f"trial-{trial.trial}-{attempt}.log")):
        attempt += 1
    stem = os.path.join(folder, f"trial-{trial.trial}-{attempt}")
    with open(stem + ".log", "wb") as log:
        process = subprocess.Popen(fill_template(template, trial, domains, stem + ".json"),
                                   shell=True, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return {"trial": trial, "process": process, "stem": stem, "started": time.time(),
            "stopping": None}


def _signal(job, signum):
    try:
        os.killpg(job["process"].pid, signum)
    except ProcessLookupError:
        pass


def _poll(job, timeout, aggregate=None):
    """None while job's command runs (past `timeout` seconds: SIGTERM to its process group, SIGKILL
    5 s later); then tell's keyword arguments for its outcome."""
    now, code = time.time(), job["process"].poll()
    if code is None:
        if job["stopping"] is None and timeout and now - job["started"] > timeout:
            job["stopping"] = now
            _signal(job, signal.SIGTERM)
        elif job["stopping"] is not None and now - job["stopping"] > 5:
            _signal(job, signal.SIGKILL)
        return None
    times, log = dict(started=job["started"], finished=now), f"(log {job['stem']}.log)"
    if job["stopping"] is not None:
        return dict(failed=f"timed out after {timeout:g} s; its process group was killed {log}",
                    **times)
    if code != 0:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        return dict(failed=f"the command {how} {log}", **times)
    try:
        with open(job["stem"] + ".json") as f:
            result = json.load(f)
        check_result(result, job["trial"].steps, aggregate)
    except FileNotFoundError:
        return dict(failed=f"the command wrote no result to {job['stem']}.json {log}", **times)
    except ValueError as e:                     # json.JSONDecodeError is a ValueError too
        return dict(failed=f"malformed result {job['stem']}.json: {e}", **times)
    return dict(result=result, **times)


def launch(search, runner, say=silent, told=silent):
    """Run the search's trials as shell commands (fill_template with runner.launch), up to
    runner.parallel at once, pending ones first. A command must exit 0 having written its result;
    a non-zero exit, no result, a malformed one, or running past runner.trial_timeout is a failed
    trial with the reason. told(record, recommendation) follows every tell. On an exception
    (Ctrl-C, SIGTERM, TooManyFailures) the commands in flight get SIGTERM and their trials stay
    pending. Files: <ledger>.trials/ (no ledger: a temporary folder)."""
    folder = (os.path.splitext(search.ledger)[0] + ".trials" if search.ledger
              else tempfile.mkdtemp(prefix="mixbo-trials-"))
    os.makedirs(folder, exist_ok=True)
    domains, (scale, steps) = search.objective.domains, search.objective.target
    example = Trial(0, (1.0 / len(domains),) * len(domains), float(scale), int(steps), 0, "")
    fill_template(runner.launch, example, domains, "result.json")   # refused before any start
    queue, running, asking = search.pending, {}, True
    try:
        while True:
            while len(running) < runner.parallel and (queue or asking):
                queue = queue or search.ask(1)
                asking = bool(queue)
                if queue:
                    trial = queue.pop(0)
                    running[trial.trial] = _start(trial, runner.launch, folder, domains)
                    say(f"trial {trial.trial}: {trial.decision}: started at scale "
                        f"{fmt_scale(trial.scale)}, {trial.steps} steps ({len(running)} running)")
            if not running:
                return
            time.sleep(0.05)
            for t, job in list(running.items()):
                if (outcome := _poll(job, runner.trial_timeout, search.aggregate)) is not None:
                    del running[t]
                    asking = True
                    told(*search.tell(t, **outcome))
    finally:
        for job in running.values():
            _signal(job, signal.SIGTERM)
        for job in running.values():
            try:
                job["process"].wait(5)
            except subprocess.TimeoutExpired:
                _signal(job, signal.SIGKILL)


def optimize(objective, strategy="mfkg", budget=Settings.budget, seed=0, ledger=None,
             resume=False, out=print, verbose=True, on_trial=None, source=None, sha256=None,
             **options):
    """The closed loop: on a Search (ledger, resume, source, sha256 as there), ask one trial, run
    it, tell it, until nothing is left to ask; returns the Result. So ask/tell with the tells in
    order makes the same trials. options: any other Settings or Runner field. Trials run in this
    process (objective.run) or, with launch, as shell commands (launch); pending trials of a
    resumed ledger run first, with their own id and seed. out: print-like (None: silent);
    verbose=False prints the summary only; on_trial(record, recommendation) follows each tell.
    Raises TooManyFailures after max_failures failed trials in a row."""
    runner = Runner(**{f.name: options.pop(f.name) for f in dataclasses.fields(Runner)
                       if f.name in options})
    options["mixture"] = tuple(tuple(float(x) for x in m) for m in options.get("mixture", ()))
    settings = Settings(strategy=strategy, budget=float(budget), seed=int(seed), **options)
    if not runner.launch and objective.run is None:
        raise ValueError(f"objective {objective.name} defines the search space only (no loss); "
                         f"run its trials with --launch, or ask and tell")
    summary = out or silent
    say = summary if verbose else silent
    with Search(objective, settings, ledger, resume, source, sha256, warn=summary) as search:
        _print_header(say, settings, objective, ledger)
        if search.records:
            say(f"resumed {len(search.finished)} finished and {len(search.pending)} pending "
                f"trial(s) from the ledger ({search.ctx.spent:.3f} of {settings.budget:g} spent)")
        for choice in search.recommendations:
            _print_trial(say, search.ctx, search.records[choice["after_trial"]], choice)

        def told(record, choice):
            _print_trial(say, search.ctx, record, choice)
            if on_trial:
                on_trial(record, choice)
            if runner.max_failures and search.failures_in_a_row >= runner.max_failures:
                raise TooManyFailures(f"{search.failures_in_a_row} trials in a row failed (the "
                                      f"last: {record['error']}); fix the objective, then resume")
        if runner.launch:
            launch(search, runner, say, told)
        else:
            while trials := search.pending or search.ask(1):
                say(f"trial {trials[0].trial}: {trials[0].decision}: running scale "
                    f"{fmt_scale(trials[0].scale)} for {trials[0].steps} steps ...")
                told(*search.tell(trials[0].trial, **run_objective(objective, trials[0],
                                                                  search.aggregate)))
        result = search.result(summarize=out is not None or ledger is not None)
    _print_summary(summary, search.ctx, result)
    if runner.plot:
        plot_search(runner.plot, search.ctx, result, summary)
    return result


# ----------------------------------------------------------------------------------------------
# 7. output for a person

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
    say("columns: loss = observed at the trial's own scale and steps; recommendation = the "
        "mixture to train at the target, with its predicted target loss +- sd")
    say(f"{'trial':>5}  {'decision':<28} {'weights':<{6 + 5 * len(objective.domains)}} "
        f"{'scale':>6} {'steps':>6} {'loss':>8} {'spent/budget':>13}  "
        f"recommendation (weights, loss +- sd)")


def _print_trial(say, ctx, r, choice):
    loss = f"{r['loss']:.4f}" if r["status"] == "ok" else "FAILED"
    sd = f" +- {choice['sd']:.4f}" if choice.get("sd") is not None else ""
    predicted = f"{choice['loss']:.4f}{sd}" if choice.get("loss") is not None else "-"
    say(f"{r['trial']:>5}  {r['decision'][:28]:<28} {fmt_weights(r['weights']):<{6 + 5 * ctx.K}} "
        f"{fmt_scale(r['scale']):>6} {r['steps']:>6} {loss:>8} {r['spent']:>6.3f}/"
        f"{ctx.settings.budget:<6g}  {fmt_weights(choice['weights'])} {predicted}")
    if r["status"] == "failed":
        say(f"       failed: {r['error']} (recorded; its cost counts; the search goes on)")


def _print_summary(say, ctx, result):
    choice, info = result.recommendation, result.insight
    n_failed = sum(r["status"] == "failed" for r in result.trials)
    say(f"done: {len(result.trials)} trials ({n_failed} failed), "
        f"spent {result.spent:.3f} of {ctx.settings.budget:g} target-run equivalents")
    if choice is None or choice["weights"] is None:
        say("no recommendation: no trial succeeded")
        return
    sd = f" +- {choice['sd']:.4f}" if choice["sd"] is not None else ""
    target = _target(ctx)
    at_target = [r for r in result.trials if r["status"] == "ok"
                 and (r["scale"], r["steps"]) == target]
    own = sum(np.array_equal(r["weights"], choice["weights"]) for r in at_target)
    say(f"RECOMMENDED MIXTURE at the target (scale {fmt_scale(target[0])}, steps {target[1]}):")
    for d, w in zip(ctx.objective.domains, choice["weights"]):
        dl = choice["domain_losses"].get(d)
        say(f"  {d:<24} {w:.4f}" + (f"   domain loss {dl:.4f}" if dl is not None else ""))
    say(f"  {ctx.settings.aggregate or 'loss'} {choice['loss']:.4f}{sd} ({choice['source']}); "
        f"domain losses {choice['domain_losses_source']}")
    say(f"  backed by {len(at_target)} run(s) at the target, {own} of this mixture")
    if choice["sd"] is not None and not at_target:
        say("  note: no run reached the target scale and steps: this loss +- sd is extrapolated "
            "from smaller or shorter runs")
    elif choice["sd"] is not None and len(at_target) == 1:
        say("  note: one run at the target: its level rests on that run, and this +- is often too "
            "narrow (bench/README.md, robustness across the test bed)")
    if info.get("tradeoffs"):
        names = list(info["tradeoffs"])
        say("trade-offs at the target (predicted, +- sd): " + " | ".join(names))
        for key in info["tradeoffs"][names[0]]:
            say(f"  {key:<22} " + " | ".join(f"{m:.4f} +- {v:.4f}" for m, v in
                                              (info["tradeoffs"][n][key] for n in names)))
        ranked = sorted(info["utilities"].items(), key=lambda kv: kv[1][0])
        say("domain utilities: change of the target objective per unit of weight moved to the "
            "domain (negative helps):")
        say("  " + ", ".join(f"{d} {m:+.4f} +- {v:.4f}" for d, (m, v) in ranked))
        say("optimum by scale (argmin of the posterior mean; TV distance from the target's): "
            + ", ".join(f"{N} {o['distance']:.2f}" for N, o in info["optimum_by_scale"].items()))


def plot_search(folder, ctx, result, say=print):
    """Up to four PNGs of a finished search in `folder` (created), from its recommendation records
    and summary; returns their paths. loss_vs_cost: the recommendation's target loss (+- 1 sd where
    predicted) against the cost spent, and its true loss where the objective knows it (simulators,
    tables; of the --aggregate's true domain losses); cost_by_scale: the cost spent, stacked by
    scale; weights: the recommendation's mixture; tradeoffs: the summary's trade-off table (GP
    strategies). matplotlib is an optional extra: without it, one line and no files."""
    try:
        from matplotlib.figure import Figure    # no pyplot: the Agg canvas, no display, no state
    except ImportError:
        say("--plot: matplotlib is not installed; pip install -r requirements-plot.txt")
        return []
    truth, domains, paths = ctx.objective, ctx.objective.domains, []
    if ctx.settings.aggregate:                  # the true loss of what the search minimized
        spec = simulate.parse_aggregate(ctx.settings.aggregate, domains)
        truth = (simulate.scored_by(truth, spec) if truth.true_domain_losses is not None
                 else dataclasses.replace(truth, true_loss=None, optimum=None))
    told = {r["trial"]: r for r in result.trials}
    order = [told[c["after_trial"]] for c in result.recommendations]      # tell order
    n = np.arange(1, len(order) + 1)                                     # trials told so far
    has = [c["weights"] is not None for c in result.recommendations]
    made, n_made = [c for c, h in zip(result.recommendations, has) if h], n[has]

    def figure(name, xlabel, ylabel, draw):
        fig = Figure(figsize=(7, 4), layout="constrained")
        ax = fig.subplots()
        draw(ax)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{truth.name}: {ctx.settings.strategy}")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
        paths.append(os.path.join(folder, name + ".png"))
        fig.savefig(paths[-1], dpi=120)

    def loss_vs_cost(ax):
        x = [told[c["after_trial"]]["spent"] for c in made]
        y = np.array([c["loss"] for c in made])
        ax.plot(x, y, drawstyle="steps-post", label="recommendation's loss (ledger)")
        if any(c["sd"] is not None for c in made):
            sd = np.array([np.nan if c["sd"] is None else c["sd"] for c in made])
            ax.fill_between(x, y - sd, y + sd, step="post", alpha=0.3, label="+- 1 sd")
        if truth.true_loss is not None:
            ax.plot(x, truth.true_loss(np.array([c["weights"] for c in made])),
                    drawstyle="steps-post", label="its true loss")
        if truth.optimum is not None:
            ax.axhline(truth.optimum[1], color="k", linestyle=":", label="true optimum")

    def cost_by_scale(ax):
        scales = sorted({r["scale"] for r in order})
        ax.stackplot(n, [np.cumsum([r["cost"] * (r["scale"] == N) for r in order])
                         for N in scales], labels=[fmt_scale(N) for N in scales], step="post")

    def weights(ax):
        ax.stackplot(n_made, np.array([c["weights"] for c in made]).T, labels=domains,
                     step="post")
        ax.set_ylim(0, 1)

    def tradeoffs(ax):
        table = result.insight["tradeoffs"]                     # {mixture: {key: [mean, sd]}}
        keys, width = list(next(iter(table.values()))), 0.8 / len(table)
        for j, (name, row) in enumerate(table.items()):
            mean, sd = np.array([row[k] for k in keys]).T
            ax.bar(np.arange(len(keys)) + (j - (len(table) - 1) / 2) * width, mean, width,
                   yerr=sd, capsize=2, label=name)
        low = min(m - s for row in table.values() for m, s in row.values())
        ax.set_ylim(bottom=low - 0.1 * (ax.get_ylim()[1] - low))        # bars, not from zero
        ax.set_xticks(range(len(keys)), keys, rotation=20)

    os.makedirs(folder, exist_ok=True)
    target = f"{ctx.settings.aggregate or 'loss'} at the target"
    if made:
        figure("loss_vs_cost", "cost spent (target-run equivalents)", target, loss_vs_cost)
        figure("weights", "trials told", "recommended mixture's weights", weights)
    if order:
        figure("cost_by_scale", "trials told", "cost spent (target-run equivalents)",
               cost_by_scale)
    if result.insight.get("tradeoffs"):
        figure("tradeoffs", "", "predicted loss at the target (+- 1 sd)", tradeoffs)
    say(f"--plot: wrote {', '.join(paths) or 'nothing (no trial finished)'}")
    return paths


# ----------------------------------------------------------------------------------------------
# 8. command line: python mixbo.py [ask | tell] [flags]; flags generated from the dataclasses

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
    parser = _Parser(prog="mixbo.py", usage="python mixbo.py [ask | tell] [flags]",
                     description="Choose a pre-training data mixture by multi-fidelity, "
                     "multi-scale Bayesian optimization: the closed loop, or (ask, tell) one step "
                     "of it on a ledger.")
    add_options(parser.add_argument_group("objective (one; on a ledger's first call only)"), Source)
    add_options(parser.add_argument_group("search (the ledger header records these)"), Settings)
    add_options(parser.add_argument_group("running trials, and output"), Runner)
    group = parser.add_argument_group("ledger, ask and tell")
    group.add_argument("--ledger", help="the JSON-lines ledger "
                       "(default runs/<objective>-<strategy>-seed<seed>.jsonl)")
    group.add_argument("--resume", action="store_true", help="continue the ledger: finished "
                       "trials are reused, pending ones run again; flags not given come from it")
    group.add_argument("--quiet", action="store_true", help="print only the recommendation")
    group.add_argument("--n", type=int, default=1, help="ask: how many trials (default 1)")
    group.add_argument("--trial", type=int, help="tell: the trial's id")
    group.add_argument("--result", metavar="FILE", help="tell: the run's result JSON")
    group.add_argument("--loss", type=float, help="tell: the run's loss")
    group.add_argument("--failed", metavar="WHY", help="tell: the run failed, and why")
    group.add_argument("--weights", metavar="D=W,...", help="tell: a run made outside mixbo, with "
                       "--scale and --steps")
    group.add_argument("--scale", type=float, help="tell: that run's scale")
    parser.add_argument("--bench", action="store_true", help="strategies x seeds scored through "
                        "the true loss (bench/loop_bench.py)")
    return parser


def resolve_source(source):
    """source with its paths resolved, and the sha256 of what decides its losses (the objective
    file, the table, or the corpus's manifest, which lists its files' hashes); None for --sim."""
    paths = {k: os.path.realpath(getattr(source, k)) for k in ("objective", "table", "corpus")
             if getattr(source, k) and (k != "corpus" or source.train)}
    hashed = paths.get("objective") or paths.get("table") or (
        paths.get("corpus") and os.path.join(paths["corpus"], "manifest.json"))
    if not (hashed and os.path.isfile(hashed)):
        return dataclasses.replace(source, **paths), None
    with open(hashed, "rb") as f:
        return dataclasses.replace(source, **paths), hashlib.sha256(f.read()).hexdigest()


def build_objective(source):
    """The objective a Source names (exactly one of sim, objective, table, train)."""
    chosen = [f"--{k}" for k in ("sim", "objective", "table", "train") if getattr(source, k)]
    if len(chosen) != 1:
        raise ValueError("choose exactly one objective: --sim, --objective PATH.py, --table "
                         "PATH.csv or --train" + (f" (got {' '.join(chosen)})" if chosen else ""))
    if source.sim:
        return simulate.make_benchmark(source.sim)
    if source.objective:
        return simulate.load_objective_file(source.objective)
    if source.table:
        return simulate.load_table(source.table, source.metric, source.target_scale)
    import torch
    try:
        device = torch.device(source.device)
    except RuntimeError:
        raise ValueError(f"--device {source.device!r} is not a device; use cpu, cuda, cuda:N "
                         f"or mps") from None
    usable = {"cpu": True, "cuda": torch.cuda.is_available(),
              "mps": torch.backends.mps.is_available()}
    if not usable.get(device.type):
        raise ValueError(f"--device {source.device}: not available here; use --device cpu")
    import train_lm      # imported only here: the trainer is needed for --train alone
    kwargs = {"device": source.device}
    if source.sizes:
        kwargs["sizes"] = tuple(x.strip() for x in source.sizes.split(","))
    if source.steps:
        kwargs["steps"] = tuple(_integer(x, "--steps") for x in source.steps.split(","))
    return train_lm.make_objective(source.corpus, **kwargs)


def _integer(text, flag):
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{flag} takes integers; got {text!r}") from None


def one_thread(strategies, source):
    """One thread for the GP's small matrices, where more only spin against each other: torch's,
    and numpy's and scipy's OpenBLAS, which read their count at import, so it is set through
    OpenBLAS's own call (as threadpoolctl does). --train keeps the defaults for the trainer."""
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


def _search_from(args, command):
    """The objective, Settings keywords, source and sha256 of a command: flags not given come from
    an existing ledger's header (for tell, all of them); the identity check is Search's."""
    header, budget = peek_ledger(args.ledger) if args.ledger and (
        args.resume or command != "run") else (None, None)
    if (command == "tell" and not header) or (command == "ask" and not args.ledger):
        raise ValueError(f"{command} needs --ledger PATH of a ledger (start one with: python "
                         f"mixbo.py ask --ledger PATH --n 0 and the objective flags)")
    given = given_options(args, Source) if command != "tell" else {}
    if header and not given:
        if not header["source"]:
            raise ValueError(f"ledger {args.ledger} was written from Python; give its objective")
        given = header["source"]
    objective = build_objective(Source(**given))
    source, sha256 = resolve_source(Source(**given))
    settings = dict(header["settings"], budget=budget) if header else {}
    settings.update(given_options(args, Settings) if command != "tell" else {})
    settings["mixture"] = tuple(parse_mixture(m, tuple(objective.domains)) if isinstance(m, str)
                                else tuple(m) for m in settings.get("mixture", ()))
    return objective, settings, dataclasses.asdict(source), sha256


def _ask_or_tell(command, args, objective, settings, source, sha256):
    """One ask (JSON lines on stdout) or tell (one line) on args.ledger."""
    warn = lambda text: print(text, file=sys.stderr)
    with Search(objective, settings, args.ledger, True, source, sha256, warn) as search:
        if command == "ask":
            if args.n < 0:
                raise ValueError(f"--n must be >= 0; got {args.n}")
            trials = search.ask(args.n)
            for trial in trials:
                print(json.dumps(trial.as_json(objective.domains)))
            if len(trials) < args.n:
                warn("mixbo: " + ("the strategy needs the results of pending trials first"
                                  if search.waiting else "the budget can pay for no more trials")
                     + f" ({len(search.pending)} pending)")
            return 0
        result = None
        if args.result:
            with open(args.result) as f:
                try:
                    result = json.load(f)
                except json.JSONDecodeError as e:
                    raise ValueError(f"--result {args.result} is not valid JSON ({e})") from None
        outcome = dict(result=result, loss=args.loss, failed=args.failed)
        if args.trial is not None:
            record, choice = search.tell(args.trial, **outcome)
        elif args.weights and args.scale and getattr(args, "steps", None):
            weights = parse_mixture(args.weights, objective.domains, "--weights")
            steps = _integer(args.steps, "--steps")
            record, choice = search.attach(weights, args.scale, steps, **outcome)
        else:
            raise ValueError("tell needs --trial ID, or --weights, --scale and --steps of a run "
                             "made outside mixbo")
    told = f"loss {record['loss']:.6g}" if record["status"] == "ok" else "failed"
    print(f"mixbo: trial {record['trial']} told ({told}); recommendation "
          f"{fmt_weights(choice['weights'])}" + (f", loss {choice['loss']:.4f}"
                                                 if choice["loss"] is not None else ""))
    return 0


def _terminate(signum, frame):
    raise Terminated()


def main(argv=None):
    """The CLI. Bad input: one line on stderr, exit 2; too many failed trials: exit 3; Ctrl-C or
    SIGTERM: the resumable-stop line, exit 130 or 143."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv.pop(0) if argv and argv[0] in ("ask", "tell") else "run"
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        parser = build_parser()
        if "--bench" in argv:
            from bench import loop_bench
            loop_bench.add_arguments(parser)
        args = parser.parse_args(argv)
        if getattr(args, "plot", "") and (args.bench or command != "run"):
            raise ValueError("--plot draws one closed-loop search, not --bench, ask or tell; plot "
                             "a ledger with: python mixbo.py --resume --ledger PATH --plot DIR")
        objective, settings, source, sha256 = _search_from(args, command)
        if args.bench:
            strategies = settings.pop("strategy", "mfkg,ei,random").split(",")
            one_thread(strategies, Source(**source))
            return loop_bench.run(args, objective, strategies, settings, argv, say=print)
        settings = Settings(**settings)
        one_thread([settings.strategy], Source(**source))
        if command != "run":
            return _ask_or_tell(command, args, objective, settings, source, sha256)
        ledger = args.ledger or default_ledger_path(settings, objective, args.resume)
        optimize(objective, ledger=ledger, resume=args.resume, verbose=not args.quiet,
                 source=source, sha256=sha256, **dataclasses.asdict(settings),
                 **given_options(args, Runner))
        return 0
    except BrokenPipeError:
        # The reader closed our stdout (e.g. `| head`): not bad input. Point stdout at devnull so
        # the flush at exit cannot fail again, and exit 1 (the Python docs' "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("mixbo: output closed (broken pipe); the ledger holds every finished trial; "
              "--resume continues", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"mixbo: error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 2
    except TooManyFailures as e:
        print(f"mixbo: stopped: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as e:
        print("mixbo: interrupted; the ledger holds every finished trial; --resume continues",
              file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
