"""
Benchmark of one mixbo acquisition step beside BoTorch (a script, not a test).

For each n in --sizes (GP observations, n / 4 runs observed at 4 checkpoints):
  1. mixbo 'mfkg' step: the exact knowledge gradient of candidate mixtures x (scale, steps)
     fidelities divided by cost, and the argmax (acquisition.choose_next, branch and bound), split
     into where its time goes; beside it the exhaustive step (the KG of every pair,
     acquisition._log_kg_grid), which must make the same decision.
  2. BoTorch qKnowledgeGradient (one-shot KG, Monte Carlo fantasies) optimized by optimize_acqf on a
     SingleTaskGP on the same data (initial hyperparameters: fitting is not part of the step), with
     sum(w) = 1 as an equality constraint and small num_fantasies / restarts so it finishes.
Then the 'kg' step (target only) at the largest n; `ask --n 8` (--ask) at n = --ask-n through
mixbo.Search.ask, resumed from a ledger of n / 4 finished trials on --sim default written here
(--candidates per proposal, the kriging believer for proposals 2..8; the fit on resuming is not
timed), split into the believer, the candidates and the steps; and log-EI over 10,000 points at
n = --n-ei: mixbo's (gp.predict + log_expected_improvement) beside BoTorch's analytic
LogExpectedImprovement.

Run from the repository root:  OMP_NUM_THREADS=1 python bench/bench_acquisition.py
(one thread: two torch threads on two busy cores oversubscribe them). --no-botorch: mixbo only;
--profile: cProfile of the mfkg and exhaustive steps at the largest n and of ask --n 8;
--only-ask: the ask rows alone; --first-round: the size of the branch and bound's first round.
Wall-clock, best of --repeat for mixbo, one run for BoTorch qKG. Results: bench/README.md
("The acquisition step").
"""

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import acquisition as acq  # noqa: E402
import gp  # noqa: E402
import mixbo  # noqa: E402
import simulate  # noqa: E402

N_DOMAINS = 5  # 5 weights + scale + steps = 7 GP inputs (as bench_gp.py)
SCALES = tuple(float(s) for s in np.geomspace(1e6, 6.4e7, 7))  # 7 model scales (parameters)
STEPS = (250, 500, 1000, 2000)  # 4 checkpoint step counts
TARGET = (SCALES[-1], STEPS[-1])
BOUNDS = (SCALES[0], SCALES[-1], STEPS[0], STEPS[-1])
FIDELITIES = [(s, t) for s in SCALES for t in STEPS]


def cost(scale, steps):
    """6 N D FLOPs in units of the target run (D proportional to steps)."""
    return scale * steps / (TARGET[0] * TARGET[1])


def synthetic_runs(n_obs, seed):
    """n_obs observations from n_obs / 4 runs: each run a Dirichlet mixture at a random scale,
    observed at all 4 checkpoints. Loss: a Chinchilla-style scale/steps law plus a mixture effect
    that grows with scale. Returns X (n, 7), y (n,), the runs' mixtures (n / 4, 5)."""
    rng = np.random.default_rng(seed)
    runs = n_obs // len(STEPS)
    W = rng.dirichlet(np.ones(N_DOMAINS), size=runs)
    S = rng.choice(SCALES, size=runs)
    Wn, Sn = np.tile(W, (len(STEPS), 1)), np.tile(S, len(STEPS))  # (n, 5), (n,)
    Tn = np.repeat(np.array(STEPS, dtype=np.float64), runs)
    w_star = np.array([0.35, 0.25, 0.2, 0.15, 0.05])
    mixture_effect = (1.0 + 0.1 * np.log(Sn / SCALES[0])) * ((Wn - w_star) ** 2).sum(1)
    y = (1.8 + 400.0 / Sn ** 0.34 + 8.0 / Tn ** 0.3 + mixture_effect
         + 0.005 * rng.normal(size=len(Sn)))
    return gp.encode(Wn, Sn, Tn, BOUNDS), y, W


def best_of(fn, repeat):
    """Best wall time of `repeat` calls (the least disturbed on a shared machine) and the result."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def timed_split(step, repeat):
    """(seconds, decision, KGs computed, [(part, seconds)], median seconds) of the best of `repeat`
    runs of step(), timed by wrappers that the step looks up at call time."""
    parts = {(acq, "_target_posterior"): "posterior at the target (gp.predict)",
             (acq, "_log_kg_bounds"): "KG upper bounds (acquisition._log_kg_bounds)",
             (acq, "_log_kg_pairs"): "KG of the pairs (acquisition._log_kg_pairs), of which",
             (gp, "cross_covariance_grid"): "  posterior covariances (gp.cross_covariance_grid)",
             (acq, "log_knowledge_gradient"): "  envelopes, the bounds' included"}
    spent, originals = {}, {key: getattr(*key) for key in parts}

    def wrap(key):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = originals[key](*args, **kwargs)
            spent[parts[key]] = spent.get(parts[key], 0.0) + time.perf_counter() - t0
            if key == (acq, "_log_kg_pairs"):
                spent["KGs"] = spent.get("KGs", 0) + int(args[7].sum())  # args[7]: the pairs
            return out
        return wrapper

    for key in originals:
        setattr(*key, wrap(key))
    best, times = None, []
    try:
        for _ in range(repeat):
            spent.clear()
            seconds, decision = best_of(step, 1)
            times.append(seconds)
            if best is None or seconds < best[0]:
                split = [(label, spent.get(label, 0.0)) for label in parts.values()]
                best = (seconds, decision, spent["KGs"], split)
    finally:
        for key, fn in originals.items():
            setattr(*key, fn)
    return best + (float(np.median(times)),)


def botorch_qkg(X, y, args):
    """Seconds of one BoTorch qKnowledgeGradient + optimize_acqf on a SingleTaskGP of (X, -y)."""
    import torch
    from botorch.acquisition import qKnowledgeGradient
    from botorch.models import SingleTaskGP
    from botorch.optim import optimize_acqf

    torch.manual_seed(0)
    model = SingleTaskGP(torch.from_numpy(X), torch.from_numpy(-y)[:, None])  # BoTorch maximizes
    qkg = qKnowledgeGradient(model, num_fantasies=args.fantasies)
    bounds = torch.tensor([[0.0] * (N_DOMAINS + 2), [1.0] * (N_DOMAINS + 2)], dtype=torch.float64)
    simplex = [(torch.arange(N_DOMAINS), torch.ones(N_DOMAINS, dtype=torch.float64), 1.0)]
    seconds, _ = best_of(lambda: optimize_acqf(qkg, bounds, q=1, num_restarts=args.restarts,
                                               raw_samples=args.raw_samples,
                                               equality_constraints=simplex), 1)
    return seconds


def mfkg_rows(n, args):
    """Table rows for one n: the mixbo step and its parts, the exhaustive step, BoTorch's qKG."""
    X, y, W_runs = synthetic_runs(n, seed=0)
    model = gp.fit_gp(X, y, N_DOMAINS, seed=0, restarts=1)
    incumbent = W_runs[[acq.recommend(model, W_runs, TARGET, BOUNDS)[0]]]  # (1, 5)
    n_local = args.mixtures // 10
    n_global = args.mixtures - (N_DOMAINS + 1) - 1 - n_local  # + vertices, uniform, incumbent
    C = acq.simplex_candidates(N_DOMAINS, n_global, seed=1, incumbents=incumbent, n_local=n_local)
    E = len(acq.unique_rows(W_runs))
    n_kg = len(C) * len(FIDELITIES)

    def step():
        return acq.choose_next("mfkg", model, C, W_runs, SCALES, STEPS, TARGET, BOUNDS, cost=cost)

    def exhaustive():
        log_kg = acq._log_kg_grid(model, C, acq.unique_rows(W_runs), FIDELITIES, TARGET, BOUNDS)
        return np.unravel_index(np.argmax(log_kg - np.log([cost(*f) for f in FIDELITIES])),
                                log_kg.shape)

    t_step, d, n_computed, split, t_median = timed_split(step, args.repeat)
    t_all, (c, f) = best_of(exhaustive, args.repeat)
    same = (d.index, d.scale, d.steps) == (c, *FIDELITIES[f])
    rows = [(f"n={n}: mixbo mfkg step, {len(C)} x {len(FIDELITIES)} = {n_kg} pairs, |A| = {E}+1",
             t_step, f"median of {args.repeat} {t_median:.3f} s; {n_computed} KGs computed; chose "
             f"scale {d.scale:.3g}, steps {d.steps}, KG {d.kg:.3g}, cost {d.cost:.3g}")]
    rows += [(f"  {what}", sec, "") for what, sec in split]
    rows.append((f"n={n}: exhaustive step (KG of every pair, the step before branch and bound)",
                 t_all, f"{n_kg} KGs; same decision: {same}"))
    if not args.no_botorch:
        rows.append((f"n={n}: BoTorch qKnowledgeGradient + optimize_acqf", botorch_qkg(X, y, args),
                     f"num_fantasies={args.fantasies}, num_restarts={args.restarts}, "
                     f"raw_samples={args.raw_samples}"))
    def kg_step():
        return acq.choose_next("kg", model, C, W_runs, SCALES, STEPS, TARGET, BOUNDS)

    return rows, {"mfkg step": step, "exhaustive step": exhaustive,
                  f"kg step (target only, {len(C)} KGs)": kg_step}


def ask_ledger(n_obs, candidates, folder, seed=0):
    """A ledger of n_obs / 4 finished trials on the default simulator (Dirichlet mixtures at random
    scales, each run to the last steps: 4 checkpoints), as mixbo writes it, and the Settings to
    resume it with: mfkg, `candidates` per trial, a budget whose room below the reserve holds every
    fidelity. Returns (objective, settings, path)."""
    objective = simulate.make_benchmark("default")
    rng = np.random.default_rng(seed)
    runs = n_obs // len(objective.steps)
    W = rng.dirichlet(np.ones(len(objective.domains)), size=runs)
    scales = rng.choice(objective.scales, size=runs)
    unit, steps = objective.cost(*objective.target), objective.steps[-1]
    spent = sum(objective.cost(s, steps) / unit for s in scales)
    budget = float(np.ceil((spent + 8.0) / (1.0 - mixbo.VERIFY_SHARE)))  # room for 8 target runs
    settings = mixbo.Settings(budget=budget, candidates=candidates, seed=seed)
    lines, spent = [mixbo.ledger_header(settings, objective)], 0.0
    for t, (w, s) in enumerate(zip(W, scales)):
        cost = objective.cost(s, steps) / unit
        spent += cost
        lines += [{"kind": "ask", "trial": t, "decision": "told (run outside mixbo)",
                   "weights": w.tolist(), "scale": float(s), "steps": int(steps), "seed": t,
                   "cost": cost},
                  {"kind": "tell", "trial": t, "spent": spent, "started": None, "finished": None,
                   "wall_s": None, **mixbo.check_outcome(steps, objective.run(w, s, steps, t))},
                  {"kind": "recommendation", "after_trial": t}]
    path = os.path.join(folder, "ledger.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    return objective, settings, path


def ask_rows(n, args, folder):
    """`ask --n 8` at n observations through mixbo.Search.ask (the kriging believer for proposals
    2..8), split into where its time goes, and resumed(): a Search on a fresh copy of the ledger
    (its fit, not timed, is the one every repeat asks from)."""
    objective, settings, path = ask_ledger(n, args.candidates, folder)
    original = open(path).read()

    def resumed():
        with open(path, "w") as f:
            f.write(original)
        return mixbo.Search(objective, settings, ledger=path, resume=True)

    parts = {(mixbo, "kriging_believer"): "kriging believer (mixbo.kriging_believer: gp.fit_gp)",
             (acq, "simplex_candidates"): "candidates (acquisition.simplex_candidates)",
             (acq, "choose_next"): "the steps (acquisition.choose_next)"}
    originals, spent = {key: getattr(*key) for key in parts}, {}

    def wrap(key):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            out = originals[key](*a, **k)
            spent[parts[key]] = spent.get(parts[key], 0.0) + time.perf_counter() - t0
            return out
        return wrapper

    times, split = [], None
    for _ in range(args.repeat):
        with resumed() as search:
            n_obs = len(search.ctx.model.y)
            spent.clear()
            for key in parts:
                setattr(*key, wrap(key))
            try:
                t0 = time.perf_counter()
                trials = search.ask(args.ask)
                times.append(time.perf_counter() - t0)
            finally:
                for key, fn in originals.items():
                    setattr(*key, fn)
        if times[-1] == min(times):
            split = [(label, spent.get(label, 0.0)) for label in parts.values()]
    chose = ", ".join(f"{t.scale:.2g}/{t.steps}" for t in trials)
    rows = [(f"n={n_obs}: ask --n {args.ask} (mixbo.Search.ask, --sim default, --candidates "
             f"{args.candidates})", min(times),
             f"median of {args.repeat} {np.median(times):.3f} s; scale/steps {chose}")]
    rows += [(f"  {label}", sec, "") for label, sec in split]
    return rows, resumed


def log_ei_rows(args):
    """mixbo's and BoTorch's analytic log-EI over args.ei_points mixtures at n = args.n_ei."""
    X, y, W = synthetic_runs(args.n_ei, seed=1)
    model = gp.fit_gp(X, y, N_DOMAINS, seed=0, restarts=1)
    rng = np.random.default_rng(2)
    Xe = gp.encode(rng.dirichlet(np.ones(N_DOMAINS), size=args.ei_points), *TARGET, BOUNDS)
    best = float(gp.predict(model, gp.encode(W, *TARGET, BOUNDS))[0].min())
    t_post, (mean, var) = best_of(lambda: gp.predict(model, Xe), args.repeat)
    t_lei, _ = best_of(lambda: acq.log_expected_improvement(mean, np.sqrt(var), best), args.repeat)
    what = f"{args.ei_points} points, n={args.n_ei}"
    rows = [(f"mixbo log-EI, {what}: posterior + log-EI", t_post + t_lei, ""),
            ("  of which log-EI itself (log_expected_improvement)", t_lei, "")]
    if not args.no_botorch:
        import torch
        from botorch.acquisition import LogExpectedImprovement
        from botorch.models import SingleTaskGP

        bt = SingleTaskGP(torch.from_numpy(X), torch.from_numpy(-y)[:, None])
        bt.eval()
        lei = LogExpectedImprovement(bt, best_f=torch.tensor(-best, dtype=torch.float64))
        Xt = torch.from_numpy(Xe)[:, None, :]  # (points, 1, d)

        def botorch_lei():
            with torch.no_grad():
                return lei(Xt)

        botorch_lei()  # the first call builds the prediction caches
        t_botorch, _ = best_of(botorch_lei, args.repeat)
        rows.append((f"BoTorch LogExpectedImprovement, {what}", t_botorch,
                     "posterior + log-EI, caches warm"))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 300],
                   help="GP observations for the KG steps")
    p.add_argument("--mixtures", type=int, default=2000, help="candidate mixtures")
    p.add_argument("--n-ei", type=int, default=500, help="GP observations for the log-EI rows")
    p.add_argument("--ei-points", type=int, default=10000)
    p.add_argument("--fantasies", type=int, default=16, help="BoTorch qKG num_fantasies")
    p.add_argument("--restarts", type=int, default=2, help="BoTorch qKG num_restarts")
    p.add_argument("--raw-samples", type=int, default=64, help="BoTorch qKG raw_samples")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--ask", type=int, default=8, help="proposals of the ask row (ask --n)")
    p.add_argument("--ask-n", type=int, default=300, help="GP observations of the ask row")
    p.add_argument("--candidates", type=int, default=2000,
                   help="the ask row's --candidates (simplex_candidates' n_global)")
    p.add_argument("--only-ask", action="store_true", help="the ask row alone")
    p.add_argument("--no-botorch", action="store_true")
    p.add_argument("--profile", action="store_true", help="cProfile the steps at the largest n")
    p.add_argument("--first-round", type=int, default=acq._FIRST_ROUND,
                   help="pairs whose KG the mfkg step computes first (acquisition._FIRST_ROUND)")
    args = p.parse_args()
    acq._FIRST_ROUND = args.first_round
    t_start = time.perf_counter()
    rows, steps = [], {}
    folder = tempfile.TemporaryDirectory()
    ask, resumed = ask_rows(args.ask_n, args, folder.name)
    for n in [] if args.only_ask else args.sizes:
        n_rows, steps = mfkg_rows(n, args)
        rows += n_rows
    if steps:
        what, kg_step = list(steps.items())[-1]
        rows.append((f"n={args.sizes[-1]}: mixbo {what}", best_of(kg_step, args.repeat)[0], ""))
    rows += ask
    if not args.only_ask:
        rows += log_ei_rows(args)

    threads = sys.modules["torch"].get_num_threads()
    print(f"torch threads {threads}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"best of {args.repeat}, first round {args.first_round} pairs")
    print(f"| {'what':<78} | {'seconds':>8} | note |")
    print(f"|{'-' * 80}|{'-' * 10}|------|")
    for what, sec, note in rows:
        print(f"| {what:<78} | {sec:8.4f} | {note} |")
    print(f"whole script {time.perf_counter() - t_start:.0f} s")
    if args.profile:
        for what, fn in list(steps.items())[:2]:
            print(f"\ncProfile of the {what} at n={args.sizes[-1]}, by own time:")
            profile = cProfile.Profile()
            profile.runcall(fn)
            pstats.Stats(profile).sort_stats("tottime").print_stats(12)
        with resumed() as search:
            print(f"\ncProfile of ask --n {args.ask} at n={args.ask_n}, by own time:")
            profile = cProfile.Profile()
            profile.runcall(search.ask, args.ask)
            pstats.Stats(profile).sort_stats("tottime").print_stats(16)
    folder.cleanup()


if __name__ == "__main__":
    main()
