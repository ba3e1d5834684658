"""Training throughput of train_lm.py per model size: the model's step beside the trainer's step.

  python bench/bench_train.py                                   # CPU: 0.1M, 0.8M, 3M at T=256
  python bench/bench_train.py --device cuda --sizes 25M,85M --block-size 1024 --batch-size 32

model:   forward, backward, clip and AdamW on one batch already on the device (an upper bound).
trainer: train_lm.train end to end, batches built from a corpus, pinned and prefetched as in a real
         run; its tokens/s over the training steps after the first, evaluation left out.
Both use train_lm's settings: bf16 autocast, torch.compile, fused AdamW and TF32 on CUDA, fp32
eager on CPU. On CUDA, MFU = flops_per_token * tokens/s / peak, with flops_per_token =
6 (N + V C) + 12 L C T (PaLM, Chowdhery et al. 2022, App. B) and the dense bf16 peak looked up by
the GPU's exact name in train_lm.PEAK_BF16_TFLOPS; a GPU not listed is refused unless --peak-tflops
gives its peak.
--corpus defaults to a synthetic corpus written to a temporary folder (synthetic_corpus).
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_lm  # noqa: E402  (repository root on the path)


def synthetic_corpus(folder, domains=3, megabytes=4.0, seed=0):
    """Write a learnable corpus in train_lm's format to `folder`: per domain, Zipf-distributed words
    over a domain's own 8-letter alphabet, 2% of the bytes as val. Returns the folder."""
    folder, rng = Path(folder), np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"synthetic{k}" for k in range(domains)]
    for k, name in enumerate(names):
        alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz"))[rng.permutation(26)[:8]]
        vocab = np.array(["".join(rng.choice(alphabet, rng.integers(2, 9))) for _ in range(500)])
        zipf = 1.0 / np.arange(1, len(vocab) + 1)
        words = vocab[rng.choice(len(vocab), int(megabytes * 1e6 / 5), p=zipf / zipf.sum())]
        text = " ".join(words).encode()
        cut = int(0.98 * len(text))
        (folder / f"{name}.train.bin").write_bytes(text[:cut])
        (folder / f"{name}.val.bin").write_bytes(text[cut:])
    (folder / "manifest.json").write_text(json.dumps({"domains": names}) + "\n")
    return folder


def bench(size, block_size, batch_size, device, steps, warmup, compile_):
    """Model only: (N non-embedding, FLOPs per token, tokens/s, seconds per step) of `steps` timed
    optimizer steps on one random batch already on the device, after `warmup` untimed ones."""
    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    model = train_lm.GPT(train_lm.size_config(size, block_size)).to(device)
    opt = train_lm.make_optimizer(model, train_lm.TrainConfig(size=size), cuda)
    fwd = torch.compile(model) if (cuda and compile_) else model
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    ctx = torch.autocast("cuda", torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    x = torch.randint(0, 256, (batch_size, block_size + 1), device=device)        # (B, T+1)
    inp, tgt = x[:, :-1].contiguous(), x[:, 1:].contiguous()                     # (B, T)

    def step():
        with ctx:
            loss = fwd(inp, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tokens_per_s = steps * batch_size * block_size / dt
    return train_lm.non_embedding_params(model), train_lm.flops_per_token(model), tokens_per_s, \
        dt / steps


def bench_trainer(size, block_size, batch_size, device, steps, compile_, corpus, peak_tflops=0.0):
    """The trainer's own step: train_lm.train for 1 + steps steps on `corpus` (uniform mixture),
    with as many CPU threads as this process; returns its run dict (tokens_per_s, mfu, ...). The
    warmup spans the run, so a loss still above ln 256 is not judged: this times, not trains."""
    domains, _ = train_lm.load_corpus(corpus)
    cfg = train_lm.TrainConfig(size=size, block_size=block_size, batch_size=batch_size,
                               steps=steps + 1, warmup=steps + 2, val_windows=1, device=device,
                               compile=compile_, threads=torch.get_num_threads(),
                               peak_tflops=peak_tflops, spike_factor=0.0)
    return train_lm.train(corpus, {d: 1 / len(domains) for d in domains}, cfg)


def peak_of(device, peak_tflops):
    """The bf16 peak in TFLOP/s for MFU: --peak-tflops, else the exact GPU name's; 0 on CPU."""
    if not device.startswith("cuda") or peak_tflops:
        return peak_tflops
    name = torch.cuda.get_device_name(device)
    if name not in train_lm.PEAK_BF16_TFLOPS:
        raise SystemExit(f"bench_train: error: no bf16 peak known for {name!r} (known: "
                         f"{', '.join(train_lm.PEAK_BF16_TFLOPS)}); pass --peak-tflops")
    return train_lm.PEAK_BF16_TFLOPS[name]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="0.1M,0.8M,3M")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before (model only)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="bf16 peak (default: by name)")
    ap.add_argument("--corpus", default="", help="corpus for the trainer (default: synthetic)")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("bench_train: error: --device cuda but CUDA is not available; use cpu")
    peak = peak_of(args.device, args.peak_tflops)
    corpus = args.corpus or synthetic_corpus(tempfile.mkdtemp(prefix="bench_train_"))
    where = torch.cuda.get_device_name(args.device) if cuda else \
        f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"# {where}; T={args.block_size}, B={args.batch_size}, {args.steps} timed steps"
          + (f", peak {peak:g} TFLOP/s bf16" if peak else ""))
    print(f"{'size':>5} {'N non-emb':>11} {'model ms/step':>13} {'model tok/s':>12} "
          f"{'model MFU':>9} {'trainer tok/s':>13} {'trainer MFU':>11} {'trainer/model':>13}")
    for size in args.sizes.split(","):
        n, fpt, tps, sec = bench(size, args.block_size, args.batch_size, args.device, args.steps,
                                 args.warmup, not args.no_compile)
        run = bench_trainer(size, args.block_size, args.batch_size, args.device, args.steps,
                            not args.no_compile, corpus, peak)
        mfu = f"{fpt * tps / (peak * 1e12):.1%}" if peak else "-"
        run_mfu = f"{run['mfu']:.1%}" if run["mfu"] is not None else "-"
        print(f"{size:>5} {n:>11,} {1000 * sec:>13.1f} {tps:>12,.0f} {mfu:>9} "
              f"{run['tokens_per_s']:>13,.0f} {run_mfu:>11} {run['tokens_per_s'] / tps:>13.2f}",
              flush=True)


if __name__ == "__main__":
    main()
