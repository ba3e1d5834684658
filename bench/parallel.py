"""What parallelism costs (a benchmark, not a test): a strategy with P trials in flight on a
simulator, on a virtual clock where a trial takes time equal to its cost (1 = one target run), the
proposals made while trials run with the pending ones believed (mixbo.Search, kriging believer).
When a trial finishes, it is told and the free slot asks for the next one.

For each P and seed: the clock time from which the recommendation's true target loss stays at or
below q_random (random search's median final true loss at the same budget, the upper median over
seeds, as bench/loop_bench.py), the compute spent by then (target-run equivalents, trials still
running counted for the part already run), and the final regret; median [q25, q75] over seeds.

    python bench/parallel.py [--sim default] [--strategy mfkg] [--budget 2] [--seeds 4]
                             [--parallel 1,4,8] [--candidates 64] [--jobs 2]
"""

import argparse
import heapq
import math
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mixbo  # noqa: E402
import simulate  # noqa: E402
from loop_bench import _cost_to_stay, _quartiles, _worker_init  # noqa: E402


def run(task):
    """One (simulator, strategy, budget, seed, P, settings) search on the virtual clock. Returns the
    curve [(clock, true loss of the recommendation)] after every tell, the trials' (start, duration)
    and the wall time."""
    name, strategy, budget, seed, parallel, settings = task
    objective, start = simulate.make_benchmark(name), time.perf_counter()
    mixbo.one_thread([strategy], mixbo.Source(sim=name))
    search = mixbo.Search(objective, mixbo.Settings(strategy=strategy, budget=budget, seed=seed,
                                                    **settings))
    clock, running, runs, curve = 0.0, [], [], []     # running: heap of (finish, trial, result)
    while True:
        while len(running) < parallel and (trials := search.ask(1)):
            trial = trials[0]
            duration = search.ctx.cost(trial.scale, trial.steps)
            result = objective.run(np.array(trial.weights), trial.scale, trial.steps, trial.seed)
            heapq.heappush(running, (clock + duration, trial.trial, result))
            runs.append((clock, duration))
        if not running:
            break
        clock, trial, result = heapq.heappop(running)
        _, choice = search.tell(trial, result=result)
        true = objective.true_loss(np.array(choice["weights"])) if choice["weights"] else math.inf
        curve.append((clock, float(true)))
    return curve, runs, time.perf_counter() - start


def compute_by(runs, clock):
    """Target-run equivalents spent by `clock`: every trial's part run by then."""
    return sum(min(max(clock - start, 0.0), duration) for start, duration in runs)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sim", default="default", choices=simulate.BENCHMARKS)
    p.add_argument("--strategy", default="mfkg", choices=mixbo.GP_STRATEGIES)
    p.add_argument("--budget", type=float, default=2.0)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--parallel", default="1,4,8", help="trials in flight, comma-separated")
    p.add_argument("--candidates", type=int, default=64)
    p.add_argument("--jobs", type=int, default=2, help="searches at once (forked processes)")
    a = p.parse_args(argv)
    levels = [int(x) for x in a.parallel.split(",")]
    settings = {"candidates": a.candidates}
    tasks = [(a.sim, "random", a.budget, seed, 1, {}) for seed in range(a.seeds)]
    tasks += [(a.sim, a.strategy, a.budget, seed, P, settings) for P in levels
              for seed in range(a.seeds)]
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(a.jobs, initializer=_worker_init) as pool:
        out = pool.map(run, tasks, chunksize=1)
    random, rest = out[:a.seeds], out[a.seeds:]
    q = float(np.percentile([c[-1][1] for c, _, _ in random], 50, method="higher"))
    best = simulate.make_benchmark(a.sim).optimum[1]
    print(f"{a.strategy} on --sim {a.sim}, budget {a.budget:g}, seeds 0..{a.seeds - 1}, candidates "
          f"{a.candidates}; virtual clock: a trial takes its cost (1 = one target run)")
    print(f"q_random = random's median final true loss = {q:.4f}; median [q25, q75] over seeds")
    print(f"{'P':>2}  {'time to stay <= q_random':<26} {'x P=1':>6}  {'compute by then':<24} "
          f"{'x P=1':>6}  {'final regret':<26} {'total cost':>10} {'wall s':>7}")
    base = None
    for i, P in enumerate(levels):
        seeds = rest[i * a.seeds:(i + 1) * a.seeds]
        reach = [_cost_to_stay(curve, q) for curve, _, _ in seeds]
        spent = [compute_by(runs, t) if math.isfinite(t) else math.inf
                 for (_, runs, _), t in zip(seeds, reach)]
        times, costs = _quartiles(reach), _quartiles(spent)
        regret = _quartiles([curve[-1][1] - best for curve, _, _ in seeds])
        total = np.median([sum(d for _, d in runs) for _, runs, _ in seeds])
        base = base or (times[0], costs[0])
        cell = lambda t, f: "not reached" if not math.isfinite(t[0]) else (
            f"{t[0]:{f}} [{t[1]:{f}}, {t[2]:{f}}]")
        print(f"{P:>2}  {cell(times, '.2f'):<26} {base[0] / times[0]:>6.2f}  "
              f"{cell(costs, '.2f'):<24} {costs[0] / base[1]:>6.2f}  {cell(regret, '.4f'):<26} "
              f"{total:>10.3f} {sum(w for _, _, w in seeds):>7.1f}")
    print(f"wall {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
