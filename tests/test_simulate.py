"""Tests for simulate.py: simulators (the formula against its transcription in torch scalars, the
optimum against dense random search, seeded noise against chi-square bounds on its stated sd,
cost, runs unchanged from the previous release), the test bed (requested Spearman on a fresh pool,
by scipy's spearmanr; metrics, noise), aggregates (against hand values), objective files and run
tables (round trips and every malformed case)."""
import csv
import math
import os
import sys

import numpy as np
import pytest
import torch
from scipy.stats import chi2, spearmanr

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import simulate as sm  # noqa: E402

CASES = [("default", 5, 0), ("sparse", 5, 0), ("shift", 5, 0), ("random", 5, 0), ("random", 8, 1)]


def dense_mixtures(K, n, seed, around=None):
    """Dirichlet(1) and Dirichlet(0.1) mixtures, random faces and the vertices (and a cloud around
    `around`): a pool dense enough that no mixture of it should beat an optimum."""
    rng = np.random.default_rng(seed)
    faces = rng.dirichlet(np.ones(K), n) * (rng.uniform(size=(n, K)) < 0.5)
    faces[faces.sum(1) == 0, 0] = 1.0
    parts = [rng.dirichlet(np.ones(K), n), rng.dirichlet(np.full(K, 0.1), n), faces, np.eye(K)]
    if around is not None:
        parts.append(np.clip(around + rng.normal(0, 1e-3, (1000, K)), 0, None))
    return np.concatenate([p / p.sum(1, keepdims=True) for p in parts])


# --- benchmarks -------------------------------------------------------------------------------

def oracle_losses(par, w, N, T):
    """The benchmark's per-domain formula written out with torch scalars (Hoffmann et al. 2022,
    Sec. 3.3 + Ye et al. 2024, Sec. 3)."""
    K = len(w)
    p = (math.log(N * T) - math.log(20e6 * 2500)) / (math.log(1e9 * 20000) - math.log(20e6 * 2500))
    p = min(1.0, max(0.0, p))
    out = []
    for i in range(K):
        tau = float(par["tau_small"][i]) ** (1 - p) * float(par["tau_target"][i]) ** p
        exponent = sum(-tau * float(par["similarity"][i, j]) * w[j] for j in range(K))
        out.append(par["E"][i] + 406.4 / N ** 0.34 + 410.7 / (T * 2 ** 19) ** 0.28
                   + par["k"][i] * torch.exp(exponent))
    return torch.stack(out)


@pytest.mark.parametrize("name,K,seed", CASES[:2] + CASES[-1:])
def test_losses_match_torch_oracle(name, K, seed):
    law, par = sm.benchmark_law(name, K, seed), sm.benchmark_parameters(name, K, seed)
    rng = np.random.default_rng(1)
    fidelities = [(20e6, 2500), (150e6, 10000), (1e9, 20000)]
    for w, (N, T) in zip(rng.dirichlet(np.ones(K), 3), fidelities):
        expected = oracle_losses(par, torch.tensor(w, dtype=torch.float64), N, T).numpy()
        assert np.allclose(sm.domain_losses(law, w, N, T)[0], expected, atol=1e-12, rtol=0)


def test_runs_unchanged_from_previous_release():
    """Values the previous simulate.py printed for the same calls (run seed 7, 150M, 10k steps)."""
    before = {("default", 5, 0): (3.402478727811946, 3.774166329900262, 4.171522207450644,
                                  2.9175273749513293, 0.010300176536528313),
              ("sparse", 5, 0): (3.402614531374534, 3.7736663801579247, 4.315439678742272,
                                 2.886535107306014, 0.010300176536528313),
              ("shift", 5, 0): (3.236751777721968, 3.6225196208771946, 3.958328097836356,
                                2.8152765685711274, 0.010300176536528313),
              ("random", 5, 0): (3.6206391050002664, 3.955248316561305, 3.482107373598008,
                                 3.0059099274771706, 0.010300176536528313),
              ("random", 8, 1): (3.846216243548549, 4.270157761020738, 3.4247228495610083,
                                 3.2261116949574946, 0.010241759452537849)}
    for (name, K, seed), (loss, first, last_domain, optimum, noise_sd) in before.items():
        objective = sm.make_benchmark(name, K, seed)
        w = np.array([0.1, 0.2, 0.3, 0.25, 0.15]) if K == 5 else np.full(K, 1 / K)
        r = objective.run(w, 150e6, 10000, 7)
        assert (r["loss"], r["checkpoints"][0]["loss"], r["domain_losses"][objective.domains[-1]],
                objective.noise_sd) == (loss, first, last_domain, noise_sd)
        assert abs(objective.optimum[1] - optimum) < 1e-12


@pytest.mark.parametrize("name,K,seed", CASES + [("loss-K5-L7-rho0.5", 5, 0),
                                                 ("loss-K20-L2-rho0.99", 5, 0),
                                                 ("accuracy-K5-L3-rho0.5", 5, 0)])
def test_optimum_not_beaten_by_dense_random_search(name, K, seed):
    objective = sm.make_benchmark(name, K, seed)
    w_star, f_star = objective.optimum
    K = len(objective.domains)
    assert w_star.shape == (K,) and np.all(w_star >= 0) and abs(w_star.sum() - 1) < 1e-12
    assert abs(objective.true_loss(w_star) - f_star) < 1e-15
    assert objective.true_loss(dense_mixtures(K, 20_000, 123, w_star)).min() >= f_star - 1e-9


def test_sparse_benchmark_optimum_on_a_face():
    w_star, _ = sm.make_benchmark("sparse").optimum
    assert w_star[sm.SLIMPAJAMA_DOMAINS.index("book")] < 1e-12
    assert np.all(np.delete(w_star, 4) > 0.01)


@pytest.mark.parametrize("name,l1,regret", [("default", 0.5, 0.010), ("sparse", 0.3, 0.007),
                                            ("shift", 0.7, 0.035)])
def test_optimum_moves_with_scale(name, l1, regret):
    """The optimum at 20M (target steps, and at 2.5k steps) is at least this far (L1) from the
    target's and loses at least this much at the target; the cheapest proxy misleads most."""
    objective, law = sm.make_benchmark(name), sm.benchmark_law(name)
    w_star, f_star = objective.optimum
    w_small = sm.simulator_optimum(law, 20e6, 20000)[0]
    w_first = sm.simulator_optimum(law, 20e6, 2500)[0]
    assert np.abs(w_small - w_star).sum() >= l1
    assert objective.true_loss(w_first) - f_star > objective.true_loss(w_small) - f_star >= regret
    if name in ("default", "shift"):          # the published finding: the proxy's optimum loses
        assert objective.true_loss(w_small) > objective.true_loss(np.full(5, 0.2))   # to uniform


def test_small_scales_stay_informative_and_decay_with_gap():
    objective = sm.make_benchmark("default")
    mixtures = np.random.default_rng(0).dirichlet(np.ones(5), 1000)
    at = [objective.true_loss(mixtures, s, 20000) for s in objective.scales]
    rho = [spearmanr(a, at[-1])[0] for a in at]
    assert all(spearmanr(a, b)[0] >= 0.99 for a, b in zip(at, at[1:]))
    assert rho[0] >= 0.9 and all(a < b for a, b in zip(rho, rho[1:]))
    assert at[-1].std() > 3 * objective.noise_sd             # mixtures differ by more than noise
    low = objective.true_loss(np.full(5, 0.2), 20e6, 2500)
    assert low - objective.true_loss(np.full(5, 0.2)) > 1.0  # scale moves the loss by whole nats


@pytest.mark.parametrize("scale", [20e6, 1e9])
def test_noise_has_the_stated_sd(scale):
    law, objective = sm.benchmark_law("default"), sm.make_benchmark("default")
    w, n = np.full(5, 0.2), 400
    runs = [objective.run(w, scale, 20000, seed) for seed in range(n)]
    first, last = np.array([[r["checkpoints"][0]["loss"], r["loss"]] for r in runs]).T
    truth = objective.true_loss(w, scale, 20000)
    stated = sm.noise_sd_at(law, scale)
    assert scale != law.scales[-1] or stated == objective.noise_sd
    # n s^2 / sigma^2 ~ chi2(n) around the known mean: accept within its central 99.98 %
    s2 = ((last - truth) ** 2).sum() / n
    assert chi2.ppf(1e-4, n) < n * s2 / stated ** 2 < chi2.ppf(1 - 1e-4, n)
    assert abs((last - truth).mean()) < 4 * stated / math.sqrt(n)
    # the run-level offset is shared: checkpoint differences only carry the per-checkpoint part
    diff = (last - first) - (truth - objective.true_loss(w, scale, 2500))
    part = math.sqrt(2) * law.noise_checkpoint_sd / math.sqrt(5)
    assert chi2.ppf(1e-4, n) < (diff ** 2).sum() / part ** 2 < chi2.ppf(1 - 1e-4, n)


def test_noise_scale_at_smallest_and_target():
    law = sm.benchmark_law("default")
    assert abs(sm.noise_sd_at(law, 20e6) - math.sqrt(0.015 ** 2 + 0.004 ** 2 / 5)) < 1e-15
    expected = math.sqrt((0.015 * 50 ** -0.1) ** 2 + 0.004 ** 2 / 5)
    assert abs(sm.noise_sd_at(law, 1e9) - expected) < 1e-15


def test_cost_is_6ND():
    objective = sm.make_benchmark()
    for N in objective.scales:
        for T in objective.steps:
            assert objective.cost(N, T) == 6 * N * T * 2 ** 19
            assert objective.run(np.full(5, 0.2), N, T, 0)["cost"] == objective.cost(N, T)
    assert objective.cost(40e6, 5000) == 4 * objective.cost(20e6, 2500)


def test_same_seed_same_numbers_and_consistent_checkpoints():
    objective = sm.make_benchmark()
    w = np.array([0.1, 0.2, 0.3, 0.25, 0.15])
    a, b = objective.run(w, 150e6, 10000, 7), objective.run(w, 150e6, 10000, 7)
    assert a == b
    assert objective.run(w, 150e6, 10000, 8)["loss"] != a["loss"]
    longer = objective.run(w, 150e6, 20000, 7)
    assert longer["checkpoints"][:3] == a["checkpoints"]     # a longer run passes the same ones
    assert [c["steps"] for c in longer["checkpoints"]] == [2500, 5000, 10000, 20000]
    assert a["loss"] == a["checkpoints"][-1]["loss"]
    assert abs(np.mean(list(a["domain_losses"].values())) - a["loss"]) < 1e-12
    other = np.array([0.1, 0.2, 0.3, 0.2, 0.2])             # another mixture: other noise
    gap = objective.run(other, 150e6, 10000, 7)["loss"] - a["loss"]
    truth = objective.true_loss(other, 150e6, 10000) - objective.true_loss(w, 150e6, 10000)
    assert abs(gap - truth) > 1e-6


@pytest.mark.parametrize("bad", [np.full(5, 0.3), np.array([1.2, -0.2, 0, 0, 0]), np.full(4, 0.25),
                                 np.array([np.nan, 0.5, 0.5, 0, 0])])
def test_run_refuses_weights_off_the_simplex(bad):
    with pytest.raises(ValueError, match="simplex|shape") as e:
        sm.make_benchmark().run(bad, 20e6, 2500, 0)
    assert "\n" not in str(e.value)


def test_check_weights_tolerance_and_renormalization():
    w = sm.check_weights([0.3333, 0.3333, 0.3333], 3)        # rounded weights pass, renormalized
    assert abs(w.sum() - 1) < 1e-15 and np.allclose(w, 1 / 3)
    assert sm.check_weights([1.0, -1e-4, 1e-4], 3)[1] == 0.0
    for bad in ([0.5, 0.5, 0.002], [1.002, -0.002, 0.0]):
        with pytest.raises(ValueError, match="within 0.001"):
            sm.check_weights(bad, 3, what="--mixture")


def test_random_instances_are_seeded_and_general():
    a, b = sm.make_benchmark("random", 6, 3), sm.make_benchmark("random", 6, 3)
    assert np.array_equal(a.optimum[0], b.optimum[0]) and len(a.domains) == 6
    assert not np.allclose(a.optimum[0], sm.make_benchmark("random", 6, 4).optimum[0])
    with pytest.raises(ValueError, match="unknown benchmark"):
        sm.make_benchmark("nope")


# --- test bed ---------------------------------------------------------------------------------

RHO_TOLERANCE = 0.04           # |Spearman on a fresh pool - requested rho|


def test_testbed_covers_the_requested_grid():
    instances = list(sm.TESTBED.values())
    assert 12 <= len(instances) <= 20
    assert {i.rho for i in instances} == {0.99, 0.9, 0.7, 0.5, 0.2}
    assert {i.num_domains for i in instances} == {5, 20}
    assert {i.num_scales for i in instances} == {2, 3, 7}
    assert {i.metric for i in instances} == {"loss", "jump", "accuracy"}
    for metric in ("loss", "jump", "accuracy"):              # each metric at weak and strong rho
        rhos = [i.rho for i in instances if i.metric == metric]
        assert min(rhos) <= 0.5 and max(rhos) >= 0.9
    two, three = sm.make_benchmark("loss-K20-L2-rho0.5"), sm.make_benchmark("loss-K20-L3-rho0.5")
    assert abs(two.cost(two.scales[0], 20000) / two.cost(*two.target) - 1 / 60) < 1e-12
    assert np.allclose([three.cost(s, 20000) / three.cost(*three.target) for s in three.scales],
                       [0.18, 0.48, 1.0], atol=1e-12)
    assert sm.make_benchmark("loss-K5-L7-rho0.9").scales == sm.DEFAULT_SCALES


@pytest.mark.parametrize("name", list(sm.TESTBED))
def test_testbed_hits_its_spearman_on_a_fresh_pool(name):
    instance = sm.TESTBED[name]
    law = sm.testbed_law(instance, name)
    fresh = np.random.default_rng(12345).dirichlet(np.ones(instance.num_domains), 8000)
    assert abs(sm.spearman_to_target(law, fresh) - instance.rho) <= RHO_TOLERANCE
    assert abs(law.spearman - instance.rho) <= RHO_TOLERANCE
    assert sm.spearman_to_target(law, fresh[:2000]) == pytest.approx(
        spearmanr(sm.domain_losses(law, fresh[:2000], law.scales[0], 20000).mean(1),
                  sm.domain_losses(law, fresh[:2000], law.scales[-1], 20000).mean(1))[0])


def test_testbed_objective_fields_and_noise():
    for name in ("loss-K5-L3-rho0.9", "accuracy-K5-L3-rho0.5"):
        objective = sm.make_benchmark(name)
        w = np.full(5, 0.2)
        per_domain = objective.true_domain_losses(w)
        assert per_domain.shape == (5,) and abs(per_domain.mean() - objective.true_loss(w)) < 1e-15
        assert objective.spearman == sm.testbed_law(sm.TESTBED[name]).spearman
        losses = [objective.run(w, objective.target[0], 20000, s)["loss"] for s in range(300)]
        assert abs(np.std(losses) / objective.noise_sd - 1) < 0.15
    assert 0.01 <= sm.make_benchmark("loss-K5-L3-rho0.9").noise_sd <= 0.03
    assert abs(sm.make_benchmark("accuracy-K5-L3-rho0.5").noise_sd - 0.005) < 0.001


@pytest.mark.parametrize("name", [n for n, i in sm.TESTBED.items() if i.metric == "accuracy"])
def test_negated_accuracy_rises_with_scale(name):
    objective = sm.make_benchmark(name)
    mixtures = np.random.default_rng(0).dirichlet(np.ones(len(objective.domains)), 200)
    accuracy = np.array([-objective.true_domain_losses(mixtures, s, 20000)
                         for s in objective.scales])          # (scales, mixtures, domains)
    assert np.all(np.diff(accuracy.mean(axis=2), axis=0) > 0)   # every mixture's mean accuracy
    assert np.all(np.diff(accuracy.mean(axis=1), axis=0) > 0)   # every domain's, over the pool
    assert np.all((accuracy > 0.25) & (accuracy < 1.0))
    assert np.all(np.diff([-objective.true_loss(mixtures, 1e9, t) for t in objective.steps], axis=0)
                  > 0)                                       # and with training steps


def test_losses_follow_the_scaling_law_and_jump_leaves_it():
    name = "jump-K5-L7-rho0.9"
    jump = sm.testbed_law(sm.TESTBED[name])
    twin = sm.testbed_law(sm.TESTBED[name]._replace(metric="loss"))
    w = np.random.default_rng(1).dirichlet(np.ones(5), 50)
    for scale in jump.scales:
        gap = sm.domain_losses(jump, w, scale, 20000) - sm.domain_losses(twin, w, scale, 20000)
        if scale < jump.scales[-1]:
            assert np.all(gap == 0)
        else:                                                # above the extrapolation at 1B:
            assert np.all((gap > 0.1 - 1e-12) & (gap < 0.2))    # worse than 600M
            assert np.all(sm.domain_losses(jump, w, 1e9, 20000).mean(1) >
                          sm.domain_losses(jump, w, 600e6, 20000).mean(1))
    uniform = [sm.domain_losses(twin, np.full(5, 0.2), s, 20000).mean() for s in twin.scales]
    assert np.all(np.diff(uniform) < 0)                      # the twin falls with scale


# --- aggregates -------------------------------------------------------------------------------

def test_aggregate_against_hand_values():
    domains = ("a", "b", "c")
    losses = {"a": 1.0, "b": 2.0, "c": 4.0}
    cases = {"mean": 7 / 3, "worst": 4.0, "domain:b": 2.0, "weighted:a=0.25,c=0.75": 3.25,
             "weighted: a = 0.5 , b = 0.5": 1.5}
    for text, expected in cases.items():
        spec = sm.parse_aggregate(text, domains)
        assert abs(sm.aggregate(spec, losses) - expected) < 1e-15
        assert abs(sm.aggregate(spec, np.array([1.0, 2.0, 4.0])) - expected) < 1e-15
    batch = sm.aggregate(sm.parse_aggregate("worst", domains), np.array([[1, 5, 2], [3, 0, 1.0]]))
    assert batch.tolist() == [5.0, 3.0]
    assert sm.aggregate(sm.parse_aggregate("domain:a", domains), {"a": 1.5}) == 1.5   # a only


@pytest.mark.parametrize("text,match", [("median", "choose mean, worst"), ("mean:a", "choose"),
                                        ("domain:z", "unknown domain 'z'; the domains are a, b, c"),
                                        ("weighted:a=0.5,z=0.5", "unknown domain 'z'"),
                                        ("weighted:a=half,b=0.5", "is not a number"),
                                        ("weighted:a=0.5,b=0.4", "sum to 1"),
                                        ("weighted:a=1.5,b=-0.5", "simplex"),
                                        ("weighted:", "choose")])
def test_parse_aggregate_errors_say_the_fix(text, match):
    with pytest.raises(ValueError, match=match) as e:
        sm.parse_aggregate(text, ("a", "b", "c"))
    assert "\n" not in str(e.value)


def test_aggregate_needs_the_domains_it_weighs():
    with pytest.raises(ValueError, match="needs the loss of domain 'c'"):
        sm.aggregate(sm.parse_aggregate("worst", ("a", "b", "c")), {"a": 1.0, "b": 2.0})
    with pytest.raises(ValueError, match="one loss per domain"):
        sm.aggregate(sm.parse_aggregate("mean", ("a", "b", "c")), np.ones(2))


def test_worst_and_mean_argmins_differ_on_a_known_simulator():
    """On "default" (per-domain losses known in closed form) the mixture that minimizes the worst
    domain is at L1 distance > 0.5 from the one that minimizes the mean; each is the best of a
    dense pool under its own criterion."""
    objective = sm.make_benchmark("default")
    specs = {t: sm.parse_aggregate(t, objective.domains) for t in ("mean", "worst")}
    optima = {t: sm.aggregate_optimum(objective, spec) for t, spec in specs.items()}
    assert np.allclose(optima["mean"][0], objective.optimum[0], atol=1e-6)
    assert np.abs(optima["worst"][0] - optima["mean"][0]).sum() > 0.5
    pool = objective.true_domain_losses(dense_mixtures(5, 20_000, 7))
    for t, (w, value) in optima.items():
        assert sm.aggregate(specs[t], pool).min() >= value - 1e-7
        assert abs(sm.aggregate(specs[t], objective.true_domain_losses(w)) - value) < 1e-12


# --- objective files --------------------------------------------------------------------------

OBJECTIVE_FILE = '''
import numpy as np
DOMAINS = ("web", "code", "math")
SCALES = (1e6, 4e6, 16e6)
STEPS = (100, 200, 400)
TOKENS_PER_STEP = 1000
NOISE_SD = 0.01
CALLS = []

def loss(weights, scale, steps, seed=0):
    CALLS.append((tuple(weights), scale, steps, seed))
    per_domain = (2.0 + 100.0 / scale ** 0.3 + 5.0 / steps ** 0.5 + (weights - [0.5, 0.3, 0.2]) ** 2
                  + 0.001 * seed)
    return {"loss": float(per_domain.mean()),
            "domain_losses": dict(zip(DOMAINS, map(float, per_domain)))}
'''


def file_losses(w, N, T, seed):
    return (2.0 + 100.0 / N ** 0.3 + 5.0 / T ** 0.5 + (w - np.array([0.5, 0.3, 0.2])) ** 2
            + 0.001 * seed)


def test_objective_file_round_trip(tmp_path):
    path = tmp_path / "obj.py"
    path.write_text(OBJECTIVE_FILE)
    objective = sm.load_objective_file(str(path))
    assert objective.domains == ("web", "code", "math") and objective.target == (16e6, 400)
    assert objective.scales == (1e6, 4e6, 16e6) and objective.steps == (100, 200, 400)
    assert objective.noise_sd == 0.01 and objective.true_loss is None   # seeded: no noise-free view
    assert objective.true_domain_losses is None
    w = np.array([0.2, 0.5, 0.3])
    result = objective.run(w, 4e6, 200, seed=3)
    assert [c["steps"] for c in result["checkpoints"]] == [100, 200]   # one call per checkpoint
    for c in result["checkpoints"]:
        assert abs(c["loss"] - file_losses(w, 4e6, c["steps"], 3).mean()) < 1e-12
    assert abs(result["domain_losses"]["code"] - file_losses(w, 4e6, 200, 3)[1]) < 1e-12
    assert result["cost"] == objective.cost(4e6, 200) == 6 * 4e6 * 200 * 1000


def test_noise_free_file_gives_true_domain_losses(tmp_path):
    path = tmp_path / "obj.py"
    path.write_text(OBJECTIVE_FILE.replace(", seed=0", "").replace("seed", "0"))
    objective = sm.load_objective_file(str(path))
    w = np.array([[0.2, 0.5, 0.3], [0.6, 0.2, 0.2]])
    expected = np.array([file_losses(v, 16e6, 400, 0) for v in w])
    assert np.allclose(objective.true_domain_losses(w), expected, atol=1e-12, rtol=0)
    assert np.allclose(objective.true_domain_losses(w[0], 1e6, 100), file_losses(w[0], 1e6, 100, 0))
    assert abs(objective.true_loss(w[1]) - expected[1].mean()) < 1e-12
    path.write_text("def loss(w, s, t):\n"
                    "    return {'loss': 1.0, 'domain_losses': {'book': 1.0}}\n")
    with pytest.raises(ValueError, match="every domain's loss"):
        sm.load_objective_file(str(path)).true_domain_losses(np.full(5, 0.2))


def test_objective_file_defaults_and_flags(tmp_path):
    path = tmp_path / "minimal.py"
    path.write_text("def loss(weights, scale, steps):\n"
                    "    return float(weights[0] + 1e3 / scale + 1.0 / steps)\n")
    objective = sm.load_objective_file(str(path))
    assert objective.domains == sm.SLIMPAJAMA_DOMAINS and objective.scales == sm.DEFAULT_SCALES
    assert objective.steps == sm.DEFAULT_STEPS and objective.target == (1e9, 20000)
    assert objective.cost(1e9, 20000) == sm.flops_cost(1e9, 20000)
    w = np.array([0.3, 0.1, 0.2, 0.2, 0.2])
    assert objective.true_loss(w) == 0.3 + 1e3 / 1e9 + 1 / 20000    # noise-free: true_loss = loss
    assert objective.run(w, 20e6, 20000, 5)["domain_losses"] == {}
    flagged = sm.load_objective_file(str(path), domains=("a", "b"), scales=(1e6, 1e7),
                                     steps=(10, 20), target=(1e6, 20), tokens_per_step=7)
    assert flagged.domains == ("a", "b") and flagged.target == (1e6, 20)
    assert flagged.cost(1e6, 20) == 6e6 * 20 * 7


def test_search_space_only_file(tmp_path):
    path = tmp_path / "space.py"
    path.write_text('DOMAINS = ("web", "code")\nSCALES = (1e6, 1e7)\nSTEPS = (10, 20)\n'
                    'TARGET = (1e7, 20)\n\ndef cost(scale, steps):\n    return scale * steps\n')
    space = sm.load_objective_file(str(path))
    assert space.run is None and space.true_loss is None and space.true_domain_losses is None
    assert space.domains == ("web", "code") and space.target == (1e7, 20)
    assert space.scales == (1e6, 1e7) and space.steps == (10, 20) and space.cost(1e6, 10) == 1e7
    path.write_text('DOMAINS = ("web", "code")\n')
    assert sm.load_objective_file(str(path)).target == (1e9, 20000)
    path.write_text('DOMAINS = ("web", "code")\nTARGET = (5e9, 20000)\n')
    with pytest.raises(ValueError, match="TARGET"):
        sm.load_objective_file(str(path))


@pytest.mark.parametrize("text,where,match", [
    ("x = 1\n", "load", "does not define a function loss"),
    ("raise RuntimeError('boom\\nsecond line')\n", "load", "failed to import: RuntimeError: boom"),
    ("def loss(w, s, t):\n    return float('nan')\n", "run", "non-finite"),
    ("def loss(w, s, t):\n    return {'loss': float('inf')}\n", "run", "non-finite"),
    ("def loss(w, s, t):\n    return {'value': 1.0}\n", "run", "without a 'loss' key"),
    ("def loss(w, s, t):\n    return {'loss': 1.0, 'tv': 2.0, 'domain_losses': {'tv': 2.0}}\n",
     "run", "unknown domains"),
    ("def loss(w, s, t):\n    return 'high'\n", "run", "must return a float"),
    ("DOMAINS = ('a', 'a')\ndef loss(w, s, t):\n    return 1.0\n", "load",
     "DOMAINS must be distinct"),
    ("STEPS = (200, 100)\ndef loss(w, s, t):\n    return 1.0\n", "load", "STEPS must be"),
    ("TARGET = (5e9, 20000)\ndef loss(w, s, t):\n    return 1.0\n", "load", "TARGET"),
    ("OPTIMUM = -0.7\ndef loss(w, s, t):\n    return 1.0\n", "load", "OPTIMUM must be"),
    ("OPTIMUM = ([0.2] * 5, 'low')\ndef loss(w, s, t):\n    return 1.0\n", "load",
     "OPTIMUM must be"),
    ("def loss(w, s, t):\n    return 1.0\ndef cost(s, t):\n    return -1.0\n", "run", "cost"),
])
def test_objective_file_errors_are_one_line(tmp_path, text, where, match):
    path = tmp_path / "bad.py"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        objective = sm.load_objective_file(str(path))
        if where == "run":
            objective.run(np.full(5, 0.2), 20e6, 2500, 0)
    assert "\n" not in str(e.value)


def test_objective_file_missing(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        sm.load_objective_file(str(tmp_path / "nope.py"))


# --- run tables -------------------------------------------------------------------------------

DOMAINS = ("wikipedia", "github", "book")
RUNS = {"a": [0.6, 0.3, 0.1], "b": [0.2, 0.5, 0.3], "c": [1 / 3, 1 / 3, 1 / 3],
        "d": [0.0, 0.9, 0.1]}
HEADER = ["run", *[f"w_{d}" for d in DOMAINS], "scale", "tokens", "steps", "loss",
          *[f"loss_{d}" for d in DOMAINS]]


def table_loss(w, N, T):
    """A made-up table: per-domain losses from a small formula, objective = their mean."""
    per = 1.5 + 30.0 / N ** 0.25 + 20.0 / T ** 0.3 + (np.asarray(w) - [0.4, 0.4, 0.2]) ** 2 * (
        1 + 1e8 / N)
    return float(per.mean()), per


def write_rows(path, rows, header=None):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header or HEADER)
        writer.writerows(rows)


def twenty_rows():
    """Runs a-d at 1e7 (3 checkpoints), a-c at 1e8 (2 checkpoints), d at 1e8 only early: 20 rows."""
    rows = []
    plan = [(name, 1e7, (1000, 2000, 4000)) for name in RUNS] + \
        [(name, 1e8, (2000, 4000)) for name in "abc"] + [("d", 1e8, (2000, 1000))]
    for name, N, steps in plan:
        for T in steps:
            loss, per = table_loss(RUNS[name], N, T)
            rows.append([name, *RUNS[name], N, T * 512, T, loss, *per])
    assert len(rows) == 20
    return rows


def test_table_round_trip(tmp_path):
    path = tmp_path / "runs.csv"
    write_rows(path, twenty_rows())
    objective = sm.load_table(str(path))
    assert objective.domains == DOMAINS and objective.scales == (1e7, 1e8)
    assert objective.steps == (1000, 2000, 4000) and objective.target == (1e8, 4000)
    assert sorted(map(tuple, objective.candidates)) == sorted(tuple(RUNS[n]) for n in "abc")
    truth = {n: table_loss(RUNS[n], 1e8, 4000)[0] for n in "abc"}
    best = min(truth, key=truth.get)
    assert np.allclose(objective.optimum[0], RUNS[best], atol=1e-12)
    assert objective.optimum[1] == truth[best]
    assert np.allclose(objective.true_loss(np.array([RUNS[n] for n in "abc"])),
                       [truth[n] for n in "abc"], atol=0)
    assert np.allclose(objective.true_domain_losses(np.array(RUNS["a"])),
                       table_loss(RUNS["a"], 1e8, 4000)[1], atol=0)
    result = objective.run(np.array(RUNS["b"]), 1e7, 2000, seed=0)
    assert [c["steps"] for c in result["checkpoints"]] == [1000, 2000]
    assert result["loss"] == table_loss(RUNS["b"], 1e7, 2000)[0]
    assert result["domain_losses"]["github"] == table_loss(RUNS["b"], 1e7, 2000)[1][1]
    assert result["cost"] == 6 * 1e7 * 2000 * 512 == objective.cost(1e7, 2000)
    assert objective.cost(1e8, 1000) == 6 * 1e8 * 1000 * 512   # absent: median tokens per step
    assert objective.available(np.array(RUNS["d"]), 1e8, 2000)  # not a candidate, in the table
    d_run = objective.run(np.array(RUNS["d"]), 1e8, 2000, 0)
    assert [c["steps"] for c in d_run["checkpoints"]] == [1000, 2000]
    assert not objective.available(np.array(RUNS["d"]), 1e8, 4000)
    assert not objective.available(np.array([0.5, 0.5, 0.0]), 1e7, 1000)
    with pytest.raises(ValueError, match="no run of mixture"):
        objective.run(np.array(RUNS["d"]), 1e8, 4000, 0)
    assert objective.noise_sd is None
    small = sm.load_table(str(path), target_scale=1e7)
    assert small.target == (1e7, 4000) and len(small.candidates) == 4
    assert sm.read_table(str(path)).mixtures.shape == (4, 3)


def test_table_without_domain_losses_has_no_true_domain_losses(tmp_path):
    path = tmp_path / "runs.csv"
    write_rows(path, [r[:8] for r in twenty_rows()], HEADER[:8])
    objective = sm.load_table(str(path))
    assert objective.true_domain_losses is None and objective.run(
        np.array(RUNS["a"]), 1e8, 4000, 0)["domain_losses"] == {}


def test_table_tokens_only_seed_repeats_and_metric(tmp_path):
    rows = []
    for seed, noise in [(1, -0.01), (2, 0.01), (3, 0.03)]:
        for name in "ab":
            for N in (1e7, 1e8):
                loss, _ = table_loss(RUNS[name], N, 4000)
                rows.append([name, seed, *RUNS[name], N, 4000 * 512, loss + noise, 2 * loss])
    path = tmp_path / "tokens.csv"
    write_rows(path, rows, ["run", "seed", *[f"w_{d}" for d in DOMAINS], "scale", "tokens", "loss",
                            "other"])
    objective = sm.load_table(str(path))
    assert objective.steps == (4000 * 512,)
    assert objective.cost(1e8, 4000 * 512) == 6 * 1e8 * 4000 * 512
    w = np.array(RUNS["a"])
    truth = table_loss(RUNS["a"], 1e8, 4000)[0]
    assert [objective.run(w, 1e8, 4000 * 512, s)["loss"] for s in range(4)] == \
        [truth - 0.01, truth + 0.01, truth + 0.03, truth - 0.01]          # replicate seed mod 3
    assert abs(objective.true_loss(w) - (truth + 0.01)) < 1e-12          # mean over replicates
    assert abs(objective.noise_sd - 0.02) < 1e-12                        # pooled sd of the three
    assert abs(sm.load_table(str(path), metric="other").true_loss(w) - 2 * truth) < 1e-12


def test_table_renormalizes_rounded_weights(tmp_path):
    rows = twenty_rows()
    for r in rows:
        if r[0] == "a":
            r[1:4] = [0.6003, 0.3, 0.1]                      # sums to 1.0003: within SIMPLEX_TOL
    path = tmp_path / "off.csv"
    write_rows(path, rows)
    objective = sm.load_table(str(path))
    assert objective.available(np.array([0.6003, 0.3, 0.1]) / 1.0003, 1e7, 1000)
    assert objective.available(np.array([0.6003, 0.3, 0.1]), 1e7, 1000)


def test_write_table_replays_the_simulator(tmp_path):
    objective = sm.make_benchmark("loss-K5-L3-rho0.9")
    path = tmp_path / "testbed.csv"
    sm.write_table(objective, str(path), n_mixtures=6, seeds=(0, 1), seed=3)
    table = sm.load_table(str(path))
    assert (table.domains, table.scales, table.steps, table.target) == \
        (objective.domains, objective.scales, objective.steps, objective.target)
    pool = np.vstack([np.full(5, 0.2), np.random.default_rng(3).dirichlet(np.ones(5), 5)])
    assert np.array_equal(table.candidates, pool)            # the table keeps the weights it ran
    for w in pool[:3]:
        for scale in objective.scales:
            for seed in (0, 1, 2):
                want = objective.run(w, scale, 10000, seed % 2)
                got = table.run(w, scale, 10000, seed)
                assert got["checkpoints"] == want["checkpoints"] and got["cost"] == want["cost"]
        runs = [objective.run(w, 1e9, 20000, s)["domain_losses"] for s in (0, 1)]
        expected = np.mean([[r[d] for d in objective.domains] for r in runs], axis=0)
        assert np.allclose(table.true_domain_losses(w), expected, atol=1e-15)
    assert table.noise_sd > 0 and table.cost(1e9, 20000) == objective.cost(1e9, 20000)
    values = table.true_loss(table.candidates)
    assert table.optimum[1] == values.min()



def test_write_table_of_an_objective_without_domain_losses_replays_it(tmp_path):
    """An objective file whose loss is a bare number: the table has no loss_<domain> columns, and
    it replays the file's losses at every checkpoint."""
    path = tmp_path / "acc.py"
    path.write_text("DOMAINS = ('a', 'b', 'c')\nSCALES, STEPS = (1e7, 1e8), (100, 400)\n"
                    "def loss(weights, scale, steps):\n"
                    "    return -float(0.5 + 0.01 * steps ** 0.2 - ((weights - 0.3) ** 2).sum())\n")
    objective = sm.load_objective_file(str(path))
    sm.write_table(objective, str(tmp_path / "acc.csv"), n_mixtures=4, seeds=(0,), seed=1)
    assert "loss_a" not in (tmp_path / "acc.csv").read_text().splitlines()[0]
    table = sm.load_table(str(tmp_path / "acc.csv"))
    for w in table.candidates:
        for scale in objective.scales:
            want = objective.run(w, scale, 400, 0)["checkpoints"]
            got = table.run(w, scale, 400, 0)["checkpoints"]
            assert [(c["steps"], c["loss"]) for c in got] == [(c["steps"], c["loss"]) for c in want]

def malformed(case):
    """(rows, header, row, column) of a broken table; row = CSV line number named in the error."""
    rows, header = twenty_rows(), None
    if case.startswith("missing "):
        column = case.split()[1]
        i = HEADER.index(column)
        return [r[:i] + r[i + 1:] for r in rows], HEADER[:i] + HEADER[i + 1:], 1, column
    if case == "off simplex":
        rows[4][1:4] = [0.7, 0.3, 0.1]
        return rows, header, 6, "w_wikipedia..w_book"
    if case == "negative weight":
        rows[2][1:4] = [1.1, -0.1, 0.0]
        return rows, header, 4, "w_wikipedia..w_book"
    if case == "duplicate row":
        rows.append(list(rows[7]))
        return rows, header, 22, "run"
    if case == "non-numeric":
        rows[9][5] = "20k"
        return rows, header, 11, "tokens"
    if case == "nan loss":
        rows[3][7] = "nan"
        return rows, header, 5, "loss"
    if case == "non-integer steps":
        rows[1][6] = 1500.5
        return rows, header, 3, "steps"
    if case == "zero scale":
        rows[0][4] = 0
        return rows, header, 2, "scale"
    if case == "run changes weights":
        rows[5][1:4] = [0.5, 0.4, 0.1]
        return rows, header, 7, "w_wikipedia"
    if case == "empty run id":
        rows[8][0] = ""
        return rows, header, 10, "run"
    if case == "duplicate column":
        return [r + [r[7]] for r in rows], HEADER + ["loss"], 1, "loss"
    raise AssertionError(case)


CASES_MALFORMED = ["missing run", "missing scale", "missing tokens", "missing loss", "off simplex",
                   "negative weight", "duplicate row", "non-numeric", "nan loss",
                   "non-integer steps", "zero scale", "run changes weights", "empty run id",
                   "duplicate column"]


@pytest.mark.parametrize("case", CASES_MALFORMED)
def test_malformed_tables_get_one_line_naming_row_and_column(tmp_path, case):
    rows, header, row, column = malformed(case)
    path = tmp_path / "bad.csv"
    write_rows(path, rows, header)
    with pytest.raises(ValueError) as e:
        sm.load_table(str(path))
    message = str(e.value)
    assert "\n" not in message and f"row {row}" in message and column in message, message


@pytest.mark.parametrize("content,match", [
    ("", "is empty"), ("run,w_a,w_b,scale,tokens,loss\n", "no rows"),
    ("run,scale,tokens,loss\nx,1,1,1\n", "w_<domain>"),
    ("run,w_a,w_b,scale,tokens,loss\nx,0.5,0.5,1,1\n", "row 2 has 5 cells")])
def test_empty_and_shapeless_tables(tmp_path, content, match):
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as e:
        sm.load_table(str(path))
    assert "\n" not in str(e.value)


def test_table_missing_file_and_unknown_target_scale(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        sm.load_table(str(tmp_path / "none.csv"))
    path = tmp_path / "runs.csv"
    write_rows(path, twenty_rows())
    with pytest.raises(ValueError, match="target scale 5e\\+07 is not in the table"):
        sm.load_table(str(path), target_scale=5e7)
