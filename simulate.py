"""Objectives for mixbo: synthetic multi-scale benchmarks, objective files, and replay of run tables.

Everything mixbo optimizes is an `Objective` (defined here, the one place it is documented; train_lm.py
builds one too). A trial trains a model on a data mixture at one model scale for some steps:

    run(weights, scale, steps, seed) -> {
        "loss": float,                       # objective to MINIMIZE at (scale, steps)
        "domain_losses": {domain: float},    # per-domain losses at (scale, steps) ({} if unknown)
        "checkpoints": [{"steps": int, "loss": float, "domain_losses": {...}}, ...],
                                             # every checkpoint in `steps` below the requested steps, then
                                             # the requested steps itself; ascending; last == requested
        "cost": float}                       # cost of this run = cost(scale, steps)

    weights: np.ndarray (K,) in `domains` order, >= 0, summing to 1 (1e-6; renormalized)
    scale:   model size N in parameters (float), normally one of `scales`
    steps:   training steps T (int), normally one of `steps`
    seed:    int >= 0, the training seed: the same (weights, scale, steps, seed) gives the same numbers,
             and a longer run with the same seed passes through the same earlier checkpoints.

A run that raises or returns a non-finite loss is a failed trial (mixbo records it and goes on). Training to
T steps yields every earlier checkpoint for free: the run costs cost(scale, T) and each checkpoint is an
observation. The budget unit is cost(*target), one training run at the target fidelity.

Objective fields (frozen dataclass below):
    name, domains (K names), scales (ascending floats), steps (ascending ints),
    target = (scale, steps), an element of scales x steps (normally the largest of both),
    run (above), cost(scale, steps) -> float (6 * N * tokens by default),
    candidates: (M, K) pool of the only mixtures that may be tried (table replay), None = whole simplex,
    available(weights, scale, steps) -> bool: can this run be made? (table replay), None = always,
    true_loss(weights, scale=None, steps=None): noise-free objective, at the target unless scale/steps
        are given; weights (K,) -> float or (n, K) -> (n,); benchmarks and tables only, else None,
    optimum = (weights (K,), loss): the best mixture at the target (benchmarks and tables only),
    noise_sd: seed-to-seed sd of the objective at the target, if known.

Three kinds of objective live here:

1. Synthetic benchmarks, `make_benchmark(name)`: K domains, scales 20M..1B, 2500..20000 steps of
   2^19 tokens. The per-domain loss is Ye et al.'s data mixing law (Ye et al. 2024, "Data Mixing Laws",
   Sec. 3, multi-domain law: L_i(r) = c_i + k_i exp(sum_j t_ij r_j)) written on top of the Chinchilla
   scaling law (Hoffmann et al. 2022, Sec. 3.3, parametric fit: L(N, D) = E + A/N^alpha + B/D^beta):

       c_i(N, D)      = E_i + A / N^alpha + B / D^beta            Chinchilla, with its A, B, alpha, beta
       L_i(w, N, D)   = c_i(N, D) + k_i exp(-tau_i(p) sum_j S_ij w_j)
       objective      = (1/K) sum_i L_i                           equal-weight average per-domain loss

   At each fixed (N, D) this is exactly Ye et al.'s law with c_i from Chinchilla and t_ij = -tau_i S_ij
   (S_ii = 1: own data helps most; S_ij in [0, 1): transfer from domain j to domain i). tau_i is how fast
   domain i saturates with relevant data; it moves log-linearly with compute,
   tau_i(p) = tau_small_i^(1-p) * tau_target_i^p, where p = position of log(N*D) between the smallest
   and the target fidelity (clipped to [0, 1]). That moves the optimum with scale, smoothly, so the
   small scales rank mixtures much like the target does but do not share its optimum (the published
   finding: a 25M-optimal mixture lost to uniform at 154M). Differences between mixtures are a few
   hundredths of a nat near the optimum; scale moves the loss by whole nats. Every term is
   k exp(affine in w) with k >= 0, so the objective is convex in w at every fidelity: its optimum is
   computed by multi-start SLSQP polished by an active-set Newton method, and certified by the
   Frank-Wolfe duality gap (Jaggi 2013, Sec. 2), which bounds f(w) - min f (tolerance 1e-10 nats).
   Benchmarks: "default" (interior optimum), "sparse" (optimum on a face: book = 0), "shift" (the
   optimum moves far: small scales mislead), "random" (K domains, instance drawn from a seed).

   Observation noise: a run-level offset shared by all domains and checkpoints of one run,
   sd sigma_run(N) = 0.015 (N / 20M)^-0.1 (0.015 at 20M, as measured seed-to-seed for 25M models;
   0.010 at 1B), plus an independent per-checkpoint, per-domain part of sd 0.004
   (0.004/sqrt(K) on the average). Seeded by (benchmark, seed, scale, checkpoint, weights).

2. Objective files, `load_objective_file(path)`: a Python file defining loss(weights, scale, steps).
3. Run tables, `load_table(path)`: a CSV of real runs replayed exactly as a pool-based benchmark.

The formats of 2 and 3 are documented at their loaders. `python simulate.py` prints the benchmark table.
"""
from __future__ import annotations

import csv
import functools
import importlib.util
import inspect
import math
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.optimize import minimize
from scipy.stats import spearmanr

# ---------------------------------------------------------------------------------------------------------
# The objective signature

@dataclass(frozen=True)
class Objective:
    name: str
    domains: tuple[str, ...]
    scales: tuple[float, ...]             # ascending, parameters
    steps: tuple[int, ...]                # ascending checkpoint step counts
    target: tuple[float, int]             # (scale, steps), an element of scales x steps
    run: Callable                         # run(weights (K,), scale, steps, seed) -> dict (module docstring)
    cost: Callable                        # cost(scale, steps) -> float; budget unit = cost(*target)
    candidates: np.ndarray | None = None  # (M, K) fixed pool of mixtures (table replay); None = whole simplex
    available: Callable | None = None     # available(weights, scale, steps) -> bool; None = always
    true_loss: Callable | None = None     # true_loss(weights, scale=None, steps=None) -> noise-free objective
    optimum: tuple | None = None          # (weights (K,), loss) best at the target
    noise_sd: float | None = None         # seed-to-seed sd of the objective at the target, if known


SLIMPAJAMA_DOMAINS = ("wikipedia", "stackexchange", "github", "arxiv", "book")
DEFAULT_SCALES = (20e6, 40e6, 80e6, 150e6, 300e6, 600e6, 1e9)
DEFAULT_STEPS = (2500, 5000, 10000, 20000)
TOKENS_PER_STEP = 2 ** 19                 # 512 sequences of 1024 tokens per optimizer step

# Hoffmann et al. 2022, Sec. 3.3 (Approach 3, parametric fit): L(N, D) = E + A/N^alpha + B/D^beta
CHINCHILLA_A, CHINCHILLA_B = 406.4, 410.7
CHINCHILLA_ALPHA, CHINCHILLA_BETA = 0.34, 0.28


def flops_cost(scale, steps, tokens_per_step=TOKENS_PER_STEP):
    """Training FLOPs 6 * N * D (Kaplan et al. 2020, Sec. 2.1), D = steps * tokens_per_step."""
    return 6.0 * float(scale) * float(steps) * float(tokens_per_step)


def check_weights(weights, num_domains, tol=1e-6, what="weights"):
    """Return weights as a float64 (K,) array on the simplex, or raise a one-line ValueError naming `what`.
    The one simplex check of the project: mixbo.py (--mixture, tol 1e-9) and train_lm.py call it too."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (num_domains,):
        raise ValueError(f"{what} must have shape ({num_domains},), got {w.shape}; pass one weight per domain")
    if not np.all(np.isfinite(w)) or np.any(w < -1e-12) or abs(w.sum() - 1.0) > tol:
        raise ValueError(f"{what} {np.round(w, 6).tolist()} is off the simplex: weights must be >= 0 and sum to 1 "
                         f"within {tol:g} (sum is {w.sum():.12g})")
    w = np.clip(w, 0.0, None)
    return w / w.sum()


def checkpoint_steps(grid, steps):
    """The checkpoints a run to `steps` passes: grid steps below it, then `steps` itself (ascending)."""
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return [int(s) for s in grid if s < steps] + [int(steps)]


# ---------------------------------------------------------------------------------------------------------
# Synthetic benchmarks: Chinchilla scaling law x Ye et al. mixing law

@dataclass(frozen=True, eq=False)
class MixingLaw:
    """Parameters of one synthetic benchmark (formulas in the module docstring)."""
    name: str
    domains: tuple[str, ...]
    E: np.ndarray                  # (K,) irreducible loss per domain, nats/token
    k: np.ndarray                  # (K,) size of the mixture term, nats (Ye et al. k_i)
    tau_small: np.ndarray          # (K,) saturation rate at the smallest fidelity (p = 0)
    tau_target: np.ndarray         # (K,) saturation rate at the target fidelity (p = 1)
    similarity: np.ndarray         # (K, K) S_ij: transfer of domain j's data to domain i, S_ii = 1
    scales: tuple[float, ...] = DEFAULT_SCALES
    steps: tuple[int, ...] = DEFAULT_STEPS
    tokens_per_step: int = TOKENS_PER_STEP
    noise_run_sd: float = 0.015    # sd of the run-level offset at the smallest scale
    noise_scale_exponent: float = 0.1   # sigma_run(N) = noise_run_sd * (N / N_min)^-exponent
    noise_checkpoint_sd: float = 0.004  # per-checkpoint, per-domain sd
    noise_key: int = 0             # mixed into every noise seed, so instances draw different noise


def compute_position(law, scale, steps):
    """p in [0, 1]: where log(N * D) lies between the smallest fidelity and the target (largest)."""
    lo = math.log(law.scales[0] * law.steps[0])
    hi = math.log(law.scales[-1] * law.steps[-1])
    return min(1.0, max(0.0, (math.log(scale * steps) - lo) / (hi - lo)))


def reducible_loss(scale, steps, tokens_per_step=TOKENS_PER_STEP):
    """Chinchilla's A/N^alpha + B/D^beta (Hoffmann et al. 2022, Sec. 3.3), D = steps * tokens_per_step."""
    tokens = steps * tokens_per_step
    return CHINCHILLA_A / scale ** CHINCHILLA_ALPHA + CHINCHILLA_B / tokens ** CHINCHILLA_BETA


def mixing_coefficients(law, scale, steps):
    """(R, t): Chinchilla's reducible loss R (float) and the mixing-law exponents t (K, K) at (scale, steps)."""
    p = compute_position(law, scale, steps)
    tau = law.tau_small ** (1.0 - p) * law.tau_target ** p      # (K,) log-linear in compute
    t = -tau[:, None] * law.similarity                          # (K, K) t_ij of Ye et al. 2024's mixing law
    return reducible_loss(scale, steps, law.tokens_per_step), t


def domain_losses(law, weights, scale, steps):
    """Noise-free per-domain losses; weights (n, K) -> (n, K)."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))   # (n, K)
    R, t = mixing_coefficients(law, scale, steps)
    return law.E + R + law.k * np.exp(w @ t.T)                 # (n, K) c_i + k_i exp(sum_j t_ij w_j), Ye et al.


def mixture_loss(law, weights, scale, steps):
    """Noise-free objective, the equal-weight average of the per-domain losses; (n, K) -> (n,)."""
    return domain_losses(law, weights, scale, steps).mean(axis=1)


def mixture_loss_grad(law, weights, scale, steps):
    """Gradient of mixture_loss in w for one mixture; (K,) -> (K,)."""
    _, t = mixing_coefficients(law, scale, steps)
    mix = law.k * np.exp(t @ weights)                          # (K,) per-domain mixture terms
    return (mix @ t) / len(weights)                            # d/dw_j (1/K) sum_i k_i e^{t_i.w}


def noise_sd_at(law, scale):
    """Seed-to-seed sd of the objective (average loss) at a model scale."""
    run_sd = law.noise_run_sd * (scale / law.scales[0]) ** -law.noise_scale_exponent
    return math.sqrt(run_sd ** 2 + law.noise_checkpoint_sd ** 2 / len(law.domains))


def _weights_entropy(w):
    """Weights as non-negative ints for a seed: w_j rounded to 2^-40."""
    return [int(x) for x in np.round(w * 2.0 ** 40)]


def run_benchmark(law, weights, scale, steps, seed):
    """One simulated training run (the Objective.run of a benchmark); see the module docstring."""
    w = check_weights(weights, len(law.domains))
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number of parameters, got {scale!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    base = [law.noise_key, int(seed), int(round(scale))] + _weights_entropy(w)
    run_sd = law.noise_run_sd * (scale / law.scales[0]) ** -law.noise_scale_exponent
    run_offset = run_sd * np.random.default_rng(np.random.SeedSequence(base + [0])).standard_normal()
    checkpoints = []
    for s in checkpoint_steps(law.steps, steps):
        ckpt_rng = np.random.default_rng(np.random.SeedSequence(base + [s]))   # same s -> same draw
        per_domain = domain_losses(law, w, scale, s)[0]                          # (K,)
        per_domain = per_domain + run_offset + law.noise_checkpoint_sd * ckpt_rng.standard_normal(len(w))
        checkpoints.append({"steps": s, "loss": float(per_domain.mean()),
                            "domain_losses": dict(zip(law.domains, map(float, per_domain)))})
    last = checkpoints[-1]
    return {"loss": last["loss"], "domain_losses": last["domain_losses"], "checkpoints": checkpoints,
            "cost": flops_cost(scale, steps, law.tokens_per_step)}


def minimize_on_simplex(f, grad, hess, K, seed=0, n_random=24, tol=1e-10):
    """Minimize a smooth convex f on the simplex. SLSQP from the vertices, the facet centroids, the
    centroid and random (dense and sparse Dirichlet) starts finds the face of the optimum; Newton's method
    on that face then solves its KKT system to machine precision. The result is certified by the
    Frank-Wolfe gap g(w) = grad(w).w - min_j grad(w)_j >= f(w) - min f (Jaggi 2013, Sec. 2).
    Returns (w (K,), f(w), gap); raises RuntimeError if the gap exceeds tol.
    """
    rng = np.random.default_rng(seed)
    starts = [np.eye(K), np.full((1, K), 1.0 / K)]
    if K > 2:
        starts.append((1.0 - np.eye(K)) / (K - 1))             # centroid of each facet (one weight 0)
    starts += [rng.dirichlet(np.ones(K), n_random // 2), rng.dirichlet(np.full(K, 0.2), n_random // 2)]
    simplex = [{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(K)}]
    best_w, best_f = None, np.inf
    for w0 in np.concatenate(starts):
        res = minimize(f, w0, jac=grad, method="SLSQP", bounds=[(0.0, 1.0)] * K, constraints=simplex,
                       options={"ftol": 1e-10, "maxiter": 100})
        w = np.clip(res.x, 0.0, None) / np.clip(res.x, 0.0, None).sum()
        if f(w) < best_f:
            best_w, best_f = w, f(w)
    w = best_w.copy()
    support = w > 1e-6                                         # the face SLSQP converged to
    for _ in range(10 * K):                                    # active set: Newton on a face, then let in
        w[~support] = 0.0                                      # the coordinate the gradient asks for
        w = w / w.sum()
        for _ in range(50):                                    # Newton on the face: min f s.t. sum w_S = 1
            s = np.flatnonzero(support)
            g, H = grad(w)[s], hess(w)[np.ix_(s, s)]           # (|S|,), (|S|, |S|)
            kkt = np.block([[H, np.ones((len(s), 1))], [np.ones((1, len(s))), np.zeros((1, 1))]])
            step = np.linalg.solve(kkt, np.concatenate([-g, [0.0]]))[:-1]  # equality-constrained Newton step
            shrink = min([1.0] + [-w[i] / d for i, d in zip(s, step) if d < 0 and w[i] + d < 0])
            w[s] = np.clip(w[s] + shrink * step, 0.0, None)
            if shrink < 1.0:                                   # a weight hit 0: continue on the smaller face
                support &= w > 0.0
            w = w / w.sum()
            if np.abs(step).max() < 1e-15:
                break
        g = grad(w)
        if g[~support].size == 0 or g[~support].min() >= g @ w - 1e-15:
            break                                              # KKT holds: no zero weight wants to enter
        support[np.flatnonzero(~support)[np.argmin(g[~support])]] = True
    fw_gap = lambda v: float(grad(v) @ v - grad(v).min())      # Frank-Wolfe duality gap >= f(v) - min f
    w = min([w, best_w], key=fw_gap)                           # keep the SLSQP point if Newton did not help
    gap = fw_gap(w)
    if gap > tol:
        raise RuntimeError(f"simplex optimum not certified: Frank-Wolfe gap {gap:.2e} > {tol:.0e}")
    return w, float(f(w)), gap


def law_optimum(law, scale, steps):
    """(weights (K,), loss, gap): the noise-free optimum of the benchmark at (scale, steps)."""
    _, t = mixing_coefficients(law, scale, steps)
    K = len(law.domains)
    f = lambda w: float(mixture_loss(law, w, scale, steps)[0])
    g = lambda w: mixture_loss_grad(law, w, scale, steps)
    h = lambda w: (t.T * (law.k * np.exp(t @ w))) @ t / K      # (K, K) sum_i k_i e^{t_i.w} t_i t_i^T / K
    return minimize_on_simplex(f, g, h, K)


# Transfer between SlimPajama domains (row i receives from column j): Wikipedia and books share prose,
# StackExchange sits between prose and code, ArXiv shares math/technical text with StackExchange.
_SLIMPAJAMA_SIMILARITY = np.array([
    # wiki  stack  github arxiv  book
    [1.00, 0.30, 0.05, 0.30, 0.50],   # wikipedia
    [0.30, 1.00, 0.40, 0.30, 0.15],   # stackexchange
    [0.05, 0.35, 1.00, 0.10, 0.02],   # github
    [0.30, 0.30, 0.15, 1.00, 0.15],   # arxiv
    [0.50, 0.10, 0.02, 0.10, 1.00],   # book
])
# Irreducible losses (nats/token), illustrative: code is the most predictable, books the least.
_SLIMPAJAMA_E = np.array([1.20, 1.05, 0.20, 0.85, 1.40])


def _named_law(name):
    """The fixed SlimPajama-named benchmarks: tau_small = level * exp(-delta * direction) and
    tau_target = level * exp(+delta * direction). A domain with direction +1 saturates slowly at small
    compute (small models want much of it) and fast at the target (large models need less of it)."""
    if name == "default":      # interior optimum; the 20M optimum is ~1 noise sd worse at 1B, like uniform
        level, delta, direction, k = 3.0, 0.5, np.array([1.0, 0.0, -1.0, -1.0, 1.0]), 3.0
    elif name == "sparse":     # optimum on a face at the target: book gets weight exactly 0
        level, delta, direction, k = 3.0, 0.5, np.array([-1.0, 0.0, 1.0, 1.0, -1.0]), 3.0
    elif name == "shift":      # the optimum moves far: the small-scale optimum loses to uniform at the target
        level, delta, direction, k = 3.5, 0.8, np.array([1.0, 0.0, -1.0, -1.0, 1.0]), 3.0
    else:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {BENCHMARKS}")
    return MixingLaw(name=name, domains=SLIMPAJAMA_DOMAINS, E=_SLIMPAJAMA_E.copy(), k=np.full(5, k),
                     tau_small=level * np.exp(-delta * direction), tau_target=level * np.exp(delta * direction),
                     similarity=_SLIMPAJAMA_SIMILARITY.copy())


def random_law(num_domains, seed):
    """A random K-domain instance of the same family, for testing generality (seeded)."""
    if num_domains < 2:
        raise ValueError(f"a random benchmark needs at least 2 domains, got {num_domains}")
    rng = np.random.default_rng(seed)
    K = num_domains
    S = rng.uniform(0.0, 0.5, (K, K)) * (rng.uniform(size=(K, K)) < 0.6)   # sparse, asymmetric transfer
    np.fill_diagonal(S, 1.0)
    direction = rng.uniform(-1.0, 1.0, K)
    return MixingLaw(name=f"random-K{K}-seed{seed}", domains=tuple(f"domain{i}" for i in range(K)),
                     E=rng.uniform(0.5, 1.7, K), k=np.full(K, 3.0),
                     tau_small=3.0 * np.exp(-0.6 * direction), tau_target=3.0 * np.exp(0.6 * direction),
                     similarity=S, noise_key=int(seed) + 1)


BENCHMARKS = ("default", "sparse", "shift", "random")


def benchmark_law(name="default", num_domains=5, seed=0):
    """The MixingLaw of a named benchmark ("random" uses num_domains and seed; the others are fixed)."""
    return random_law(num_domains, seed) if name == "random" else _named_law(name)


@functools.lru_cache(maxsize=32)
def make_benchmark(name="default", num_domains=5, seed=0):
    """Objective for a synthetic benchmark: "default", "sparse", "shift" (K = 5 SlimPajama domains) or
    "random" (num_domains domains, instance drawn from `seed`). Cached: the optimum takes ~0.1 s."""
    law = benchmark_law(name, num_domains, seed)
    target = (law.scales[-1], law.steps[-1])
    w_opt, f_opt, _ = law_optimum(law, *target)
    w_opt.setflags(write=False)                                # shared by every caller (cached): read-only

    def true_loss(weights, scale=None, steps=None):
        scale, steps = (target[0] if scale is None else scale), (target[1] if steps is None else steps)
        w = np.asarray(weights, dtype=np.float64)
        y = mixture_loss(law, w, scale, steps)
        return float(y[0]) if w.ndim == 1 else y

    return Objective(name=law.name, domains=law.domains, scales=law.scales, steps=law.steps, target=target,
                     run=functools.partial(run_benchmark, law),
                     cost=functools.partial(flops_cost, tokens_per_step=law.tokens_per_step),
                     true_loss=true_loss, optimum=(w_opt, f_opt), noise_sd=noise_sd_at(law, target[0]))


# ---------------------------------------------------------------------------------------------------------
# Objective files: a Python file that defines loss(weights, scale, steps)

def _check_grid(domains, scales, steps, target, where):
    """Validate a search space; one-line ValueError naming `where` (the file or flag it came from)."""
    if not domains or any(not isinstance(d, str) or not d for d in domains) or len(set(domains)) != len(domains):
        raise ValueError(f"{where}: DOMAINS must be distinct non-empty strings, got {domains!r}")
    if not scales or any(not (np.isfinite(s) and s > 0) for s in scales) or list(scales) != sorted(set(scales)):
        raise ValueError(f"{where}: SCALES must be distinct positive numbers in ascending order, got {scales!r}")
    if not steps or any(int(s) != s or s < 1 for s in steps) or list(steps) != sorted(set(steps)):
        raise ValueError(f"{where}: STEPS must be distinct positive integers in ascending order, got {steps!r}")
    if len(target) != 2 or target[0] not in scales or target[1] not in steps:
        raise ValueError(f"{where}: TARGET {target!r} must be a (scale, steps) pair from SCALES x STEPS")


def _parse_loss(value, domains, where):
    """A loss() result -> (loss, {domain: loss}); accepts a number or a dict with 'loss' and per-domain
    losses under 'domain_losses' or under the domain names (other keys are ignored)."""
    if isinstance(value, dict):
        if "loss" not in value:
            raise ValueError(f"{where} returned a dict without a 'loss' key; return a float or {{'loss': ..., ...}}")
        per_domain = value.get("domain_losses", {d: value[d] for d in domains if d in value})
        unknown = sorted(set(per_domain) - set(domains))
        if unknown:
            raise ValueError(f"{where} returned losses for unknown domains {unknown}; DOMAINS are {list(domains)}")
        loss, per_domain = value["loss"], {d: float(per_domain[d]) for d in domains if d in per_domain}
    else:
        loss, per_domain = value, {}
    try:
        loss = float(loss)
    except (TypeError, ValueError):
        raise ValueError(f"{where} returned {type(loss).__name__} {loss!r}; it must return a float") from None
    if not math.isfinite(loss) or not all(map(math.isfinite, per_domain.values())):
        raise ValueError(f"{where} returned a non-finite loss ({loss}, {per_domain}); losses must be finite")
    return loss, per_domain


def load_objective_file(path, domains=None, scales=None, steps=None, target=None, tokens_per_step=None):
    """Objective from a Python file. The file must define

        loss(weights, scale, steps) -> float  or  {"loss": float, "domain_losses": {domain: float}}
                                               (per-domain losses may also sit under the domain names)
            weights: np.ndarray (K,) in DOMAINS order, on the simplex; scale: parameters; steps: int.
            A `seed` parameter, if loss has one, receives the run's seed (loss(weights, scale, steps, seed=...));
            without it the file is taken as noise-free and Objective.true_loss calls it.

    and may define (each falls back, in this order, to the argument given here (a CLI flag), else to
    the file's value, else to the default shown):
        DOMAINS = ("wikipedia", "stackexchange", "github", "arxiv", "book")
        SCALES = (20e6, 40e6, 80e6, 150e6, 300e6, 600e6, 1e9)      # parameters, ascending
        STEPS = (2500, 5000, 10000, 20000)                         # checkpoints, ascending
        TARGET = (max(SCALES), max(STEPS))
        TOKENS_PER_STEP = 2**19
        cost(scale, steps) = 6 * scale * steps * TOKENS_PER_STEP
        NOISE_SD = None (seed-to-seed sd at the target, if known)
        OPTIMUM = None ((weights, loss) best at the target, if known)

    A run to T steps calls loss once per checkpoint: at every STEPS value below T, then at T.
    A missing file or `loss`, or a bad value above, is a one-line ValueError; so is a call that returns a
    non-finite loss (mixbo records that trial as failed).
    """
    where = f"objective file {path}"
    if not os.path.isfile(path):
        raise ValueError(f"{where} does not exist; pass the path of a Python file that defines loss()")
    spec = importlib.util.spec_from_file_location("mixbo_objective_file", path)
    if spec is None:
        raise ValueError(f"{where} is not a Python file; its name must end in .py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:                                     # the user's code: report it in one line
        first_line = (str(e).splitlines() or [""])[0]
        raise ValueError(f"{where} failed to import: {type(e).__name__}: {first_line}") from None
    loss_fn = getattr(module, "loss", None)
    if not callable(loss_fn):
        raise ValueError(f"{where} does not define a function loss(weights, scale, steps)")
    pick = lambda given, attr, default: given if given is not None else getattr(module, attr, default)
    domains = tuple(pick(domains, "DOMAINS", SLIMPAJAMA_DOMAINS))
    scales = tuple(float(s) for s in pick(scales, "SCALES", DEFAULT_SCALES))
    step_grid = tuple(int(s) for s in pick(steps, "STEPS", DEFAULT_STEPS))
    target = tuple(pick(target, "TARGET", (max(scales), max(step_grid))))
    tokens_per_step = pick(tokens_per_step, "TOKENS_PER_STEP", TOKENS_PER_STEP)
    _check_grid(domains, scales, step_grid, target, where)
    target = (float(target[0]), int(target[1]))
    file_cost = getattr(module, "cost", None)
    cost = file_cost if callable(file_cost) else functools.partial(flops_cost, tokens_per_step=tokens_per_step)
    takes_seed = "seed" in inspect.signature(loss_fn).parameters

    def call(w, scale, s, seed):
        value = loss_fn(w.copy(), scale, s, seed=seed) if takes_seed else loss_fn(w.copy(), scale, s)
        return _parse_loss(value, domains, f"{where}: loss(weights, scale={scale:g}, steps={s})")

    def run(weights, scale, steps, seed=0):
        w = check_weights(weights, len(domains))
        checkpoints = []
        for s in checkpoint_steps(step_grid, steps):
            loss, per_domain = call(w, float(scale), s, seed)
            checkpoints.append({"steps": s, "loss": loss, "domain_losses": per_domain})
        run_cost = float(cost(scale, steps))
        if not (math.isfinite(run_cost) and run_cost > 0):
            raise ValueError(f"{where}: cost({scale:g}, {steps}) returned {run_cost}; it must be a positive number")
        last = checkpoints[-1]
        return {"loss": last["loss"], "domain_losses": last["domain_losses"], "checkpoints": checkpoints,
                "cost": run_cost}

    def true_loss(weights, scale=None, steps=None):
        scale, steps = (target[0] if scale is None else scale), (target[1] if steps is None else steps)
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim == 1:
            return call(check_weights(w, len(domains)), float(scale), int(steps), 0)[0]
        return np.array([call(check_weights(v, len(domains)), float(scale), int(steps), 0)[0] for v in w])

    optimum = getattr(module, "OPTIMUM", None)
    if optimum is not None:
        optimum = (check_weights(optimum[0], len(domains)), float(optimum[1]))
    noise_sd = getattr(module, "NOISE_SD", None)
    return Objective(name=f"file:{path}", domains=domains, scales=scales, steps=step_grid, target=target, run=run,
                     cost=cost, true_loss=None if takes_seed else true_loss, optimum=optimum,
                     noise_sd=None if noise_sd is None else float(noise_sd))


# ---------------------------------------------------------------------------------------------------------
# Run tables: a CSV of real runs, replayed exactly

@dataclass(frozen=True, eq=False)
class RunTable:
    """A parsed run table: one entry per CSV row (n rows), in file order."""
    path: str
    domains: tuple[str, ...]        # from the w_<domain> columns, in column order
    metric: str                     # name of the objective column
    fidelity: str                   # "steps" (a steps column exists) or "tokens" (steps axis = tokens)
    row: np.ndarray                 # (n,) CSV line number of each row, for messages
    run: tuple[str, ...]            # (n,) run id: one mixture, shared across scales
    seed: tuple[str, ...]           # (n,) seed column ("" when the table has none)
    mixture: np.ndarray             # (n,) index into `mixtures`
    mixtures: np.ndarray            # (M, K) distinct mixtures, renormalized to sum to 1
    scale: np.ndarray               # (n,) parameters
    tokens: np.ndarray              # (n,) training tokens at the row
    steps: np.ndarray               # (n,) int: steps column, or tokens when there is none
    cost: np.ndarray                # (n,) cost column, or 6 * scale * tokens
    objective: np.ndarray           # (n,) the metric column
    domain_losses: tuple            # (n,) dicts {domain: loss} from the loss_<domain> columns


def _table_number(text, path, line, column):
    """Parse one cell as a finite float, or raise a one-line ValueError naming row and column."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"table {path}: row {line}, column '{column}': {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"table {path}: row {line}, column '{column}': {text!r} is not finite")
    return value


def read_table(path, metric="loss"):
    """Parse and validate a run table (format in load_table's docstring); returns a RunTable."""
    if not os.path.isfile(path):
        raise ValueError(f"table {path} does not exist; pass the path of a CSV file of runs")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise ValueError(f"table {path} is empty; it needs a header row and one row per run and checkpoint")
        header = [h.strip() for h in header]
        duplicated = sorted({h for h in header if header.count(h) > 1})
        if duplicated:
            raise ValueError(f"table {path}: row 1 (header), column '{duplicated[0]}' appears more than once")
        domains = tuple(h[2:] for h in header if h.startswith("w_"))
        for column in ("run", "scale", "tokens", metric):
            if column not in header:
                raise ValueError(f"table {path}: row 1 (header) has no column '{column}'; required: run, "
                                 f"w_<domain> for each domain, scale, tokens, {metric}")
        if len(domains) < 2 or any(not d for d in domains):
            raise ValueError(f"table {path}: row 1 (header) needs a w_<domain> column for each of >= 2 domains")
        col = {h: i for i, h in enumerate(header)}
        loss_columns = [d for d in domains if f"loss_{d}" in col]
        has_steps, has_cost, has_seed = "steps" in col, "cost" in col, "seed" in col
        rows = []
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue                                       # blank line
            line = reader.line_num
            if len(cells) != len(header):
                raise ValueError(f"table {path}: row {line} has {len(cells)} cells but the header has {len(header)}")
            cell = lambda c: cells[col[c]].strip()
            num = lambda c: _table_number(cell(c), path, line, c)
            if not cell("run"):
                raise ValueError(f"table {path}: row {line}, column 'run' is empty; give every run an id")
            w = np.array([num(f"w_{d}") for d in domains])   # (K,)
            for d, v in zip(domains, w):
                if v < 0:
                    raise ValueError(f"table {path}: row {line}, column 'w_{d}': weight {v} is negative")
            if abs(w.sum() - 1.0) > 1e-3:
                raise ValueError(f"table {path}: row {line}, columns w_{domains[0]}..w_{domains[-1]}: weights "
                                 f"sum to {w.sum():.6g}, not 1 (tolerance 1e-3)")
            values = {c: num(c) for c in ("scale", "tokens") + (("steps",) if has_steps else ())
                      + (("cost",) if has_cost else ())}
            for c, v in values.items():
                if v <= 0:
                    raise ValueError(f"table {path}: row {line}, column '{c}': {v} must be positive")
            if has_steps and values["steps"] != int(values["steps"]):
                raise ValueError(f"table {path}: row {line}, column 'steps': {values['steps']} is not an integer")
            per_domain = {d: num(f"loss_{d}") for d in loss_columns if cell(f"loss_{d}")}   # blank = unknown
            rows.append(dict(line=line, run=cell("run"), seed=cell("seed") if has_seed else "", w=w,
                             objective=num(metric), domain_losses=per_domain, **values))
    if not rows:
        raise ValueError(f"table {path} has a header but no rows; add one row per run and checkpoint")

    off = [r["line"] for r in rows if abs(r["w"].sum() - 1.0) > 1e-9]
    if off:
        warnings.warn(f"table {path}: weights of {len(off)} rows (first: row {off[0]}) do not sum to 1 "
                      f"within 1e-9; renormalized")
    mixtures, mixture_of_key, first_row_of_run, seen = [], {}, {}, {}
    for r in rows:
        w = r["w"] if abs(r["w"].sum() - 1.0) <= 1e-12 else r["w"] / r["w"].sum()   # keep exact table values
        if r["run"] in first_row_of_run:                      # one run id = one mixture
            r0 = first_row_of_run[r["run"]]
            j = int(np.argmax(np.abs(w - mixtures[r0["mixture"]])))
            if abs(w[j] - mixtures[r0["mixture"]][j]) > 1e-6:
                raise ValueError(f"table {path}: row {r['line']}, column 'w_{domains[j]}': run '{r['run']}' has "
                                 f"weight {w[j]:.6g} here but {mixtures[r0['mixture']][j]:.6g} in row {r0['line']}")
            r["mixture"] = r0["mixture"]
        else:
            key = tuple(np.round(w, 9))                       # different run ids, same mixture: replicates
            if key not in mixture_of_key:
                mixture_of_key[key] = len(mixtures)
                mixtures.append(w)
            r["mixture"] = mixture_of_key[key]
            first_row_of_run[r["run"]] = r
        steps = int(r["steps"]) if has_steps else int(round(r["tokens"]))
        r["steps"] = steps
        key = (r["run"], r["seed"], r["scale"], steps)
        if key in seen:
            what = "run, scale, " + ("steps" if has_steps else "tokens") + (", seed" if has_seed else "")
            raise ValueError(f"table {path}: row {r['line']}, column 'run': duplicate of row {seen[key]} (same "
                             f"{what}); drop one, or add a seed column to keep seed repeats")
        seen[key] = r["line"]
    return RunTable(path=path, domains=domains, metric=metric, fidelity="steps" if has_steps else "tokens",
                    row=np.array([r["line"] for r in rows]), run=tuple(r["run"] for r in rows),
                    seed=tuple(r["seed"] for r in rows), mixture=np.array([r["mixture"] for r in rows]),
                    mixtures=np.array(mixtures), scale=np.array([r["scale"] for r in rows]),
                    tokens=np.array([r["tokens"] for r in rows]), steps=np.array([r["steps"] for r in rows]),
                    cost=np.array([r["cost"] if has_cost else 6.0 * r["scale"] * r["tokens"] for r in rows]),
                    objective=np.array([r["objective"] for r in rows]),
                    domain_losses=tuple(r["domain_losses"] for r in rows))


def load_table(path, metric="loss", target_scale=None):
    """Objective that replays a CSV of real runs exactly (no added noise).

    Format: a header row, then one row per run and checkpoint. Columns (order free, extra columns ignored):
        run            id of a mixture; the same id at several scales is the same mixture
        w_<domain>     one column per domain (defines the domains and their order): weights >= 0 summing
                       to 1 within 1e-3 (renormalized; a warning beyond 1e-9)
        scale          model size, parameters
        tokens         training tokens seen at this row
        steps          optional: training steps at this row; without it the fidelity axis is tokens
        cost           optional: cost of training to this row; default 6 * scale * tokens
        seed           optional: tells seed repeats apart (same run, scale and steps)
        loss_<domain>  optional per-domain losses (a blank cell = unknown)
        loss           the objective to minimize (or the column named by `metric`)
    Each (run, scale, steps-or-tokens, seed) must appear once. Rows of different run ids with the same
    weights are replicates of one mixture, as are rows that differ only in seed.

    Replay: run(weights, scale, steps, seed) returns replicate number seed mod R of that mixture at that
    (scale, steps) (replicates sorted by run id, then seed, as text) with its checkpoints at that scale up to
    `steps`; its cost is that row's cost. true_loss and optimum use the mean over replicates. Candidates
    are the mixtures with a row at the target: `target_scale` (default the largest scale) and the largest
    steps at that scale. A trial may only ask for a (mixture, scale, steps) in the table: see available();
    run() and available() accept every mixture of the table (read_table(path).mixtures), not only candidates.
    cost(scale, steps) is the mean cost of the table's rows there; elsewhere 6 * scale * tokens, with
    tokens = steps * the table's median tokens per step (or tokens = steps without a steps column).
    noise_sd is the pooled sd over replicate groups (at the target when it has any), else None.
    Malformed tables raise a one-line ValueError naming the row (CSV line) and column.
    """
    table = read_table(path, metric)
    scales = tuple(float(s) for s in np.unique(table.scale))
    step_grid = tuple(int(s) for s in np.unique(table.steps))
    if target_scale is None:
        target_scale = scales[-1]
    if float(target_scale) not in scales:
        raise ValueError(f"table {path}: target scale {target_scale:g} is not in the table; its scales are "
                         f"{', '.join(f'{s:g}' for s in scales)}")
    target = (float(target_scale), int(table.steps[table.scale == float(target_scale)].max()))
    K = len(table.domains)

    # Replicates: (mixture, scale, steps) -> row indices sorted by (run, seed); a chain of checkpoints
    # is one (run, seed) at one scale.
    cells = {}
    for i in sorted(range(len(table.row)), key=lambda i: (table.run[i], table.seed[i])):
        cells.setdefault((int(table.mixture[i]), table.scale[i], int(table.steps[i])), []).append(i)

    def find_mixture(weights):
        w = check_weights(weights, K, tol=1e-6)
        distance = np.abs(table.mixtures - w).max(axis=1)    # (M,)
        m = int(np.argmin(distance))
        return m if distance[m] <= 1e-6 else None

    def available(weights, scale, steps):
        m = find_mixture(weights)
        return m is not None and (m, float(scale), int(steps)) in cells

    def replicates(weights, scale, steps):
        m = find_mixture(weights)
        if m is None or (m, float(scale), int(steps)) not in cells:
            raise ValueError(f"table {path} has no run of mixture {np.round(np.asarray(weights, float), 4).tolist()} "
                             f"at scale {scale:g}, steps {steps}; ask only for what available() allows")
        return cells[(m, float(scale), int(steps))]

    def run(weights, scale, steps, seed=0):
        rows = replicates(weights, scale, steps)
        i = rows[int(seed) % len(rows)]                       # this replicate: (run id, seed) at this scale
        chain = np.flatnonzero((np.array(table.run) == table.run[i]) & (np.array(table.seed) == table.seed[i])
                               & (table.scale == table.scale[i]) & (table.steps <= table.steps[i]))
        chain = chain[np.argsort(table.steps[chain])]
        checkpoints = [{"steps": int(table.steps[j]), "loss": float(table.objective[j]),
                        "domain_losses": dict(table.domain_losses[j])} for j in chain]
        return {"loss": float(table.objective[i]), "domain_losses": dict(table.domain_losses[i]),
                "checkpoints": checkpoints, "cost": float(table.cost[i])}

    def true_loss(weights, scale=None, steps=None):
        scale, steps = (target[0] if scale is None else scale), (target[1] if steps is None else steps)
        w = np.asarray(weights, dtype=np.float64)
        mean = lambda v: float(table.objective[replicates(v, scale, steps)].mean())
        return mean(w) if w.ndim == 1 else np.array([mean(v) for v in w])

    tokens_per_step = float(np.median(table.tokens / table.steps)) if table.fidelity == "steps" else 1.0

    def cost(scale, steps):
        at = (table.scale == float(scale)) & (table.steps == int(steps))
        return float(table.cost[at].mean()) if at.any() else 6.0 * float(scale) * int(steps) * tokens_per_step

    candidates = np.array([table.mixtures[m] for m in range(len(table.mixtures)) if (m, *target) in cells])
    losses = true_loss(candidates)                             # (M,)
    groups = [table.objective[rows] for rows in cells.values() if len(rows) > 1]
    target_groups = [table.objective[rows] for (m, s, t), rows in cells.items() if len(rows) > 1 and (s, t) == target]
    groups = target_groups or groups
    noise_sd = None
    if groups:                                                 # pooled sd: sum (n-1) s^2 / sum (n-1)
        noise_sd = math.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / sum(len(g) - 1 for g in groups))
    return Objective(name=f"table:{path}", domains=table.domains, scales=scales, steps=step_grid, target=target,
                     run=run, cost=cost, candidates=candidates, available=available, true_loss=true_loss,
                     optimum=(candidates[int(np.argmin(losses))], float(losses.min())), noise_sd=noise_sd)


# ---------------------------------------------------------------------------------------------------------
# What a benchmark looks like: the numbers quoted in the README (`python simulate.py`)

def describe_benchmark(name="default", num_domains=5, seed=0, n_mixtures=2000):
    """Noise-free statistics of a benchmark: optimum at the target vs at the smallest scale, spread of
    the target loss over Dirichlet(1) mixtures vs noise, Spearman rank correlations between scales."""
    law, objective = benchmark_law(name, num_domains, seed), make_benchmark(name, num_domains, seed)
    (N, T), K = objective.target, len(law.domains)
    w_star, f_star = objective.optimum
    w_small = law_optimum(law, law.scales[0], T)[0]            # smallest scale, target steps
    w_first = law_optimum(law, law.scales[0], law.steps[0])[0] # smallest scale and steps
    mixtures = np.random.default_rng(seed).dirichlet(np.ones(K), n_mixtures)   # (n, K)
    at = lambda scale, steps: mixture_loss(law, mixtures, scale, steps)         # (n,)
    target_losses = at(N, T)
    best = np.argsort(target_losses)[: n_mixtures // 10]       # the best 10 % at the target
    rho = lambda a, b: float(spearmanr(a, b)[0])
    return {
        "name": law.name, "K": K, "optimum": w_star, "optimum_loss": f_star,
        "optimum_smallest_scale": w_small, "l1_smallest_scale": float(np.abs(w_small - w_star).sum()),
        "regret_smallest_scale": float(mixture_loss(law, w_small, N, T)[0] - f_star),
        "optimum_smallest_fidelity": w_first, "l1_smallest_fidelity": float(np.abs(w_first - w_star).sum()),
        "regret_smallest_fidelity": float(mixture_loss(law, w_first, N, T)[0] - f_star),
        "regret_uniform": float(mixture_loss(law, np.full(K, 1.0 / K), N, T)[0] - f_star),
        "spread_sd": float(target_losses.std()), "median_regret_random": float(np.median(target_losses) - f_star),
        "noise_sd_target": noise_sd_at(law, N), "noise_sd_smallest": noise_sd_at(law, law.scales[0]),
        "loss_range_uniform": (float(mixture_loss(law, np.full(K, 1.0 / K), law.scales[0], law.steps[0])[0]),
                               float(mixture_loss(law, np.full(K, 1.0 / K), N, T)[0])),
        "spearman_to_target": {s: rho(at(s, T), target_losses) for s in law.scales},
        "spearman_neighbours": [rho(at(a, T), at(b, T)) for a, b in zip(law.scales, law.scales[1:])],
        "spearman_smallest_fidelity": rho(at(law.scales[0], law.steps[0]), target_losses),
        "spearman_best_tenth": rho(at(law.scales[0], T)[best], target_losses[best]),
    }


def main():
    """Print the benchmark table of the README (smallest scale 20M, target 1B at 20k steps)."""
    cases = [("default", 5, 0), ("sparse", 5, 0), ("shift", 5, 0), ("random", 5, 0), ("random", 8, 1)]
    fmt = lambda w: "[" + " ".join(f"{x:.2f}" for x in w) + "]"
    for name, K, seed in cases:
        d = describe_benchmark(name, K, seed)
        (low, high), rho = d["loss_range_uniform"], d["spearman_to_target"]
        print(f"{d['name']}  (K={K})")
        print(f"  optimum at target         {fmt(d['optimum'])}  loss {d['optimum_loss']:.4f}")
        print(f"  optimum at 20M, 20k steps {fmt(d['optimum_smallest_scale'])}  L1 {d['l1_smallest_scale']:.2f}  "
              f"regret at target {d['regret_smallest_scale']:.4f}")
        print(f"  optimum at 20M, 2.5k      {fmt(d['optimum_smallest_fidelity'])}  "
              f"L1 {d['l1_smallest_fidelity']:.2f}  regret at target {d['regret_smallest_fidelity']:.4f}")
        print(f"  regret of uniform {d['regret_uniform']:.4f}; Dirichlet(1) mixtures at target: "
              f"sd {d['spread_sd']:.4f}, median regret {d['median_regret_random']:.4f}")
        print(f"  noise sd {d['noise_sd_smallest']:.4f} (20M) {d['noise_sd_target']:.4f} (1B); "
              f"uniform loss {low:.2f} (20M, 2.5k) -> {high:.2f} (target)")
        print("  Spearman vs target (20k steps): " + " ".join(f"{s / 1e6:g}M {r:.3f}" for s, r in rho.items()))
        print(f"  Spearman vs target: 20M at 2.5k steps {d['spearman_smallest_fidelity']:.3f}; "
              f"20M among the best 10 % {d['spearman_best_tenth']:.3f}")
        print("  Spearman between neighbouring scales: " + " ".join(f"{r:.3f}" for r in d["spearman_neighbours"]))


if __name__ == "__main__":
    main()
