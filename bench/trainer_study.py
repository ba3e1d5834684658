"""The BO-for-data-mixing study on mixbo's own corpus and trainer (a benchmark, not a test).

Shape of "Bayesian optimization for data mixing" (see bench/README.md, "Trainer study"): five corpus
domains; mfkg (its design, then the knowledge gradient over the smaller sizes and shorter runs of
train_lm.make_objective) against Sobol and uniform at the target, all at the budget that 64 Sobol
trials at the target cost; each through mixbo.optimize, as a user calls it. Then every method's
recommendation is retrained with fresh seeds at the search scale and at a larger one (the transfer
check): the average and per-domain val loss (nats/byte), mean +- sd over seeds, the paired
differences mfkg - sobol, mfkg - uniform, sobol - uniform (the seeds are shared), and on how many
domains mfkg's best beats Sobol's.

    OMP_NUM_THREADS=1 python bench/trainer_study.py --json study.json [--plot DIR]

Ledgers go to --out (a rerun resumes them); --json writes every number; --plot DIR writes two
PNGs when matplotlib is importable and says so in one line when it is not.
"""

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mixbo  # noqa: E402
import train_lm  # noqa: E402

# docs is left out: Python documentation and man pages overlap code and reference the most.
DOMAINS = "code,books,reference,academic,dialogue"


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="data/corpus", help="built by data/build_corpus.py")
    p.add_argument("--domains", default=DOMAINS, help="comma list of the corpus domains to mix")
    p.add_argument("--sizes", default="0.1M,0.3M", help="sizes mfkg may use; the last is the "
                                                         "search scale (the target)")
    p.add_argument("--larger", default="0.8M", help="size of the transfer check")
    p.add_argument("--steps", default="12,24,48", help="checkpoint steps; the last is the target")
    p.add_argument("--block-size", type=int, default=32, help="bytes per training sequence")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    p.add_argument("--budget", type=float, default=64.0, help="target-run equivalents per method")
    p.add_argument("--strategies", default="mfkg,sobol,uniform", help="comma list; mfkg and "
                                                                       "sobol are compared")
    p.add_argument("--repeats", type=int, default=3, help="training seeds per evaluation")
    p.add_argument("--seed", type=int, default=0, help="seeds the searches and the evaluation")
    p.add_argument("--out", default="runs/trainer_study", help="ledgers and the 5-domain corpus")
    p.add_argument("--json", help="write every number here")
    p.add_argument("--plot", metavar="DIR", help="write trace.png and losses.png here")
    p.add_argument("--verbose", action="store_true", help="print every trial")
    return p


def sub_corpus(corpus, domains, folder):
    """A corpus folder holding only `domains` of `corpus`: its manifest and links to the files."""
    known, _ = train_lm.load_corpus(corpus)
    missing = [d for d in domains if d not in known]
    if missing or len(set(domains)) != len(domains) or len(domains) < 2:
        raise ValueError(f"--domains must name >= 2 distinct domains of {corpus} "
                         f"({', '.join(known)}); got {', '.join(domains)}")
    folder.mkdir(parents=True, exist_ok=True)
    for d in domains:
        for split in ("train", "val"):
            link, source = folder / f"{d}.{split}.bin", Path(corpus).resolve() / f"{d}.{split}.bin"
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(source)
    (folder / "manifest.json").write_text(json.dumps({"domains": list(domains)}) + "\n")
    return str(folder)


def search(objective, strategy, args, ledger):
    """One mixbo.optimize run; its recommendation, trials by fidelity, wall time and trace."""
    start = time.perf_counter()
    result = mixbo.optimize(objective, strategy, budget=args.budget, seed=args.seed,
                            ledger=ledger, resume=True, out=print, verbose=args.verbose)
    choice, spent, trace = result.recommendation, 0.0, []
    cost = {r["trial"]: r["cost"] for r in result.trials}
    told = sorted(cost)
    for c in result.recommendations:                      # the loop tells in trial order
        spent = sum(cost[t] for t in told if t <= c["after_trial"])
        trace.append([spent, c["loss"], c["sd"]])
    target = objective.target
    at_target = [r["loss"] for r in result.trials
                 if r["status"] == "ok" and (r["scale"], r["steps"]) == target]
    fidelities = Counter(f"{mixbo.fmt_scale(r['scale'])}@{r['steps']}" for r in result.trials)
    return {"weights": choice["weights"], "loss": choice["loss"], "sd": choice["sd"],
            "source": choice["source"], "trials": len(result.trials), "spent": result.spent,
            "failed": sum(r["status"] == "failed" for r in result.trials),
            "by_fidelity": dict(sorted(fidelities.items())), "wall_s": time.perf_counter() - start,
            "target_losses": at_target, "trace": trace, "insight": result.insight}


def evaluate(objective, weights, scale, steps, seeds):
    """Train `weights` once per seed; per seed the loss, domain losses and seconds."""
    runs = []
    for seed in seeds:
        r = objective.run(np.asarray(weights, dtype=np.float64), scale, steps, seed)
        runs.append({"seed": seed, "loss": r["loss"], "domain_losses": r["domain_losses"],
                     "seconds": r["seconds"]})
    return runs


def stats(runs, domains):
    """{"average" | domain: [mean, sd over seeds (ddof 1; 0 for one seed)]}."""
    table = {"average": [r["loss"] for r in runs]}
    table.update({d: [r["domain_losses"][d] for r in runs] for d in domains})
    return {k: [float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0]
            for k, v in table.items()}


def paired(runs_a, runs_b, domains):
    """{"average" | domain: [mean, sd]} of a - b over the seeds both share (the same seeds)."""
    diff = [{"loss": a["loss"] - b["loss"],
             "domain_losses": {d: a["domain_losses"][d] - b["domain_losses"][d] for d in domains}}
            for a, b in zip(runs_a, runs_b)]
    return stats(diff, domains)


def print_table(title, rows, domains):
    print(title)
    print(f"  {'':<16}" + "".join(f"{k:>18}" for k in ("average", *domains)))
    for name, cells in rows.items():
        print(f"  {name:<16}" + "".join(f"{m:.4f} +- {s:.4f}".rjust(18)
                                        for m, s in (cells[k] for k in ("average", *domains))))


def plot(folder, report, domains):
    """trace.png: each method's recommended loss at the target against budget spent (mfkg: the
    GP's prediction +- sd; sobol, uniform: the best observed). losses.png: the evaluations' mean
    +- sd per domain and on average, at the search scale and the larger one."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot: matplotlib is not installed (pip install matplotlib); no PNGs written")
        return
    os.makedirs(folder, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, s in report["searches"].items():
        t = np.array([[c, m, sd if sd is not None else 0.0] for c, m, sd in s["trace"]
                      if m is not None])
        if not len(t):                                    # no trial succeeded
            continue
        ax.step(t[:, 0], t[:, 1], where="post", label=name)
        if name in mixbo.GP_STRATEGIES:
            ax.fill_between(t[:, 0], t[:, 1] - t[:, 2], t[:, 1] + t[:, 2], step="post", alpha=0.2)
    ax.set(xlabel="budget spent (target-run equivalents)", ylabel="recommended loss at target",
           title="search trace")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "trace.png"), dpi=80)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=False)
    keys = ("average", *domains)
    for ax, (scale, by_method) in zip(axes, report["evaluation"].items()):
        width = 0.8 / len(by_method)
        for j, (name, e) in enumerate(by_method.items()):
            m = [e["stats"][k][0] for k in keys]
            sd = [e["stats"][k][1] for k in keys]
            ax.bar(np.arange(len(keys)) + j * width, m, width, yerr=sd, label=name, capsize=2)
        low = min(e["stats"][k][0] for e in by_method.values() for k in keys)
        ax.set(xticks=np.arange(len(keys)) + 0.4 - width / 2, ylim=(low - 0.1, None),
               title=f"val loss at {scale} (mean +- sd)")
        ax.set_xticklabels(keys, rotation=30, fontsize=8)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "losses.png"), dpi=80)
    print(f"--plot: wrote {folder}/trace.png and {folder}/losses.png")


def main(argv=None):
    args = build_parser().parse_args(argv)
    domains = tuple(d.strip() for d in args.domains.split(","))
    sizes = tuple(s.strip() for s in args.sizes.split(","))
    steps = tuple(int(s) for s in args.steps.split(","))
    strategies = tuple(s.strip() for s in args.strategies.split(","))
    if args.repeats < 1 or any(s not in mixbo.STRATEGIES for s in strategies):
        raise ValueError(f"--repeats must be >= 1 and --strategies a comma list of "
                         f"{', '.join(mixbo.STRATEGIES)}")
    out = Path(args.out)
    corpus = sub_corpus(args.corpus, domains, out / "corpus")
    config = dict(block_size=args.block_size, batch_size=args.batch_size)
    objective = train_lm.make_objective(corpus, sizes=sizes, steps=steps, **config)
    scale, n_steps = objective.target
    larger = float(train_lm.size_params(train_lm.size_name(args.larger)))
    checks = train_lm.make_objective(corpus, sizes=(sizes[-1], args.larger), steps=(n_steps,),
                                     **config)
    seeds = [1_000_000 * (args.seed + 1) + i for i in range(args.repeats)]   # none a search's
    print(f"trainer study: domains {', '.join(domains)}; sizes {', '.join(sizes)} "
          f"({', '.join(mixbo.fmt_scale(N) for N in objective.scales)} non-embedding), steps "
          f"{', '.join(map(str, steps))}, target {sizes[-1]} x {n_steps} steps; batch "
          f"{args.batch_size} x block {args.block_size}; budget {args.budget:g} target runs per "
          f"method, strategies {', '.join(strategies)}, seed {args.seed}; evaluation: "
          f"{args.repeats} seeds at {sizes[-1]} and {args.larger} "
          f"({larger / scale:.1f}x params); torch threads {torch.get_num_threads()}")
    t0 = time.perf_counter()
    first = objective.run(np.full(len(domains), 1 / len(domains)), scale, n_steps, seeds[0])
    one = time.perf_counter() - t0
    ratio = objective.cost(larger, n_steps) / objective.cost(scale, n_steps)
    estimate = one * (args.budget * len(strategies) + args.repeats * len(strategies) * (1 + ratio))
    print(f"one target run: {one:.1f} s (loss {first['loss']:.4f}); the study needs about "
          f"{estimate / 60:.0f} min plus the GP's time")
    report = {"settings": {**vars(args), "domains": list(domains), "scales": objective.scales,
                           "eval_seeds": seeds, "larger_scale": larger},
              "one_target_run_s": one, "searches": {}, "evaluation": {}}
    for strategy in strategies:
        print(f"-- {strategy}: budget {args.budget:g}")
        report["searches"][strategy] = search(objective, strategy, args,
                                              str(out / f"{strategy}-seed{args.seed}.jsonl"))
        s = report["searches"][strategy]
        print(f"-- {strategy}: {s['trials']} trials ({s['failed']} failed), spent "
              f"{s['spent']:.2f}, {s['wall_s']:.0f} s wall; by fidelity {s['by_fidelity']}")
    for N, name in ((scale, sizes[-1]), (larger, args.larger)):
        report["evaluation"][name] = {}
        for strategy in strategies:
            runs = evaluate(checks, report["searches"][strategy]["weights"], N, n_steps, seeds)
            report["evaluation"][name][strategy] = {"runs": runs, "stats": stats(runs, domains)}
    print_summary(report, domains, strategies)
    report["wall_s"] = time.perf_counter() - t0
    print(f"whole study {report['wall_s']:.0f} s wall")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        plot(args.plot, report, domains)
    return 0


def print_summary(report, domains, strategies):
    """The recommendations, the noise of the target runs, the tables and the mfkg - sobol count."""
    print("recommended mixtures (" + ", ".join(domains) + "):")
    for name, s in report["searches"].items():
        sd = f" +- {s['sd']:.4f}" if s["sd"] is not None else ""
        print(f"  {name:<8} [{', '.join(f'{w:.2f}' for w in s['weights'])}]  loss "
              f"{s['loss']:.4f}{sd} ({s['source']})")
    for name, s in report["searches"].items():
        y = s["target_losses"]
        if len(y) > 1:
            print(f"  {name:<8} target runs: {len(y)}, loss mean {np.mean(y):.4f}, sd "
                  f"{np.std(y, ddof=1):.4f}, best "
                  f"{min(y):.4f}" + ("  (one mixture: the seed sd)" if name == "uniform" else ""))
    for scale, by_method in report["evaluation"].items():
        rows = {name: e["stats"] for name, e in by_method.items()}
        for a, b in (("mfkg", "sobol"), ("mfkg", "uniform"), ("sobol", "uniform")):
            if a in by_method and b in by_method:
                rows[f"{a} - {b}"] = paired(by_method[a]["runs"], by_method[b]["runs"], domains)
        compare = "mfkg - sobol" in rows
        if compare:
            diff = rows["mfkg - sobol"]
            wins = [d for d in domains if diff[d][0] < 0]
            report.setdefault("mfkg_vs_sobol", {})[scale] = {"paired": diff, "wins": wins}
        print_table(f"val loss at {scale}, {len(report['settings']['eval_seeds'])} seeds "
                    f"(nats/byte, mean +- sd):", rows, domains)
        if compare:
            print(f"  mfkg's best beats sobol's on {len(wins)} of {len(domains)} domains "
                  f"({', '.join(wins) or 'none'}); average {diff['average'][0]:+.4f}")

if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as e:
        print(f"trainer_study: {e}", file=sys.stderr)
        sys.exit(2)
