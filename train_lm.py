"""Train a small byte-level GPT on a weighted mixture of corpus domains; report per-domain validation loss.

nanoGPT-style (Karpathy, github.com/karpathy/nanoGPT, model.py + train.py), readable top to bottom:
config -> model -> data -> training loop -> mixbo objective -> CLI.

- Model: GPT-2 architecture (Radford et al. 2019) with pre-LayerNorm blocks, causal self-attention through
  F.scaled_dot_product_attention(is_causal=True), GELU MLP, no biases, weight tying of the token embedding
  and the LM head (Press & Wolf 2017). Vocabulary: the 256 byte values (the corpus separates documents with
  byte 0x1E, see data/build_corpus.py), so losses are nats per byte and comparable across domains.
- Sizes: a ladder by name, SIZES, from ~0.1M non-embedding parameters (trainable on one CPU core) to GPT-2
  small's shape (12 layers x 768: 85M non-embedding here, "124M" with GPT-2's 50,257-token vocab).
- Optimiser: AdamW (Loshchilov & Hutter 2019), betas (0.9, 0.95) and weight decay 0.1 on >=2-D parameters
  only (nanoGPT / GPT-3 paper, Brown et al. 2020, App. B), fused on CUDA; linear warmup then cosine decay to
  lr/10 (Chinchilla, Hoffmann et al. 2022, Sec. 3 / App. B); gradient clipping at global norm 1.0.
- Precision: bf16 autocast + torch.compile + TF32 on CUDA; fp32 eager on CPU (on the 2-core dev box
  torch.compile was measured slower at >= 3M parameters).
- Data mixture: every optimizer step draws `batch_size` sequences; each sequence slot of the run goes to
  the domain furthest behind its share w_k (domain_counts), so after any number of slots t every domain
  has received w_k * t sequences to within one: the realized proportions are the weights.
  Sequence start offsets are drawn uniformly from the domain's train bytes by np.random.default_rng((seed,
  step)): a run is reproducible, and a resumed run draws the same batches.
- Evaluation: per-domain validation loss (mean next-byte cross-entropy, nats/byte) on fixed, evenly spaced
  windows of each domain's val file: the same bytes for every run, so every run is comparable. The objective
  is the equal-weight mean over domains, or one named domain.
- Learning-rate horizon: the cosine schedule runs over `lr_horizon` steps (default: the run's steps). The
  mixbo objective sets it to the largest checkpoint, so a run stopped at T is exactly the T-checkpoint of
  the longest run: one learning curve per (mixture, size, seed), as in Kaplan et al. 2020's curves.
- Distributed: DDP through torchrun (gloo on CPU, nccl on CUDA). Each rank takes an equal slice of the
  same global batch, so W ranks give the same gradients as one process with the same global batch.

Usage:
  python train_lm.py --corpus data/corpus --weights code=0.5,books=0.5 --size 0.1M --steps 200
  torchrun --nproc_per_node 8 train_lm.py --device cuda --size 85M --block-size 1024 --batch-size 512 ...
As a mixbo objective: make_objective(corpus_dir, sizes, steps) -> simulate.Objective.
Scale of a size = non-embedding parameter count (Kaplan et al. 2020, Sec. 2.1), i.e. without the token and
position embeddings (the tied LM head is counted in neither); cost = 6 * scale * tokens.
"""
import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import simulate                                      # the Objective signature and the simplex check

VOCAB_SIZE = 256   # byte values; document separator is byte 0x1E (data/build_corpus.py)


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class GPTConfig:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int = 256
    vocab_size: int = VOCAB_SIZE


# Model ladder by name = approximate non-embedding parameter count 12 * n_layer * n_embd^2 (Kaplan et al.
# 2020, Table 1). Head size 32 below 1M, 64 above (GPT-2). Peak lr: 6e-4 for GPT-2 small (nanoGPT
# config/train_gpt2.py), larger for smaller models (GPT-3 paper, Brown et al. 2020, Table 2.1 trend).
# Measured here for short runs (B=8, T=128, cosine over 400 steps, uniform mixture, val loss at step 120):
# 0.1M: 1e-2 beat 3e-3 (2.97 vs 3.05 at step 400); 0.3M: 3e-3 beat 6e-3 (3.17 vs 3.35);
# 0.8M: 2e-3 beat 5e-3 (2.96 vs 3.15). Sizes >= 1.6M: untuned interpolation toward GPT-2's 6e-4.
SIZES = {
    "0.1M": (dict(n_layer=2, n_head=2, n_embd=64), 1e-2),
    "0.3M": (dict(n_layer=3, n_head=3, n_embd=96), 3e-3),
    "0.8M": (dict(n_layer=4, n_head=4, n_embd=128), 2e-3),
    "1.6M": (dict(n_layer=5, n_head=5, n_embd=160), 2e-3),
    "3M": (dict(n_layer=6, n_head=3, n_embd=192), 1.5e-3),
    "6M": (dict(n_layer=8, n_head=4, n_embd=256), 1.2e-3),
    "25M": (dict(n_layer=8, n_head=8, n_embd=512), 1e-3),
    "50M": (dict(n_layer=10, n_head=10, n_embd=640), 8e-4),
    "85M": (dict(n_layer=12, n_head=12, n_embd=768), 6e-4),
}


@dataclass(frozen=True)
class TrainConfig:
    size: str = "0.1M"          # key of SIZES
    block_size: int = 256       # T, bytes per sequence
    batch_size: int = 16        # B, sequences per optimizer step, global (summed over DDP ranks)
    micro_batch: int = 0        # sequences per forward pass per rank (0 = the whole per-rank batch)
    steps: int = 200            # optimizer steps
    eval_steps: tuple = ()      # steps after which per-domain val loss is measured (`steps` always is)
    lr: float = 0.0             # peak learning rate (0 = the size's default in SIZES)
    min_lr_ratio: float = 0.1   # cosine decays to lr * 0.1 (Chinchilla, App. B)
    warmup: int = -1            # warmup steps (-1 = 5% of lr_horizon, at least 1)
    lr_horizon: int = 0         # steps over which the cosine decays (0 = steps)
    weight_decay: float = 0.1   # GPT-3 / nanoGPT
    beta1: float = 0.9
    beta2: float = 0.95         # nanoGPT config/train_gpt2.py
    grad_clip: float = 1.0      # global-norm clipping (nanoGPT)
    val_windows: int = 64       # fixed val windows of block_size bytes per domain
    seed: int = 0
    device: str = "cpu"
    compile: bool = True        # torch.compile (used on CUDA only)
    objective: str = "mean"     # "mean" = equal-weight mean of per-domain val losses, or a domain name
    ckpt: str = ""              # checkpoint path: saved at eval steps, resumed from if it exists
    log_every: int = 0          # print a training line every this many steps (0 = never)


# ----------------------------------------------------------------------------- model
class CausalSelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.n_head = c.n_head
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=False)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)                                  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)               # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))         # (B, T, C)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd, bias=False)
        self.attn = CausalSelfAttention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd, bias=False)
        self.mlp = nn.Sequential(nn.Linear(c.n_embd, 4 * c.n_embd, bias=False), nn.GELU(),
                                 nn.Linear(4 * c.n_embd, c.n_embd, bias=False))

    def forward(self, x):                  # pre-LN residual block (GPT-2, Radford et al. 2019, Sec. 2.3)
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.config = c
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, bias=False)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight         # weight tying (Press & Wolf 2017)
        for name, p in self.named_parameters():       # GPT-2 init: N(0, 0.02); residual projections
            std = 0.02 / math.sqrt(2 * c.n_layer) if name.endswith(("c_proj.weight", "mlp.2.weight")) else 0.02
            if p.dim() >= 2:                           # scaled by 1/sqrt(2 n_layer) (GPT-2 paper, Sec. 2.3)
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx, targets=None, reduction="mean"):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))   # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))                                  # (B, T, vocab)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)


def non_embedding_params(model):
    """Kaplan et al. 2020 N: all parameters except the token and position embeddings (LM head is tied)."""
    return sum(p.numel() for p in model.parameters()) - model.wte.weight.numel() - model.wpe.weight.numel()


def flops_per_token(model):
    """Training FLOPs per token, 6 * (N + V*C) + 12 * L * C * T (PaLM, Chowdhery et al. 2022, App. B;
    nanoGPT estimate_mfu): N non-embedding, V*C the LM-head matmul, the last term attention scores."""
    c = model.config
    return 6 * (non_embedding_params(model) + c.vocab_size * c.n_embd) + 12 * c.n_layer * c.n_embd * c.block_size


def size_config(size, block_size):
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    return GPTConfig(block_size=block_size, **SIZES[size][0])


def size_params(size, block_size=256):
    """Non-embedding parameter count of a named size (the `scale` in the mixbo objective)."""
    c = size_config(size, block_size)
    with torch.device("meta"):                    # count without allocating
        return non_embedding_params(GPT(c))


# ----------------------------------------------------------------------------- data
def load_corpus(corpus_dir):
    """manifest.json + memory-maps of each domain's train and val bytes (data/build_corpus.py format)."""
    corpus_dir = Path(corpus_dir)
    manifest = corpus_dir / "manifest.json"
    if not manifest.is_file():
        raise ValueError(f"no corpus at {corpus_dir} (manifest.json missing); "
                         "build one with python data/build_corpus.py")
    domains = tuple(json.loads(manifest.read_text())["domains"])
    data = {}
    for d in domains:
        for split in ("train", "val"):
            path = corpus_dir / f"{d}.{split}.bin"
            if not path.is_file():
                raise ValueError(f"corpus file {path} missing; rebuild the corpus with python data/build_corpus.py")
            data[d, split] = np.memmap(path, dtype=np.uint8, mode="r")            # (n_bytes,)
    return domains, data


def check_weights(weights, domains, tol=1e-6):
    """Mixture as a (K,) float64 array in `domains` order; accepts an array or {domain: weight}. The simplex
    check itself is simulate.check_weights, the project's one."""
    if isinstance(weights, dict):
        unknown = sorted(set(weights) - set(domains))
        if unknown:
            raise ValueError(f"unknown domain(s) {unknown}; the corpus has {', '.join(domains)}")
        weights = [weights.get(d, 0.0) for d in domains]
    return simulate.check_weights(weights, len(domains), tol, what=f"weights ({', '.join(domains)})")


def domain_counts(weights, batch_size, steps):
    """(steps, K) int: sequences per domain at each step. Sequence slot t = 1, 2, ... of the run goes to
    the domain furthest behind its share, argmax_k (w_k t - A_k), A_k = slots it already has (ties: lowest
    index). The deficits sum to 1 before each slot, so a zero-weight domain (deficit <= 0) never gets one;
    every count is >= 0, and |A_k - w_k t| < 1 (checked in tests/test_train_lm.py for random weights).
    B * steps Python iterations: ~2 s per million slots, once per run."""
    w, K = weights.tolist(), len(weights)
    have = [0] * K                                             # A_k
    counts = np.zeros((steps, K), dtype=np.int64)
    t = 0
    for s in range(steps):
        for _ in range(batch_size):
            t += 1
            k = max(range(K), key=lambda j: w[j] * t - have[j])
            have[k] += 1
            counts[s, k] += 1
    return counts


def get_batch(data, domains, counts, block_size, seed, step):
    """Global batch for one step: counts[k] random windows of domain k's train bytes, domains in order.
    Returns x, y: (B, T) int64 (y is x shifted by one byte), and (B,) domain index of each row."""
    rng = np.random.default_rng((seed, step))                  # same batch for a given (seed, step)
    xs, rows = [], []
    for k, d in enumerate(domains):
        if counts[k] == 0:
            continue
        buf = data[d, "train"]
        start = rng.integers(0, len(buf) - block_size - 1, size=counts[k])           # (n_k,)
        xs.append(buf[start[:, None] + np.arange(block_size + 1)])                    # (n_k, T+1)
        rows.append(np.full(counts[k], k))
    xy = torch.from_numpy(np.concatenate(xs).astype(np.int64))                       # (B, T+1)
    return xy[:, :-1].contiguous(), xy[:, 1:].contiguous(), np.concatenate(rows)


def val_windows(buf, block_size, n):
    """(n, T+1) evenly spaced windows covering a val file: fixed, identical for every run."""
    if len(buf) < block_size + 2:
        raise ValueError(f"a val file has {len(buf)} bytes, fewer than block_size + 2 = {block_size + 2}; "
                         "use a smaller --block-size or a larger corpus")
    start = np.linspace(0, len(buf) - block_size - 1, n).astype(np.int64)             # (n,)
    return torch.from_numpy(buf[start[:, None] + np.arange(block_size + 1)].astype(np.int64))


@torch.no_grad()
def evaluate(model, val, ctx, device, batch=64):
    """{domain: mean next-byte cross-entropy in nats} over each domain's fixed val windows."""
    model.eval()
    out = {}
    for d, xy in val.items():
        total = 0.0
        for i in range(0, len(xy), batch):
            b = xy[i:i + batch].to(device)
            with ctx:
                total += model(b[:, :-1], b[:, 1:], reduction="sum").item()
        out[d] = total / (xy.shape[0] * (xy.shape[1] - 1))
    model.train()
    return out


# ----------------------------------------------------------------------------- training
def get_lr(step, cfg, peak):
    """Linear warmup, then cosine decay from peak to peak * min_lr_ratio over lr_horizon (nanoGPT get_lr)."""
    horizon = cfg.lr_horizon or cfg.steps
    warmup = cfg.warmup if cfg.warmup >= 0 else max(1, round(0.05 * horizon))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, horizon - warmup))
    return peak * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def objective_value(domain_losses, objective):
    if objective == "mean":
        return float(np.mean(list(domain_losses.values())))
    return float(domain_losses[objective])


def train(corpus_dir, weights, cfg):
    """Train one model on one mixture. Returns the mixbo run dict: loss, domain_losses, checkpoints
    (one per eval step, ascending), cost = 6 * scale * tokens, plus scale, tokens, seconds.
    Raises ValueError on bad input and FloatingPointError when a validation loss is non-finite (diverged)."""
    domains, data = load_corpus(corpus_dir)
    w = check_weights(weights, domains)
    if cfg.objective != "mean" and cfg.objective not in domains:
        raise ValueError(f"objective {cfg.objective!r} is neither 'mean' nor a domain ({', '.join(domains)})")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available here; use --device cpu")
    if cfg.steps < 1 or any(s < 1 or s > cfg.steps for s in cfg.eval_steps):
        raise ValueError(f"steps must be >= 1 and eval steps within 1..steps; "
                         f"got steps {cfg.steps}, eval {cfg.eval_steps}")
    gpt_config = size_config(cfg.size, cfg.block_size)
    # DDP: torchrun sets RANK / WORLD_SIZE; each rank takes an equal slice of every global batch
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = 0, 1
    device = cfg.device
    if ddp:
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
            torch.cuda.set_device(device)
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes {world}")
    per_rank = cfg.batch_size // world                              # rows of the global batch on this rank
    micro = cfg.micro_batch or per_rank
    if per_rank % micro:
        raise ValueError(f"per-process batch {per_rank} must be divisible by micro_batch {micro}")
    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    torch.manual_seed(cfg.seed)                                     # same init on every rank
    model = GPT(gpt_config).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]        # matmul weights and embeddings
    no_decay = [p for p in model.parameters() if p.dim() < 2]      # LayerNorm gains
    peak = cfg.lr or SIZES[cfg.size][1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=peak, betas=(cfg.beta1, cfg.beta2), fused=cuda)
    start, checkpoints = 0, []
    if cfg.ckpt and os.path.exists(cfg.ckpt):                       # resume
        state = torch.load(cfg.ckpt, map_location=device, weights_only=False)
        if state["weights"] != w.tolist() or state["config"]["size"] != cfg.size or state["config"]["seed"] != cfg.seed:
            raise ValueError(f"checkpoint {cfg.ckpt} was made for another mixture, size or seed; "
                             "delete it or change --ckpt")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, checkpoints = state["step"], state["checkpoints"]
    raw_model = model
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if cuda else None)
    fwd = torch.compile(model) if (cuda and cfg.compile) else model

    counts = domain_counts(w, cfg.batch_size, cfg.steps)           # (steps, K), identical on every rank
    val = {d: val_windows(data[d, "val"], cfg.block_size, cfg.val_windows) for d in domains}
    eval_at = sorted(set(cfg.eval_steps) | {cfg.steps})
    t0, tokens_done = time.time(), 0
    for step in range(start, cfg.steps):
        lr = get_lr(step, cfg, peak)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y, _ = get_batch(data, domains, counts[step], cfg.block_size, cfg.seed, step)  # (B, T) global
        x, y = x[rank * per_rank:(rank + 1) * per_rank], y[rank * per_rank:(rank + 1) * per_rank]  # (B/W, T)
        n_micro = per_rank // micro
        for m in range(n_micro):
            xm = x[m * micro:(m + 1) * micro].to(device, non_blocking=True)
            ym = y[m * micro:(m + 1) * micro].to(device, non_blocking=True)
            if ddp:                                                 # all-reduce gradients on the last micro-step only
                model.require_backward_grad_sync = m == n_micro - 1
            with ctx:
                loss = fwd(xm, ym) / n_micro                        # mean over this rank's rows
            loss.backward()                                         # DDP averages over ranks -> global-batch mean
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens_done += cfg.batch_size * cfg.block_size
        if cfg.log_every and rank == 0 and (step + 1) % cfg.log_every == 0:
            dt = time.time() - t0
            print(f"step {step + 1}/{cfg.steps} loss {loss.item() * n_micro:.4f} lr {lr:.2e} "
                  f"{tokens_done / dt:,.0f} tok/s", file=sys.stderr)
        if step + 1 in eval_at:
            losses = evaluate(raw_model, val, ctx, device)
            if not all(math.isfinite(v) for v in losses.values()):   # checked here, not every step: no GPU sync
                raise FloatingPointError(f"training diverged by step {step + 1}: val losses {losses} (lower --lr?)")
            checkpoints.append({"steps": step + 1, "loss": objective_value(losses, cfg.objective),
                                "domain_losses": losses})
            if cfg.ckpt and rank == 0:                              # atomic save: write, then rename
                state = {"model": raw_model.state_dict(), "optimizer": opt.state_dict(), "step": step + 1,
                         "checkpoints": checkpoints, "weights": w.tolist(), "config": asdict(cfg)}
                torch.save(state, cfg.ckpt + ".tmp")
                os.replace(cfg.ckpt + ".tmp", cfg.ckpt)
    scale = non_embedding_params(raw_model)
    tokens = cfg.steps * cfg.batch_size * cfg.block_size
    last = checkpoints[-1]
    return {"loss": last["loss"], "domain_losses": last["domain_losses"], "checkpoints": checkpoints,
            "cost": 6.0 * scale * tokens, "scale": scale, "tokens": tokens, "seconds": time.time() - t0}


# ----------------------------------------------------------------------------- mixbo objective
def make_objective(corpus_dir, sizes=("0.1M", "0.3M", "0.8M"), steps=(30, 60, 120, 240), target=None,
                   objective="mean", device="cpu", block_size=128, batch_size=8, **train_kwargs):
    """A simulate.Objective that trains a real model per call.

    sizes: names from SIZES; scale = non-embedding parameter count of each. steps: ascending checkpoint
    step counts; every run uses the cosine schedule of the largest, so a shorter run is exactly a prefix of
    a longer one. target: (scale, steps), default (largest scale, largest steps). Extra keyword arguments
    go to TrainConfig (e.g. lr, val_windows). run(weights, scale, steps, seed) trains from scratch; a
    diverged run raises FloatingPointError (mixbo records it as a failed trial). The defaults are the
    settings of the committed run table data/runs_cpu.csv (data/make_table.py), so the two are comparable."""
    domains, _ = load_corpus(corpus_dir)
    steps = tuple(sorted(int(s) for s in steps))
    by_scale = {float(size_params(s, block_size)): s for s in sizes}
    scales = tuple(sorted(by_scale))
    tokens_per_step = batch_size * block_size
    target = target or (scales[-1], steps[-1])
    if target[0] not in by_scale or target[1] not in steps:
        raise ValueError(f"target {target} must be one of the scales {scales} x steps {steps}")

    def cost(scale, n_steps):
        return 6.0 * float(scale) * float(n_steps) * tokens_per_step            # Kaplan et al. 2020, Sec. 2.1

    def run(weights, scale, n_steps, seed=0):
        if float(scale) not in by_scale or int(n_steps) not in steps:
            raise ValueError(f"(scale, steps) = ({scale}, {n_steps}) is not in {scales} x {steps}")
        cfg = TrainConfig(size=by_scale[float(scale)], block_size=block_size, batch_size=batch_size,
                          steps=int(n_steps), eval_steps=tuple(s for s in steps if s <= int(n_steps)),
                          lr_horizon=steps[-1], seed=int(seed), device=device, objective=objective, **train_kwargs)
        out = train(corpus_dir, np.asarray(weights, dtype=np.float64), cfg)
        return {"loss": out["loss"], "domain_losses": out["domain_losses"],
                "checkpoints": out["checkpoints"], "cost": cost(scale, n_steps)}

    return simulate.Objective(name=f"train_lm:{Path(corpus_dir).name}:{objective}", domains=domains, scales=scales,
                              steps=steps, target=(float(target[0]), int(target[1])), run=run, cost=cost)


# ----------------------------------------------------------------------------- CLI
def parse_weights(text):
    """'code=0.5,books=0.5' -> dict, or '0.5,0.5,0,...' -> list in corpus order."""
    parts = [p for p in text.split(",") if p]
    try:
        if all("=" in p for p in parts):
            return {k.strip(): float(v) for k, v in (p.split("=", 1) for p in parts)}
        return [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"cannot read --weights {text!r}; write domain=weight,... or one number per domain")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Train a byte-level GPT on a data mixture; "
                                 "print per-domain val loss (JSON).")
    ap.add_argument("--corpus", default="data/corpus", help="folder made by data/build_corpus.py")
    ap.add_argument("--weights", required=True, help="domain=weight,... or one weight per domain in corpus order")
    ap.add_argument("--size", default="0.1M", help=f"model size: {', '.join(SIZES)}")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--eval-steps", default="", help="comma-separated checkpoint steps (the last step is always one)")
    ap.add_argument("--lr-horizon", type=int, default=0, help="steps of the cosine schedule (default: --steps)")
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16, help="global sequences per step")
    ap.add_argument("--micro-batch", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.0, help="peak lr (default: the size's, see SIZES)")
    ap.add_argument("--val-windows", type=int, default=64, help="fixed val windows per domain")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--objective", default="mean", help="'mean' over domains or one domain name")
    ap.add_argument("--ckpt", default="", help="checkpoint file to save at eval steps and resume from")
    ap.add_argument("--log-every", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        eval_steps = tuple(int(s) for s in args.eval_steps.split(",") if s)
        cfg = TrainConfig(size=args.size, block_size=args.block_size, batch_size=args.batch_size,
                          micro_batch=args.micro_batch, steps=args.steps, eval_steps=eval_steps,
                          lr=args.lr, lr_horizon=args.lr_horizon, val_windows=args.val_windows, seed=args.seed,
                          device=args.device, objective=args.objective, ckpt=args.ckpt, log_every=args.log_every)
        size_config(cfg.size, cfg.block_size)                        # unknown size -> ValueError early
        out = train(args.corpus, parse_weights(args.weights), cfg)
    except ValueError as e:
        print(f"train_lm: error: {e}", file=sys.stderr)
        sys.exit(2)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(out))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
