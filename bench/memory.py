"""Peak memory of the loop as the GP grows: resume a ledger of n observations, ask, tell.

The ledger is bench_acquisition.ask_ledger's (n / 4 finished trials on the default simulator, each
run to its last steps, so 4 checkpoints each); resuming it fits the GP on all n observations, then
one mfkg trial is asked and told (a refit when the trials have grown by --refit-growth, else the
GP conditioned on them). Prints the wall time of each phase and the process's peak RSS.

Run: OMP_NUM_THREADS=1 python bench/memory.py [--n 2000] [--candidates 256]
"""

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_acquisition  # noqa: E402  (bench/, the script's folder)
import mixbo  # noqa: E402


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # Linux: KiB


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--candidates", type=int, default=256)
    args = p.parse_args(argv)
    print(f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}, n = {args.n}, "
          f"candidates {args.candidates}; peak RSS after imports {peak_mib():.0f} MiB")
    with tempfile.TemporaryDirectory() as folder:
        objective, settings, path = bench_acquisition.ask_ledger(args.n, args.candidates, folder)
        t = time.perf_counter()
        with mixbo.Search(objective, settings, ledger=path, resume=True) as search:
            print(f"resume (fit on {args.n} observations) {time.perf_counter() - t:.1f} s, "
                  f"peak RSS {peak_mib():.0f} MiB")
            t = time.perf_counter()
            (trial,) = search.ask(1)
            print(f"ask {time.perf_counter() - t:.1f} s, peak RSS {peak_mib():.0f} MiB")
            t = time.perf_counter()
            search.tell(trial.trial, result=objective.run(np.array(trial.weights), trial.scale,
                                                          trial.steps, trial.seed))
            print(f"tell {time.perf_counter() - t:.1f} s, peak RSS {peak_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
