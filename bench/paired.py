"""mfkg before and after a change, paired by seed: the final recommendation's true target loss.

Each seed runs `mixbo.optimize(make_benchmark(NAME), "mfkg", budget, seed)` with the default
settings in the mixbo checkout REPO (a `git worktree` of another commit, or this one) and appends
{"bench", "seed", "true", "optimum", "trials", "wall_s"} to OUT (seeds already there are skipped,
so a stopped run continues). --summary OLD NEW prints, per benchmark, the median regrets, the mean
paired difference new - old with its standard error, and the median trials and wall time; OLD and
NEW may also be `mixbo.py --bench --json` files (a setting against the defaults).

Run: python bench/paired.py --repo REPO --bench default,sparse --seeds 10 --out new.jsonl
     python bench/paired.py --summary old.jsonl new.jsonl
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

ONE_SEED = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, mixbo, simulate
objective = simulate.make_benchmark(sys.argv[2])
t = time.perf_counter()
result = mixbo.optimize(objective, "mfkg", float(sys.argv[4]), int(sys.argv[3]), out=None)
weights = np.array(result.recommendation["weights"])
print(json.dumps({"bench": sys.argv[2], "seed": int(sys.argv[3]),
                  "true": float(objective.true_loss(weights)), "optimum": objective.optimum[1],
                  "trials": len(result.trials), "wall_s": time.perf_counter() - t}))
"""


def run(repo, benches, seeds, budget, out):
    """Every (seed, bench) not yet in `out`, seed by seed, each in a fresh interpreter of `repo`."""
    done = set()
    if os.path.exists(out):
        with open(out) as f:
            done = {(r["bench"], r["seed"]) for r in map(json.loads, f)}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for seed in range(seeds):
        for bench in benches:
            if (bench, seed) not in done:
                line = subprocess.run([sys.executable, "-c", ONE_SEED, repo, bench, str(seed),
                                       str(budget)], env=env, check=True, capture_output=True,
                                      text=True).stdout.strip().splitlines()[-1]
                with open(out, "a") as f:
                    f.write(line + "\n")


def load(path):
    """{(bench, seed): record} of this script's JSON lines, or of a `mixbo.py --bench --json` file
    (its mfkg curves: a setting compared with the defaults, paired by seed)."""
    if not path.endswith(".json"):
        return {(r["bench"], r["seed"]): r for r in map(json.loads, open(path))}
    with open(path) as f:
        bench = json.load(f)
    mfkg = bench["results"]["mfkg"]
    return {(bench["objective"], c["seed"]): {"true": c["true_loss"][-1], "trials": len(c["cost"]),
                                              "optimum": bench["optimum_loss"],
                                              "wall_s": mfkg["run_wall_s"] / len(mfkg["curves"])}
            for c in mfkg["curves"]}


def summary(old_path, new_path):
    old, new = load(old_path), load(new_path)
    for bench in sorted({k[0] for k in old}):
        keys = sorted(k for k in old if k in new and k[0] == bench)
        if len(keys) < 2:
            continue
        regret = lambda runs: np.array([runs[k]["true"] - runs[k]["optimum"] for k in keys])
        d = regret(new) - regret(old)
        median = lambda runs, field: np.median([runs[k][field] for k in keys])
        print(f"{bench}: {len(keys)} seeds; median regret old {np.median(regret(old)):.4f} new "
              f"{np.median(regret(new)):.4f}; new - old {d.mean():+.4f} +- "
              f"{d.std(ddof=1) / np.sqrt(len(d)):.4f} (se), new lower in {int((d < 0).sum())}; "
              f"trials {median(old, 'trials'):.0f} -> {median(new, 'trials'):.0f}; wall "
              f"{median(old, 'wall_s'):.0f} -> {median(new, 'wall_s'):.0f} s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p.add_argument("--bench", default="default,sparse")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--budget", type=float, default=5.0)
    p.add_argument("--out")
    p.add_argument("--summary", nargs=2, metavar=("OLD", "NEW"))
    args = p.parse_args(argv)
    if args.summary:
        summary(*args.summary)
    elif args.out:
        run(os.path.abspath(args.repo), args.bench.split(","), args.seeds, args.budget, args.out)
    else:
        p.error("give --out (to run) or --summary OLD NEW")
    return 0


if __name__ == "__main__":
    sys.exit(main())
