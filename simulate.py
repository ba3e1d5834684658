"""Objectives for data-mixture search: multi-scale simulators, objective files and run tables.

Everything the optimizer minimizes is an `Objective` (its contract is the class docstring).
1. Simulators, `make_benchmark(name)`: per domain a Chinchilla level in (N, D) (Hoffmann et al.
   2022, Sec. 3.3) plus data-mixing-law terms (Ye et al. 2024, Sec. 3). BENCHMARKS move the law's
   rates with compute; TESTBED (data/README.md) ranks mixtures at the smallest scale like the
   target at a stated Spearman rho, as losses, jumping losses or negated accuracies (a sigmoid of
   the loss, as Dubey et al. 2024 fit, Sec. 3.2.1); loss optima: a Frank-Wolfe gap (Jaggi 2013).
2. Objective files, `load_objective_file(path)`: a Python file defining loss(), or a search space.
3. Run tables, `load_table(path)`: a CSV of runs replayed exactly; `write_table` writes one.
Criteria over per-domain losses: `parse_aggregate`, `aggregate`. `python simulate.py`: the test bed.
"""
import csv
import dataclasses
import functools
import importlib.util
import inspect
import math
import os
from typing import Callable, NamedTuple

import numpy as np
from scipy.optimize import minimize
from scipy.stats import spearmanr

@dataclasses.dataclass(frozen=True)
class Objective:
    """What is minimized. A trial trains on a mixture at one (model scale, steps):
        run(weights, scale, steps, seed) -> {"loss": float, "domain_losses": {domain: float},
            "checkpoints": [{"steps": int, "loss", "domain_losses"}, ...], "cost": float}
    loss: the objective there; domain_losses: per domain ({} if unknown); checkpoints: every grid
    step below `steps`, then `steps`. weights (K,) in `domains` order, seed an int >= 0: equal
    arguments give equal numbers, a longer run passes the same checkpoints; a run that raises or
    returns a non-finite loss is a failed trial. true_loss(weights, scale=None, steps=None) is
    noise-free, at the target unless given, (K,) -> float, (n, K) -> (n,). None: unknown."""
    name: str
    domains: tuple[str, ...]
    scales: tuple[float, ...]
    steps: tuple[int, ...]
    target: tuple[float, int]
    run: Callable | None                          # None: a search space, results come from outside
    cost: Callable                                # cost(scale, steps), in units of cost(*target)
    candidates: np.ndarray | None = None          # (M, K): the only mixtures allowed (None: all)
    available: Callable | None = None             # (weights, scale, steps) -> bool (None: always)
    true_loss: Callable | None = None
    true_domain_losses: Callable | None = None    # as true_loss, per domain: (K,), (n, K)
    optimum: tuple | None = None                  # (weights, loss) at the target
    noise_sd: float | None = None                 # the seed-to-seed sd there
    spearman: float | None = None                 # smallest scale vs target over random mixtures

SLIMPAJAMA_DOMAINS = ("wikipedia", "stackexchange", "github", "arxiv", "book")
DEFAULT_SCALES = (20e6, 40e6, 80e6, 150e6, 300e6, 600e6, 1e9)
DEFAULT_STEPS = (2500, 5000, 10000, 20000)
TOKENS_PER_STEP = 2 ** 19                # 512 sequences of 1024 tokens per optimizer step
SIMPLEX_TOL = 1e-3                       # how far weights may miss the simplex (rounded tables)
SAME_MIXTURE_TOL = 1e-6                  # weights this close (max norm) are one mixture

def flops_cost(scale, steps, tokens_per_step=TOKENS_PER_STEP):
    """Training FLOPs 6 * N * D (Kaplan et al. 2020, Sec. 2.1), D = steps * tokens_per_step."""
    return 6.0 * float(scale) * float(steps) * float(tokens_per_step)

def check_weights(weights, num_domains, what="weights"):
    """The project's one simplex check: float64 (K,) weights, clipped at 0 and renormalized, or a
    one-line ValueError naming `what` unless all are >= -SIMPLEX_TOL and sum to 1 +- SIMPLEX_TOL."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (num_domains,):
        raise ValueError(f"{what} must have shape ({num_domains},), got {w.shape}; pass one "
                         "weight per domain")
    if not np.all(np.isfinite(w)) or w.min() < -SIMPLEX_TOL or abs(w.sum() - 1) > SIMPLEX_TOL:
        raise ValueError(f"{what} {np.round(w, 6).tolist()} are off the simplex: weights must "
                         f"be >= 0 and sum to 1 within {SIMPLEX_TOL:g} (sum {w.sum():.12g})")
    return np.clip(w, 0.0, None) / np.clip(w, 0.0, None).sum()

def checkpoint_steps(grid, steps):
    """The checkpoints a run to `steps` passes: grid steps below it, then `steps` (ascending)."""
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return [int(s) for s in grid if s < steps] + [int(steps)]

def noise_free(target, values):
    """The one builder of true_loss and true_domain_losses: values(w (n, K), scale, steps) ->
    (n,) or (n, K) as f(weights, scale=None, steps=None), at the target unless given."""
    def at(weights, scale=None, steps=None):
        w = np.asarray(weights, dtype=np.float64)
        scale, steps = target[0] if scale is None else scale, target[1] if steps is None else steps
        y = np.asarray(values(np.atleast_2d(w), scale, steps), dtype=np.float64)
        return y if w.ndim == 2 else (float(y[0]) if y.ndim == 1 else y[0])
    return at

# --- Criteria over per-domain losses --------------------------------------------------------------
# A criterion over the losses of `domains`: weights (K,) of a weighted mean; None = worst.
Aggregate = NamedTuple("Aggregate", [("text", str), ("domains", tuple), ("weights", tuple | None)])

def parse_aggregate(text, domains):
    """Aggregate from "mean", "worst", "weighted:D=W,..." (unnamed domains weigh 0; the weights
    sum to 1) or "domain:D"; otherwise a one-line ValueError that says the fix."""
    domains, (kind, _, rest) = tuple(domains), str(text).partition(":")
    if text in ("mean", "worst"):
        return Aggregate(text, domains, None if text == "worst" else (1 / len(domains),) *
                         len(domains))
    if kind not in ("weighted", "domain") or not rest:
        raise ValueError(f"aggregate {text!r}: choose mean, worst, weighted:D=W,... or domain:D")
    weights = dict.fromkeys(domains, 0.0)
    pairs = [(rest, "1")] if kind == "domain" else [i.partition("=")[::2] for i in rest.split(",")]
    for name, value in ((name.strip(), value) for name, value in pairs):
        if name not in domains:
            raise ValueError(f"aggregate {text!r}: unknown domain {name!r}; the domains "
                             f"are {', '.join(domains)}")
        try:
            weights[name] += float(value)
        except ValueError:
            raise ValueError(f"aggregate {text!r}: weight {value!r} of {name} is not a "
                             f"number; write D=W pairs, e.g. weighted:{domains[0]}=1") from None
    w = check_weights(list(weights.values()), len(domains), what=f"aggregate {text!r}: weights")
    return Aggregate(text, domains, tuple(w.tolist()))

def aggregate(spec, domain_losses):
    """spec of per-domain losses: a dict {domain: loss} -> float, an array (..., K) -> (...)."""
    if isinstance(domain_losses, dict):
        weights = spec.weights or (1,) * len(spec.domains)
        missing = [d for d, w in zip(spec.domains, weights) if w and d not in domain_losses]
        if missing:
            raise ValueError(f"aggregate {spec.text!r} needs the loss of domain {missing[0]!r}; "
                             "the objective must report it in domain_losses")
        domain_losses = [domain_losses.get(d, 0.0) for d in spec.domains]
    losses = np.asarray(domain_losses, dtype=np.float64)
    if losses.shape[-1:] != (len(spec.domains),):
        raise ValueError(f"aggregate {spec.text!r}: losses of shape {losses.shape}; pass one loss "
                         f"per domain ({len(spec.domains)})")
    value = losses.max(axis=-1) if spec.weights is None else losses @ np.array(spec.weights)
    return float(value) if value.ndim == 0 else value

def minimize_aggregate(f, spec, grad=None, seed=0, n_starts=4):
    """(weights (K,), value) minimizing aggregate(spec, f(w)), f: (K,) -> (K,), on the simplex by
    SLSQP (jac=grad) from the centroid and n_starts Dirichlet(1) draws; global if f is convex."""
    K = len(spec.domains)
    starts = np.vstack([np.full(K, 1 / K),
                        np.random.default_rng(seed).dirichlet(np.ones(K), n_starts)])
    value, bounds = (lambda w: aggregate(spec, f(w))), [(0.0, 1.0)] * K
    goal, constraints = value, [{"type": "eq", "fun": lambda x: x[:K].sum() - 1.0}]
    if spec.weights is None:                  # worst: epigraph min_{w, s} s s.t. f_k(w) <= s
        starts = np.column_stack([starts, [f(w).max() for w in starts]])
        goal, bounds = (lambda x: x[K]), bounds + [(None, None)]
        constraints.append({"type": "ineq", "fun": lambda x: x[K] - f(x[:K])})
    found = [np.clip(minimize(goal, x0, jac=grad, method="SLSQP", bounds=bounds,
                              constraints=constraints, options={"ftol": 1e-15, "maxiter": 500}
                              ).x[:K], 0.0, None) for x0 in starts]
    best = min((w / w.sum() for w in found), key=value)
    return best, float(value(best))

def aggregate_optimum(objective, spec, seed=0):
    """(weights (K,), value) minimizing `spec` of the true per-domain losses at the target."""
    if objective.true_domain_losses is None:
        raise ValueError(f"{objective.name} lacks the true per-domain losses {spec.text!r} needs")
    if objective.candidates is None:
        return minimize_aggregate(objective.true_domain_losses, spec, seed=seed)
    values = aggregate(spec, objective.true_domain_losses(objective.candidates))
    return objective.candidates[int(np.argmin(values))].copy(), float(values.min())

def scored_by(objective, spec):
    """The objective with true_loss and optimum `spec`'s aggregate of its true per-domain losses."""
    def true_loss(weights, scale=None, steps=None):
        return aggregate(spec, objective.true_domain_losses(weights, scale, steps))
    return dataclasses.replace(objective, true_loss=true_loss,
                               optimum=aggregate_optimum(objective, spec))

# --- Simulators: a level in (N, D) plus mixing-law terms ------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Simulator:
    """Noise-free per-domain losses L(w, N, T) = level(N, T) + sum_m c_m exp(t_m w), or negated
    accuracies -(chance + (1 - chance) sigmoid(slope (midpoint - L))); the objective: their mean."""
    name: str
    domains: tuple[str, ...]
    level: Callable                     # level(scale, steps) -> (K,)
    terms: Callable                     # terms(scale, steps) -> [(c (K,), t (K, K)), ...]
    scales: tuple[float, ...] = DEFAULT_SCALES
    steps: tuple[int, ...] = DEFAULT_STEPS
    accuracy: tuple | None = None       # (chance, slope, midpoint (K,)): negated accuracies
    noise_run_sd: float = 0.015         # a run's offset has sd noise_run_sd (N / 20M)^-exponent
    noise_scale_exponent: float = 0.1
    noise_checkpoint_sd: float = 0.004  # plus noise per checkpoint and domain
    noise_key: int = 0                  # noise seeded by (noise_key, seed, scale, weights)
    spearman: float | None = None

def reducible_loss(scale, steps):
    """Chinchilla's fit A/N^alpha + B/D^beta, D = steps * 2^19 (Hoffmann et al. 2022, Sec. 3.3)."""
    return 406.4 / scale ** 0.34 + 410.7 / (steps * TOKENS_PER_STEP) ** 0.28

def domain_losses(sim, weights, scale, steps):
    """Noise-free per-domain losses (or negated accuracies); weights (n, K) -> (n, K)."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    # Ye et al. 2024, Sec. 3: L_i = c_i + k_i exp(sum_j t_ij w_j), one k exp(.) per term
    losses = sim.level(scale, steps) + sum(c * np.exp(w @ t.T) for c, t in sim.terms(scale, steps))
    if sim.accuracy is None:
        return losses
    chance, slope, midpoint = sim.accuracy
    return -(chance + (1.0 - chance) / (1.0 + np.exp(-slope * (midpoint - losses))))

def noise_sd_at(sim, scale):
    """Seed-to-seed sd of the objective (the mean over domains) at a model scale."""
    run_sd = sim.noise_run_sd * (scale / 20e6) ** -sim.noise_scale_exponent
    return math.sqrt(run_sd ** 2 + sim.noise_checkpoint_sd ** 2 / len(sim.domains))

def run_simulator(sim, weights, scale, steps, seed):
    """One simulated training run: the Objective.run of a simulator."""
    w = check_weights(weights, len(sim.domains))
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number of parameters, got {scale!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    base = [sim.noise_key, int(seed), int(round(scale))] + [int(x) for x in np.round(w * 2.0 ** 40)]
    run_sd = sim.noise_run_sd * (scale / 20e6) ** -sim.noise_scale_exponent
    offset = run_sd * np.random.default_rng(np.random.SeedSequence(base + [0])).standard_normal()
    checkpoints = []
    for s in checkpoint_steps(sim.steps, steps):
        own = np.random.default_rng(np.random.SeedSequence(base + [s])).standard_normal(len(w))
        losses = domain_losses(sim, w, scale, s)[0] + offset + sim.noise_checkpoint_sd * own
        checkpoints.append({"steps": s, "loss": float(losses.mean()),
                            "domain_losses": dict(zip(sim.domains, map(float, losses)))})
    return {"loss": checkpoints[-1]["loss"], "domain_losses": checkpoints[-1]["domain_losses"],
            "checkpoints": checkpoints, "cost": flops_cost(scale, steps)}

def simulator_optimum(sim, scale, steps):
    """(weights (K,), objective) at the optimum; a loss (convex: c >= 0) certified to 1e-7 by the
    Frank-Wolfe gap grad(w).w - min_j grad(w)_j >= f(w) - min f (Jaggi 2013, Sec. 2)."""
    terms, f = sim.terms(scale, steps), lambda w: domain_losses(sim, w, scale, steps)[0]
    grad = None if sim.accuracy else lambda w: sum(c * np.exp(t @ w) @ t for c, t in terms) / len(w)
    w, value = minimize_aggregate(f, parse_aggregate("mean", sim.domains), grad)
    if grad is not None and grad(w) @ w - grad(w).min() > 1e-7:
        raise RuntimeError(f"{sim.name}: optimum not certified, Frank-Wolfe gap > 1e-7")
    return w, value

def spearman_to_target(sim, mixtures):
    """Spearman rho over `mixtures` (n, K) of the noise-free objective, smallest scale vs target."""
    at = lambda scale: domain_losses(sim, mixtures, scale, sim.steps[-1]).mean(axis=1)
    return float(spearmanr(at(sim.scales[0]), at(sim.scales[-1]))[0])

def random_similarity(rng, K):
    """Random (K, K) transfer S_ij of domain j's data to domain i: sparse, asymmetric, S_ii = 1."""
    S = rng.uniform(0.0, 0.5, (K, K)) * (rng.uniform(size=(K, K)) < 0.6)
    np.fill_diagonal(S, 1.0)
    return S

# --- BENCHMARKS: one mixing-law term whose rates move log-linearly with compute -------------------
# Transfer S_ij of j's data to i: prose (wikipedia, book), code (github), the others in between
_SLIMPAJAMA_SIMILARITY = np.array([[1.00, 0.30, 0.05, 0.30, 0.50],     # wikipedia
                                   [0.30, 1.00, 0.40, 0.30, 0.15],     # stackexchange
                                   [0.05, 0.35, 1.00, 0.10, 0.02],     # github
                                   [0.30, 0.30, 0.15, 1.00, 0.15],     # arxiv
                                   [0.50, 0.10, 0.02, 0.10, 1.00]])    # book
_SLIMPAJAMA_E = np.array([1.20, 1.05, 0.20, 0.85, 1.40])   # nats/token: code most predictable
BENCHMARKS = ("default", "sparse", "shift", "random")

def benchmark_parameters(name="default", num_domains=5, seed=0):
    """dict(name, domains, E, k, tau_small, tau_target, similarity, noise_key) of a BENCHMARKS
    instance: default, sparse (book gets 0 at the target), shift (the optimum moves far), random."""
    if name == "random":
        if num_domains < 2:
            raise ValueError(f"a random benchmark needs at least 2 domains, got {num_domains}")
        rng, K = np.random.default_rng(seed), num_domains
        S, direction = random_similarity(rng, K), rng.uniform(-1.0, 1.0, K)
        return dict(name=f"random-K{K}-seed{seed}", domains=tuple(f"domain{i}" for i in range(K)),
                    E=rng.uniform(0.5, 1.7, K), k=np.full(K, 3.0), similarity=S, noise_key=seed + 1,
                    tau_small=3.0 * np.exp(-0.6 * direction),
                    tau_target=3.0 * np.exp(0.6 * direction))
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; pick one of {BENCHMARKS} or a TESTBED name")
    level, delta = (3.5, 0.8) if name == "shift" else (3.0, 0.5)
    direction = np.array([1.0, 0.0, -1.0, -1.0, 1.0]) * (-1.0 if name == "sparse" else 1.0)
    return dict(name=name, domains=SLIMPAJAMA_DOMAINS, E=_SLIMPAJAMA_E, k=np.full(5, 3.0),
                similarity=_SLIMPAJAMA_SIMILARITY, tau_small=level * np.exp(-delta * direction),
                tau_target=level * np.exp(delta * direction), noise_key=0)

def benchmark_law(name="default", num_domains=5, seed=0):
    """The Simulator of a BENCHMARKS instance: level E_i + A/N^alpha + B/D^beta, one term
    k_i exp(-tau_i(p) sum_j S_ij w_j), tau_i(p) = tau_small_i^(1-p) tau_target_i^p."""
    par = benchmark_parameters(name, num_domains, seed)
    lo, hi = (math.log(DEFAULT_SCALES[i] * DEFAULT_STEPS[i]) for i in (0, -1))
    def terms(scale, steps):
        p = min(1.0, max(0.0, (math.log(scale * steps) - lo) / (hi - lo)))     # where log(N D) is
        return [(par["k"], -(par["tau_small"] ** (1 - p) * par["tau_target"] ** p)[:, None]
                 * par["similarity"])]
    return Simulator(name=par["name"], domains=par["domains"], terms=terms,
                     level=lambda scale, steps: par["E"] + reducible_loss(scale, steps),
                     noise_key=par["noise_key"])

# --- TESTBED: controlled transfer from the smallest scale to the target ---------------------------
LADDERS = {2: (1e9 / 60, 1e9), 3: (0.18e9, 0.48e9, 1e9), 7: DEFAULT_SCALES}  # 1:60; .18:.48:1
POOL_SIZE = 8000                         # Dirichlet(1) mixtures that calibrate and measure rho

# Test-bed instance (data/README.md): metric loss/jump/accuracy, LADDERS[num_scales], requested rho
Instance = NamedTuple("Instance", [("metric", str), ("num_domains", int), ("num_scales", int),
                                   ("rho", float), ("seed", int)])

TESTBED = {f"{m}-K{K}-L{L}-rho{rho:g}": Instance(m, K, L, rho, seed) for seed, (m, K, L, rho) in
           enumerate([("loss", 5, 7, 0.99), ("loss", 5, 7, 0.9), ("loss", 5, 7, 0.7),
                      ("loss", 5, 7, 0.5), ("loss", 5, 7, 0.2), ("loss", 5, 3, 0.9),
                      ("loss", 20, 2, 0.99), ("loss", 20, 2, 0.5), ("loss", 20, 3, 0.5),
                      ("loss", 20, 3, 0.2), ("accuracy", 5, 7, 0.9), ("accuracy", 5, 3, 0.5),
                      ("accuracy", 20, 2, 0.7), ("accuracy", 20, 7, 0.2), ("jump", 5, 7, 0.9),
                      ("jump", 5, 3, 0.5), ("jump", 20, 2, 0.99)])}

@functools.lru_cache(maxsize=64)
def testbed_law(instance, name="testbed"):
    """The Simulator of a test-bed Instance (design: data/README.md), per-domain losses
        L_i(w, N, T) = E_i + A/N^alpha + B/D^beta [+ jump_i at the target scale]
                       + sqrt(r_N) a_g g_i(w) + sqrt(1 - r_N) a_h (h_i(w) - beta g_i(w)),
    r_N rising log-linearly in N from r_0 to 1 at the target; r_0 bisected to the requested rho."""
    rng, K = np.random.default_rng(instance.seed), instance.num_domains
    scales, rates = LADDERS[instance.num_scales], lambda: -rng.uniform(1.0, 4.0, K)[:, None]
    t_g, t_h = rates() * random_similarity(rng, K), rates() * random_similarity(rng, K)
    E, above = rng.uniform(0.8, 1.6, K), rng.uniform(1.2, 1.8, K)     # accuracy midpoint E + above
    jump = rng.uniform(0.1, 0.2, K) * (instance.metric == "jump")
    pool = rng.dirichlet(np.ones(K), POOL_SIZE)
    g, h = np.exp(pool @ t_g.T), np.exp(pool @ t_h.T)                       # (n, K) each
    beta = np.cov(h.mean(1), g.mean(1))[0, 1] / g.mean(1).var(ddof=1)   # h - beta g _|_ g on pool
    a_g, a_h = 0.04 / g.mean(1).std(), 0.04 / (h - beta * g).mean(1).std()     # objective sd 0.04
    accuracy = (0.25, 1.5, E + above) if instance.metric == "accuracy" else None
    run_sd, exponent, checkpoint_sd = (0.005, 0.0, 0.002) if accuracy else (0.02, 0.1, 0.004)
    def law(r_0):
        def terms(scale, steps):
            r = r_0 + (1 - r_0) * math.log(scale / scales[0]) / math.log(scales[-1] / scales[0])
            c_g, c_h = math.sqrt(r) * a_g - math.sqrt(1 - r) * a_h * beta, math.sqrt(1 - r) * a_h
            return [(np.full(K, c_g), t_g), (np.full(K, c_h), t_h)]
        def level(scale, steps):
            (c_g, _), (c_h, _) = terms(scale, steps)
            centre = c_g * g.mean(0) + c_h * h.mean(0)
            return E + reducible_loss(scale, steps) + jump * (scale == scales[-1]) - centre
        return Simulator(name=name, domains=tuple(f"domain{i}" for i in range(K)), level=level,
                         terms=terms, scales=scales, accuracy=accuracy, noise_run_sd=run_sd,
                         noise_scale_exponent=exponent, noise_checkpoint_sd=checkpoint_sd,
                         noise_key=1000 + instance.seed)
    lo, hi = 0.0, 1.0
    for _ in range(20):                                      # bisection: rho rises with r_0
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if spearman_to_target(law(mid), pool) >= instance.rho else (mid, hi)
    fresh = np.random.default_rng([instance.seed, 1]).dirichlet(np.ones(K), POOL_SIZE)
    return dataclasses.replace(law(lo), spearman=spearman_to_target(law(lo), fresh))

@functools.lru_cache(maxsize=64)
def make_benchmark(name="default", num_domains=5, seed=0):
    """Objective of a BENCHMARKS (num_domains, seed: "random" only) or TESTBED simulator."""
    sim = testbed_law(TESTBED[name], name) if name in TESTBED else \
        benchmark_law(name, num_domains, seed)
    target, per_domain = (sim.scales[-1], sim.steps[-1]), functools.partial(domain_losses, sim)
    w_opt, f_opt = simulator_optimum(sim, *target)
    w_opt.setflags(write=False)                               # shared by every caller: read-only
    return Objective(name=sim.name, domains=sim.domains, scales=sim.scales, steps=sim.steps,
                     target=target, run=functools.partial(run_simulator, sim), cost=flops_cost,
                     true_loss=noise_free(target, lambda *a: per_domain(*a).mean(axis=1)),
                     true_domain_losses=noise_free(target, per_domain), optimum=(w_opt, f_opt),
                     noise_sd=noise_sd_at(sim, target[0]), spearman=sim.spearman)

# --- Objective files: a Python file that defines loss(weights, scale, steps), or a search space
def load_objective_file(path, domains=None, scales=None, steps=None, target=None,
                        tokens_per_step=None):
    """Objective of a Python file defining loss() (format: README.md, "Objective files"), which is
    noise-free (true_loss calls it) unless it takes a seed; DOMAINS and no loss: a search space
    (run None). Arguments replace the file's DOMAINS, SCALES, STEPS, TARGET, TOKENS_PER_STEP."""
    where = f"objective file {path}"
    if not os.path.isfile(path):
        raise ValueError(f"{where} does not exist; pass the path of a Python file defining loss()")
    spec = importlib.util.spec_from_file_location("objective_file", path)
    if spec is None:
        raise ValueError(f"{where} is not a Python file; its name must end in .py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:                                    # the user's code: one line
        raise ValueError(f"{where} failed to import: {type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0]}") from None
    loss_fn = getattr(module, "loss", None)
    if not callable(loss_fn) and not hasattr(module, "DOMAINS"):
        raise ValueError(f"{where} does not define a function loss(weights, scale, steps), nor "
                         "DOMAINS for a search space only")
    pick = lambda given, name, default: getattr(module, name, default) if given is None else given
    domains = tuple(pick(domains, "DOMAINS", SLIMPAJAMA_DOMAINS))
    scales = tuple(float(s) for s in pick(scales, "SCALES", DEFAULT_SCALES))
    step_grid = tuple(int(s) for s in pick(steps, "STEPS", DEFAULT_STEPS))
    target = tuple(pick(target, "TARGET", (max(scales), max(step_grid))))
    ascending = lambda v: len(v) and list(v) == sorted(set(v)) and all(0 < x < np.inf for x in v)
    if not domains or not all(isinstance(d, str) and d for d in domains) or \
            len(set(domains)) != len(domains):
        raise ValueError(f"{where}: DOMAINS must be distinct non-empty strings, got {domains}")
    if not ascending(scales) or not ascending(step_grid):
        raise ValueError(f"{where}: SCALES and STEPS must be distinct positive numbers in "
                         f"ascending order, got {scales} and {step_grid}")
    if len(target) != 2 or target[0] not in scales or target[1] not in step_grid:
        raise ValueError(f"{where}: TARGET {target} must be a (scale, steps) of SCALES x STEPS")
    cost = getattr(module, "cost", None)
    cost = cost if callable(cost) else functools.partial(
        flops_cost, tokens_per_step=pick(tokens_per_step, "TOKENS_PER_STEP", TOKENS_PER_STEP))
    optimum, noise_sd = getattr(module, "OPTIMUM", None), getattr(module, "NOISE_SD", None)
    if optimum is not None:
        try:
            best_weights, best_loss = optimum
            best_loss = float(best_loss)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: OPTIMUM must be (weights, loss), the best mixture in "
                             f"DOMAINS order and its target loss; got {optimum!r:.60}") from None
        optimum = (check_weights(best_weights, len(domains)), best_loss)
    space = Objective(name=f"file:{path}", domains=domains, scales=scales, steps=step_grid,
                      target=(float(target[0]), int(target[1])), cost=cost, optimum=optimum,
                      noise_sd=None if noise_sd is None else float(noise_sd), run=None)
    if not callable(loss_fn):
        return space
    takes_seed = "seed" in inspect.signature(loss_fn).parameters
    def call(weights, scale, s, seed=0):
        """(loss, {domain: loss}) of loss() at one checkpoint; other dict keys are ignored."""
        what = f"{where}: loss(weights, scale={scale:g}, steps={s})"
        value = loss_fn(check_weights(weights, len(domains)), scale, s,
                        **({"seed": seed} if takes_seed else {}))
        per_domain = {}
        if isinstance(value, dict):
            if "loss" not in value:
                raise ValueError(f"{what} returned a dict without a 'loss' key; return a float "
                                 "or {'loss': ..., ...}")
            per_domain = value.get("domain_losses", {d: value[d] for d in domains if d in value})
            if set(per_domain) - set(domains):
                raise ValueError(f"{what} returned losses for unknown domains "
                                 f"{sorted(set(per_domain) - set(domains))}; DOMAINS are {domains}")
            value, per_domain = value["loss"], {d: float(per_domain[d]) for d in per_domain}
        try:
            loss = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{what} returned {type(value).__name__} {value!r}; it must return a "
                             "float") from None
        if not math.isfinite(loss) or not all(map(math.isfinite, per_domain.values())):
            raise ValueError(f"{what} returned a non-finite loss ({loss}, {per_domain}); losses "
                             "must be finite")
        return loss, per_domain
    def run(weights, scale, steps, seed=0):
        checkpoints = [dict(zip(("steps", "loss", "domain_losses"),
                                (s, *call(weights, scale, s, seed))))
                       for s in checkpoint_steps(step_grid, steps)]
        run_cost = float(cost(scale, steps))
        if not (math.isfinite(run_cost) and run_cost > 0):
            raise ValueError(f"{where}: cost({scale:g}, {steps}) must be > 0, got {run_cost}")
        return dict(checkpoints[-1], checkpoints=checkpoints, cost=run_cost)
    def per_domain(w, scale, steps):
        rows = [call(v, float(scale), int(steps))[1] for v in w]
        if any(len(r) != len(domains) for r in rows):
            raise ValueError(f"{where}: loss() does not return every domain's loss; return "
                             "{'loss': ..., 'domain_losses': {domain: loss, ...}}")
        return [[r[d] for d in domains] for r in rows]
    objective = lambda w, scale, steps: [call(v, float(scale), int(steps))[0] for v in w]
    return dataclasses.replace(space, run=run) if takes_seed else dataclasses.replace(
        space, run=run, true_loss=noise_free(space.target, objective),
        true_domain_losses=noise_free(space.target, per_domain))

# --- Run tables: a CSV of runs, replayed exactly (format: data/README.md) ------------------------
# A parsed run table: domains, fidelity ("steps" or "tokens"), the distinct mixtures (M, K), per
# CSV row a dict: line, run, seed, w, mixture, scale, tokens, steps, cost, objective, domain_losses
RunTable = NamedTuple("RunTable", [("path", str), ("domains", tuple), ("fidelity", str),
                                   ("mixtures", np.ndarray), ("rows", list)])

def read_table(path, metric="loss"):
    """RunTable of a run table (data/README.md); if malformed, one line naming row and column."""
    if not os.path.isfile(path):
        raise ValueError(f"table {path} does not exist; pass the path of a CSV file of runs")
    with open(path, newline="") as f:
        lines = [(n + 1, cells) for n, cells in enumerate(csv.reader(f)) if "".join(cells).strip()]
    if not lines:
        raise ValueError(f"table {path} is empty; it needs a header row and one row per run")
    header = [h.strip() for h in lines[0][1]]
    col = {h: i for i, h in enumerate(header)}
    domains = tuple(h[2:] for h in header if h.startswith("w_"))
    for h in header:
        if header.count(h) > 1:
            raise ValueError(f"table {path}: row 1 (header), column '{h}' appears more than once")
    for c in ("run", "scale", "tokens", metric):
        if c not in col:
            raise ValueError(f"table {path}: row 1 (header) has no column '{c}'; required: run, "
                             f"w_<domain> for each domain, scale, tokens, {metric}")
    if len(domains) < 2 or not all(domains):
        raise ValueError(f"table {path}: row 1 (header) needs w_<domain> columns for >= 2 domains")
    rows, mixtures, run_mixture, seen = [], [], {}, {}
    for line, cells in lines[1:]:
        if len(cells) != len(header):
            raise ValueError(f"table {path}: row {line} has {len(cells)} cells, not {len(header)}")
        bad = lambda c, problem: ValueError(f"table {path}: row {line}, column '{c}': {problem}")
        cell = lambda c: cells[col[c]].strip()
        def number(c):
            try:
                value = float(cell(c))
            except ValueError:
                raise bad(c, f"{cell(c)!r} is not a number") from None
            if not math.isfinite(value):
                raise bad(c, f"{cell(c)!r} is not finite")
            return value
        if not cell("run"):
            raise bad("run", "is empty; give every run an id")
        raw = np.array([number(f"w_{d}") for d in domains])
        w = check_weights(raw, len(domains), what=f"table {path}: row {line}, columns "
                                                  f"w_{domains[0]}..w_{domains[-1]}:")
        w = raw if np.abs(w - raw).max() <= SAME_MIXTURE_TOL else w   # keep the table's values
        r = {c: number(c) for c in ["scale", "tokens"] + [c for c in ("steps", "cost") if c in col]}
        for c, v in r.items():
            if v <= 0 or (c == "steps" and v != int(v)):
                raise bad(c, f"{v} must be a positive" + " integer" * (c == "steps"))
        near = [m for m, v in enumerate(mixtures) if np.abs(v - w).max() <= SAME_MIXTURE_TOL]
        m, first = run_mixture.setdefault(cell("run"), (near[0] if near else len(mixtures), line))
        if m < len(mixtures) and m not in near:                # one run id = one mixture
            j = int(np.argmax(np.abs(w - mixtures[m])))
            raise bad(f"w_{domains[j]}", f"run '{cell('run')}' has weight {w[j]:.6g} here but "
                      f"{mixtures[m][j]:.6g} in row {first}")
        mixtures += [w] if m == len(mixtures) else []         # other ids, same weights: replicates
        r.update(line=line, run=cell("run"), seed=cell("seed") if "seed" in col else "", w=w,
                 mixture=m, objective=number(metric), steps=int(r.get("steps", r["tokens"])),
                 cost=r.get("cost", flops_cost(r["scale"], r["tokens"], 1)),
                 domain_losses={d: number(f"loss_{d}") for d in domains
                                if f"loss_{d}" in col and cell(f"loss_{d}")})   # blank = unknown
        key = (r["run"], r["seed"], r["scale"], r["steps"])
        if key in seen:
            raise bad("run", f"duplicate of row {seen[key]} (same run, scale, steps or tokens, "
                      "seed); drop one, or add a seed column to keep seed repeats")
        seen[key] = line
        rows.append(r)
    if not rows:
        raise ValueError(f"table {path} has a header but no rows; add one row per run")
    return RunTable(path, domains, "steps" if "steps" in col else "tokens", np.array(mixtures),
                    rows)

def load_table(path, metric="loss", target_scale=None):
    """Objective replaying a run table (format, replicates: data/README.md), the column `metric` its
    objective; candidates: the mixtures run at the target, target_scale (default the largest) at its
    largest steps; cost: the rows' mean, else flops_cost; noise_sd: pooled over replicates."""
    table = read_table(path, metric)
    scales = tuple(sorted({r["scale"] for r in table.rows}))
    target_scale = scales[-1] if target_scale is None else float(target_scale)
    if target_scale not in scales:
        raise ValueError(f"table {path}: target scale {target_scale:g} is not in the table; its "
                         f"scales are {', '.join(f'{s:g}' for s in scales)}")
    target = (target_scale, max(r["steps"] for r in table.rows if r["scale"] == target_scale))
    tokens_per_step = np.median([r["tokens"] / r["steps"] for r in table.rows]) \
        if table.fidelity == "steps" else 1.0
    cells = {}                          # (mixture, scale, steps) -> replicate rows by run id, seed
    for r in sorted(table.rows, key=lambda r: (r["run"], r["seed"])):
        cells.setdefault((r["mixture"], r["scale"], r["steps"]), []).append(r)
    def replicates(weights, scale, steps, must=True):
        distance = np.abs(table.mixtures - check_weights(weights, len(table.domains))).max(axis=1)
        key = (int(np.argmin(distance)), float(scale), int(steps))
        if distance.min() <= SAME_MIXTURE_TOL and key in cells:
            return cells[key]
        if must:
            raise ValueError(f"table {path} has no run of mixture {np.round(weights, 4).tolist()} "
                             f"at scale {scale:g}, steps {steps}; ask only what available() allows")
    def run(weights, scale, steps, seed=0):
        rows = replicates(weights, scale, steps)
        r = rows[int(seed) % len(rows)]                       # this replicate at this scale
        chain = sorted((c["steps"], c["line"], c) for c in table.rows if c["steps"] <= r["steps"]
                       and (c["run"], c["seed"], c["scale"]) == (r["run"], r["seed"], r["scale"]))
        checkpoints = [{"steps": c["steps"], "loss": c["objective"],
                        "domain_losses": dict(c["domain_losses"])} for _, _, c in chain]
        return dict(checkpoints[-1], checkpoints=checkpoints, cost=r["cost"])
    def cost(scale, steps):
        at = [r["cost"] for r in table.rows if (r["scale"], r["steps"]) == (scale, steps)]
        return float(np.mean(at)) if at else flops_cost(scale, steps, tokens_per_step)
    mean = lambda key, w, N, T: [np.mean([key(r) for r in replicates(v, N, T)], axis=0) for v in w]
    true_loss = noise_free(target, functools.partial(mean, lambda r: r["objective"]))
    per_domain = functools.partial(mean, lambda r: [r["domain_losses"][d] for d in table.domains])
    known = all(len(r["domain_losses"]) == len(table.domains) for r in table.rows)
    candidates = np.array([v for m, v in enumerate(table.mixtures) if (m, *target) in cells])
    losses = true_loss(candidates)                                                    # (M,)
    groups = {key: np.array([r["objective"] for r in rows]) for key, rows in cells.items()
              if len(rows) > 1}
    groups = [g for (_, s, t), g in groups.items() if (s, t) == target] or list(groups.values())
    # pooled sd: sqrt(sum_g sum_i (y_gi - mean_g)^2 / sum_g (n_g - 1))
    pooled = sum(((g - g.mean()) ** 2).sum() for g in groups) / \
        max(1, sum(len(g) - 1 for g in groups))
    return Objective(name=f"table:{path}", domains=table.domains, scales=scales, target=target,
                     steps=tuple(sorted({r["steps"] for r in table.rows})), run=run, cost=cost,
                     candidates=candidates, true_loss=true_loss,
                     available=lambda w, N, T: replicates(w, N, T, must=False) is not None,
                     true_domain_losses=noise_free(target, per_domain) if known else None,
                     optimum=(candidates[int(np.argmin(losses))], float(losses.min())),
                     noise_sd=math.sqrt(pooled) if groups else None)

def write_table(objective, path, n_mixtures=64, seeds=(0, 1), seed=0):
    """Write `objective` as a run table of "m00" (uniform) and n_mixtures - 1 Dirichlet(1) draws
    (loss_<domain> columns if every checkpoint has every domain's loss)."""
    K, domains = len(objective.domains), objective.domains
    pool = np.vstack([np.full(K, 1 / K),
                      np.random.default_rng(seed).dirichlet(np.ones(K), n_mixtures - 1)])
    runs = [(m, w, scale, s, c) for m, w in enumerate(pool) for scale in objective.scales
            for s in seeds for c in objective.run(w, scale, objective.steps[-1], s)["checkpoints"]]
    known = all(set(domains) <= set(c.get("domain_losses") or {}) for *_, c in runs)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["run", "seed", *(f"w_{d}" for d in domains), "scale", "tokens", "steps",
                      "cost", *(f"loss_{d}" for d in domains if known), "loss"])
        for m, w, scale, s, c in runs:
            cost = objective.cost(scale, c["steps"])
            out.writerow([f"m{m:02d}", s, *w, scale, round(cost / (6 * scale)), c["steps"],
                          cost, *(c["domain_losses"][d] for d in domains if known), c["loss"]])

def main():
    """Print the test bed: each instance's ladder, noise sd, optimum and Spearman."""
    print(f"{'instance':<24} {'scales':<22} {'noise sd':>8} {'optimum':>8} {'spearman':>8}")
    for name in TESTBED:
        o = make_benchmark(name)
        ladder = ", ".join(f"{s / 1e6:.4g}M" for s in o.scales) if len(o.scales) < 7 else \
            "20M..1B (7)"
        print(f"{name:<24} {ladder:<22} {o.noise_sd:8.4f} {o.optimum[1]:8.4f} {o.spearman:8.3f}")

if __name__ == "__main__":
    main()
