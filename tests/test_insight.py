"""Tests of what a search teaches (mixbo.insight, --aggregate, --plot), each against an oracle
built outside the loop: the true optimum of each aggregate (simulate.aggregate_optimum), finite
differences and Monte Carlo draws of the loop GP's posterior, per-domain GPs fitted by gp.fit_gp
directly, and the PNG files --plot writes. Cheap objective files written by the tests (2 or 3
domains, 2 scales x 2 step counts), small candidate sets and budgets."""
import os
import sys

import numpy as np
import pytest

import gp
import mixbo
import simulate

TWO_DOMAINS = """
DOMAINS = ("a", "b")
SCALES = (1e6, 4e6)
STEPS = (100, 200)

def loss(weights, scale, steps):
    level = 2.0 + 30.0 / scale ** 0.25 + 4.0 / steps ** 0.3
    a, b = level + 0.5 * (1.0 - weights[0]), level + 2.0 * weights[0] ** 2
    return {"loss": (a + b) / 2, "domain_losses": {"a": a, "b": b}}
"""
# mean of the domain losses: minimal at w_a = 1/8; worst: where they cross, w_a = (sqrt(17) - 1)/8

THREE_DOMAINS = """
import numpy as np
DOMAINS = ("a", "b", "c")
SCALES = (1e6, 4e6)
STEPS = (100, 200)

def loss(weights, scale, steps, seed=0):
    level = 2.0 + 30.0 / scale ** 0.25 + 4.0 / steps ** 0.3
    noise = 0.002 * np.random.default_rng([seed, int(scale), steps]).standard_normal(3)
    per = level + np.array([0.5, 1.0, 2.0]) * (1.0 - np.asarray(weights)) ** 2 + noise
    return {"loss": float(per.mean()), "domain_losses": dict(zip(DOMAINS, per.tolist()))}
"""


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One torch thread for the tiny GPs, as the CLI uses; restored for the other test modules."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def objective_file(folder, text):
    path = folder / "objective.py"
    path.write_text(text)
    return str(path)


def search_to_the_end(objective, settings):
    """The closed loop by ask/tell in memory; returns the Search (its ctx.model is the loop GP)
    and the summary's insight."""
    search = mixbo.Search(objective, settings, warn=mixbo.silent)
    while trials := search.ask(1):
        search.tell(trials[0].trial, **mixbo.run_objective(objective, trials[0], search.aggregate))
    return search, search.result(summarize=True).insight


@pytest.fixture(scope="module")
def three_domain_search(tmp_path_factory):
    """mfkg with refit_every 3 and one --mixture, on a budget that runs both scales and both step
    counts (so that the last GP is conditioned on hyperparameters fitted on fewer trials)."""
    objective = simulate.load_objective_file(objective_file(tmp_path_factory.mktemp("three"),
                                                            THREE_DOMAINS))
    settings = mixbo.Settings(strategy="mfkg", budget=2.0, seed=3, candidates=32, refit_every=3,
                              mixture=((0.6, 0.2, 0.2),))
    search, info = search_to_the_end(objective, settings)
    ran = {(r["scale"], r["steps"]) for r in search.finished}
    assert len(search.finished) % 3 and len({N for N, _ in ran}) == len({T for _, T in ran}) == 2
    assert all(r["status"] == "ok" for r in search.finished)
    return objective, search, info


def test_worst_finds_another_mixture_than_mean_as_it_should(tmp_path):
    """On two domains whose mean and worst optima are far apart (w_a 0.125 against 0.390), the same
    search minimizing each aggregate recommends a mixture nearer its own optimum, and each
    recommendation is the better one under the aggregate it minimized (true losses)."""
    objective = simulate.load_objective_file(objective_file(tmp_path, TWO_DOMAINS))
    chosen, optimum = {}, {}
    for name in ("mean", "worst"):
        spec = simulate.parse_aggregate(name, objective.domains)
        optimum[name] = simulate.aggregate_optimum(objective, spec)[0][0]
        result = mixbo.optimize(objective, "ei", 6, seed=0, out=None, candidates=32, refit_every=3,
                                aggregate=name)
        chosen[name] = np.array(result.recommendation["weights"])
    assert abs(optimum["mean"] - 1 / 8) < 1e-6
    assert abs(optimum["worst"] - (17 ** 0.5 - 1) / 8) < 1e-6
    for name, other in (("mean", "worst"), ("worst", "mean")):
        assert abs(chosen[name][0] - optimum[name]) < abs(chosen[name][0] - optimum[other])
        spec = simulate.parse_aggregate(name, objective.domains)
        true = lambda w: simulate.aggregate(spec, objective.true_domain_losses(w))
        assert true(chosen[name]) < true(chosen[other])


def test_utilities_are_the_derivative_of_the_loop_gp_along_e_k_minus_w(three_domain_search):
    """Each domain's utility is D_v mu(x) at the recommendation x (at the target) along v = e_k - w:
    against a second-order forward difference of the loop GP's posterior mean (h = 1e-4, error
    O(h^2)); its sd against Monte Carlo draws of (f(x + h v) - f(x)) / h from the joint posterior
    of the two points (h = 1e-3: the finite difference's variance is off by O(h); 200,000 draws:
    the sd's relative Monte Carlo error is 1/sqrt(2 n) = 0.16%, so 1.5% is over 5 of them), and
    without sampling, sqrt(C_00 + C_11 - 2 C_01) / h of their covariance C at h = 1e-4 (0.1%)."""
    objective, search, info = three_domain_search
    ctx, w = search.ctx, np.array(search.recommendations[-1]["weights"])
    at = lambda W: gp.encode(np.atleast_2d(W), *objective.target, ctx.bounds)
    rng = np.random.default_rng(0)
    for k, d in enumerate(objective.domains):
        v = np.eye(3)[k] - w
        mu = lambda h: gp.predict(ctx.model, at(w + h * v))[0][0]
        h = 1e-4
        finite_difference = (4 * mu(h) - mu(2 * h) - 3 * mu(0.0)) / (2 * h)
        mean, sd = info["utilities"][d]
        assert abs(mean - finite_difference) < 1e-6 * max(1.0, abs(mean)), d
        m, C = gp.predict(ctx.model, at(np.vstack([w, w + h * v])), full_cov=True)
        assert abs(np.sqrt(C[0, 0] + C[1, 1] - 2 * C[0, 1]) / h / sd - 1) < 1e-3, d
        h = 1e-3
        m, C = gp.predict(ctx.model, at(np.vstack([w, w + h * v])), full_cov=True)
        f = rng.multivariate_normal(m, C, size=200_000, method="eigh")
        assert abs((f[:, 1] - f[:, 0]).std() / h / sd - 1) < 0.015, d


def test_per_domain_predictions_are_those_of_gps_fitted_outside_the_loop(three_domain_search):
    """The trade-off table's entries (recommended, uniform, --mixture 0; the objective by the
    reporting GP, each domain by its own GP) equal gp.fit_gp fitted here on the same observations:
    every checkpoint of every run, hyperparameters fitted on the first r = n - n % refit_every of
    the n trials with the model seed of trial r, then conditioned on all n (to 1e-6)."""
    objective, search, info = three_domain_search
    bounds = (min(objective.scales), max(objective.scales), min(objective.steps),
              max(objective.steps))
    rows = [(t["weights"], t["scale"], c, i) for i, t in enumerate(search.finished)
            for c in t["checkpoints"]]
    r = len(search.finished) - len(search.finished) % 3
    mixtures = {"recommended": search.recommendations[-1]["weights"], "uniform": [1 / 3] * 3,
                "--mixture 0": [0.6, 0.2, 0.2]}
    assert set(info["tradeoffs"]) == set(mixtures)
    X_target = gp.encode(np.array(list(mixtures.values())), *objective.target, bounds)
    for key, config in [("objective", gp.Config(**mixbo.REPORTING_MODEL))] + [
            (d, gp.Config()) for d in objective.domains]:
        value = (lambda c: c["loss"]) if key == "objective" else (lambda c: c["domain_losses"][key])
        W, N, T, runs = (np.array(column) for column in zip(*[(w, n, c["steps"], i)
                                                               for w, n, c, i in rows]))
        X, y = gp.encode(W, N, T.astype(float), bounds), np.array([value(c) for *_, c, _ in rows])
        first = runs < r
        fitted = gp.fit_gp(X[first], y[first], 3, config, runs=runs[first],
                           seed=mixbo.trial_seed(3, r, mixbo.MODEL))
        model = gp.fit_gp(X, y, 3, config, runs=runs, hyperparameters=fitted.hyperparameters)
        mean, var = gp.predict(model, X_target)
        for i, name in enumerate(mixtures):
            got_mean, got_sd = info["tradeoffs"][name][key]
            assert abs(got_mean - mean[i]) < 1e-6 and abs(got_sd - np.sqrt(var[i])) < 1e-6, (
                name, key)


def test_plot_without_matplotlib_is_one_line_and_the_search_exits_0(tmp_path, monkeypatch, capsys):
    """matplotlib made unimportable (whether or not it is installed): the search runs to its end,
    prints the one --plot line and writes no folder; --plot with ask or --bench is refused."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    folder, ledger = tmp_path / "plots", str(tmp_path / "ledger.jsonl")
    path = objective_file(tmp_path, TWO_DOMAINS)
    argv = ["--objective", path, "--strategy", "sobol", "--budget", "3", "--plot", str(folder)]
    assert mixbo.main([*argv, "--ledger", ledger, "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    line = "--plot: matplotlib is not installed; pip install -r requirements-plot.txt"
    assert [x for x in out if "--plot" in x or "matplotlib" in x] == [line] == out[-1:]
    assert out[0].startswith("done: ") and not folder.exists()
    for refused in (["ask", "--ledger", ledger, *argv], [*argv, "--bench"]):
        assert mixbo.main(refused) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and "--plot draws one closed-loop search" in err[0]


def test_plot_writes_the_four_pngs(tmp_path, capsys):
    """With matplotlib: the four PNGs, named in the one --plot line, each a PNG file."""
    pytest.importorskip("matplotlib")
    folder = tmp_path / "plots"
    argv = ["--objective", objective_file(tmp_path, TWO_DOMAINS), "--strategy", "ei", "--budget",
            "3", "--candidates", "32", "--aggregate", "worst", "--plot", str(folder), "--ledger",
            str(tmp_path / "ledger.jsonl"), "--quiet"]
    assert mixbo.main(argv) == 0
    names = ["loss_vs_cost", "weights", "cost_by_scale", "tradeoffs"]
    paths = [os.path.join(folder, name + ".png") for name in names]
    assert capsys.readouterr().out.splitlines()[-1] == f"--plot: wrote {', '.join(paths)}"
    for path in paths:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
