"""Robustness of mixbo's strategies across the controlled-transfer test bed (simulate.TESTBED).

For every instance x strategy x seed, `mixbo.optimize` runs with the default settings (ledger in
memory, or in --ledgers DIR) and the recommendation after every trial is scored, uncharged, by the
instance's noise-free true loss at the target. Per instance and strategy it reports, over seeds:
  final     median true loss of the final recommendation (and its regret over the known optimum)
  x random  budget / median cost from which the recommendation STAYS at or below q_random (random
            search's median final true loss) until the budget is spent; "-" when the median seed
            never stays there
  target    median number of runs at the target scale and steps
  cover1/2  share of seeds whose final |predicted - true| <= 1 and 2 reported sd (0.68 / 0.95);
            pooled over the instances also at 25 % and 50 % of the budget
With --as-table every instance is first written as a pool-based run table (simulate.write_table) and
replayed through simulate.load_table, as `python mixbo.py --table` would.

Run: python bench/robustness.py [--instances a,b] [--strategies mfkg,ei,random,hyperband,regression]
     [--seeds 20] [--budget B] [--as-table] [--jobs 2] [--json out.json] [--runs runs.jsonl]
     [--ledgers DIR]
--runs keeps every finished search as a JSON line and skips those already there: a long run can be
stopped and continued, and the table printed from what has finished (--table-only).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")      # small matrices: one thread per process

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import loop_bench  # noqa: E402  (bench/, the script's folder)
import mixbo  # noqa: E402
import simulate  # noqa: E402

STRATEGIES = ("mfkg", "ei", "random", "hyperband", "regression")
BUDGET_BY_LADDER = {2: 30.0, 3: 10.0}      # target-run equivalents by number of scales; others: 20
_OBJECTIVES = {}                           # instance -> Objective, inherited by forked workers
_LEDGERS = {}                              # "folder": where --ledgers keeps each search's ledger


def default_budget(objective):
    return BUDGET_BY_LADDER.get(len(objective.scales), 20.0)


def run_one(task):
    """One (instance, strategy, seed, budget) search: the curve [(spent, true, predicted, sd)] after
    every trial, the number of target runs and the wall time."""
    name, strategy, seed, budget, aggregate = task
    objective = _OBJECTIVES[name]
    curve, t0 = [], time.perf_counter()

    def score(trial, recommendation):
        w = recommendation["weights"]
        true = math.inf if w is None else float(objective.true_loss(np.asarray(w)))
        curve.append((trial["spent"], true, recommendation["loss"], recommendation["sd"]))

    ledger = None
    if _LEDGERS:                                   # a stopped search's ledger: started afresh
        ledger = os.path.join(_LEDGERS["folder"], f"{name}-{strategy}-seed{seed}.jsonl")
        if os.path.exists(ledger):
            os.remove(ledger)
    result = mixbo.optimize(objective, strategy, budget, seed, out=None, on_trial=score,
                            aggregate=aggregate, ledger=ledger)
    target = tuple(objective.target)
    n_target = sum(t["status"] == "ok" and (t["scale"], t["steps"]) == target
                   for t in result.trials)
    return curve, n_target, time.perf_counter() - t0


def stay_cost(curve, q):
    """The spent budget from which every later recommendation has true loss <= q (inf if the last
    one does not)."""
    cost = math.inf
    for spent, true, *_ in reversed(curve):
        if true > q:
            break
        cost = spent
    return cost


def at_share(curve, spent):
    """The curve's last point with at most `spent` spent (None before its first one)."""
    points = [p for p in curve if p[0] <= spent * (1 + 1e-9)]
    return points[-1] if points else None


def summarize(curves, n_targets, optimum, q_random, budget):
    finals = [c[-1] if c else (0.0, math.inf, None, None) for c in curves]
    true = np.array([f[1] for f in finals])
    z = [abs(f[2] - f[1]) / f[3] for f in finals if f[3] is not None and f[3] > 0]
    stay = float(np.percentile([stay_cost(c, q_random) for c in curves], 50, method="higher"))
    return {"final_true_loss": float(np.median(true)),
            "final_regret": float(np.median(true - optimum)) if optimum is not None else None,
            "speedup_vs_random": budget / stay if math.isfinite(stay) and stay > 0 else None,
            "target_runs": float(np.median(n_targets)),
            "cover1": float(np.mean(np.array(z) <= 1)) if z else None,
            "cover2": float(np.mean(np.array(z) <= 2)) if z else None}


def build_objectives(names, as_table, folder, aggregate=""):
    out = {}
    for name in names:
        objective = simulate.make_benchmark(name)
        if as_table:
            path = os.path.join(folder, f"{name}.csv")
            simulate.write_table(objective, path, n_mixtures=256, seeds=(0, 1), seed=0)
            objective = simulate.load_table(path)
        if aggregate:
            objective = simulate.scored_by(objective,
                                           simulate.parse_aggregate(aggregate, objective.domains))
        out[name] = objective
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instances", default=",".join(simulate.TESTBED))
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--budget", type=float,
                   help="one budget for every instance (default: by ladder)")
    p.add_argument("--as-table", action="store_true", help="replay each instance as a pool table")
    p.add_argument("--aggregate", default="", help="mixbo's --aggregate, scored the same way")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--json", help="write every curve and the table as JSON")
    p.add_argument("--runs", help="JSON lines of finished searches: appended, and reused")
    p.add_argument("--table-only", action="store_true", help="print --runs' table, run nothing")
    p.add_argument("--ledgers", metavar="DIR", help="keep each search's ledger in DIR, to re-score")
    args = p.parse_args(argv)
    if args.ledgers:
        os.makedirs(args.ledgers, exist_ok=True)
        _LEDGERS["folder"] = args.ledgers
    names, strategies = args.instances.split(","), args.strategies.split(",")
    if "random" not in strategies:
        strategies.append("random")              # the reference of the speed-up
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        _OBJECTIVES.update(build_objectives(names, args.as_table, folder, args.aggregate))
    budgets = {n: args.budget or default_budget(_OBJECTIVES[n]) for n in names}
    tasks = [(n, s, seed, budgets[n], args.aggregate) for seed in range(args.seeds) for n in names
             for s in strategies]                # seed by seed: a stopped run covers every row
    by_task = {}
    if args.runs and os.path.exists(args.runs):
        with open(args.runs) as f:
            done = [json.loads(line) for line in f if line.strip()]
        inf = lambda c: [(p[0], math.inf if p[1] is None else p[1], *p[2:]) for p in c]
        by_task = {tuple(r["task"]): (inf(r["curve"]), r["n_target"], r["wall_s"]) for r in done}
    todo = [] if args.table_only else [t for t in tasks if t not in by_task]
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        for task, run in zip(todo, pool.imap(run_one, todo)):
            by_task[task] = run
            if args.runs:
                with open(args.runs, "a") as f:
                    f.write(json.dumps(loop_bench.json_ready({"task": task, "curve": run[0],
                            "n_target": run[1], "wall_s": run[2]})) + "\n")
    print(f"robustness: {len(names)} instances x {', '.join(strategies)} x {args.seeds} seeds"
          f"{' (as tables)' if args.as_table else ''}; {time.perf_counter() - t0:.0f} s wall")
    print(f"{'instance':<28} {'budget':>6} {'strategy':<11} {'seeds':>5} {'final':>8} {'regret':>8}"
          f" {'x random':>9}"
          f" {'target':>7} {'cover1':>7} {'cover2':>7}")
    table = {}
    for n in names:
        objective = _OBJECTIVES[n]
        optimum = objective.optimum[1] if objective.optimum is not None else None
        keys = lambda s: [(n, s, seed, budgets[n], args.aggregate) for seed in range(args.seeds)]
        get = lambda s: [by_task[task] for task in keys(s) if task in by_task]
        if not get("random"):
            continue
        q_random = float(np.percentile([r[0][-1][1] for r in get("random")], 50, method="higher"))
        table[n] = {}
        for s in strategies:
            runs_s = get(s)
            if not runs_s:
                continue
            row = summarize([r[0] for r in runs_s], [r[1] for r in runs_s], optimum, q_random,
                            budgets[n])
            row["curves"] = [r[0] for r in runs_s]
            table[n][s] = row
            fmt = lambda v, f: "-" if v is None else format(v, f)
            print(f"{n:<28} {budgets[n]:>6g} {s:<11} {len(runs_s):>5}"
                  f" {row['final_true_loss']:>8.4f}"
                  f" {fmt(row['final_regret'], '.4f'):>8} {fmt(row['speedup_vs_random'], '.2f'):>9}"
                  f" {row['target_runs']:>7g} {fmt(row['cover1'], '.2f'):>7}"
                  f" {fmt(row['cover2'], '.2f'):>7}")
    ladders = sorted({len(_OBJECTIVES[n].scales) for n in table})
    for s, share, scales in ((s, share, scales) for s in strategies for share in (0.25, 0.5, 1.0)
                             for scales in [None] + ladders):
        z = [abs(p[2] - p[1]) / p[3] for n, rows in table.items() if s in rows
             and scales in (None, len(_OBJECTIVES[n].scales))       # pooled: all, then by ladder
             for p in (at_share(c, share * budgets[n]) for c in rows[s]["curves"])
             if p is not None and p[3]]
        if z:
            print(f"pooled {s} at {share:4.0%} of the budget, "
                  f"{f'{scales} scales' if scales else 'all'}: {len(z)} searches, |predicted - "
                  f"true| <= 1 sd in {np.mean(np.array(z) <= 1):.2f}, <= 2 sd in "
                  f"{np.mean(np.array(z) <= 2):.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(loop_bench.json_ready({"command": "python bench/robustness.py "
                                  + " ".join(sys.argv[1:] if argv is None else argv),
                                  "budgets": budgets, "results": table}), f, allow_nan=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
