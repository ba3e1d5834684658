"""Tests of mixbo.py: determinism, crash safety (SIGKILL + --resume), torn ledgers, bad input,
failing objectives, the budget, the --bench table, ask/tell, pending trials, the launcher and the
ledger's lock. Oracles: an uninterrupted run's ledger (for killed and resumed ones), reference
ledgers written before the loop was restructured, a GP refitted outside the loop, and the budget
and refit arithmetic done by hand. Cheap settings throughout: a 3-domain objective file with
3 scales x 2 step counts written by the tests, small candidate sets and budgets."""
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import mixbo
import simulate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}

OBJECTIVE_FILE = """
import time
import numpy as np
DOMAINS = ("a", "b", "c")
SCALES = (1e6, 4e6, 16e6)
STEPS = (100, 200)
SLEEP = {sleep}

def loss(weights, scale, steps, seed=0):
    time.sleep(SLEEP)
    w = np.asarray(weights)
    opt = np.array([0.5, 0.3, 0.2]) + 0.05 * np.log(scale / 16e6) * np.array([1.0, -1.0, 0.0])
    if {fail}:
        raise RuntimeError("diverged (test)")
    noise = 0.002 * np.random.default_rng([seed, int(scale), steps]).standard_normal()
    return float(2.0 + 30.0 / scale ** 0.25 + 4.0 / steps ** 0.3 + ((w - opt) ** 2).sum() + noise)
"""


def write_objective(path, sleep=0.0, fail="False"):
    path.write_text(OBJECTIVE_FILE.format(sleep=sleep, fail=fail))
    return str(path)


CHEAP = dict(candidates=64, n_init=3)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The GPs here are tiny: one torch thread, as the CLI uses (more threads only contend for
    the cores); restored afterwards for the other test modules."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def strip_wall(lines):
    """Ledger records without wall times (the only fields identical runs may differ in)."""
    return [{k: v for k, v in r.items() if k not in ("wall_s", "started", "finished")}
            for r in lines]


def read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "mixbo.py", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------------------------

def test_same_seed_same_ledger_and_budget_respected(tmp_path):
    obj = simulate.load_objective_file(write_objective(tmp_path / "obj.py"))
    a, b, c = (str(tmp_path / f"{x}.jsonl") for x in "abc")
    ra = mixbo.optimize(obj, "mfkg", 1.5, seed=3, ledger=a, out=None, refit_growth=1.5, **CHEAP)
    mixbo.optimize(obj, "mfkg", 1.5, seed=3, ledger=b, out=None, refit_growth=1.5, **CHEAP)
    mixbo.optimize(obj, "mfkg", 1.5, seed=4, ledger=c, out=None, refit_growth=1.5, **CHEAP)
    assert strip_wall(read_lines(a)) == strip_wall(read_lines(b))
    assert strip_wall(read_lines(a)) != strip_wall(read_lines(c))
    assert len(ra.trials) > 5 and ra.spent <= 1.5
    assert sum(r["scale"] < 16e6 for r in ra.trials) >= 3    # mfkg's design is at cheap scales
    assert ra.recommendation["weights"] is not None and ra.recommendation["sd"] is not None


@pytest.mark.parametrize("strategy", mixbo.STRATEGIES)
def test_every_strategy_respects_the_budget(tmp_path, strategy):
    obj = simulate.load_objective_file(write_objective(tmp_path / "obj.py"))
    res = mixbo.optimize(obj, strategy, 2.5, seed=1, out=None, **CHEAP)
    costs = [r["cost"] for r in res.trials]
    assert sum(costs) <= 2.5 + 1e-12 and res.spent == pytest.approx(sum(costs), abs=1e-12)
    assert all(r["status"] == "ok" for r in res.trials)
    # stopped because nothing it would run was affordable: less than one target run is left for
    # target-only ones
    if strategy in ("kg", "ei", "ucb", "random", "sobol", "uniform"):
        assert 2.5 - res.spent < 1.0 and all(r["scale"] == 16e6 for r in res.trials)
    rec = res.recommendation
    assert rec["weights"] is not None and abs(sum(rec["weights"]) - 1) < 1e-9
    assert len(res.recommendations) == len(res.trials)


def test_the_design_spends_at_most_its_share_and_the_acquisition_spends_the_rest():
    """Budget 1 on the default benchmark: mfkg's design round-robins over the DESIGN_SCALES = 3
    smallest scales (20M, 40M, 80M at 20k steps, costs 0.02, 0.04, 0.08) and may spend
    DESIGN_SHARE = 0.2 of the budget: 20M, 40M, 80M, 20M, 40M spend 0.20 and the next 80M run
    would take it to 0.28, so the design ends after five runs (no init run after the first
    acquisition), and mfkg spends the rest on affordable fidelities rather than leave it unspent."""
    res = mixbo.optimize(simulate.make_benchmark("default"), "mfkg", 1.0, seed=0, out=None,
                         candidates=64)
    decisions = [r["decision"] for r in res.trials]
    first = next(i for i, d in enumerate(decisions) if not d.startswith("init"))
    assert first == 5 and not any(d.startswith("init") for d in decisions[first:])
    assert [r["scale"] for r in res.trials[:first]] == [2e7, 4e7, 8e7, 2e7, 4e7]
    assert sum(r["cost"] for r in res.trials[:first]) <= mixbo.DESIGN_SHARE * 1.0
    assert 0.99 <= res.spent <= 1.0 + 1e-12


def test_mfkg_keeps_its_reserve_for_the_target_and_verifies_the_recommendation(tmp_path):
    """Budget 2.5 on a 3-scale objective: runs below the target stop when the reserve
    max(VERIFY_SHARE * 2.5, 1) = 1 is left, then the recommendation is run at the target."""
    objective = simulate.load_objective_file(write_objective(tmp_path / "obj.py"))
    res = mixbo.optimize(objective, "mfkg", 2.5, seed=0, out=None, **CHEAP)
    target = [r for r in res.trials if (r["scale"], r["steps"]) == (16e6, 200)]
    assert target and target[0]["decision"].startswith(("verify", "init"))
    below = sum(r["cost"] for r in res.trials if r not in target)
    assert below <= 2.5 - 1.0 + 1e-9
    assert any(r["decision"] == "verify (the recommendation)" for r in target)


def test_closed_output_pipe_is_one_line_exit_1_and_keeps_the_ledger(tmp_path):
    """`python mixbo.py ... | head -1`: the reader closes stdout; mixbo says so in one line (no
    traceback), exits 1 (not 2: no bad input), and the ledger holds the trials finished so far."""
    path, ledger = write_objective(tmp_path / "obj.py", sleep=0.01), str(tmp_path / "l.jsonl")
    p = subprocess.Popen([sys.executable, "mixbo.py", "--objective", path, "--strategy", "random",
                          "--budget", "20", "--ledger", ledger],
                         cwd=REPO, env={**ENV, "PYTHONUNBUFFERED": "1"},  # a line per write
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.readline()
    p.stdout.close()                                        # what `head -1` does after its line
    err = p.stderr.read()
    assert p.wait(timeout=120) == 1
    assert err.count("\n") == 1 and "broken pipe" in err and "Traceback" not in err
    assert read_lines(ledger)[0]["kind"] == "header"


def test_failing_objective_is_recorded_and_the_loop_goes_on(tmp_path):
    path = write_objective(tmp_path / "obj.py", fail="w[0] > 0.4")
    obj = simulate.load_objective_file(path)
    for strategy in ("sobol", "mfkg"):
        res = mixbo.optimize(obj, strategy, 3.0, seed=0, ledger=str(tmp_path / f"{strategy}.jsonl"),
                             out=None, max_failures=0, **CHEAP)
        failed = [r for r in res.trials if r["status"] == "failed"]
        assert failed and "diverged" in failed[0]["error"] and failed[0]["loss"] is None
        assert failed[0]["cost"] > 0                                   # a failed run's cost counts
        assert failed[0]["trial"] < len(res.trials) - 1               # the loop went on after it
        assert any(r["status"] == "ok" for r in res.trials)
        assert res.spent <= 3.0
        # the ledger is valid JSON (no NaN) and holds every trial
        lines = read_lines(str(tmp_path / f"{strategy}.jsonl"))
        assert [r["trial"] for r in lines if r["kind"] == "tell"] == list(range(len(res.trials)))


def test_summary_says_when_the_recommendation_is_an_extrapolation(tmp_path):
    """mfkg's recommendation with no run at the target fidelity carries a note; ei's initial design
    runs the target (once at budget 1, three times at 3): one target run gets the other note."""
    obj = simulate.load_objective_file(write_objective(tmp_path / "obj.py"))
    for strategy, budget, runs in (("mfkg", 0.5, 0), ("ei", 1.0, 1), ("ei", 3.0, 3)):
        lines = []
        res = mixbo.optimize(obj, strategy, budget, seed=0, ledger=None, out=lines.append, **CHEAP)
        assert sum(r["scale"] == 16e6 and r["steps"] == 200 for r in res.trials) == runs
        assert any("is extrapolated" in line for line in lines) == (runs == 0)
        assert any("one run at the target" in line for line in lines) == (runs == 1)


@pytest.mark.parametrize("draws", [0, 3])
def test_recommendation_is_the_gp_argmin_with_its_posterior_there(tmp_path, draws):
    """mfkg recommends its GP's argmin at the target over the evaluated mixtures and reports that
    GP's posterior there, or with hyperparameter draws the mixture of the GPs on them: the GPs
    refitted and resampled here from the history, outside mixbo's loop, on the trials the refit
    schedule names."""
    import gp
    obj = simulate.load_objective_file(write_objective(tmp_path / "obj.py"))
    res = mixbo.optimize(obj, "mfkg", 1.0, seed=0, ledger=None, out=None,
                         **{**CHEAP, "hyperparameter_draws": draws})
    bounds = (1e6, 16e6, 100, 200)
    r = mixbo.refit_point(len(res.trials), res.settings.refit_growth)  # last refit
    assert 1 < r < len(res.trials)
    W, N, T, y, runs = mixbo._observations(res.trials[:r])
    fit = gp.fit_gp(gp.encode(W, N, T, bounds), y, 3, gp.Config(), runs=runs,
                    seed=mixbo.trial_seed(0, r, mixbo.MODEL))
    drawn = gp.sample_hyperparameters(fit, draws, seed=mixbo.trial_seed(0, r, mixbo.DRAWS))
    W, N, T, y, runs = mixbo._observations(res.trials)
    condition = lambda h: gp.fit_gp(gp.encode(W, N, T, bounds), y, 3, gp.Config(), runs=runs,
                                    hyperparameters=h)
    mixtures = mixbo._mixtures(res.trials)
    Xs = gp.encode(mixtures, 16e6, 200, bounds)
    i = int(np.argmin(gp.predict(condition(fit.hyperparameters), Xs)[0]))
    mean, var = (gp.predict_mixture([condition(h) for h in drawn], Xs) if draws
                 else gp.predict(condition(fit.hyperparameters), Xs))
    rec = res.recommendation
    assert np.allclose(rec["weights"], mixtures[i], atol=1e-12)
    assert abs(rec["loss"] - mean[i]) < 1e-9 and abs(rec["sd"] - np.sqrt(var[i])) < 1e-9


def test_each_trial_is_its_own_run_for_the_gp_and_a_failure_is_a_pessimistic_observation():
    """Checkpoints of one trial share a run label; a second trial of the same mixture at the same
    scale (another seed) is another run; a failed trial is one observation at its (scale, steps),
    the largest loss observed there (else anywhere)."""
    w = [0.5, 0.3, 0.2]
    ckpt = lambda *steps: [{"steps": s, "loss": 3.0 - s / 1000} for s in steps]
    history = [
        {"status": "ok", "weights": w, "scale": 1e6, "steps": 200, "checkpoints": ckpt(100, 200)},
        {"status": "failed", "weights": w, "scale": 1e6, "steps": 200, "checkpoints": []},
        {"status": "ok", "weights": w, "scale": 1e6, "steps": 100, "checkpoints": ckpt(100)},
        {"status": "failed", "weights": w, "scale": 4e6, "steps": 100, "checkpoints": []},
        {"status": "pending", "weights": w, "scale": 1e6, "steps": 100, "checkpoints": []}]
    W, N, T, y, runs = mixbo._observations(history)
    assert T.tolist() == [100, 200, 200, 100, 100] and runs.tolist() == [0, 0, 1, 2, 3]
    assert (y.tolist() == pytest.approx([2.9, 2.8, 2.8, 2.9, 2.9])
            and N.tolist() == [1e6] * 4 + [4e6])


def test_torn_last_line_is_ignored_and_resume_matches(tmp_path):
    obj = simulate.load_objective_file(write_objective(tmp_path / "obj.py"))
    full, torn = str(tmp_path / "full.jsonl"), str(tmp_path / "torn.jsonl")
    mixbo.optimize(obj, "ei", 4.0, seed=2, ledger=full, out=None, **CHEAP)
    with open(full) as f:
        lines = f.readlines()
    with open(torn, "w") as f:            # header, ask 0, tell 0, rec 0, then half of ask 1
        f.writelines(lines[:4])
        f.write(lines[4][: len(lines[4]) // 2])
    said = []
    res = mixbo.optimize(obj, "ei", 4.0, seed=2, ledger=torn, resume=True, out=said.append,
                         **CHEAP)
    assert any("torn last line" in s for s in said)
    assert strip_wall(read_lines(torn)) == strip_wall(read_lines(full))
    assert len(res.trials) == 4
    # resuming a finished ledger runs nothing and changes nothing
    before = open(torn).read()
    again = mixbo.optimize(obj, "ei", 4.0, seed=2, ledger=torn, resume=True, out=None, **CHEAP)
    assert open(torn).read() == before and len(again.trials) == 4


def _child(argv):
    """A forked copy of this process running the CLI (mixbo and torch are imported already, so a
    kill cycle costs no interpreter start-up); exits with main's code. One torch thread: a forked
    child that uses an OpenMP pool started by its parent (earlier tests, 2 threads) hangs."""
    import torch
    torch.set_num_threads(1)
    os._exit(mixbo.main(argv))


def test_crash_sigkill_resume_equals_uninterrupted(tmp_path):
    """SIGKILL the loop at random moments >= 10 times, --resume each time: no finished trial is lost
    or repeated, and the final ledger equals an uninterrupted run's (wall times aside), run in a
    fresh interpreter (the CLI end to end); the killed runs are forked processes."""
    import multiprocessing
    path = write_objective(tmp_path / "obj.py", sleep=0.01)
    args = ["--objective", path, "--strategy", "mfkg", "--budget", "2.5", "--seed", "5",
            "--candidates", "64", "--n-init", "3", "--refit-growth", "1.5", "--quiet"]
    ref = str(tmp_path / "ref.jsonl")
    assert run_cli(*args, "--ledger", ref).returncode == 0
    ref_lines = strip_wall(read_lines(ref))
    assert sum(r["kind"] == "tell" for r in ref_lines) >= 8

    fork = multiprocessing.get_context("fork")
    rng = np.random.default_rng(0)
    kills, series, crash = 0, 0, None
    while True:
        if crash is None:           # a fresh ledger (again, if one finished before 10 kills)
            series += 1
            crash, finished_before = str(tmp_path / f"crash{series}.jsonl"), 0
        p = fork.Process(target=_child, args=(args + ["--ledger", crash, "--resume"],))
        p.start()
        if kills < 10:
            # wait until the loop runs (the ledger changes), then kill it at a random moment
            size = lambda: os.path.getsize(crash) if os.path.exists(crash) else -1
            size0 = size()
            while p.is_alive() and size() == size0:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.2))
        if p.is_alive() and kills < 10:
            os.kill(p.pid, signal.SIGKILL)
            p.join()
            kills += 1
        else:
            p.join(timeout=300)
            assert p.exitcode == 0
        lines = strip_wall(read_lines_tolerant(crash))
        trials = [r for r in lines if r["kind"] == "tell"]
        assert [r["trial"] for r in trials] == list(range(len(trials)))    # none repeated
        assert len(trials) >= finished_before                              # none lost
        assert lines == ref_lines[:len(lines)]                  # the same as uninterrupted
        finished_before = len(trials)
        if p.exitcode == 0:
            assert strip_wall(read_lines(crash)) == ref_lines   # finished: identical ledgers
            if kills >= 10:
                break
            crash = None
    print(f"{kills} kills over {series} ledger(s)")


def read_lines_tolerant(path):
    """Complete lines of a ledger that may end in a torn line (a kill mid-write); [] if no file
    yet."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        text = f.read()
    return [json.loads(line) for line in text.split("\n")[:-1]]


def test_bad_input_exits_2_with_one_line(tmp_path):
    obj = write_objective(tmp_path / "obj.py")
    bad_obj = tmp_path / "bad.py"
    bad_obj.write_text("x = 1\n")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("run,w_a,w_b,scale,tokens,loss\nr1,0.5,0.7,1e6,100,3.0\n")
    led = str(tmp_path / "led.jsonl")
    assert run_cli("--objective", obj, "--strategy", "random", "--budget", "2",
                   "--ledger", led).returncode == 0
    ledger_before = open(led).read()
    cases = {
        "unknown strategy": ["--objective", obj, "--strategy", "nope"],
        "budget 0": ["--objective", obj, "--budget", "0"],
        "budget < 0": ["--objective", obj, "--budget", "-1"],
        "off the simplex": ["--objective", obj, "--mixture", "a=0.7,b=0.7"],
        "unknown domain": ["--objective", obj, "--mixture", "zz=1"],
        "another run's ledger": ["--objective", obj, "--strategy", "random", "--budget", "2",
                                 "--seed", "1", "--ledger", led, "--resume"],
        "existing ledger without --resume": ["--objective", obj, "--strategy", "random",
                                             "--budget", "2", "--ledger", led],
        "missing table": ["--table", str(tmp_path / "nope.csv")],
        "malformed table": ["--table", str(bad_csv)],
        "missing objective file": ["--objective", str(tmp_path / "nope.py")],
        "objective file without loss": ["--objective", str(bad_obj)],
        "no objective": ["--strategy", "ei"],
        "cuda without CUDA": ["--train", "--device", "cuda"],
        "unknown flag": ["--sim", "--bogus"],
    }
    procs = {name: subprocess.Popen([sys.executable, "mixbo.py", *a], cwd=REPO, env=ENV,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, a in cases.items()}
    for name, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 2, (name, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (name, err)
        assert err.startswith("mixbo: error: "), (name, err)
    assert open(led).read() == ledger_before          # the refused runs left the ledger as it was
    assert not os.path.exists(os.path.join(REPO, "runs", "obj-nope-seed0.jsonl"))


def test_python_entry_point_rejects_bad_settings():
    obj = simulate.make_benchmark("default")
    with pytest.raises(ValueError, match="unknown strategy"):
        mixbo.optimize(obj, "nope", out=None)
    with pytest.raises(ValueError, match="budget"):
        mixbo.optimize(obj, "random", budget=0, out=None)
    with pytest.raises(ValueError, match="off the simplex"):
        mixbo.optimize(obj, "sobol", mixture=((0.5, 0.5, 0.5, 0.0, 0.0),), out=None)
    with pytest.raises(ValueError, match="unknown domain"):
        mixbo.parse_mixture("nope=1", obj.domains)


def test_bench_tiny_writes_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    p = run_cli("--sim", "--bench", "--strategy", "random,ei,sobol", "--seeds", "2",
                "--budget", "2", "--candidates", "64", "--json", str(out))
    assert p.returncode == 0, p.stderr
    assert "uncharged" in p.stdout and "speed-up" in p.stdout
    # strict JSON ("not reached": null)
    assert "Infinity" not in out.read_text() and "NaN" not in out.read_text()
    b = json.loads(out.read_text())
    assert b["strategies"] == ["random", "ei", "sobol"] and b["seeds"] == 2 and b["budget"] == 2
    for s, row in b["results"].items():
        for key in ("final_regret", "final_true_loss", "cost_to_stay_random", "speedup_vs_random",
                    "cost_to_stay_ei", "speedup_vs_ei", "cost_share_by_scale", "curves"):
            assert key in row, (s, key)
        assert row["final_regret"][0] >= 0
        assert sum(row["cost_share_by_scale"].values()) == pytest.approx(1.0)
        assert [c["seed"] for c in row["curves"]] == [0, 1]
        for c in row["curves"]:
            assert (len(c["cost"]) == len(c["true_loss"]) == len(c["predicted_loss"])
                    == len(c["sd"]) > 0)
            assert c["cost"] == sorted(c["cost"]) and c["cost"][-1] <= 2 + 1e-9
        final = [c["true_loss"][-1] - b["optimum_loss"] for c in row["curves"]]
        assert row["final_regret"][0] == pytest.approx(float(np.median(final)))


def test_bench_workers_end_by_sigterm_without_the_resumable_stop_handler():
    """The pool's terminate sends its workers SIGTERM; a worker that kept mixbo.main's handler
    raised Terminated there and printed a traceback after a finished --bench."""
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import loop_bench
    previous = signal.signal(signal.SIGTERM, mixbo._terminate)      # as mixbo.main installs it
    try:
        with multiprocessing.get_context("fork").Pool(1, loop_bench._worker_init) as pool:
            assert pool.apply(signal.getsignal, (signal.SIGTERM,)) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_bench_names_the_column_by_what_it_holds():
    """With a known optimum --bench's first column is the final regret, without one (a table or
    an objective file without OPTIMUM) the final true loss, and the header says which."""
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import loop_bench
    b = loop_bench.bench(simulate.make_benchmark("default"), ["random"], seeds=2, budget=2,
                         jobs=1, out=None)
    for known in (True, False):
        if not known:
            del b["results"]["random"]["final_regret"]
        lines = []
        loop_bench.print_bench(lines.append, b)
        header = next(line for line in lines if line.startswith("strategy"))
        assert ("final regret" in header) == known and ("final true loss" in header) != known


def test_the_speedup_counts_the_cost_from_which_the_recommendation_stays_below_q():
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import loop_bench
    curve = [(0.1, 3.0), (0.2, 2.0), (0.3, 2.5), (0.4, 1.9), (0.5, 1.8)]
    assert loop_bench._cost_to_stay(curve, 2.0) == 0.4     # reached at 0.2, regressed at 0.3
    assert loop_bench._cost_to_stay(curve, 3.0) == 0.1
    assert loop_bench._cost_to_stay(curve + [(0.6, 2.1)], 2.0) == math.inf     # ends above q
    assert loop_bench._cost_to_stay([], 2.0) == math.inf


def test_table_replay_only_runs_rows_the_table_holds(tmp_path):
    """On a run table every strategy may only ask for (mixture, scale, steps) rows it holds."""
    rows = ["run,w_a,w_b,scale,tokens,steps,loss"]
    mixtures = [(0.1, 0.9), (0.3, 0.7), (0.5, 0.5), (0.7, 0.3), (0.9, 0.1)]
    for i, (a, b) in enumerate(mixtures):
        for scale in (1e6, 4e6):
            for steps in (100, 200):
                if scale == 4e6 and i == 4:
                    continue                    # mixture 4 was never run at the target scale
                loss = (3.0 + 2e3 / scale ** 0.5 + 3.0 / steps ** 0.5
                        + (a - 0.3 - 0.05 * (scale == 4e6)) ** 2)
                rows.append(f"m{i},{a},{b},{scale},{steps * 1000},{steps},{loss}")
    path = tmp_path / "runs.csv"
    path.write_text("\n".join(rows) + "\n")
    obj = simulate.load_table(str(path))
    for strategy in ("mfkg", "random", "hyperband", "regression", "sobol"):
        res = mixbo.optimize(obj, strategy, 3.0, seed=0, out=None, **CHEAP)
        assert res.trials and res.spent <= 3.0
        for r in res.trials:
            assert obj.available(np.array(r["weights"]), r["scale"], r["steps"]), (strategy, r)
            assert r["status"] == "ok", (strategy, r)
        assert (tuple(res.recommendation["weights"])
                in {tuple(map(float, w)) for w in obj.candidates})


def write_one_checkpoint_table(path, scales, n_mixtures, tokens=None, seed=0):
    """A table of one checkpoint per run, every mixture at every scale, the target's mixture effect
    independent of the smaller scales'; no steps column, and `tokens` at every scale, or by default
    20 per parameter (each scale at its own tokens, the cost growing as scale ** 2)."""
    rng = np.random.default_rng(seed)
    mixtures = rng.dirichlet(np.ones(3), n_mixtures)
    effect = {N: rng.normal(0.0, 0.05, n_mixtures) for N in scales}
    rows = ["run,w_a,w_b,w_c,scale,tokens,loss"]
    for i, w in enumerate(mixtures):
        for N in scales:
            loss = 3 + 30 / N ** 0.25 + effect[N][i]
            rows.append(f"m{i},{w[0]},{w[1]},{w[2]},{N},{tokens or 20 * N},{loss}")
    path.write_text("\n".join(rows) + "\n")
    return simulate.load_table(str(path))


def test_mfkg_designs_below_the_target_at_each_scales_own_tokens(tmp_path):
    """A table that holds each scale at its own tokens: the design's runs below the target are at
    those tokens (not moved to the target) and spend at most DESIGN_SHARE of the budget."""
    obj = write_one_checkpoint_table(tmp_path / "runs.csv", (1e6, 4e6, 16e6), 12)
    res = mixbo.optimize(obj, "mfkg", 5.0, seed=0, out=None, candidates=64)
    design = [r for r in res.trials if r["decision"].startswith("init")]
    below = [r for r in design if r["scale"] < 16e6]
    assert {(r["scale"], r["steps"]) for r in below} == {(1e6, 2e7), (4e6, 8e7)}
    assert len(design) - len(below) == 1                      # run 0 only, at the target
    assert sum(r["cost"] for r in below) <= mixbo.DESIGN_SHARE * 5.0 + 1e-12


def test_design_on_a_many_domain_table_does_not_start_at_the_hub_row(tmp_path):
    """20 domains, a pool of equal weights and 39 sparse Dirichlet(0.5) mixtures: the row nearest
    to most points is the equal-weights one, so a design that took the row nearest to a Sobol
    point began with it at 6 of 10 seeds. The design draws from the pool instead (1 in 40), the
    same draw as random search's."""
    rng, K = np.random.default_rng(0), 20
    pool = np.vstack([np.full(K, 1 / K), rng.dirichlet(np.full(K, 0.5), 39)])
    rows = ["run," + ",".join(f"w_d{k}" for k in range(K)) + ",scale,tokens,loss"]
    for i, w in enumerate(pool):
        for N in (1e6, 4e6, 16e6):
            rows.append(f"m{i},{','.join(map(str, w))},{N},{20 * N},{3 + rng.normal(0, 0.05)}")
    (tmp_path / "runs.csv").write_text("\n".join(rows) + "\n")
    obj = simulate.load_table(str(tmp_path / "runs.csv"))
    first = [mixbo.optimize(obj, "ei", 1.0, seed=s, out=None).trials[0]["weights"]
             for s in range(10)]
    assert sum(np.allclose(w, pool[0]) for w in first) <= 2
    assert first[0] == mixbo.optimize(obj, "random", 1.0, seed=0, out=None).trials[0]["weights"]


def test_mfkg_moves_to_the_target_once_a_target_run_is_worth_more_per_cost(tmp_path):
    """Runs 10^4 times cheaper than the target that say nothing about it: once KG / cost prefers a
    target run that the budget above the reserve cannot pay for, mfkg runs at the target only,
    instead of spending that budget on thousands of cheap runs."""
    obj = write_one_checkpoint_table(tmp_path / "runs.csv", (1e6, 1e10), 12, tokens=1e9)
    res = mixbo.optimize(obj, "mfkg", 5.0, seed=0, out=None, candidates=64)
    target = [r for r in res.trials if r["scale"] == 1e10]
    assert len(res.trials) < 60 and len(target) >= 4
    assert res.trials[-1]["scale"] == 1e10
    assert any(r["weights"] == list(res.recommendation["weights"]) for r in target)


def test_regression_ridge_is_chosen_by_brute_force_leave_one_out():
    """mixbo._ridge_by_loo's closed-form leave-one-out residuals choose the ridge that refitting
    without each row in turn chooses (here an interior one, not the training error's smallest),
    and return that ridge's coefficients (to 1e-10)."""
    rng = np.random.default_rng(3)
    F = mixbo._scheffe_features(rng.dirichlet(np.ones(4), 16))                  # (16, 10)
    y = F @ rng.normal(size=10) + 0.5 * rng.normal(size=16)
    r, scores = y - y.mean(), []
    for lam in 10.0 ** np.arange(-8, 3):
        def fit(rows):                                   # ridge on the rows kept, (10,)
            return np.linalg.solve(F[rows].T @ F[rows] + lam * np.eye(10), F[rows].T @ r[rows])
        loo = [r[i] - F[i] @ fit(np.arange(16) != i) for i in range(16)]
        scores.append((np.mean(np.square(loo)), fit(np.ones(16, bool))))
    chosen = int(np.argmin([s[0] for s in scores]))
    assert 0 < chosen < len(scores) - 1
    assert np.allclose(mixbo._ridge_by_loo(F, y), scores[chosen][1], rtol=0, atol=1e-10)
    assert not np.allclose(scores[chosen][1], scores[0][1], atol=1e-3)


# ----------------------------------------------------------------------------------------------
# reference ledgers: written by `python mixbo.py --sim --budget B --strategy S --candidates 64
# [--n-init 2] --ledger tests/data/sim-S-budgetB.jsonl` (and `--table data/runs_cpu.csv` for
# table-*) before the loop was restructured; the loop must still make the same trials and
# recommendations (wall times and the ledger's layout aside)

REFERENCES = {"sim-hyperband-budget1.jsonl": ("hyperband", 1.0, {}),
              "sim-regression-budget1.jsonl": ("regression", 1.0, {})}
# (the GP strategies' references were retired when the initial design became budget-aware and the
# GP learned the cross-scale transfer: both change their trials by design)
TRIAL_FIELDS = ("decision", "weights", "scale", "steps", "seed", "status", "loss", "cost",
                "checkpoints")
RECOMMENDATION_FIELDS = ("weights", "loss", "sd", "source")


def assert_same_values(got, want, where):
    """Equal field by field; floats (also inside lists and dicts) to 1e-9."""
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            assert_same_values(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_values(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert abs(got - want) <= 1e-9, (where, got, want)
    else:
        assert got == want, (where, got, want)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_the_loop_makes_the_reference_ledgers_trials(name):
    strategy, budget, settings = REFERENCES[name]
    lines = read_lines(os.path.join(REPO, "tests", "data", name))
    want_trials = [r for r in lines if r["kind"] == "trial"]
    want_recs = [r for r in lines if r["kind"] == "recommendation"]
    objective = (simulate.load_table(os.path.join(REPO, "data", "runs_cpu.csv"))
                 if name.startswith("table") else simulate.make_benchmark("default"))
    res = mixbo.optimize(objective, strategy, budget, seed=0, out=None, candidates=64, **settings)
    assert len(res.trials) == len(want_trials) and len(res.recommendations) == len(want_recs)
    for t, (got, want) in enumerate(zip(res.trials, want_trials)):
        for k in TRIAL_FIELDS:
            assert_same_values(got[k], want[k], f"trial {t} {k}")
    for t, (got, want) in enumerate(zip(res.recommendations, want_recs)):
        for k in RECOMMENDATION_FIELDS:
            assert_same_values(got[k], want[k], f"recommendation {t} {k}")


# ----------------------------------------------------------------------------------------------
# ask / tell, pending trials, the launcher, the ledger's lock and identity

def test_ask_tell_with_tells_in_order_makes_the_closed_loops_trials(tmp_path):
    obj = simulate.load_objective_file(write_objective(tmp_path / "obj.py"))
    closed = mixbo.optimize(obj, "mfkg", 1.0, seed=2, out=None, refit_growth=1.5, **CHEAP)
    settings = mixbo.Settings(strategy="mfkg", budget=1.0, seed=2, refit_growth=1.5, **CHEAP)
    with mixbo.Search(obj, settings, ledger=str(tmp_path / "ask.jsonl")) as search:
        while trials := search.ask(1):
            t = trials[0]
            search.tell(t.trial, result=obj.run(np.array(t.weights), t.scale, t.steps, t.seed))
        result = search.result()
    keys = ("decision", "weights", "scale", "steps", "seed", "status", "loss", "checkpoints",
            "spent")
    assert ([[r[k] for k in keys] for r in result.trials]
            == [[r[k] for k in keys] for r in closed.trials])
    assert ([c["weights"] for c in result.recommendations]
            == [c["weights"] for c in closed.recommendations])


def test_pending_trials_are_believed_and_n_asked_at_once_are_distinct(tmp_path):
    """After the initial design, 4 mfkg proposals asked at once are 4 distinct (mixture, scale,
    steps); the kriging believer conditions on each pending one, so its posterior sd there falls to
    about the noise while the model of the finished trials is unchanged."""
    import gp
    obj = simulate.load_objective_file(write_objective(tmp_path / "obj.py"))
    search = mixbo.Search(obj, mixbo.Settings(strategy="mfkg", budget=3.0, seed=0, **CHEAP))
    for t in search.ask(3):                                  # the initial design, told
        search.tell(t.trial, result=obj.run(np.array(t.weights), t.scale, t.steps, t.seed))
    asked = search.ask(4)
    assert len(asked) == 4 and len({(t.weights, t.scale, t.steps) for t in asked}) == 4
    pending = [r for r in search.records if r["status"] == "pending"]
    believer = mixbo.kriging_believer(search.ctx, search.finished, pending)
    X = gp.encode(np.array([t.weights for t in asked]), np.array([t.scale for t in asked]),
                  np.array([float(t.steps) for t in asked]), search.ctx.bounds)
    sd_before = np.sqrt(gp.predict(search.ctx.model, X)[1])
    sd_after = np.sqrt(gp.predict(believer, X)[1])
    assert np.all(sd_after < 0.5 * sd_before)
    assert np.all(sd_after < 3 * np.sqrt(believer.noise_variance))
    assert believer.hyperparameters.keys() == search.ctx.model.hyperparameters.keys()
    assert all(np.allclose(believer.hyperparameters[k], v)
               for k, v in search.ctx.model.hyperparameters.items())


def test_the_state_is_a_function_of_the_ledger_with_tells_out_of_order(tmp_path):
    obj = simulate.load_objective_file(write_objective(tmp_path / "obj.py"))
    settings = mixbo.Settings(strategy="ei", budget=8.0, seed=1, n_init=2, candidates=64)
    a, b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    with mixbo.Search(obj, settings, ledger=a) as search:
        run = lambda t: obj.run(np.array(t.weights), t.scale, t.steps, t.seed)
        trials = search.ask(2)                               # the design; then it waits
        search.tell(trials[1].trial, result=run(trials[1]))
        trials += search.ask(1)                              # trial 2, with trial 0 pending
        for t in (trials[2], trials[0]):
            search.tell(t.trial, result=run(t))
        later = search.ask(1)                     # trial 3, asked after out-of-order tells
        with open(a) as f:
            lines = f.readlines()
        with open(b, "w") as f:                              # the ledger as it was before that ask
            f.writelines(lines[:-1])
    with mixbo.Search(obj, settings, ledger=b, resume=True) as again:
        assert again.ask(1) == later
        assert [r["status"] for r in again.records] == ["ok", "ok", "ok", "pending"]


def test_a_second_writer_is_refused_at_once(tmp_path):
    path, ledger = write_objective(tmp_path / "obj.py"), str(tmp_path / "l.jsonl")
    obj = simulate.load_objective_file(path)
    settings = mixbo.Settings(strategy="random", budget=3.0)
    with mixbo.Search(obj, settings, ledger=ledger):
        with pytest.raises(ValueError, match="in use by another mixbo process"):
            mixbo.Search(obj, settings, ledger=ledger, resume=True)
        start = time.time()
        p = run_cli("--objective", path, "--strategy", "random", "--budget", "3",
                    "--ledger", ledger, "--resume")
        assert p.returncode == 2 and "in use by another mixbo process" in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and time.time() - start < 30
        p = run_cli("ask", "--ledger", ledger, "--objective", path, "--strategy", "random",
                    "--budget", "3")
        assert p.returncode == 2 and "in use" in p.stderr and p.stdout == ""
    assert [r["kind"] for r in read_lines(ledger)] == ["header"]


def test_ask_and_tell_from_the_command_line(tmp_path, capsys):
    """ask prints JSON trials; tell takes a result file, a loss, a failure or a run made outside
    mixbo; bad tells are one line, exit 2, and leave the ledger as it was (run through main in this
    process, as the CLI runs it); later calls need no objective flags."""
    path, ledger = write_objective(tmp_path / "obj.py"), str(tmp_path / "l.jsonl")
    p = run_cli("ask", "--ledger", ledger, "--n", "2", "--objective", path, "--strategy", "random",
                "--budget", "4")
    assert p.returncode == 0, p.stderr
    asked = [json.loads(line) for line in p.stdout.splitlines()]
    assert [t["trial"] for t in asked] == [0, 1] and set(asked[0]["weights"]) == {"a", "b", "c"}
    assert (asked[0]["scale"] == 16e6 and asked[0]["steps"] == 200
            and isinstance(asked[0]["seed"], int))
    result = tmp_path / "r.json"
    result.write_text(json.dumps({"loss": 3.1, "domain_losses": {"a": 3.0}, "checkpoints": [
        {"steps": 100, "loss": 3.3}, {"steps": 200, "loss": 3.1}]}))
    assert run_cli("tell", "--ledger", ledger, "--trial", "0",
                   "--result", str(result)).returncode == 0
    before = open(ledger).read()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"loss": "3.0"}))
    capsys.readouterr()
    for case, args in {"unknown trial": ["--trial", "7", "--loss", "3"],
                       "second tell": ["--trial", "0", "--loss", "3"],
                       "non-finite loss": ["--trial", "1", "--loss", "nan"],
                       "a loss JSON cannot hold": ["--trial", "1", "--loss", "1e300"],
                       "not the schema": ["--trial", "1", "--result", str(bad)],
                       "two outcomes": ["--trial", "1", "--loss", "3", "--failed", "x"],
                       "outside run off the simplex": ["--weights", "a=0.9,b=0.9", "--scale", "1e6",
                                                       "--steps", "100", "--loss", "3"]}.items():
        assert mixbo.main(["tell", "--ledger", ledger, *args]) == 2, case
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("mixbo: error: "), (case, err)
        assert open(ledger).read() == before, case
    assert run_cli("tell", "--ledger", ledger, "--trial", "1",
                   "--failed", "out of memory").returncode == 0
    p = run_cli("tell", "--ledger", ledger, "--weights", "a=0.2,b=0.3,c=0.5", "--scale", "4e6",
                "--steps", "100", "--loss", "3.4")
    assert p.returncode == 0 and "trial 2 told" in p.stdout, p.stderr
    p = run_cli("ask", "--ledger", ledger, "--n", "5")
    assert ([json.loads(line)["trial"] for line in p.stdout.splitlines()] == [3]
            and "budget" in p.stderr)
    told = {r["trial"]: r for r in read_lines(ledger) if r["kind"] == "tell"}
    assert told[0]["checkpoints"][0] == {"steps": 100, "loss": 3.3, "domain_losses": {}}
    assert told[1]["status"] == "failed" and told[1]["error"] == "out of memory"
    outside = [r for r in read_lines(ledger) if r["kind"] == "ask"][2]
    assert outside["weights"] == [0.2, 0.3, 0.5] and outside["seed"] is None


def test_a_search_space_only_objective_runs_by_ask_tell_and_launch(tmp_path):
    """An objective without run (an objective file with the search space only) cannot run in
    mixbo's process, but ask/tell and --launch work: the template is filled per trial and its
    result read."""
    script = tmp_path / "job.py"
    script.write_text("import json, sys\nw = json.loads(sys.argv[2])\n"
                      "json.dump({'loss': 3 + (w['a'] - 0.4) ** 2, 'seed': int(sys.argv[3])},"
                      " open(sys.argv[1], 'w'))\n")
    base = simulate.load_objective_file(write_objective(tmp_path / "obj.py"))
    obj = simulate.Objective(name="space", domains=base.domains, scales=base.scales,
                             steps=base.steps, target=base.target, run=None, cost=base.cost)
    with pytest.raises(ValueError, match="search space only"):
        mixbo.optimize(obj, "random", 2.0, out=None)
    res = mixbo.optimize(obj, "ei", 4.0, seed=0, out=None, n_init=2, candidates=32,
                         launch=f"{sys.executable} {script} {{result}} {{weights_json}} {{seed}}")
    assert len(res.trials) == 4 and all(r["status"] == "ok" for r in res.trials)
    for r in res.trials:
        assert r["loss"] == pytest.approx(3 + (r["weights"][0] - 0.4) ** 2, abs=1e-12)
        assert r["started"] <= r["finished"]


STAND_IN = """
import json, os, sys, time
trial, result, log, weights = int(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
behaviour = json.load(open(sys.argv[5])).get(str(trial), "ok")
with open(log, "a") as f:
    f.write(f"start {trial} {os.getpid()}\\n")
time.sleep(float(sys.argv[6]))
if behaviour == "crash":
    sys.exit(3)
if behaviour == "hang":
    time.sleep(60)
with open(result, "w") as f:
    f.write("{not json" if behaviour == "garbage"
            else json.dumps({"loss": 3 + (weights["a"] - 0.4) ** 2}))
"""


def stand_in(tmp_path, behaviours, sleep):
    """A launch template over a stand-in job that crashes, hangs or writes garbage as told."""
    (tmp_path / "job.py").write_text(STAND_IN)
    (tmp_path / "behaviour.json").write_text(json.dumps(behaviours))
    return (f"{sys.executable} {tmp_path / 'job.py'} {{trial}} {{result}} "
            f"{tmp_path / 'starts.log'} {{weights_json}} {tmp_path / 'behaviour.json'} {sleep}")


def starts(tmp_path):
    with open(tmp_path / "starts.log") as f:
        return [int(line.split()[1]) for line in f]


def test_launch_records_crash_hang_and_garbage_as_failed_and_keeps_3_in_flight(tmp_path):
    path, ledger = write_objective(tmp_path / "obj.py"), str(tmp_path / "l.jsonl")
    template = stand_in(tmp_path, {"1": "crash", "2": "hang", "4": "garbage"}, 0.2)
    p = run_cli("--objective", path, "--strategy", "random", "--budget", "9", "--ledger", ledger,
                "--launch", template, "--parallel", "3", "--trial-timeout", "1.5",
                "--max-failures", "0")
    assert p.returncode == 0, p.stderr
    told = {r["trial"]: r for r in read_lines(ledger) if r["kind"] == "tell"}
    assert sorted(told) == list(range(9))
    assert "exited with status 3" in told[1]["error"]
    assert "timed out after 1.5 s" in told[2]["error"]
    assert "malformed result" in told[4]["error"]
    assert sorted(t for t, r in told.items() if r["status"] == "failed") == [1, 2, 4]
    assert sorted(starts(tmp_path)) == list(range(9))               # none run twice
    events = sorted([(r["started"], 1) for r in told.values()]
                    + [(r["finished"], -1) for r in told.values()])
    assert max(np.cumsum([e for _, e in events])) == 3              # never more than 3 in flight
    assert "RECOMMENDED MIXTURE" in p.stdout and p.stdout.count(" started at scale ") == 9


def test_kill_9_with_trials_in_flight_then_resume_loses_and_repeats_nothing(tmp_path):
    path, ledger = write_objective(tmp_path / "obj.py"), str(tmp_path / "l.jsonl")
    args = ["--objective", path, "--strategy", "random", "--budget", "12", "--ledger", ledger,
            "--launch", stand_in(tmp_path, {}, 0.3), "--parallel", "3"]
    p = subprocess.Popen([sys.executable, "mixbo.py", *args], cwd=REPO, env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while (time.time() < deadline
           and sum(r["kind"] == "tell" for r in read_lines_tolerant(ledger)) < 4):
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    before = read_lines_tolerant(ledger)
    finished = {r["trial"] for r in before if r["kind"] == "tell"}
    in_flight = {r["trial"] for r in before if r["kind"] == "ask"} - finished
    assert len(finished) >= 4 and in_flight
    started_before = len(starts(tmp_path))
    p = run_cli(*args, "--resume")
    assert p.returncode == 0, p.stderr
    after = read_lines(ledger)
    assert after[:len(before)] == before                            # nothing finished lost
    tells = [r["trial"] for r in after if r["kind"] == "tell"]
    assert sorted(tells) == list(range(12)) and len(tells) == 12    # each told once
    relaunched = starts(tmp_path)[started_before:]
    # nothing finished ran again
    assert not set(relaunched) & finished and in_flight <= set(relaunched)
    asks = [r for r in after if r["kind"] == "ask"]
    assert [r["trial"] for r in asks] == list(range(12))  # relaunched with their own id and seed


def test_failures_stop_the_search_and_each_case_is_one_line_with_its_exit_code(tmp_path, capsys):
    """Run through main in this process, as the CLI runs it."""
    cases = {  # name: (objective file body, extra flags, exit code, text in the one stderr line)
        "every trial raises": ("raise RuntimeError('diverged')", [], 3, "3 trials in a row failed"),
        "sys.exit(0) inside the objective": ("import sys; sys.exit(0)", [], 3, "sys.exit(0)"),
        "KeyboardInterrupt inside the objective": ("raise KeyboardInterrupt", [], 130,
                                                   "--resume continues"),
        "a loss JSON cannot hold": ("return 1e300", ["--max-failures", "2"], 3,
                                    "2 trials in a row failed"),
        "cost 0": ("return 3.0", [], 2, "must be a finite number > 0"),
        "--device tpu": (None, None, 2, "not a device"),
    }
    for i, (name, (body, flags, code, text)) in enumerate(cases.items()):
        f = tmp_path / f"objective{i}.py"
        cost = "\ndef cost(scale, steps):\n    return 0.0\n" if name == "cost 0" else ""
        f.write_text(f"DOMAINS = ('a', 'b')\nSCALES = (1e6, 4e6)\nSTEPS = (100,)\n"
                     f"def loss(weights, scale, steps):\n    {body}\n{cost}")
        argv = (["--train", "--device", "tpu"] if body is None else
                ["--objective", str(f), "--strategy", "random", "--budget", "6", "--ledger",
                 str(tmp_path / f"{name}.jsonl"), "--quiet", *flags])
        assert mixbo.main(argv) == code, name
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and text in err, (name, err)
    interrupted = read_lines(str(tmp_path / "KeyboardInterrupt inside the objective.jsonl"))
    assert [r["kind"] for r in interrupted] == ["header", "ask"]          # the trial stays pending
    held = [r for r in read_lines(str(tmp_path / "a loss JSON cannot hold.jsonl"))
            if r["kind"] == "tell"]
    assert len(held) == 2 and all("within +-1e+100" in r["error"] for r in held)


def test_sigterm_prints_the_resumable_stop_line(tmp_path):
    path, ledger = write_objective(tmp_path / "obj.py", sleep=0.05), str(tmp_path / "l.jsonl")
    p = subprocess.Popen([sys.executable, "mixbo.py", "--objective", path, "--strategy", "random",
                          "--budget", "6", "--ledger", ledger],
                         cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    while sum(r["kind"] == "tell" for r in read_lines_tolerant(ledger)) < 2:
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    err = p.stderr.read()
    assert p.wait(timeout=60) == 143 and err.strip() == (
        "mixbo: interrupted; the ledger holds every finished trial; --resume continues")
    # the flags come from the ledger
    assert run_cli("--ledger", ledger, "--resume", "--quiet").returncode == 0


def test_resume_identity_names_the_field_and_a_larger_budget_extends(tmp_path, capsys, monkeypatch):
    """Run through main in this process, as the CLI runs it."""
    monkeypatch.chdir(tmp_path)
    path, ledger = write_objective(tmp_path / "obj.py"), str(tmp_path / "l.jsonl")
    run = lambda *a: mixbo.main(["--objective", path, "--strategy", "random", "--ledger", ledger,
                                 "--quiet", *a])
    assert run("--budget", "2") == 0
    assert run("--budget", "2", "--resume") == 0                           # the same: nothing to do
    # ./obj.py and its full path agree
    assert mixbo.main(["--objective", "./obj.py", "--strategy", "random", "--ledger", ledger,
                       "--budget", "2", "--resume", "--quiet"]) == 0
    capsys.readouterr()
    assert run("--budget", "2", "--resume", "--seed", "1") == 2
    assert "settings.seed (ledger 0, now 1)" in capsys.readouterr().err
    assert run("--budget", "4", "--resume") == 0                 # extends: two more target runs
    tells = [r for r in read_lines(ledger) if r["kind"] == "tell"]
    assert len(tells) == 4 and {"kind": "budget", "budget": 4.0} in read_lines(ledger)
    with open(path, "a") as f:
        f.write("\n# edited\n")
    capsys.readouterr()
    assert run("--budget", "4", "--resume") == 2
    err = capsys.readouterr().err
    assert "sha256" in err and len(err.strip().splitlines()) == 1


def test_hyperparameter_draws_change_the_reported_sd_not_the_trials(tmp_path):
    """The draws only report: with and without them, the same seed runs the same trials and
    recommends the same mixtures; the reported loss +- sd differ."""
    obj = simulate.load_objective_file(write_objective(tmp_path / "obj.py"))
    runs = [mixbo.optimize(obj, "mfkg", 1.0, seed=2, ledger=None, out=None,
                           **{**CHEAP, "hyperparameter_draws": draws}) for draws in (0, 3)]
    trial = lambda r: (r["weights"], r["scale"], r["steps"], r["loss"])
    assert [trial(r) for r in runs[0].trials] == [trial(r) for r in runs[1].trials]
    assert [c["weights"] for c in runs[0].recommendations] == \
        [c["weights"] for c in runs[1].recommendations]
    assert runs[0].recommendation["sd"] != runs[1].recommendation["sd"]


def test_a_ledger_that_predates_an_option_resumes_with_its_default(tmp_path):
    """A header without hyperparameter_draws (written before the option) resumes as the default;
    one that recorded another value is refused, naming it."""
    objective = simulate.load_objective_file(write_objective(tmp_path / "obj.py"))
    ledger = tmp_path / "l.jsonl"
    with mixbo.Search(objective, mixbo.Settings(budget=1.0, **CHEAP), ledger, warn=mixbo.silent):
        pass
    lines = ledger.read_text().splitlines()
    header = json.loads(lines[0])
    del header["settings"]["hyperparameter_draws"]
    ledger.write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n")
    with mixbo.Search(objective, mixbo.Settings(budget=1.0, **CHEAP), ledger, resume=True,
                      warn=mixbo.silent):
        pass
    with pytest.raises(ValueError, match="settings.hyperparameter_draws"):
        mixbo.Search(objective, mixbo.Settings(budget=1.0, hyperparameter_draws=2, **CHEAP),
                     ledger, resume=True, warn=mixbo.silent)


def test_a_gp_strategy_with_only_pending_trials_waits_instead_of_guessing(tmp_path):
    """Asked for 8 trials before any has finished, mfkg hands out its initial design and then waits
    (no model yet) rather than spending the budget on blind runs at the target."""
    objective = simulate.load_objective_file(write_objective(tmp_path / "obj.py"))
    search = mixbo.Search(objective, mixbo.Settings(budget=2.0, **CHEAP), warn=mixbo.silent)
    trials = search.ask(8)
    assert len(trials) == 3 and all(t.decision.startswith("init") for t in trials)
    assert search.waiting and search.ctx.spent <= mixbo.DESIGN_SHARE * 2.0 + 1e-12


def test_aggregate_worst_is_in_the_header_and_the_summary_reports_tradeoffs_and_utilities(tmp_path):
    """--aggregate worst: every trial's loss is the max of its domain losses, the header records it,
    and the final summary record holds the trade-offs (recommended vs uniform, per domain) and one
    utility per domain."""
    objective = simulate.make_benchmark("default")
    ledger = str(tmp_path / "worst.jsonl")
    lines = []
    res = mixbo.optimize(objective, "mfkg", 0.3, seed=0, ledger=ledger, out=lines.append,
                         candidates=64, aggregate="worst")
    records = read_lines(ledger)
    assert records[0]["settings"]["aggregate"] == "worst"
    for t in res.trials:
        assert t["loss"] == max(t["domain_losses"].values())
    summary = records[-1]
    assert summary["kind"] == "summary"
    assert set(summary["tradeoffs"]) == {"recommended", "uniform"}
    assert set(summary["utilities"]) == set(objective.domains)
    assert "trade-offs at the target (predicted, +- sd): recommended | uniform" in lines
    assert any(line.startswith("domain utilities") for line in lines)


def test_refit_point_refits_when_the_trials_grew_by_the_factor():
    points = sorted({mixbo.refit_point(c, 1.25) for c in range(1, 400)})
    assert points[:12] == [1, 2, 3, 4, 5, 7, 9, 12, 15, 19, 24, 30]
    assert all(b == max(a + 1, math.ceil(1.25 * a)) for a, b in zip(points, points[1:]))
    assert [mixbo.refit_point(c, 1.0) for c in range(1, 6)] == [1, 2, 3, 4, 5]
    assert all(mixbo.refit_point(c, 1.25) <= c for c in range(1, 400))


def test_rescore_rebuilds_the_recommendation_the_search_recorded(tmp_path, capsys):
    """bench/rescore.py on a kept ledger, at the whole budget: the search it rebuilds recommends
    what the search recorded, with the same loss +- sd, so its z (and the instance's summary
    line) is the recorded one's, and counts the recommended mixture's runs at the target; with
    --scores a second run reads the row back instead of rebuilding the search."""
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import rescore
    name = "loss-K5-L3-rho0.9"
    objective = simulate.make_benchmark(name)
    ledger = tmp_path / f"{name}-mfkg-seed0.jsonl"
    res = mixbo.optimize(objective, "mfkg", 1.2, seed=0, ledger=str(ledger), out=None,
                         candidates=64, hyperparameter_draws=2)
    with pytest.MonkeyPatch.context() as patch:        # the ledger's budget, not the bed's
        patch.setattr(rescore.robustness, "default_budget", lambda objective: 1.2)
        args = [str(tmp_path), "--share", "1.0", "--hyperparameter-draws", "2", "--scores",
                str(tmp_path / "scores.jsonl")]
        assert rescore.main(args) == 0
        out = capsys.readouterr().out
        patch.setattr(rescore, "score", None)             # a second run reads the row back
        assert rescore.main(args) == 0 and capsys.readouterr().out == out
        assert len((tmp_path / "scores.jsonl").read_text().splitlines()) == 1
    row = next(line for line in out.splitlines() if " seed  0 at 100%" in line)
    rec = res.recommendation
    z = (float(objective.true_loss(np.asarray(rec["weights"]))) - rec["loss"]) / rec["sd"]
    assert f"z {z:+6.2f}" in row
    at_target = [r for r in res.trials if r["status"] == "ok"
                 and (r["scale"], r["steps"]) == tuple(objective.target)]
    ran = sum(list(r["weights"]) == list(rec["weights"]) for r in at_target)
    assert f"({len(at_target)} at the target, {ran} of the recommendation)" in row
    assert f"recommendation run at the target in {float(ran > 0):.2f}" in out
    summary = f"{name:<28} at 100%:  1 searches, |z| <= 1 in {float(abs(z) <= 1):.2f}"
    assert f"{summary}, <= 2 in {float(abs(z) <= 2):.2f}; mean z {z:+.2f}" in out
