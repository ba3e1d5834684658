"""Train a table of real runs with train_lm.py: mixtures x model sizes, losses at every checkpoint.

  python data/make_table.py --out data/runs_cpu.csv          (defaults: the committed table's settings)

Output, in the run-table format that `python mixbo.py --table` replays (simulate.py; one row per run and
checkpoint): run, seed, w_<domain>..., scale, tokens, steps, cost, loss_<domain>..., loss
  run    mixture id, shared by the same mixture at every size ("m00" = uniform)
  seed   training seed (0; 1 for the repeats that measure seed noise: simulate.py treats them as replicates)
  scale  non-embedding parameters of the size (train_lm.size_params); cost = 6 * scale * tokens
  loss   equal-weight mean of the per-domain validation losses (nats/byte)
A sidecar <out stem>.json records the command(s), the settings and each run's wall time.

Mixtures (seeded, np.random.default_rng(seed)): m00 uniform; m01..m04 sparse (Dirichlet(1) on a random
2- or 3-domain face, the other weights exactly 0); the rest Dirichlet(1) on the whole simplex. The first
--large mixtures are also trained at the largest size. Rows are appended (and fsync'ed) as runs finish, so
an interrupted table keeps every finished run, and re-running the same command skips finished runs.
"""
import argparse
import csv
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import simulate  # noqa: E402  (repository root on the path)
import train_lm  # noqa: E402


def mixtures(K, n, seed):
    """(n, K) mixtures: uniform, 4 sparse ones on faces, then Dirichlet(1) draws."""
    rng = np.random.default_rng(seed)
    out = [np.full(K, 1.0 / K)]
    for i in range(min(4, n - 1)):
        face = rng.choice(K, size=2 + i % 2, replace=False)                     # 2 or 3 domains
        w = np.zeros(K)
        w[face] = rng.dirichlet(np.ones(len(face)))
        out.append(w)
    while len(out) < n:
        out.append(rng.dirichlet(np.ones(K)))
    return np.array(out)                                                         # (n, K)


def one_run(task):
    """Worker: train one (mixture, size, seed) and return its rows (one per checkpoint)."""
    run_id, w, size, seed, args, deadline = task
    if time.time() > deadline:
        return run_id, size, seed, None, 0.0
    import torch
    torch.set_num_threads(1)
    cfg = train_lm.TrainConfig(size=size, block_size=args["block_size"], batch_size=args["batch_size"],
                               steps=args["steps"][-1], eval_steps=tuple(args["steps"]),
                               val_windows=args["val_windows"], stream=args["stream"], seed=seed)
    out = train_lm.train(args["corpus"], np.array(w), cfg)
    rows = []
    for c in out["checkpoints"]:
        tokens = c["steps"] * cfg.batch_size * cfg.block_size
        rows.append({"run": run_id, "seed": seed, **{f"w_{d}": repr(float(x)) for d, x in zip(args["domains"], w)},
                     "scale": out["scale"], "tokens": tokens, "steps": c["steps"],
                     "cost": simulate.flops_cost(out["scale"], c["steps"],
                                                 cfg.batch_size * cfg.block_size),
                     **{f"loss_{d}": repr(v) for d, v in c["domain_losses"].items()}, "loss": repr(c["loss"])})
    return run_id, size, seed, rows, out["seconds"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--out", default="data/runs_cpu.csv")
    ap.add_argument("--sizes", default="0.1M,0.3M,0.8M", help="ascending; the last is the 'large' size")
    ap.add_argument("--steps", default="30,60,120,240", help="checkpoint steps (the cosine schedule spans the last)")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--val-windows", type=int, default=64)
    ap.add_argument("--stream", default="domain",
                    help="train_lm's window sampler (data/runs_cpu.csv was made with 'step')")
    ap.add_argument("--mixtures", type=int, default=32, help="mixtures at the smaller sizes")
    ap.add_argument("--large", type=int, default=12, help="of which the first this many also at the largest size")
    ap.add_argument("--repeats", type=int, default=4, help="first this many mixtures retrained with seed 1")
    ap.add_argument("--seed", type=int, default=0, help="seed of the mixture draws")
    ap.add_argument("--workers", type=int, default=2, help="parallel single-threaded training processes")
    ap.add_argument("--minutes", type=float, default=42, help="start no run after this many minutes")
    args = ap.parse_args()
    domains, _ = train_lm.load_corpus(args.corpus)
    sizes = args.sizes.split(",")
    steps = [int(s) for s in args.steps.split(",")]
    W = mixtures(len(domains), args.mixtures, args.seed)                          # (M, K)
    shared = dict(corpus=args.corpus, domains=domains, steps=steps, block_size=args.block_size,
                  batch_size=args.batch_size, val_windows=args.val_windows, stream=args.stream)
    deadline = time.time() + 60 * args.minutes
    # task order: largest size first within each mixture (long jobs early keep both workers busy to the end),
    # seed repeats after the first 8 mixtures, so a table cut by the deadline still has every ingredient
    tasks = []
    for i, w in enumerate(W):
        for size in reversed(sizes):
            if size != sizes[-1] or i < args.large:
                tasks.append((f"m{i:02d}", w.tolist(), size, 0, shared, deadline))
        if i == 7:
            for j in range(args.repeats):
                for size in reversed(sizes):
                    if size != sizes[-1] or j < 2:
                        tasks.append((f"m{j:02d}", W[j].tolist(), size, 1, shared, deadline))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (["run", "seed"] + [f"w_{d}" for d in domains] + ["scale", "tokens", "steps", "cost"]
              + [f"loss_{d}" for d in domains] + ["loss"])
    if out.exists():                                                 # resume: skip finished runs
        done = {(r["run"], float(r["scale"]), int(r["seed"])) for r in csv.DictReader(out.open())}
    else:
        done = set()
        out.write_text(",".join(header) + "\n")
    scale_of = {s: float(train_lm.size_params(s, args.block_size)) for s in sizes}
    tasks = [t for t in tasks if (t[0], scale_of[t[2]], t[3]) not in done]
    sidecar = out.with_suffix(".json")
    log = json.loads(sidecar.read_text()) if sidecar.exists() else {
        "commands": [], "settings": vars(args), "domains": list(domains),
        "sizes": {s: scale_of[s] for s in sizes}, "runs": []}
    fixed = {k: v for k, v in vars(args).items() if k not in ("minutes", "workers")}
    settings = {"stream": "step", **log["settings"]}        # tables made before --stream used 'step'
    if any(settings.get(k) != v for k, v in fixed.items()):
        sys.exit(f"make_table: error: {out} was made with other settings ({sidecar}); use another --out")
    log["commands"].append("python data/make_table.py " + " ".join(sys.argv[1:]))
    print(f"{len(tasks)} runs to train with {args.workers} workers", file=sys.stderr, flush=True)
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for run_id, size, seed, rows, seconds in pool.imap_unordered(one_run, tasks):
            if rows is None:
                print(f"{run_id} {size} seed {seed}: skipped (past --minutes)", file=sys.stderr, flush=True)
                continue
            with out.open("a", newline="") as f:
                csv.DictWriter(f, header).writerows(rows)
                f.flush()
                os.fsync(f.fileno())
            log["runs"].append({"run": run_id, "size": size, "seed": seed, "seconds": round(seconds, 1)})
            sidecar.write_text(json.dumps(log, indent=1) + "\n")
            print(f"{run_id} {size} seed {seed}: loss {float(rows[-1]['loss']):.4f} ({seconds:.0f} s)",
                  file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
