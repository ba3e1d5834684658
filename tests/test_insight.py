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


@pytest.fixture(scope="module")
def three_domain_search(tmp_path_factory):
    """Seven runs of Dirichlet(1) mixtures at both scales to 200 steps (checkpoints at 100 and 200),
    told to an mfkg Search with one --mixture (Search.attach); with seven trials the default refit
    schedule fits the GP's hyperparameters on all of them. Returns the objective, the Search (its
    ctx.model is the loop GP) and the summary's insight."""
    objective = simulate.load_objective_file(objective_file(tmp_path_factory.mktemp("three"),
                                                            THREE_DOMAINS))
    settings = mixbo.Settings(budget=10.0, seed=3, mixture=((0.6, 0.2, 0.2),))
    search = mixbo.Search(objective, settings, warn=mixbo.silent)
    W = np.random.default_rng(3).dirichlet(np.ones(3), 7)
    for i, w in enumerate(W):
        scale = objective.scales[i % 2]
        search.attach(w, scale, 200, result=objective.run(w, scale, 200, seed=i))
    return objective, search, search.result(summarize=True).insight


def test_worst_finds_another_mixture_than_mean_as_it_should(tmp_path):
    """On two domains whose mean and worst optima are far apart (w_a 0.125 against 0.390), the same
    search minimizing each aggregate recommends a mixture nearer its own optimum, and each
    recommendation is the better one under the aggregate it minimized (true losses)."""
    objective = simulate.load_objective_file(objective_file(tmp_path, TWO_DOMAINS))
    chosen, optimum = {}, {}
    for name in ("mean", "worst"):
        spec = simulate.parse_aggregate(name, objective.domains)
        optimum[name] = simulate.aggregate_optimum(objective, spec)[0][0]
        result = mixbo.optimize(objective, "ei", 5, seed=0, out=None, candidates=32, aggregate=name)
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
    """Each domain's row of the trade-off table (recommended, uniform, --mixture 0) is the posterior
    at the target of gp.fit_gp fitted here on that domain's losses at every checkpoint of every run
    (each run its own label), with the default model, one start and the model seed of the fit on
    all 7 trials (to 1e-6)."""
    objective, search, info = three_domain_search
    bounds = (min(objective.scales), max(objective.scales), min(objective.steps),
              max(objective.steps))
    rows = [(t["weights"], t["scale"], c["steps"], c["domain_losses"], i)
            for i, t in enumerate(search.finished) for c in t["checkpoints"]]
    W, N, T, losses, runs = (np.array(column) for column in zip(*rows))
    X = gp.encode(W, N, T.astype(float), bounds)
    mixtures = {"recommended": search.recommendations[-1]["weights"], "uniform": [1 / 3] * 3,
                "--mixture 0": [0.6, 0.2, 0.2]}
    assert set(info["tradeoffs"]) == set(mixtures) and len(set(T)) == len(set(N)) == 2
    X_target = gp.encode(np.array(list(mixtures.values())), *objective.target, bounds)
    for d in objective.domains:
        y = np.array([loss[d] for loss in losses])
        model = gp.fit_gp(X, y, 3, gp.Config(), runs=runs,
                          seed=mixbo.trial_seed(3, len(search.finished), mixbo.MODEL), restarts=1)
        mean, var = gp.predict(model, X_target)
        for i, name in enumerate(mixtures):
            got_mean, got_sd = info["tradeoffs"][name][d]
            assert abs(got_mean - mean[i]) < 1e-6 and abs(got_sd - np.sqrt(var[i])) < 1e-6, (
                name, d)


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
