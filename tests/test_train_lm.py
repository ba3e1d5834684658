"""Tests for train_lm.py, bench/bench_train.py, bench/gpu_check.sh and data/build_corpus.py on a
tiny corpus written here, on the CPU. Oracles: the mixture weights (exact per-step counts, a
chi-square test of the batch rows), per-domain losses recomputed by hand window by window, a loss
stored bit for bit, one process against two-process DDP, and the 6ND cost and PaLM flops formulas.
The test_cuda_* ones run only where CUDA is.

Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_train_lm.py
"""
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

import simulate
import train_lm
from train_lm import Diverged, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
# the tiny corpus is read more than once by most runs here; test_epochs_... checks the warning
pytestmark = pytest.mark.filterwarnings("ignore:the run reads a domain more than once")


def load_script(path):
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_corpus = load_script("data/build_corpus.py")
bench_train = load_script("bench/bench_train.py")

# tiny, fast, shared by the tests: 0.1M model (2 layers x 64), 32-byte windows, 8 sequences a step
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
    build_corpus.main(["--from-folder", str(corpus.parent / "src"),
                       "--out", str(tmp_path / "again")])
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
    monkeypatch.setattr(build_corpus, "SOURCES",
                        [("deb", "fake", "1.0", "fake_1.0_all.deb", "0" * 64, "MIT")])
    with pytest.raises(SystemExit) as e:
        build_corpus.main(["--stage", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "fake=1.0 (sha256 differs" in err


def test_loss_falls(corpus):
    out = train_lm.train(corpus, [1 / 3, 1 / 3, 1 / 3], replace(TINY, steps=40, eval_steps=(1,)))
    first, last = out["checkpoints"][0]["loss"], out["loss"]
    assert first > 4.5                      # about ln(256) = 5.55 at init
    assert last < first - 1.5, (first, last)
    assert out["cost"] == simulate.flops_cost(out["scale"], 40, 256) == 6 * out["scale"] * 40 * 256
    assert out["tokens_per_s"] > 0 and out["mfu"] is None and out["threads"] == 1


def test_mixture_counts_match_weights():
    rng = np.random.default_rng(0)
    cases = [np.array([0.5, 0.3, 0.15, 0.05, 0.0]), np.array([0.02, 0.0, 0.98])]  # tiny, zero
    cases += [rng.dirichlet(np.full(k, a)) for k, a in ((6, 0.1), (6, 1.0), (3, 5.0), (8, 0.3))]
    for w in cases:
        for B in (1, 3, 8):
            counts = train_lm.domain_counts(w, batch_size=B, steps=100)                # (100, K)
            assert np.all(counts >= 0) and np.all(counts.sum(1) == B)
            cum = np.cumsum(counts, axis=0)                                            # (100, K)
            assert np.all(np.abs(cum - np.outer(np.arange(1, 101) * B, w)) < 1)   # within one
            assert np.all(counts[:, w == 0] == 0)                                 # zero: no data


def test_batch_rows_follow_weights_chi_square(corpus):
    domains, data = train_lm.load_corpus(corpus)
    w = np.array([0.6, 0.3, 0.1])
    counts = train_lm.domain_counts(w, batch_size=10, steps=50)
    allowed = {"digits": set(b"0123456789 \x1e"), "upper": set(b"XYZ\n\x1e"), "words": None}
    labels = []
    for step in range(50):
        x, y, rows = train_lm.get_batch(data, domains, counts[step], 32, seed=3, step=step)
        assert x.shape == (10, 32) and torch.equal(x[:, 1:], y[:, :-1])
        for row, k in zip(x, rows):                   # each row comes from its domain's bytes
            if allowed[domains[k]] is not None:
                assert set(row.tolist()) <= allowed[domains[k]]
        labels.append(rows)
    observed = np.bincount(np.concatenate(labels), minlength=3)                      # (3,)
    assert scipy.stats.chisquare(observed, 500 * w).pvalue > 0.99
    wrong = 500 * np.array([0.5, 0.3, 0.2])
    assert scipy.stats.chisquare(observed, wrong).pvalue < 1e-6             # the test has power


def windows_of(data, domains, counts, seed, step, stream, k):
    """The windows (as tuples of bytes) of domain k in one step's batch."""
    x, _, rows = train_lm.get_batch(data, domains, counts, 32, seed, step, stream)
    return [tuple(r.tolist()) for r in x[rows == k]]


def test_mixtures_sharing_a_domain_see_the_same_windows_of_it(corpus):
    # common random numbers: domain k's windows depend on (seed, step, k) only, so of two mixtures
    # giving it n <= m windows at a step, the first sees the first n windows the second sees
    domains, data = train_lm.load_corpus(corpus)
    mix_a, mix_b = np.array([0.2, 0.5, 0.3]), np.array([0.6, 0.1, 0.3])
    ca, cb = (train_lm.domain_counts(m, 8, 20) for m in (mix_a, mix_b))
    shared = {(stream, k): [] for stream in ("domain", "step") for k in range(3)}
    for (stream, k), same in shared.items():
        for step in range(20):
            a = windows_of(data, domains, ca[step], 5, step, stream, k)
            b = windows_of(data, domains, cb[step], 5, step, stream, k)
            n = min(len(a), len(b))
            if n:
                same.append(a[:n] == b[:n])
    assert all(len(shared["domain", k]) > 10 and all(shared["domain", k]) for k in range(3))
    # one stream for all domains in order: domain 1's offsets follow domain 0's 1-2 vs 4-5 draws
    assert len(shared["step", 1]) > 10 and not any(shared["step", 1])
    # a different seed gives other windows
    assert windows_of(data, domains, ca[0], 6, 0, "domain", 1) != \
        windows_of(data, domains, ca[0], 5, 0, "domain", 1)


def test_val_loss_is_measured_on_each_domains_data(corpus):
    # oracle: the per-domain loss recomputed by hand from that domain's val file, window by window
    torch.manual_seed(0)
    model = train_lm.GPT(train_lm.size_config("0.1M", 32))
    domains, data = train_lm.load_corpus(corpus)
    for n in (8, 0):                                   # 8 evenly spaced windows, or every val byte
        val = {d: train_lm.val_windows(data[d, "val"], 32, n) for d in domains}
        got = train_lm.evaluate(model, val, torch.autocast("cpu", enabled=False), "cpu")
        for d in domains:
            buf = np.asarray(data[d, "val"], dtype=np.int64)
            starts = np.linspace(0, len(buf) - 33, 8).astype(np.int64) if n else \
                range(0, len(buf) - 32, 32)               # tiles the file: each byte predicted once
            losses = []
            for s in starts:
                xy = torch.from_numpy(buf[s:s + 33])
                logits = model(xy[None, :-1])[0]                                  # (32, 256)
                losses.append(torch.nn.functional.cross_entropy(logits, xy[1:], reduction="none"))
            assert abs(got[d] - torch.cat(losses).mean().item()) < 1e-5
            if not n:
                assert torch.cat(losses).numel() == 32 * ((len(buf) - 1) // 32)
    # and a model trained only on digits is best on digits, worst elsewhere
    out = train_lm.train(corpus, {"digits": 1.0}, replace(TINY, steps=40))
    dl = out["domain_losses"]
    assert dl["digits"] < dl["words"] - 1 and dl["digits"] < dl["upper"] - 1
    assert out["loss"] == pytest.approx(np.mean(list(dl.values())), abs=1e-12)
    one = train_lm.train(corpus, {"digits": 1.0}, replace(TINY, steps=2, objective="digits"))
    mean = np.mean(list(one["domain_losses"].values()))
    assert one["loss"] == one["domain_losses"]["digits"] != mean


def test_epochs_are_bytes_read_over_domain_bytes(corpus):
    domains, data = train_lm.load_corpus(corpus)
    w = np.array([0.75, 0.25, 0.0])
    with pytest.warns(RuntimeWarning, match="more than once"):
        out = train_lm.train(corpus, w, replace(TINY, steps=60))
    counts = train_lm.domain_counts(w, 8, 60)
    rows = np.concatenate([train_lm.get_batch(data, domains, counts[s], 32, 0, s)[2]
                           for s in range(60)])
    for k, d in enumerate(domains):                       # bytes of the windows drawn / file size
        read = np.sum(rows == k) * 33
        assert out["epochs"][d] == pytest.approx(read / len(data[d, "train"]), rel=1e-12)
    assert out["epochs"]["digits"] > 1 > out["epochs"]["upper"] > out["epochs"]["words"] == 0


def test_same_seed_same_loss_and_resume_refuses_another_run(corpus, tmp_path):
    cfg = replace(TINY, steps=20, eval_steps=(10,), lr_horizon=20)
    a = train_lm.train(corpus, [0.2, 0.5, 0.3], cfg)
    b = train_lm.train(corpus, [0.2, 0.5, 0.3], cfg)
    c = train_lm.train(corpus, [0.2, 0.5, 0.3], replace(cfg, seed=1))
    assert a["loss"] == b["loss"] and a["checkpoints"] == b["checkpoints"]
    assert abs(a["loss"] - c["loss"]) > 1e-6
    ckpt = str(tmp_path / "run.pt")
    half = train_lm.train(corpus, [0.2, 0.5, 0.3], replace(cfg, steps=10, eval_steps=(), ckpt=ckpt))
    assert half["checkpoints"] == a["checkpoints"][:1]       # a short run: the long one's prefix
    for field, value in (("weights", [0.5, 0.2, 0.3]), ("block_size", 16), ("batch_size", 4),
                         ("lr", 3e-3), ("lr_horizon", 25), ("stream", "step"), ("seed", 1)):
        other = replace(cfg, ckpt=ckpt, **({} if field == "weights" else {field: value}))
        weights = value if field == "weights" else [0.2, 0.5, 0.3]
        with pytest.raises(ValueError, match=f"made with {field}=.*this run has {field}="):
            train_lm.train(corpus, weights, other)
    # what only says how to run (micro-batches, threads, logging) resumes
    resumed = train_lm.train(corpus, [0.2, 0.5, 0.3],
                             replace(cfg, ckpt=ckpt, micro_batch=4, threads=2))
    assert [c["steps"] for c in resumed["checkpoints"]] == [10, 20]
    assert resumed["checkpoints"][0] == a["checkpoints"][0]
    assert resumed["loss"] == pytest.approx(a["loss"], abs=1e-5)   # micro-batch sums round apart
    with pytest.raises(ValueError, match="past --steps"):
        train_lm.train(corpus, [0.2, 0.5, 0.3], replace(cfg, ckpt=ckpt, steps=15, eval_steps=()))


# recorded with torch 2.13.0 at one thread on an x86-64 CPU whose torch kernels are AVX2 and whose
# vendor is AMD; other CPUs pick other kernels (and MKL paths) that round differently
STORED = {("AVX2", "AuthenticAMD"): 2.806910991668701}


def cpu_signature():
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    vendor = next((line.split(":")[1].strip() for line in info if line.startswith("vendor_id")), "")
    return torch.backends.cpu.get_cpu_capability(), vendor


def test_one_thread_reproduces_a_stored_loss_bit_for_bit(corpus):
    before = torch.get_num_threads()
    torch.set_num_threads(2)                               # the caller's count does not matter
    try:
        out = train_lm.train(corpus, [0.2, 0.5, 0.3], replace(TINY, steps=20))
        assert torch.get_num_threads() == 2 and out["threads"] == 1
    finally:
        torch.set_num_threads(before)
    again = train_lm.train(corpus, [0.2, 0.5, 0.3], replace(TINY, steps=20))
    assert again["loss"] == out["loss"]
    if cpu_signature() not in STORED:
        pytest.skip(f"stored loss recorded on {list(STORED)}, this CPU is {cpu_signature()}")
    assert out["checkpoints"][-1]["domain_losses"]["words"] == STORED[cpu_signature()]


def test_training_loss_logged_is_the_mean_over_micro_batches(corpus):
    # oracle: the loss of the untrained model on the whole first batch, computed by hand
    lines = {}
    for micro in (0, 2):
        log = []
        train_lm.train(corpus, [0.2, 0.5, 0.3],
                       replace(TINY, steps=2, micro_batch=micro, log_every=1), log=log.append)
        lines[micro] = float(log[0].split()[3])
    domains, data = train_lm.load_corpus(corpus)
    counts = train_lm.domain_counts(np.array([0.2, 0.5, 0.3]), 8, 2)
    x, y, _ = train_lm.get_batch(data, domains, counts[0], 32, 0, 0)
    torch.manual_seed(0)
    expected = train_lm.GPT(train_lm.size_config("0.1M", 32))(x, y).item()
    assert lines[0] == pytest.approx(expected, abs=1e-4)
    assert lines[2] == pytest.approx(expected, abs=1e-4)


def test_a_blown_up_run_fails_with_its_reason(corpus, tmp_path, capsys):
    with pytest.raises(Diverged, match="worse than the uniform guess 5.545"):
        train_lm.train(corpus, [0.2, 0.3, 0.5], replace(TINY, steps=10, lr=5.0, spike_factor=0))
    with pytest.raises(Diverged, match="smoothed training loss rose to .*x its minimum"):
        train_lm.train(corpus, [0.2, 0.3, 0.5], replace(TINY, steps=10, lr=5.0, log_every=5))
    with pytest.raises(Diverged, match="diverged by step 5"):
        train_lm.train(corpus, [0.2, 0.3, 0.5], replace(TINY, steps=5, lr=1e30))
    obj = train_lm.make_objective(corpus, sizes=("0.1M",), steps=(5, 10), block_size=32,
                                  val_windows=8, lr=5.0)
    with pytest.raises(Diverged):                               # mixbo records a failed trial
        obj.run(np.array([0.2, 0.3, 0.5]), obj.scales[0], 10, seed=0)
    result = tmp_path / "result.json"
    with pytest.raises(SystemExit) as e:
        train_lm.main(["--corpus", str(corpus), "--weights", "digits=0.5,words=0.5", "--size",
                       "0.1M", "--steps", "10", "--lr", "5", "--block-size", "32",
                       "--result", str(result)])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("train_lm: failed: diverged by step 10")
    assert err.count("train_lm: failed") == 1 and "Traceback" not in err and not result.exists()


def test_cli_writes_the_run_dict_and_accepts_mixbo_placeholders(corpus, tmp_path, capsys):
    # the launcher template passes {weights_json} and {scale} (a parameter count, as a float)
    result = tmp_path / "r.json"
    scale = float(train_lm.size_params("0.1M"))
    weights = json.dumps({"digits": 0.25, "words": 0.75})
    train_lm.main(["--corpus", str(corpus), "--weights", weights,
                   "--size", repr(scale), "--steps", "6", "--seed", "3", "--block-size", "32",
                   "--val-windows", "8", "--eval-steps", "3", "--result", str(result)])
    out, err = capsys.readouterr()
    run = json.loads(result.read_text())
    assert run == json.loads(out) and [c["steps"] for c in run["checkpoints"]] == [3, 6]
    assert set(run) >= {"loss", "domain_losses", "checkpoints", "epochs", "tokens_per_s", "mfu"}
    direct = train_lm.train(corpus, {"digits": 0.25, "words": 0.75}, replace(TINY, steps=6, seed=3,
                                                                           eval_steps=(3,)))
    assert run["checkpoints"] == direct["checkpoints"]
    assert "1 thread(s)" in err and "MFU -" in err


def test_cli_is_generated_from_train_config():
    ap = train_lm.build_parser()
    actions = {a.dest: a for a in ap._actions}
    for f in fields(TrainConfig):
        assert actions[f.name].default == f.default and f.metadata["help"] in actions[f.name].help
        assert "--" + f.name.replace("_", "-") in actions[f.name].option_strings
    args = ap.parse_args(["--weights", "a=1", "--eval-steps", "3,5", "--no-compile",
                          "--threads", "2"])
    assert args.eval_steps == (3, 5) and args.compile is False and args.threads == 2


def test_size_by_name_or_parameter_count():
    for name in train_lm.SIZES:
        n = train_lm.size_params(name)
        assert [train_lm.size_name(s) for s in (name, str(n), f"{n}.0")] == [name] * 3
    assert train_lm.size_params("0.3M") == 332448                 # mixbo's scale in the run table
    for bad in ("7B", "332449", "nan", None):
        with pytest.raises(ValueError, match="0.3M = 332448"):
            train_lm.size_name(bad)


def test_objective_adapter(corpus):
    obj = train_lm.make_objective(corpus, sizes=("0.1M",), steps=(5, 10), block_size=32,
                                  val_windows=8)
    assert obj.domains == ("digits", "upper", "words") and obj.target == (obj.scales[0], 10)
    # 12 L C^2 plus the 5 LayerNorm gains
    assert obj.scales[0] == train_lm.size_params("0.1M", 32) == 12 * 2 * 64 ** 2 + 5 * 64
    long = obj.run(np.array([0.2, 0.3, 0.5]), obj.scales[0], 10, seed=0)
    short = obj.run(np.array([0.2, 0.3, 0.5]), obj.scales[0], 5, seed=0)
    assert [c["steps"] for c in long["checkpoints"]] == [5, 10]
    assert short["checkpoints"] == long["checkpoints"][:1]
    assert short["loss"] == long["checkpoints"][0]["loss"]
    batch = TrainConfig().batch_size                                # the defaults are TrainConfig's
    cost = simulate.flops_cost(obj.scales[0], 10, batch * 32)
    assert long["cost"] == obj.cost(obj.scales[0], 10) == cost
    assert long["cost"] == 2 * short["cost"]


def test_one_process_ddp_is_the_plain_run(corpus, monkeypatch):
    # the torchrun path with one process (RANK set): gloo, DDP around the model, same losses
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plain = train_lm.train(corpus, [0.2, 0.5, 0.3], replace(TINY, steps=6))
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        ddp = train_lm.train(corpus, [0.2, 0.5, 0.3], replace(TINY, steps=6))
        assert torch.distributed.is_initialized() and torch.distributed.get_backend() == "gloo"
    finally:
        torch.distributed.destroy_process_group()
    assert ddp["checkpoints"] == plain["checkpoints"]


def _ddp_worker(rank, world, port, corpus, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world))
    res = train_lm.train(corpus, [0.2, 0.5, 0.3], replace(TINY, steps=10, micro_batch=2))
    if rank == 0:
        Path(out).write_text(json.dumps(res["checkpoints"]))
    torch.distributed.barrier()   # neither rank tears gloo down while the other still uses it
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
    (["--weights", "{not json"], "cannot read --weights"),
    (["--weights", "1,0,0", "--size", "7B"], "unknown size"),
    (["--weights", "1,0,0", "--steps", "many"], "invalid int value"),
    (["--weights", "1,0,0", "--stream", "rows"], "stream must be"),
    (["--weights", "1,0,0", "--corpus", "/nonexistent"], "no corpus"),
    (["--weights", "1,0,0", "--device", "cuda"], "CUDA is not available"),
    (["--weights", "1,0,0", "--device", "tpu"], "neither cpu nor cuda"),
    (["--steps", "2"], "required: --weights"),
])
def test_bad_input_exits_2_with_one_line(corpus, args, message, capsys):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available here, so --device cuda is valid input")
    argv = ["--corpus", str(corpus)] + args if "--corpus" not in args else args
    with pytest.raises(SystemExit) as e:
        train_lm.main(argv + ["--block-size", "32"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("train_lm: error:")
    assert message in err


def test_peak_table_is_looked_up_by_exact_name():
    table = train_lm.PEAK_BF16_TFLOPS
    assert table["NVIDIA H100 80GB HBM3"] == 989.4 and table["NVIDIA H100 PCIe"] == 756.5
    assert table["NVIDIA H100 NVL"] == 835.5 and table["NVIDIA H200"] == 989.4
    assert bench_train.peak_of("cuda", 500.0) == 500.0 and bench_train.peak_of("cpu", 0.0) == 0.0
    if torch.cuda.is_available() and torch.cuda.get_device_name() not in table:
        with pytest.raises(SystemExit, match="no bf16 peak known"):
            bench_train.peak_of("cuda", 0.0)


def test_bench_runs_and_flops_formula(tmp_path):
    n, fpt, tokens_per_s, seconds = bench_train.bench("0.1M", 16, 2, "cpu", steps=1, warmup=1,
                                                      compile_=False)
    assert n == 98_624 and tokens_per_s > 0 and seconds > 0
    assert fpt == 6 * (98_624 + 256 * 64) + 12 * 2 * 64 * 16              # PaLM App. B / nanoGPT
    corpus = bench_train.synthetic_corpus(tmp_path / "synthetic", megabytes=0.05)
    run = bench_train.bench_trainer("0.1M", 16, 4, "cpu", 2, False, corpus)
    assert run["tokens_per_s"] > 0 and run["mfu"] is None and run["tokens"] == 3 * 4 * 16


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run_on_cpu():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = done.stdout[done.stdout.index("== summary"):]
    assert summary.count(": ok in") == 4 and "FAILED" not in summary and "tokens/s" in summary


# ----------------------------------------------------------------------------- CUDA only
@cuda_only
def test_cuda_bf16_compiled_run_tracks_the_cpu_run(corpus):
    cpu = train_lm.train(corpus, [0.2, 0.5, 0.3], replace(TINY, steps=30, eval_steps=(1,)))
    gpu = train_lm.train(corpus, [0.2, 0.5, 0.3],               # bf16 autocast, torch.compile
                         replace(TINY, steps=30, device="cuda", eval_steps=(1,)))
    assert gpu["loss"] < gpu["checkpoints"][0]["loss"] - 1 and gpu["tokens_per_s"] > 0
    assert abs(gpu["loss"] - cpu["loss"]) < 0.1, (gpu["loss"], cpu["loss"])
    name = torch.cuda.get_device_name()
    assert (gpu["mfu"] is None) == (name not in train_lm.PEAK_BF16_TFLOPS)


@cuda_only
def test_cuda_fused_adamw_and_micro_batches(corpus):
    model = train_lm.GPT(train_lm.size_config("0.1M", 32)).cuda()
    assert train_lm.make_optimizer(model, TINY, cuda=True).defaults["fused"] is True
    eager = replace(TINY, steps=10, device="cuda", compile=False)
    whole = train_lm.train(corpus, [0.2, 0.5, 0.3], eager)
    parts = train_lm.train(corpus, [0.2, 0.5, 0.3], replace(eager, micro_batch=2))
    assert abs(whole["loss"] - parts["loss"]) < 0.02


@cuda_only
def test_cuda_one_process_nccl_ddp_around_the_compiled_model(corpus, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
                     LOCAL_RANK="0").items():
        monkeypatch.setenv(k, v)
    try:
        ddp = train_lm.train(corpus, [0.2, 0.5, 0.3],
                             replace(TINY, steps=20, device="cuda", eval_steps=(1,)))
        assert torch.distributed.get_backend() == "nccl"
    finally:
        torch.distributed.destroy_process_group()
    assert ddp["loss"] < ddp["checkpoints"][0]["loss"] - 1 and ddp["tokens_per_s"] > 0
