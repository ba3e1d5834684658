"""What a run table shows: mixture spread vs seed noise, rank agreement between scales, and
whether the best mixture moves with scale. Works on data/make_table.py's tables and on
simulate.write_table's (format: data/README.md).

  python data/analyze_table.py data/runs_cpu.csv

Numbers (objective = the `loss` column):
- spread: sd and range of the loss across mixtures at each (scale, steps);
- seed noise: sd of one run's loss, sqrt(mean((a - b)^2) / 2) over mixtures trained with seeds 0
  and 1 (the sd of a difference of two independent runs is sqrt(2) sd);
- Spearman rank correlation (scipy.stats.spearmanr) of the loss across mixtures between scales,
  at the last step, on the mixtures both scales have;
- the best mixture at each scale, and the regret at the largest scale of picking each smaller
  scale's best: loss_large(best_small) - min loss_large, in loss units and in seed-noise sd.
"""
import csv
import sys

import numpy as np
import scipy.stats


def read(path, seed):
    """{(run, scale, steps): row dict with floats} of one training seed from a run table."""
    out = {}
    for r in csv.DictReader(open(path)):
        if int(r.get("seed", 0)) == seed:
            key = (r["run"], float(r["scale"]), int(r["steps"]))
            out[key] = {k: (v if k == "run" else float(v)) for k, v in r.items()}
    return out


def main(path):
    rows, rep = read(path, 0), read(path, 1)            # seed 0: every run; seed 1: the repeats
    domains = [k[2:] for k in next(iter(rows.values())) if k.startswith("w_")]
    scales = sorted({s for _, s, _ in rows})
    steps = sorted({t for _, _, t in rows})
    last = steps[-1]
    loss = lambda run, s, t, table=rows: table[run, s, t]["loss"]
    runs_at = {s: sorted({r for r, s2, t in rows if s2 == s and t == last}) for s in scales}
    print(f"table {path}: {len(rows)} rows, domains {', '.join(domains)}")
    print(f"scales {[int(s) for s in scales]}, steps {steps}, mixtures per scale "
          f"{[len(runs_at[s]) for s in scales]}, seed-1 repeats {len({r for r, _, _ in rep})}")

    print("\n## spread across mixtures vs seed noise (loss)")
    print(f"{'scale':>10} {'steps':>6} {'n':>3} {'mean':>7} {'sd':>7} {'range':>7} {'seed sd':>8} "
          f"{'pairs':>5} {'sd/seed':>8}")
    noise = {}
    for s in scales:
        for t in steps:
            v = np.array([loss(r, s, t) for r in runs_at[s]])                       # (n,)
            pairs = [(loss(r, s, t), loss(r, s, t, rep)) for r, s2, t2 in rep
                     if s2 == s and t2 == t]
            sd_seed = float(np.sqrt(np.mean([(a - b) ** 2 for a, b in pairs]) / 2)) \
                if pairs else float("nan")
            noise[s, t] = sd_seed
            print(f"{int(s):>10} {t:>6} {len(v):>3} {v.mean():7.4f} {v.std(ddof=1):7.4f} "
                  f"{np.ptp(v):7.4f} {sd_seed:8.4f} {len(pairs):>5} {v.std(ddof=1) / sd_seed:8.1f}")

    print(f"\n## Spearman rank correlation of the loss between scales (steps {last})")
    for i, a in enumerate(scales):
        for b in scales[i + 1:]:
            common = sorted(set(runs_at[a]) & set(runs_at[b]))
            rho = scipy.stats.spearmanr([loss(r, a, last) for r in common],
                                        [loss(r, b, last) for r in common])
            print(f"{int(a):>10} vs {int(b):>10}: rho = {rho.statistic:+.3f} "
                  f"(n = {len(common)}, p = {rho.pvalue:.2g})")
    print(f"\n## Spearman rank correlation between steps {steps[0]} and {last} at each scale")
    for s in scales:
        rho = scipy.stats.spearmanr([loss(r, s, steps[0]) for r in runs_at[s]],
                                    [loss(r, s, last) for r in runs_at[s]])
        print(f"{int(s):>10}: rho = {rho.statistic:+.3f} (n = {len(runs_at[s])})")

    print(f"\n## best mixture per scale (steps {last}); regret at the largest scale of its choice")
    big = scales[-1]
    common = runs_at[big]                                  # mixtures run at the largest scale
    best_big = min(common, key=lambda r: loss(r, big, last))
    for s in scales:
        for pool, label in ((runs_at[s], "all"), (common, "shared")):
            if label == "all" and s == big:
                continue
            best = min(pool, key=lambda r: loss(r, s, last))
            w = ", ".join(f"{d} {rows[best, s, last]['w_' + d]:.2f}" for d in domains)
            regret = loss(best, big, last) - loss(best_big, big, last) if best in common \
                else float("nan")
            sd = noise.get((big, last), float("nan"))
            print(f"{int(s):>10} best of {label:>6} ({len(pool):>2}): {best} loss "
                  f"{loss(best, s, last):.4f} [{w}]  regret at {int(big)}: {regret:.4f} "
                  f"({regret / sd:.1f} seed sd)")
    if "m00" in common:                                    # both table writers: m00 = uniform
        rank = sorted(common, key=lambda r: loss(r, big, last)).index("m00") + 1
        print(f"uniform mixture m00 at {int(big)}: loss {loss('m00', big, last):.4f}, rank {rank} "
              f"of {len(common)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/runs_cpu.csv")
