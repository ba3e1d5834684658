"""Tests of mixbo.py: determinism, crash safety (SIGKILL + --resume), torn ledgers, bad input, failing
objectives, the budget, and the --bench table. Cheap settings throughout: a 3-domain objective file with
3 scales x 2 step counts written by the tests, small candidate sets and budgets."""
import json
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
    """The GPs here are tiny: one torch thread, as the CLI uses (two threads spin against each other on a
    2-core box); restored afterwards for the other test modules."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def strip_wall(lines):
    """Ledger records without wall times (the only field allowed to differ between identical runs)."""
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in lines]


def read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "mixbo.py", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


# ----------------------------------------------------------------------------------------------

def test_same_seed_same_ledger_and_budget_respected(tmp_path):
    obj = simulate.load_objective_file(write_objective(tmp_path / "obj.py"))
    a, b, c = (str(tmp_path / f"{x}.jsonl") for x in "abc")
    ra = mixbo.optimize(obj, "mfkg", 1.5, seed=3, ledger=a, out=None, refit_every=2, **CHEAP)
    mixbo.optimize(obj, "mfkg", 1.5, seed=3, ledger=b, out=None, refit_every=2, **CHEAP)
    mixbo.optimize(obj, "mfkg", 1.5, seed=4, ledger=c, out=None, refit_every=2, **CHEAP)
    assert strip_wall(read_lines(a)) == strip_wall(read_lines(b))
    assert strip_wall(read_lines(a)) != strip_wall(read_lines(c))
    assert len(ra.trials) > 5 and ra.spent <= 1.5
    assert sum(r["scale"] < 16e6 for r in ra.trials) >= 3        # mfkg's initial design is at cheap scales
    assert ra.recommendation["weights"] is not None and ra.recommendation["sd"] is not None


@pytest.mark.parametrize("strategy", mixbo.STRATEGIES)
def test_every_strategy_respects_the_budget(tmp_path, strategy):
    obj = simulate.load_objective_file(write_objective(tmp_path / "obj.py"))
    res = mixbo.optimize(obj, strategy, 2.5, seed=1, out=None, **CHEAP)
    costs = [r["cost"] for r in res.trials]
    assert sum(costs) <= 2.5 + 1e-12 and res.spent == pytest.approx(sum(costs), abs=1e-12)
    assert all(r["status"] == "ok" for r in res.trials)
    # stopped because nothing it would run was affordable: less than one target run is left for target-only ones
    if strategy in ("kg", "ei", "ucb", "random", "sobol", "uniform"):
        assert 2.5 - res.spent < 1.0 and all(r["scale"] == 16e6 for r in res.trials)
    rec = res.recommendation
    assert rec["weights"] is not None and abs(sum(rec["weights"]) - 1) < 1e-9
    assert len(res.recommendations) == len(res.trials)


def test_an_unaffordable_initial_run_ends_the_design_and_the_acquisition_spends_the_rest():
    """Budget 1 on the default benchmark: mfkg's round-robin design (20M..600M at 20k steps) cannot pay for
    its 600M run after 0.59; the design ends there (no init run after the first acquisition) and mfkg
    spends the rest on affordable fidelities instead of stopping with 0.41 unspent."""
    res = mixbo.optimize(simulate.make_benchmark("default"), "mfkg", 1.0, seed=0, out=None, candidates=64)
    decisions = [r["decision"] for r in res.trials]
    first = next(i for i, d in enumerate(decisions) if not d.startswith("init"))
    assert first == 5 and not any(d.startswith("init") for d in decisions[first:])
    assert 0.99 <= res.spent <= 1.0 + 1e-12


def test_closed_output_pipe_is_one_line_exit_1_and_keeps_the_ledger(tmp_path):
    """`python mixbo.py ... | head -1`: the reader closes stdout; mixbo says so in one line (no traceback),
    exits 1 (not 2: no bad input), and the ledger holds the trials finished so far."""
    path, ledger = write_objective(tmp_path / "obj.py", sleep=0.01), str(tmp_path / "l.jsonl")
    p = subprocess.Popen([sys.executable, "mixbo.py", "--objective", path, "--strategy", "random", "--budget", "20",
                          "--ledger", ledger], cwd=REPO, env={**ENV, "PYTHONUNBUFFERED": "1"},  # a line per write
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.readline()
    p.stdout.close()                                              # what `head -1` does after its line
    err = p.stderr.read()
    assert p.wait(timeout=120) == 1
    assert err.count("\n") == 1 and "broken pipe" in err and "Traceback" not in err
    assert read_lines(ledger)[0]["kind"] == "header"


def test_failing_objective_is_recorded_and_the_loop_goes_on(tmp_path):
    path = write_objective(tmp_path / "obj.py", fail="w[0] > 0.4")
    obj = simulate.load_objective_file(path)
    for strategy in ("sobol", "mfkg"):
        res = mixbo.optimize(obj, strategy, 3.0, seed=0, ledger=str(tmp_path / f"{strategy}.jsonl"), out=None, **CHEAP)
        failed = [r for r in res.trials if r["status"] == "failed"]
        assert failed and "diverged" in failed[0]["error"] and failed[0]["loss"] is None
        assert failed[0]["cost"] > 0                                   # a failed run's cost counts
        assert failed[0]["trial"] < len(res.trials) - 1               # the loop went on after it
        assert any(r["status"] == "ok" for r in res.trials)
        assert res.spent <= 3.0
        # the ledger is valid JSON (no NaN) and holds every trial
        lines = read_lines(str(tmp_path / f"{strategy}.jsonl"))
        assert [r["trial"] for r in lines if r["kind"] == "trial"] == list(range(len(res.trials)))


def test_summary_says_when_the_recommendation_is_an_extrapolation(tmp_path):
    """mfkg's recommendation with no run at the target fidelity carries a note; ei's initial design runs
    the target, so its summary does not."""
    obj = simulate.load_objective_file(write_objective(tmp_path / "obj.py"))
    for strategy, budget, noted in (("mfkg", 0.5, True), ("ei", 3.0, False)):
        lines = []
        res = mixbo.optimize(obj, strategy, budget, seed=0, ledger=None, out=lines.append, **CHEAP)
        at_target = any(r["scale"] == 16e6 and r["steps"] == 200 for r in res.trials)
        assert at_target != noted
        assert any("is extrapolated" in line for line in lines) == noted


def test_recommendation_is_the_law_gp_argmin_with_the_constant_mean_gp_interval(tmp_path):
    """mfkg recommends the scaling-law GP's argmin at the target over the evaluated mixtures and reports the
    posterior there of a constant-mean GP with Matern-5/2 on u_N, u_T: both refitted here from the history,
    outside mixbo's loop."""
    import gp
    obj = simulate.load_objective_file(write_objective(tmp_path / "obj.py"))
    res = mixbo.optimize(obj, "mfkg", 1.0, seed=0, ledger=None, out=None, **CHEAP)
    bounds = (1e6, 16e6, 100, 200)
    r = len(res.trials) - len(res.trials) % res.settings.refit_every             # last refit
    def model(**options):
        W, N, T, y, runs = mixbo._observations(res.trials[:r])
        hyp = gp.fit_gp(gp.encode(W, N, T, bounds), y, 3, runs=runs, seed=mixbo.trial_seed(0, r, mixbo.MODEL),
                        **options).hyperparameters
        W, N, T, y, runs = mixbo._observations(res.trials)
        return gp.fit_gp(gp.encode(W, N, T, bounds), y, 3, runs=runs, hyperparameters=hyp, **options)
    mixtures = mixbo._evaluated_mixtures(res.trials)
    Xs = gp.encode(mixtures, 16e6, 200, bounds)
    i = int(np.argmin(gp.predict(model(mean="scaling_law", kernel_N="rbf", kernel_T="rbf"), Xs)[0]))
    mean, var = gp.predict(model(mean="constant", kernel_N="matern52", kernel_T="matern52"), Xs[i:i + 1])
    rec = res.recommendation
    assert np.allclose(rec["weights"], mixtures[i], atol=1e-12)
    assert abs(rec["loss"] - mean[0]) < 1e-9 and abs(rec["sd"] - np.sqrt(var[0])) < 1e-9


def test_each_trial_is_its_own_run_for_the_gp():
    """Checkpoints of one trial share a run label; a second trial of the same mixture at the same scale
    (another seed) is another run; failed trials give no observations."""
    w = [0.5, 0.3, 0.2]
    ckpt = lambda *steps: [{"steps": s, "loss": 3.0 - s / 1000} for s in steps]
    history = [{"status": "ok", "weights": w, "scale": 1e6, "steps": 200, "checkpoints": ckpt(100, 200)},
               {"status": "failed", "weights": w, "scale": 1e6, "steps": 200, "checkpoints": []},
               {"status": "ok", "weights": w, "scale": 1e6, "steps": 100, "checkpoints": ckpt(100)}]
    W, N, T, y, runs = mixbo._observations(history)
    assert T.tolist() == [100, 200, 100] and runs.tolist() == [0, 0, 2]


def test_torn_last_line_is_ignored_and_resume_matches(tmp_path):
    obj = simulate.load_objective_file(write_objective(tmp_path / "obj.py"))
    full, torn = str(tmp_path / "full.jsonl"), str(tmp_path / "torn.jsonl")
    mixbo.optimize(obj, "ei", 4.0, seed=2, ledger=full, out=None, **CHEAP)
    with open(full) as f:
        lines = f.readlines()
    with open(torn, "w") as f:                       # header, trial 0, rec 0, trial 1, then half of rec 1
        f.writelines(lines[:4])
        f.write(lines[4][: len(lines[4]) // 2])
    said = []
    res = mixbo.optimize(obj, "ei", 4.0, seed=2, ledger=torn, resume=True, out=said.append, **CHEAP)
    assert any("torn last line" in s for s in said)
    assert strip_wall(read_lines(torn)) == strip_wall(read_lines(full))
    assert len(res.trials) == 4
    # resuming a finished ledger runs nothing and changes nothing
    before = open(torn).read()
    again = mixbo.optimize(obj, "ei", 4.0, seed=2, ledger=torn, resume=True, out=None, **CHEAP)
    assert open(torn).read() == before and len(again.trials) == 4


def _child(argv):
    """A forked copy of this process running the CLI (mixbo and torch are imported already, so a kill
    cycle costs no interpreter start-up); exits with main's code. One torch thread: a forked child that
    uses an OpenMP pool started by its parent (earlier tests, 2 threads) hangs."""
    import torch
    torch.set_num_threads(1)
    os._exit(mixbo.main(argv))


def test_crash_sigkill_resume_equals_uninterrupted(tmp_path):
    """SIGKILL the loop at random moments >= 10 times, --resume each time: no finished trial is lost or
    repeated, and the final ledger equals an uninterrupted run's (wall times aside). The uninterrupted
    run is a fresh interpreter (the CLI end to end); the killed ones are forked processes."""
    import multiprocessing
    path = write_objective(tmp_path / "obj.py", sleep=0.01)
    args = ["--objective", path, "--strategy", "mfkg", "--budget", "2", "--seed", "5", "--candidates", "64",
            "--n-init", "3", "--refit-every", "2", "--quiet"]
    ref = str(tmp_path / "ref.jsonl")
    assert run_cli(*args, "--ledger", ref).returncode == 0
    ref_lines = strip_wall(read_lines(ref))
    assert sum(r["kind"] == "trial" for r in ref_lines) >= 8

    fork = multiprocessing.get_context("fork")
    rng = np.random.default_rng(0)
    kills, series, crash = 0, 0, None
    while True:
        if crash is None:                     # a fresh ledger (again, if one finished before 10 kills)
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
        trials = [r for r in lines if r["kind"] == "trial"]
        assert [r["trial"] for r in trials] == list(range(len(trials)))        # none repeated
        assert len(trials) >= finished_before                                  # none lost
        assert lines == ref_lines[:len(lines)]                                  # the same as uninterrupted
        finished_before = len(trials)
        if p.exitcode == 0:
            assert strip_wall(read_lines(crash)) == ref_lines                   # finished: identical ledgers
            if kills >= 10:
                break
            crash = None
    print(f"{kills} kills over {series} ledger(s)")


def read_lines_tolerant(path):
    """Complete lines of a ledger that may end in a torn line (a kill mid-write)."""
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
    assert run_cli("--objective", obj, "--strategy", "random", "--budget", "2", "--ledger", led).returncode == 0
    ledger_before = open(led).read()
    cases = {
        "unknown strategy": ["--objective", obj, "--strategy", "nope"],
        "budget 0": ["--objective", obj, "--budget", "0"],
        "budget < 0": ["--objective", obj, "--budget", "-1"],
        "off the simplex": ["--objective", obj, "--mixture", "a=0.7,b=0.7"],
        "unknown domain": ["--objective", obj, "--mixture", "zz=1"],
        "another run's ledger": ["--objective", obj, "--strategy", "random", "--budget", "2", "--seed", "1",
                                 "--ledger", led, "--resume"],
        "existing ledger without --resume": ["--objective", obj, "--strategy", "random", "--budget", "2", "--ledger", led],
        "missing table": ["--table", str(tmp_path / "nope.csv")],
        "malformed table": ["--table", str(bad_csv)],
        "missing objective file": ["--objective", str(tmp_path / "nope.py")],
        "objective file without loss": ["--objective", str(bad_obj)],
        "no objective": ["--strategy", "ei"],
        "cuda without CUDA": ["--train", "--device", "cuda"],
        "unknown flag": ["--sim", "--bogus"],
    }
    procs = {name: subprocess.Popen([sys.executable, "mixbo.py", *a], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for name, a in cases.items()}
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
    p = run_cli("--sim", "--bench", "--strategy", "random,ei,sobol", "--seeds", "2", "--budget", "2",
                "--candidates", "64", "--json", str(out))
    assert p.returncode == 0, p.stderr
    assert "uncharged" in p.stdout and "speed-up" in p.stdout
    assert "Infinity" not in out.read_text() and "NaN" not in out.read_text()     # strict JSON ("not reached": null)
    b = json.loads(out.read_text())
    assert b["strategies"] == ["random", "ei", "sobol"] and b["seeds"] == 2 and b["budget"] == 2
    for s, row in b["results"].items():
        for key in ("final_regret", "final_true_loss", "cost_to_reach_random", "speedup_vs_random",
                    "cost_to_reach_ei", "speedup_vs_ei", "cost_share_by_scale"):
            assert key in row, (s, key)
        assert row["final_regret"][0] >= 0
        assert sum(row["cost_share_by_scale"].values()) == pytest.approx(1.0)


def test_table_replay_only_runs_rows_the_table_holds(tmp_path):
    """On a run table every strategy may only ask for (mixture, scale, steps) rows the table holds."""
    rows = ["run,w_a,w_b,scale,tokens,steps,loss"]
    mixtures = [(0.1, 0.9), (0.3, 0.7), (0.5, 0.5), (0.7, 0.3), (0.9, 0.1)]
    for i, (a, b) in enumerate(mixtures):
        for scale in (1e6, 4e6):
            for steps in (100, 200):
                if scale == 4e6 and i == 4:
                    continue                                  # mixture 4 was never run at the target scale
                loss = 3.0 + 2e3 / scale ** 0.5 + 3.0 / steps ** 0.5 + (a - 0.3 - 0.05 * (scale == 4e6)) ** 2
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
        assert tuple(res.recommendation["weights"]) in {tuple(map(float, w)) for w in obj.candidates}


# ----------------------------------------------------------------------------------------------
# reference ledgers: written by `python mixbo.py --sim --budget B --strategy S --candidates 64
# [--n-init 2] --ledger tests/data/sim-S-budgetB.jsonl` (and `--table data/runs_cpu.csv` for table-*)
# before the loop was restructured; the loop must still make the same trials and recommendations
# (wall times and the ledger's layout aside)

REFERENCES = {"sim-mfkg-budget1.jsonl": ("mfkg", 1.0, {}),
              "sim-hyperband-budget1.jsonl": ("hyperband", 1.0, {}),
              "sim-regression-budget1.jsonl": ("regression", 1.0, {}),
              "sim-ei-budget4.jsonl": ("ei", 4.0, {"n_init": 2}),
              "table-mfkg-budget2.jsonl": ("mfkg", 2.0, {})}
TRIAL_FIELDS = ("decision", "weights", "scale", "steps", "seed", "status", "loss", "cost", "checkpoints")
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
    objective = (simulate.load_table(os.path.join(REPO, "data", "runs_cpu.csv")) if name.startswith("table")
                 else simulate.make_benchmark("default"))
    res = mixbo.optimize(objective, strategy, budget, seed=0, out=None, candidates=64, **settings)
    assert len(res.trials) == len(want_trials) and len(res.recommendations) == len(want_recs)
    for t, (got, want) in enumerate(zip(res.trials, want_trials)):
        for k in TRIAL_FIELDS:
            assert_same_values(got[k], want[k], f"trial {t} {k}")
    for t, (got, want) in enumerate(zip(res.recommendations, want_recs)):
        for k in RECOMMENDATION_FIELDS:
            assert_same_values(got[k], want[k], f"recommendation {t} {k}")
