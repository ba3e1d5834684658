"""The loop's benchmark: strategies x seeds on an objective whose true loss is known (a simulator or
a run table), every recommendation scored through objective.true_loss -- uncharged: the benchmark
peeks at the noise-free target loss, which a real search cannot. The speed-up vs a reference is the
budget over the cost from which the recommendation stays at or below the reference's final quality;
--json holds every seed's curve (cost, true loss, predicted loss and sd after every trial).

    python mixbo.py --sim --bench --strategy mfkg,ei,random --seeds 10 --json bench.json
    python bench/loop_bench.py --sim --seeds 10           # the same

Any objective and search flag of mixbo.py applies (the strategy flag takes a comma list). Seeds
0..seeds-1 run in --jobs forked processes; the results do not depend on --jobs.
"""

import json
import math
import multiprocessing
import signal
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mixbo  # noqa: E402
import simulate  # noqa: E402

_OBJECTIVE = None      # the objective, inherited by forked workers (closures do not pickle)


def add_arguments(parser):
    """The benchmark's own flags, added to mixbo's parser."""
    group = parser.add_argument_group("benchmark (--bench)")
    group.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default %(default)s)")
    group.add_argument("--json", metavar="PATH", help="write the table as JSON")
    group.add_argument("--jobs", type=int, default=2,
                       help="runs in parallel (forked; default %(default)s; same results)")


def _quartiles(x):
    """(median, q25, q75) of values that may be inf ("not reached"): a quantile that falls on or
    interpolates towards an inf is inf."""
    x = np.where(np.isfinite(x), np.asarray(x, dtype=float), 1e300)
    return tuple(float(v) if v < 1e250 else math.inf for v in np.percentile(x, [50, 25, 75]))


def _cost_to_stay(curve, q):
    """The spent budget from which the recommendation's true loss stays <= q until the budget (inf
    if the last one is above q): a recommendation that reaches q and then regresses has not
    reached it."""
    above = [i for i, point in enumerate(curve) if point[1] > q]
    if not curve or (above and above[-1] == len(curve) - 1):
        return math.inf
    return curve[above[-1] + 1 if above else 0][0]


def _bench_run(task):
    """One (strategy, seed, budget, settings) run: the curve [(spent, true target loss of the
    recommendation, its predicted loss, sd)] after every trial, the share of cost per scale, and the
    wall time."""
    strategy, seed, budget, settings = task
    objective, curve, start = _OBJECTIVE, [], time.perf_counter()

    def score(record, choice):
        weights = choice["weights"]
        true = math.inf if weights is None else float(objective.true_loss(np.asarray(weights)))
        curve.append((record["spent"], true, choice["loss"], choice["sd"]))

    res = mixbo.optimize(objective, strategy, budget, seed, out=None, on_trial=score, **settings)
    share = [sum(r["cost"] for r in res.trials if r["scale"] == N) / res.spent
             for N in objective.scales]
    return curve, share, time.perf_counter() - start


def _worker_init():
    """A forked worker must not use an OpenMP pool its parent started (torch then hangs); with one
    thread it never needs the pool. It ends by SIGTERM (the pool's terminate), so the default
    action, not mixbo.main's resumable-stop handler, which would print a traceback."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def bench(objective, strategies, seeds=10, budget=mixbo.Settings.budget, jobs=2, out=print,
          **settings):
    """Run every strategy with seeds 0..seeds-1 (in `jobs` forked processes) and score the
    recommendation after every trial through objective.true_loss. Returns a JSON-ready dict."""
    global _OBJECTIVE
    say = out or mixbo.silent
    if objective.true_loss is None:
        raise ValueError(f"--bench needs an objective with a known true loss (a simulator or a "
                         f"table); {objective.name} has none")
    for strategy in strategies:          # bad settings: one line before any run
        mixbo.Settings(strategy=strategy, budget=budget, **settings)
    if settings.get("aggregate"):        # score the aggregate the search minimizes
        spec = simulate.parse_aggregate(settings["aggregate"], objective.domains)
        objective = simulate.scored_by(objective, spec)
    _OBJECTIVE = objective
    tasks = [(strategy, seed, budget, settings) for strategy in strategies for seed in range(seeds)]
    if jobs > 1:
        with multiprocessing.get_context("fork").Pool(jobs, initializer=_worker_init) as pool:
            runs = pool.map(_bench_run, tasks, chunksize=1)
    else:
        runs = [_bench_run(task) for task in tasks]
    runs = {strategy: runs[i * seeds:(i + 1) * seeds] for i, strategy in enumerate(strategies)}
    best = objective.optimum[1] if objective.optimum is not None else None
    final = {name: [c[-1][1] if c else math.inf for c, _, _ in runs[name]] for name in strategies}
    curves = {name: [c for c, _, _ in runs[name]] for name in strategies}
    # q_ref: the reference's median final true loss -- the upper median for an even number of
    # seeds, so that at least half of the reference's own seeds reach it
    refs = {ref: float(np.percentile(final[ref], 50, method="higher"))
            for ref in ("random", "ei") if ref in strategies}
    table = {}
    for strategy in strategies:
        wall = sum(w for _, _, w in runs[strategy])
        say(f"  {strategy}: {seeds} seeds, {wall:.1f} s of runs")
        row = {"final_true_loss": _quartiles(final[strategy]), "run_wall_s": round(wall, 2)}
        if best is not None:
            row["final_regret"] = _quartiles([x - best for x in final[strategy]])

            def at(curve, f):    # the recommendation's true loss once a share f of budget is spent
                return next((p[1] for p in reversed(curve) if p[0] <= f * budget + 1e-12), math.inf)
            row["regret_at_budget_fraction"] = {
                f: _quartiles([at(curve, f) - best for curve in curves[strategy]])
                for f in (0.25, 0.5, 1.0)}
        for ref, q in refs.items():
            cost = _quartiles([_cost_to_stay(curve, q) for curve in curves[strategy]])
            row[f"cost_to_stay_{ref}"] = cost
            row[f"speedup_vs_{ref}"] = budget / cost[0] if math.isfinite(cost[0]) else None
        mean_share = np.mean([share for _, share, _ in runs[strategy]], axis=0)   # (scales,)
        row["cost_share_by_scale"] = {mixbo.fmt_scale(N): float(v)
                                      for N, v in zip(objective.scales, mean_share) if v > 0}
        names = ("cost", "true_loss", "predicted_loss", "sd")
        row["curves"] = [dict(zip(names, map(list, zip(*c))), seed=seed)
                         for seed, c in enumerate(curves[strategy])]
        table[strategy] = row
    return {"objective": objective.name, "budget": budget, "seeds": seeds,
            "strategies": list(strategies), "optimum_loss": best, "reference_quality": refs,
            "settings": settings,
            "scoring": "recommendation after every trial scored by objective.true_loss at the "
                       "target, uncharged; speed-up = budget / the cost from which it stays <= q",
            "results": table}


def json_ready(x):
    """x with every non-finite float (a cost that was never reached) as null: strict JSON."""
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def print_bench(say, b):
    """The --bench table: one row per strategy, median [q25, q75] over seeds."""
    def q(t, f="{:.4f}"):
        if not math.isfinite(t[0]):
            return "not reached"
        return f"{f.format(t[0])} [{f.format(t[1])}, {f.format(t[2])}]"
    refs = list(b["reference_quality"])
    say(f"bench: {b['objective']}, budget {b['budget']:g} target-run equivalents, "
        f"{b['seeds']} seeds; median [IQR] over seeds")
    say(f"scoring: {b['scoring']}")
    for ref, v in b["reference_quality"].items():
        say(f"q_{ref} = {ref}'s median true target loss at the budget = {v:.4f}; speed-up vs {ref} "
            f"= budget / median cost from which the recommendation stays <= q_{ref}")
    known = all("final_regret" in row for row in b["results"].values())   # a known optimum
    say(f"{'strategy':<11} {'final regret' if known else 'final true loss':<26}"
        + "".join(f" {'x' + r:>8}" for r in refs)
        + f"  {'regret at 25%/50% budget':<25}"
        + "".join(f"{'cost to stay <= q_' + r:<26}" for r in refs) + "cost share by scale")
    for strategy, row in b["results"].items():
        regret = q(row["final_regret"] if known else row["final_true_loss"])
        part = row.get("regret_at_budget_fraction", {})
        early = " / ".join(f"{part[f][0]:.4f}" if math.isfinite(part[f][0]) else "-"
                           for f in (0.25, 0.5) if part)
        speed = "".join(f" {row['speedup_vs_' + r] or math.nan:>8.2f}".replace("nan", "  -")
                        for r in refs)
        cost = "".join(f"{q(row['cost_to_stay_' + r], '{:.2f}'):<26}" for r in refs)
        share = " ".join(f"{k}:{v:.2f}" for k, v in row["cost_share_by_scale"].items())
        say(f"{strategy:<11} {regret:<26}{speed}  {early or '-':<25}{cost}{share}")


def run(args, objective, strategies, settings, argv, say=print):
    """mixbo.py --bench: the benchmark of `strategies` with the other `settings`; prints the table
    and writes --json. Returns the exit code."""
    if args.seeds < 1 or args.jobs < 1:
        raise ValueError(f"--seeds and --jobs must be >= 1; got {args.seeds} and {args.jobs}")
    budget = settings.pop("budget", mixbo.Settings.budget)
    settings.pop("seed", None)
    say(f"mixbo --bench: {', '.join(strategies)} x {args.seeds} seeds on {objective.name}, "
        f"budget {budget:g}")
    b = bench(objective, strategies, args.seeds, budget, jobs=args.jobs, out=say, **settings)
    b["command"] = "python mixbo.py " + " ".join(argv)
    print_bench(say, b)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(json_ready(b), f, indent=1, allow_nan=False)
        say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(mixbo.main(["--bench", *sys.argv[1:]]))
