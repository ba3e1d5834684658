"""Tests for train_lm.py and data/build_corpus.py on a tiny corpus written here (CPU, seconds).

Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_train_lm.py
"""
import importlib.util
import json
import os
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

import train_lm
from train_lm import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_corpus", ROOT / "data" / "build_corpus.py")
build_corpus = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_corpus)

# tiny, fast, and shared by the tests: 0.1M model (2 layers x 64), 32-byte windows, 8 sequences per step
TINY = TrainConfig(size="0.1M", block_size=32, batch_size=8, steps=30, val_windows=8, seed=0)


def write_folder(root):
    """Three domains with very different byte statistics, 12 documents of ~600 bytes each."""
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"]
    gen = {"digits": lambda: "".join(rng.choice(list("0123456789 "), 600)),
           "words": lambda: " ".join(rng.choice(words, 150)),
           "upper": lambda: "".join(rng.choice(list("XYZ\n"), 600))}
    for domain, make in gen.items():
        (root / domain).mkdir(parents=True)
        for i in range(12):
            (root / domain / f"doc{i:02d}.txt").write_text(make())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_folder(root / "src")
    build_corpus.main(["--from-folder", str(root / "src"), "--out", str(root / "corpus")])
    return root / "corpus"


def test_corpus_build_is_deterministic_and_memmappable(corpus, tmp_path):
    build_corpus.main(["--from-folder", str(corpus.parent / "src"), "--out", str(tmp_path / "again")])
    m1 = json.loads((corpus / "manifest.json").read_text())
    m2 = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert list(m1["domains"]) == ["digits", "upper", "words"]
    for d in m1["domains"]:
        for split in ("train", "val"):
            assert m1["domains"][d][split]["sha256"] == m2["domains"][d][split]["sha256"]
            data = np.memmap(corpus / f"{d}.{split}.bin", dtype=np.uint8, mode="r")
            assert len(data) == m1["domains"][d][split]["bytes"] and data[-1] == 0x1E
    digits = bytes(np.memmap(corpus / "digits.train.bin", dtype=np.uint8, mode="r"))
    assert set(digits) <= set(b"0123456789 \x1e")


def test_changed_source_is_one_line_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "deb").mkdir()
    (tmp_path / "deb" / "fake_1.0_all.deb").write_bytes(b"not the pinned bytes")
    monkeypatch.setattr(build_corpus, "SOURCES", [("deb", "fake", "1.0", "fake_1.0_all.deb", "0" * 64, "MIT")])
    with pytest.raises(SystemExit) as e:
        build_corpus.main(["--stage", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "fake=1.0 (sha256 differs" in err


def test_loss_falls(corpus):
    out = train_lm.train(corpus, [1 / 3, 1 / 3, 1 / 3], replace(TINY, steps=40, eval_steps=(1,)))
    first, last = out["checkpoints"][0]["loss"], out["loss"]
    assert first > 4.5                      # about ln(256) = 5.55 at init
    assert last < first - 1.5, (first, last)
    assert out["cost"] == 6.0 * out["scale"] * 40 * 8 * 32


def test_mixture_counts_match_weights():
    rng = np.random.default_rng(0)
    cases = [np.array([0.5, 0.3, 0.15, 0.05, 0.0]), np.array([0.02, 0.0, 0.98])]  # tiny and zero weights
    cases += [rng.dirichlet(np.full(k, a)) for k, a in ((6, 0.1), (6, 1.0), (3, 5.0), (8, 0.3))]
    for w in cases:
        for B in (1, 3, 8):
            counts = train_lm.domain_counts(w, batch_size=B, steps=100)                # (100, K)
            assert np.all(counts >= 0) and np.all(counts.sum(1) == B)
            cum = np.cumsum(counts, axis=0)                                            # (100, K)
            assert np.all(np.abs(cum - np.outer(np.arange(1, 101) * B, w)) < 1)        # within one sequence
            assert np.all(counts[:, w == 0] == 0)                                      # zero weight, no data


def test_batch_rows_follow_weights_chi_square(corpus):
    domains, data = train_lm.load_corpus(corpus)
    w = np.array([0.6, 0.3, 0.1])
    counts = train_lm.domain_counts(w, batch_size=10, steps=50)
    labels, allowed = [], {"digits": set(b"0123456789 \x1e"), "upper": set(b"XYZ\n\x1e"), "words": None}
    for step in range(50):
        x, y, rows = train_lm.get_batch(data, domains, counts[step], 32, seed=3, step=step)
        assert x.shape == (10, 32) and torch.equal(x[:, 1:], y[:, :-1])
        for row, k in zip(x, rows):                   # each row really comes from its domain's bytes
            if allowed[domains[k]] is not None:
                assert set(row.tolist()) <= allowed[domains[k]]
        labels.append(rows)
    observed = np.bincount(np.concatenate(labels), minlength=3)                      # (3,)
    assert scipy.stats.chisquare(observed, 500 * w).pvalue > 0.99
    assert scipy.stats.chisquare(observed, 500 * np.array([0.5, 0.3, 0.2])).pvalue < 1e-6   # the test has power


def test_val_loss_is_measured_on_each_domains_data(corpus):
    # oracle: the per-domain loss recomputed by hand from that domain's val file, one window at a time
    torch.manual_seed(0)
    model = train_lm.GPT(train_lm.size_config("0.1M", 32))
    domains, data = train_lm.load_corpus(corpus)
    val = {d: train_lm.val_windows(data[d, "val"], 32, 8) for d in domains}
    got = train_lm.evaluate(model, val, torch.autocast("cpu", enabled=False), "cpu")
    for d in domains:
        buf = np.asarray(data[d, "val"], dtype=np.int64)
        starts = np.linspace(0, len(buf) - 33, 8).astype(np.int64)
        losses = []
        for s in starts:
            xy = torch.from_numpy(buf[s:s + 33])
            logits = model(xy[None, :-1])[0]                                          # (32, 256)
            losses.append(torch.nn.functional.cross_entropy(logits, xy[1:], reduction="none"))
        assert abs(got[d] - torch.cat(losses).mean().item()) < 1e-5
    # and a model trained only on digits is best on digits, worst elsewhere
    out = train_lm.train(corpus, {"digits": 1.0}, replace(TINY, steps=40))
    dl = out["domain_losses"]
    assert dl["digits"] < dl["words"] - 1 and dl["digits"] < dl["upper"] - 1
    assert out["loss"] == pytest.approx(np.mean(list(dl.values())), abs=1e-12)
    one = train_lm.train(corpus, {"digits": 1.0}, replace(TINY, steps=2, objective="digits"))
    assert one["loss"] == one["domain_losses"]["digits"] != np.mean(list(one["domain_losses"].values()))


def test_same_seed_same_loss_and_resume(corpus, tmp_path):
    cfg = replace(TINY, steps=20, eval_steps=(10,), lr_horizon=20)
    a = train_lm.train(corpus, [0.2, 0.5, 0.3], cfg)
    b = train_lm.train(corpus, [0.2, 0.5, 0.3], cfg)
    c = train_lm.train(corpus, [0.2, 0.5, 0.3], replace(cfg, seed=1))
    assert a["loss"] == b["loss"] and a["checkpoints"] == b["checkpoints"]
    assert abs(a["loss"] - c["loss"]) > 1e-6
    ckpt = str(tmp_path / "run.pt")
    half = train_lm.train(corpus, [0.2, 0.5, 0.3], replace(cfg, steps=10, eval_steps=(), ckpt=ckpt))
    assert half["checkpoints"] == a["checkpoints"][:1]       # a short run is a prefix of the long one
    resumed = train_lm.train(corpus, [0.2, 0.5, 0.3], replace(cfg, ckpt=ckpt))
    assert resumed["checkpoints"] == a["checkpoints"]
    with pytest.raises(ValueError, match="another mixture"):
        train_lm.train(corpus, [0.5, 0.2, 0.3], replace(cfg, ckpt=ckpt))


def test_objective_adapter(corpus):
    obj = train_lm.make_objective(corpus, sizes=("0.1M",), steps=(5, 10), block_size=32, batch_size=8,
                                  val_windows=8)
    assert obj.domains == ("digits", "upper", "words") and obj.target == (obj.scales[0], 10)
    assert obj.scales[0] == train_lm.size_params("0.1M", 32) == 12 * 2 * 64 ** 2 + 5 * 64  # + 5 LayerNorm gains
    long = obj.run(np.array([0.2, 0.3, 0.5]), obj.scales[0], 10, seed=0)
    short = obj.run(np.array([0.2, 0.3, 0.5]), obj.scales[0], 5, seed=0)
    assert [c["steps"] for c in long["checkpoints"]] == [5, 10]
    assert short["checkpoints"] == long["checkpoints"][:1] and short["loss"] == long["checkpoints"][0]["loss"]
    assert long["cost"] == obj.cost(obj.scales[0], 10) == 2 * short["cost"]
    with pytest.raises(FloatingPointError):                    # a diverged run raises: mixbo records a failure
        train_lm.train(corpus, [0.2, 0.3, 0.5], replace(TINY, steps=5, lr=1e30))


def _ddp_worker(rank, world, port, corpus, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    res = train_lm.train(corpus, [0.2, 0.5, 0.3], replace(TINY, steps=10, micro_batch=2))
    if rank == 0:
        Path(out).write_text(json.dumps(res["checkpoints"]))
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_match_one(corpus, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.json"
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(corpus), str(out)), nprocs=2)
    ddp = json.loads(out.read_text())[0]
    single = train_lm.train(corpus, [0.2, 0.5, 0.3], replace(TINY, steps=10))
    for d, v in single["domain_losses"].items():
        assert abs(ddp["domain_losses"][d] - v) < 1e-4, (d, ddp["domain_losses"][d], v)


@pytest.mark.parametrize("args, message", [
    (["--weights", "0.5,0.6,0.1"], "sum to 1"),
    (["--weights=-0.5,1.0,0.5"], ">= 0"),
    (["--weights", "cats=1"], "unknown domain"),
    (["--weights", "1,0,0", "--size", "7B"], "unknown size"),
    (["--weights", "1,0,0", "--corpus", "/nonexistent"], "no corpus"),
    (["--weights", "1,0,0", "--device", "cuda"], "CUDA is not available"),
])
def test_bad_input_exits_2_with_one_line(corpus, args, message, capsys):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available here, so --device cuda is valid input")
    argv = ["--corpus", str(corpus)] + args if "--corpus" not in args else args
    with pytest.raises(SystemExit) as e:
        train_lm.main(argv + ["--steps", "2", "--block-size", "32"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("train_lm: error:") and message in err


def test_bench_runs_and_flops_formula():
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "bench" / "bench_train.py")
    bench_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_train)
    n, fpt, tokens_per_s, seconds = bench_train.bench("0.1M", 16, 2, "cpu", steps=1, warmup=1, compile_=False)
    assert n == 98_624 and tokens_per_s > 0 and seconds > 0
    assert fpt == 6 * (98_624 + 256 * 64) + 12 * 2 * 64 * 16                      # PaLM App. B / nanoGPT
