"""Training throughput of train_lm.py's GPT per model size: tokens/s, and MFU on CUDA.

  python bench/bench_train.py                                   # CPU: 0.1M, 0.8M, 3M at T=256, fp32 eager
  python bench/bench_train.py --device cuda --sizes 25M,85M --block-size 1024 --batch-size 32

Times full optimizer steps of train_lm's model and optimizer (forward, backward, clip, AdamW) on random
bytes, after warm-up steps (which include torch.compile on CUDA). On CUDA: bf16 autocast, torch.compile,
fused AdamW, TF32, exactly as train_lm.train sets them, and
  MFU = flops_per_token * tokens/s / peak,  flops_per_token = 6 (N + V C) + 12 L C T  (PaLM App. B, nanoGPT),
against the device's dense bf16 peak: 989 TFLOP/s for H100 SXM, 312 for A100 (NVIDIA data sheets); others
via --peak-tflops. Reference on one H100 (shared/notes/gp-bo-references.md, Sec. 5): a plain PyTorch GPT
reached 40% at 124M (T=1024) and 26-32% at 16-30M; below 20% at >= 16M means something is wrong.
On CPU it prints tokens/s next to the figures measured on this 2-core box when idle (issue 7): ~76k tokens/s
at 0.12M, ~19k at 0.8M (fp32 eager, T=256).
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_lm  # noqa: E402  (repository root on the path)

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}   # dense bf16, NVIDIA data sheets
CPU_REFERENCE = {"0.1M": 76e3, "0.8M": 19e3}                         # tokens/s, issue 7 (idle dev box)


def bench(size, block_size, batch_size, device, steps, warmup, compile_):
    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    model = train_lm.GPT(train_lm.size_config(size, block_size)).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), fused=cuda)
    fwd = torch.compile(model) if (cuda and compile_) else model
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
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
    return train_lm.non_embedding_params(model), train_lm.flops_per_token(model), tokens_per_s, dt / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="0.1M,0.8M,3M")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="device bf16 peak (default: by GPU name)")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench_train: error: --device cuda but CUDA is not available here; use --device cpu")
    peak = args.peak_tflops
    if args.device.startswith("cuda") and not peak:
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), 0.0)
        if not peak:
            raise SystemExit(f"bench_train: error: no bf16 peak known for {name}; pass --peak-tflops")
    cuda = args.device.startswith("cuda")
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"# {where}; T={args.block_size}, B={args.batch_size}, {args.steps} timed steps after {args.warmup}")
    print(f"{'size':>6} {'N non-emb':>11} {'ms/step':>9} {'tokens/s':>11} " + ("MFU" if peak else "idle-box reference"))
    for size in args.sizes.split(","):
        n, fpt, tps, sec = bench(size, args.block_size, args.batch_size, args.device, args.steps, args.warmup,
                                 not args.no_compile)
        if peak:
            extra = f"{100 * fpt * tps / (peak * 1e12):.1f}%"                   # MFU
        else:
            extra = f"{CPU_REFERENCE[size]:,.0f}" if size in CPU_REFERENCE else "-"
        print(f"{size:>6} {n:>11,} {1000 * sec:>9.1f} {tps:>11,.0f} {extra}", flush=True)


if __name__ == "__main__":
    main()
