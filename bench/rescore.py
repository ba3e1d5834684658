"""Re-score the ledgers that `bench/robustness.py --ledgers DIR` kept: where is the reported +- off?

For every finished mfkg ledger <instance>-mfkg-seed<s>.jsonl in DIR and every --share, the search is
rebuilt as the loop had it after its last trial within that share of the budget (mixbo.Search on
the ledger cut there; the same model, as a function of the finished trials), and at the target
over the mixtures it has evaluated it reports, as this mixbo would have reported them then (with
--hyperparameter-draws):
  z        (true - predicted) / sd of the recommendation (the reported +-)
  spread   sd of the noise-free losses over sd of the posterior means: > 1 where the model
           predicts the mixtures' differences at the target smaller than they are
  level    (mean true - mean predicted) / root mean posterior variance: the target's level error
  all1     share of the evaluated mixtures whose |true - posterior mean| <= 1 posterior sd there
           (beside z: is it the recommendation, the argmin, whose +- is off, or every mixture's?)
  first    the first target run's true mixture effect: its noise-free target loss minus the mean
           over Dirichlet(1) mixtures, in their sd (beside level: is the level that run's effect?)
  runs     finished trials, those at the target, and the recommended mixture's among them
Then per instance: coverage at 1 and 2 sd and the mean z (> 0: the truth is worse than reported);
and pooled by ladder (number of scales): the same with the mean z's standard error, median
|spread - 1| and |level|, the mean all1, the correlation of level with first, and the share of
searches whose recommended mixture has run at the target.

With --scores FILE the rows are kept in FILE (JSON lines): a row scored before for the same
ledger bytes, share and draws is read back instead of rebuilt, so a bed that gained seeds is
re-scored for the new ledgers only.

Run: python bench/rescore.py DIR [--share 0.25 --share 1.0] [--instances a,b] [--seeds N]
         [--hyperparameter-draws N] [--jobs N] [--scores FILE]
"""

import argparse
import glob
import hashlib
import json
import math
import multiprocessing
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import robustness  # noqa: E402  (bench/, the script's folder)
import gp  # noqa: E402
import mixbo  # noqa: E402
import simulate  # noqa: E402


def cut_ledger(lines, records, share, budget, out):
    """Write to `out` the ledger's lines (and their parsed records) up to the recommendation after
    the last trial whose tell leaves at most share * budget spent (no summary line); False if
    there is none."""
    spent = {r["trial"]: r["spent"] for r in records if r.get("kind") == "tell"}
    within = [r["after_trial"] for r in records if r.get("kind") == "recommendation"
              and spent[r["after_trial"]] <= share * budget * (1 + 1e-9)]
    if not within:
        return False
    keep = []
    for line, r in zip(lines, records):
        if r.get("kind") != "summary":
            keep.append(line)
        if r.get("kind") == "recommendation" and r["after_trial"] == within[-1]:
            break
    with open(out, "w") as f:
        f.write("\n".join(keep) + "\n")
    return True


def score(lines, records, objective, name, seed, share, scratch, draws):
    """The row of one ledger at one share, or None if no trial was told within it; the reported +-
    with `draws` hyperparameter draws (mixbo's --hyperparameter-draws)."""
    budget, header = robustness.default_budget(objective), json.loads(lines[0])
    header["settings"]["hyperparameter_draws"] = draws         # reporting only: not the trials
    if not cut_ledger([json.dumps(header)] + lines[1:], records, share, budget, scratch):
        return None
    settings = dict(header["settings"], budget=budget)                     # the ledger's, as cut
    settings["mixture"] = tuple(map(tuple, settings["mixture"]))
    settings = mixbo.Settings(**settings)
    with mixbo.Search(objective, settings, scratch, resume=True, warn=mixbo.silent) as search:
        ctx = search.ctx
        choice = mixbo.recommend(ctx, search.finished)     # as this mixbo reports it, not the
        mixtures = mixbo._mixtures(search.finished)        # ledger's record: (m, K)
        target = tuple(objective.target)
        at_target = [r for r in search.finished
                     if r["status"] == "ok" and (r["scale"], r["steps"]) == target]
        n_runs = len(search.finished)
    n_recommended = sum(list(r["weights"]) == list(choice["weights"]) for r in at_target)
    X = gp.encode(mixtures, *target, ctx.bounds)
    mean, var = gp.predict_mixture(ctx.draws, X) if ctx.draws else gp.predict(ctx.model, X)
    true = objective.true_loss(mixtures)
    z = (float(objective.true_loss(np.asarray(choice["weights"]))) - choice["loss"]) / choice["sd"]
    spread = float(np.std(true) / max(np.std(mean), 1e-12))
    level = float((true.mean() - mean.mean()) / np.sqrt(var.mean()))
    all1 = float(np.mean(np.abs(true - mean) <= np.sqrt(var)))
    pool = objective.true_loss(np.random.default_rng(0).dirichlet(np.ones(ctx.K), 4000))
    first = next((r["weights"] for r in search.finished if r["status"] == "ok"
                  and (r["scale"], r["steps"]) == target), None)
    first = None if first is None else float(
        (objective.true_loss(np.asarray(first)) - pool.mean()) / pool.std())
    return {"instance": name, "seed": seed, "share": share, "scales": len(objective.scales),
            "z": z, "spread": spread, "level": level, "all1": all1, "first": first, "runs": n_runs,
            "target_runs": len(at_target), "recommended_runs": n_recommended}


def score_ledger(task):
    """The rows of one ledger (path, instance, seed, shares, draws), one per share ("empty" where
    no trial was told within it); [] if the search has not finished (still running, or
    stopped). Each row holds the ledger's sha256 and the draws, its key in --scores."""
    path, name, seed, shares, draws = task
    with open(path, "rb") as f:
        data = f.read()
    lines = data.decode().splitlines()
    records = [json.loads(line) for line in lines]
    if not any(r.get("kind") == "summary" for r in records):
        return []
    objective = simulate.make_benchmark(name)                          # cached per instance
    with tempfile.TemporaryDirectory() as tmp:
        rows = [score(lines, records, objective, name, seed, share,
                      os.path.join(tmp, "cut.jsonl"), draws) for share in shares]
    sha256 = hashlib.sha256(data).hexdigest()
    return [dict(row or {"share": share, "empty": True}, ledger_sha256=sha256, draws=draws)
            for row, share in zip(rows, shares)]


def coverage(z):
    """'|z| <= 1 in a, <= 2 in b; mean z m' of the searches' z (n,)."""
    return (f"|z| <= 1 in {np.mean(np.abs(z) <= 1):.2f}, <= 2 in {np.mean(np.abs(z) <= 2):.2f}; "
            f"mean z {np.mean(z):+.2f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--share", type=float, action="append", help="default: 0.25 and 1.0")
    p.add_argument("--instances", help="comma list (default: every mfkg ledger in the folder)")
    p.add_argument("--seeds", type=int, help="only seeds 0..N-1 (default: all)")
    p.add_argument("--hyperparameter-draws", type=int,
                   default=mixbo.Settings.hyperparameter_draws,
                   help="the reported +-'s draws, as mixbo's option (default: its default)")
    p.add_argument("--jobs", type=int, default=1, help="ledgers scored in parallel (fork)")
    p.add_argument("--scores", help="JSON-lines file of rows: read back where the key matches, "
                   "new rows appended")
    args = p.parse_args(argv)
    kept = {}
    if args.scores and os.path.exists(args.scores):
        with open(args.scores) as f:
            for line in f:
                row = json.loads(line)
                kept[row["ledger_sha256"], row["share"], row["draws"]] = row
    shares, rows = args.share or [0.25, 1.0], []
    wanted = set(args.instances.split(",")) if args.instances else None
    tasks = []
    for path in sorted(glob.glob(os.path.join(args.folder, "*-mfkg-seed*.jsonl"))):
        name, seed = re.match(r"(.*)-mfkg-seed(\d+)\.jsonl$", os.path.basename(path)).groups()
        if not (wanted and name not in wanted) and not (args.seeds and int(seed) >= args.seeds):
            tasks.append((path, name, int(seed), shares, args.hyperparameter_draws))
    cached = []                                       # per task: the shares' kept rows
    for path, *_ in tasks:
        with open(path, "rb") as f:
            sha256 = hashlib.sha256(f.read()).hexdigest()
        cached.append([kept.get((sha256, share, args.hyperparameter_draws)) for share in shares])
    todo = [t for t, c in zip(tasks, cached) if None in c]
    with (multiprocessing.get_context("fork").Pool(args.jobs) as pool,
          open(args.scores or os.devnull, "a") as out):
        scored = pool.imap(score_ledger, todo)
        for ledger_rows in cached:
            if None in ledger_rows:
                ledger_rows = next(scored)
                out.writelines(json.dumps(row) + "\n" for row in ledger_rows)
                out.flush()
            for row in (r for r in ledger_rows if not r.get("empty")):
                rows.append(row)
                print(f"{row['instance']:<28} seed {row['seed']:>2} at {row['share']:4.0%}: z "
                      f"{row['z']:+6.2f}  spread {row['spread']:7.2f}  level {row['level']:+6.2f}"
                      f"  all1 {row['all1']:.2f}  first "
                      f"{math.nan if row['first'] is None else row['first']:+5.2f}  runs "
                      f"{row['runs']:>3} ({row['target_runs']} at the target, "
                      f"{row['recommended_runs']} of the recommendation)", flush=True)
    for share in shares:
        for name in sorted({r["instance"] for r in rows}):
            z = np.array([r["z"] for r in rows if r["share"] == share and r["instance"] == name])
            print(f"{name:<28} at {share:4.0%}: {len(z):>2} searches, {coverage(z)}")
    for share in shares:
        for scales in sorted({r["scales"] for r in rows}) + ["all"]:
            group = [r for r in rows if r["share"] == share and scales in (r["scales"], "all")]
            z = np.array([r["z"] for r in group])
            se = np.std(z, ddof=1) / math.sqrt(len(z)) if len(z) > 1 else math.nan
            pairs = [(r["level"], r["first"]) for r in group if r["first"] is not None]
            print(f"{scales} scales at {share:4.0%}: {len(group)} searches, {coverage(z)} (se "
                  f"{se:.2f}); median |spread - 1| "
                  f"{np.median([abs(r['spread'] - 1) for r in group]):.2f}, median |level| "
                  f"{np.median([abs(r['level']) for r in group]):.2f}, mean all1 "
                  f"{np.mean([r['all1'] for r in group]):.2f}, corr(level, first) "
                  f"{np.corrcoef(*zip(*pairs))[0, 1] if len(pairs) > 2 else math.nan:+.2f}, "
                  f"recommendation run at the target in "
                  f"{np.mean([r['recommended_runs'] > 0 for r in group]):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
