"""Train a byte-level GPT on a weighted mixture of corpus domains; report per-domain val loss.

nanoGPT-style (Karpathy, github.com/karpathy/nanoGPT): config, model, data, training, mixbo
objective, CLI. GPT-2 (Radford et al. 2019), pre-LN, tied embeddings (Press & Wolf 2017), bytes as
tokens; AdamW (Loshchilov & Hutter 2019) with GPT-3's betas and decay (Brown et al. 2020, App. B),
warmup and cosine to lr/10 (Hoffmann et al. 2022). Scale = non-embedding parameters, cost = 6 N D
(Kaplan et al. 2020); MFU from 6 (N + V C) + 12 L C T FLOPs/token (Chowdhery et al. 2022). Window
offsets: one random stream per (seed, step, domain), common random numbers (Glasserman & Yao 1992).
A val loss worse than ln 256 or a spiking training loss raises Diverged. DDP through torchrun: gloo
on CPU; NCCL, bf16, torch.compile and fused AdamW on CUDA.

  python train_lm.py --corpus data/corpus --weights code=0.5,books=0.5 --size 0.1M --steps 240
  torchrun --nproc-per-node 8 train_lm.py --device cuda --size 85M --block-size 1024 \\
      --batch-size 64 --val-windows 0 --weights '{"code": 1}' --result run.json   # see --help
Bad input exits 2; a failed run (Diverged, or any other error) prints one line, exits 1, no result.
"""
import argparse
import functools
import json
import math
import os
import sys
import time
import warnings
from collections import namedtuple
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import simulate                     # the Objective type, the simplex check and the cost function

VOCAB_SIZE = 256                    # byte values; documents are separated by byte 0x1E
UNIFORM_LOSS = math.log(VOCAB_SIZE)  # nats/byte of the uniform guess: a trained model must beat it


# ----------------------------------------------------------------------------- config
GPTConfig = namedtuple("GPTConfig", "n_layer n_head n_embd block_size vocab_size",
                       defaults=(256, VOCAB_SIZE))

# Ladder by name = approximate non-embedding parameters 12 * n_layer * n_embd^2 (Kaplan et al. 2020,
# Table 1); head size 32 below 1M, 64 above (GPT-2). Peak lr: 6e-4 at GPT-2 small (nanoGPT), larger
# for smaller models (GPT-3 paper, Table 2.1 trend); the three smallest chosen by short runs (see
# bench/README.md, "Trainer: peak learning rates"); sizes from 1.6M up interpolate, untuned.
SIZES = {  # name: (n_layer, n_head, n_embd, peak lr)
    "0.1M": (2, 2, 64, 1e-2), "0.3M": (3, 3, 96, 3e-3), "0.8M": (4, 4, 128, 2e-3),
    "1.6M": (5, 5, 160, 2e-3), "3M": (6, 3, 192, 1.5e-3), "6M": (8, 4, 256, 1.2e-3),
    "25M": (8, 8, 512, 1e-3), "50M": (10, 10, 640, 8e-4), "85M": (12, 12, 768, 6e-4),
}

# Dense bf16 tensor-core peak in TFLOP/s by exact torch.cuda.get_device_name() (NVIDIA data sheets
# quote twice these, "with sparsity"): H100 SXM5, PCIe, NVL; H200 SXM, NVL; GH200; A100 SXM4, PCIe.
PEAK_BF16_TFLOPS = {
    "NVIDIA H100 80GB HBM3": 989.4, "NVIDIA H100 PCIe": 756.5, "NVIDIA H100 NVL": 835.5,
    "NVIDIA H200": 989.4, "NVIDIA H200 NVL": 835.5, "NVIDIA GH200 480GB": 989.4,
    "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0, "NVIDIA A100 80GB PCIe": 312.0,
}


def option(default, help):
    """A TrainConfig field: its default and its --help text (the CLI flag is made from both)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """One run's settings; each field is also the CLI flag --field-name. The defaults are those of
    data/runs_cpu.csv (data/make_table.py) except `stream`, which was 'step' for that table."""
    size: str = option("0.1M", "a name in SIZES, or that size's non-embedding parameter count")
    block_size: int = option(128, "T, bytes per training sequence")
    batch_size: int = option(8, "B, sequences per optimizer step, summed over DDP ranks")
    micro_batch: int = option(0, "sequences per forward pass per rank (0: the rank's whole batch)")
    steps: int = option(240, "optimizer steps")
    eval_steps: tuple = option((), "comma-separated steps to measure val loss at (and the last)")
    lr: float = option(0.0, "peak learning rate (0: the size's in SIZES)")
    min_lr_ratio: float = option(0.1, "the cosine decays to lr times this (Chinchilla, App. B)")
    warmup: int = option(-1, "linear warmup steps (-1: 5%% of the lr horizon, at least 1)")
    lr_horizon: int = option(0, "steps over which the cosine decays (0: --steps)")
    weight_decay: float = option(0.1, "AdamW decay of >= 2-D parameters (GPT-3, nanoGPT)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2 (nanoGPT config/train_gpt2.py)")
    grad_clip: float = option(1.0, "clip the gradient to this global norm (nanoGPT)")
    val_windows: int = option(64, "fixed val windows per domain (0: all val bytes, for GPU runs)")
    stream: str = option("domain", "windows drawn per (seed, step, domain), or 'step': per step")
    spike_factor: float = option(2.0, "fail when the smoothed training loss tops its low x this")
    seed: int = option(0, "seed of the initialization and of the window offsets")
    device: str = option("cpu", "cpu, cuda or cuda:N")
    threads: int = option(1, "torch CPU threads (0: torch's); losses depend on the count")
    compile: bool = option(True, "torch.compile the model on CUDA (CPU runs are eager)")
    objective: str = option("mean", "'mean' of the per-domain val losses, or one domain's name")
    peak_tflops: float = option(0.0, "the GPU's dense bf16 peak for MFU (0: by its name)")
    ckpt: str = option("", "checkpoint file: saved at eval steps, resumed from if it exists")
    log_every: int = option(0, "print a training line every this many steps (0: never)")

# Fields that say how or how far to run, not what is computed: a checkpoint resumes across them.
HOW_TO_RUN = ("steps", "eval_steps", "micro_batch", "spike_factor", "device", "threads", "compile",
              "peak_tflops", "ckpt", "log_every")


class Diverged(FloatingPointError):
    """The run blew up (see check_divergence); str(e) is one line, the reason."""


# ----------------------------------------------------------------------------- model
class Block(nn.Module):
    """Pre-LN residual block (GPT-2, Sec. 2.3): causal self-attention, then a GELU MLP."""

    def __init__(self, c):
        super().__init__()
        self.n_head = c.n_head
        self.ln_1 = nn.LayerNorm(c.n_embd, bias=False)
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=False)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=False)
        self.ln_2 = nn.LayerNorm(c.n_embd, bias=False)
        self.mlp = nn.Sequential(nn.Linear(c.n_embd, 4 * c.n_embd, bias=False), nn.GELU(),
                                 nn.Linear(4 * c.n_embd, c.n_embd, bias=False))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)                      # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)              # (B, nh, T, hs)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))       # (B, T, C)
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
        # GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer) (GPT-2, Sec. 2.3)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                residual = name.endswith(("c_proj.weight", "mlp.2.weight"))
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.n_layer) if residual else 0.02)

    def forward(self, idx, targets=None, reduction="mean"):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))   # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))                                  # (B, T, vocab)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                               reduction=reduction)


def non_embedding_params(model):
    """Kaplan et al. 2020 N: all parameters but the token and position embeddings (tied head)."""
    return sum(p.numel() for p in model.parameters()) - model.wte.weight.numel() \
        - model.wpe.weight.numel()


def flops_per_token(model):
    """Training FLOPs per token, N non-embedding, V C the LM-head matmul, the last term attention:
    6 (N + V C) + 12 L C T   (PaLM, Chowdhery et al. 2022, App. B; nanoGPT estimate_mfu)"""
    c = model.config
    return 6 * (non_embedding_params(model) + c.vocab_size * c.n_embd) \
        + 12 * c.n_layer * c.n_embd * c.block_size


def size_name(size):
    """The SIZES key of a size given by name or by its non-embedding parameter count ("332448.0",
    as mixbo passes a scale); anything else is a ValueError."""
    by_count = {float(size_params(name)): name for name in SIZES}
    try:
        return size if size in SIZES else by_count[float(size)]
    except (KeyError, TypeError, ValueError):
        counts = ", ".join(f"{name} = {int(n)}" for n, name in by_count.items())
        raise ValueError(f"unknown size {size!r}; give a name or a count: {counts}") from None


def size_config(size, block_size):
    return GPTConfig(*SIZES[size_name(size)][:3], block_size=block_size)


@functools.lru_cache(maxsize=None)
def size_params(size, block_size=256):
    """Non-embedding parameters of a named size (mixbo's `scale`); independent of block_size."""
    with torch.device("meta"):                    # count without allocating
        return non_embedding_params(GPT(GPTConfig(*SIZES[size][:3], block_size=block_size)))


# ----------------------------------------------------------------------------- data
def load_corpus(corpus_dir):
    """Domains and memory-maps {(domain, 'train' | 'val'): (n_bytes,) uint8} of a folder holding
    manifest.json ({"domains": [names]}) and raw <domain>.{train,val}.bin (data/build_corpus.py)."""
    manifest = Path(corpus_dir) / "manifest.json"
    if not manifest.is_file():
        raise ValueError(f"no corpus at {corpus_dir} (manifest.json missing); "
                         "build one with python data/build_corpus.py")
    domains = tuple(json.loads(manifest.read_text())["domains"])
    paths = {(d, s): Path(corpus_dir) / f"{d}.{s}.bin" for d in domains for s in ("train", "val")}
    for path in paths.values():
        if not path.is_file():
            raise ValueError(f"corpus file {path} missing; rebuild it with data/build_corpus.py")
    return domains, {key: np.memmap(path, dtype=np.uint8, mode="r") for key, path in paths.items()}


def mixture_array(weights, domains):
    """Mixture as a (K,) float64 array in `domains` order, from an array or {domain: weight}
    (missing domains get 0); the simplex check is simulate.check_weights."""
    if isinstance(weights, dict):
        unknown = sorted(set(weights) - set(domains))
        if unknown:
            raise ValueError(f"unknown domain(s) {unknown}; the corpus has {', '.join(domains)}")
        weights = [weights.get(d, 0.0) for d in domains]
    return simulate.check_weights(weights, len(domains), what=f"weights ({', '.join(domains)})")


def domain_counts(weights, batch_size, steps):
    """(steps, K) int: sequences per domain at each step. Slot t = 1, 2, ... of the run goes to the
    domain furthest behind its share (ties: lowest index), A_k = slots it already has:
        argmax_k (w_k t - A_k)
    The deficits sum to 1 before each slot: a zero weight never gets a slot, and |A_k - w_k t| < 1.
    """
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


def get_batch(data, domains, counts, block_size, seed, step, stream="domain"):
    """Global batch of a step: counts[k] random windows of domain k's train bytes, domains in order.
    stream 'domain': domain k's offsets come from the stream (seed, step, k), so mixtures giving a
    domain n <= m windows at a step share the first n of them (common random numbers); 'step': one
    stream (seed, step) draws the domains in order. Returns x, y: (B, T) int64 (y = x shifted by
    one byte) and the (B,) domain index of each row."""
    step_rng = np.random.default_rng((seed, step))
    xs, rows = [], []
    for k, d in enumerate(domains):
        if counts[k] == 0:
            continue
        rng = np.random.default_rng((seed, step, k)) if stream == "domain" else step_rng
        buf = data[d, "train"]
        start = rng.integers(0, len(buf) - block_size - 1, size=counts[k])           # (n_k,)
        xs.append(buf[start[:, None] + np.arange(block_size + 1)])                    # (n_k, T+1)
        rows.append(np.full(counts[k], k))
    xy = torch.from_numpy(np.concatenate(xs).astype(np.int64))                       # (B, T+1)
    return xy[:, :-1].contiguous(), xy[:, 1:].contiguous(), np.concatenate(rows)


def val_windows(buf, block_size, n):
    """(n, T+1) evenly spaced windows of a val file, or with n = 0 every window that tiles it (each
    byte after the first predicted once): fixed, the same for every run."""
    if len(buf) < block_size + 2:
        raise ValueError(f"a val file has {len(buf)} bytes, fewer than block_size + 2 = "
                         f"{block_size + 2}; use a smaller --block-size or a larger corpus")
    start = np.linspace(0, len(buf) - block_size - 1, n).astype(np.int64) if n \
        else np.arange(0, len(buf) - block_size, block_size)                          # (n,)
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
def schedule(cfg):
    """(peak lr, warmup steps, horizon): the size's lr unless set; warmup 5% of the horizon."""
    horizon = cfg.lr_horizon or cfg.steps
    warmup = cfg.warmup if cfg.warmup >= 0 else max(1, round(0.05 * horizon))
    return cfg.lr or SIZES[size_name(cfg.size)][3], warmup, horizon


def get_lr(step, cfg):
    """Linear warmup, then cosine from peak to peak * min_lr_ratio over the horizon (nanoGPT)."""
    peak, warmup, horizon = schedule(cfg)
    if step < warmup:
        return peak * (step + 1) / warmup
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, horizon - warmup))))
    return peak * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def check_config(cfg, domains):
    """A one-line ValueError for a setting that train cannot run (a bad size: size_name's)."""
    if cfg.objective not in ("mean",) + tuple(domains):
        raise ValueError(f"objective {cfg.objective!r} is neither 'mean' nor a domain")
    if cfg.device != "cpu" and not (cfg.device.startswith("cuda") and torch.cuda.is_available()):
        raise ValueError(f"device {cfg.device!r}: CUDA is not available here or it is neither cpu "
                         "nor cuda[:N]; use --device cpu")
    if cfg.steps < 1 or any(s < 1 or s > cfg.steps for s in cfg.eval_steps):
        raise ValueError(f"steps {cfg.steps} must be >= 1, eval steps {cfg.eval_steps} in 1..steps")
    if cfg.stream not in ("domain", "step") or min(cfg.block_size, cfg.batch_size) < 1 or \
            min(cfg.micro_batch, cfg.val_windows, cfg.threads, cfg.spike_factor) < 0:
        raise ValueError("stream must be 'domain' or 'step', block_size and batch_size >= 1, "
                         "micro_batch, val_windows, threads and spike_factor >= 0")


def start_distributed(device):
    """(rank, world, device, ddp). Under torchrun (RANK set, also for one process) join the process
    group, NCCL on CUDA (this process on its GPU) and gloo on CPU; else (0, 1, device, False)."""
    if "RANK" not in os.environ:
        return 0, 1, device, False
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
        torch.cuda.set_device(device)
    return rank, world, device, True


def make_optimizer(model, cfg, cuda):
    """AdamW, weight decay on >= 2-D parameters only (matmuls, embeddings; not LayerNorm gains)."""
    groups = [{"params": [p for p in model.parameters() if p.dim() >= 2],
               "weight_decay": cfg.weight_decay},
              {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=schedule(cfg)[0], betas=(cfg.beta1, cfg.beta2), fused=cuda)


def resume(cfg, model, opt, identity, device):
    """(start step, checkpoints so far) from cfg.ckpt, or (0, []) if there is none. A checkpoint of
    another run (identity: what decides the losses; the first field that differs is named), or one
    past cfg.steps, is a ValueError."""
    if not cfg.ckpt or not os.path.exists(cfg.ckpt):
        return 0, []
    state = torch.load(cfg.ckpt, map_location=device, weights_only=False)
    for key, value in identity.items():
        if state["identity"].get(key) != value:
            was = state["identity"].get(key)
            raise ValueError(f"checkpoint {cfg.ckpt} was made with {key}={was!r}, this run has "
                             f"{key}={value!r}; delete it or change --ckpt")
    if state["step"] > cfg.steps:
        raise ValueError(f"checkpoint {cfg.ckpt} is at step {state['step']}, past --steps")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return state["step"], state["checkpoints"]


def check_divergence(worst, losses, w, steps_done, cfg, ddp):
    """Diverged when the smoothed training loss became non-finite or rose above spike_factor
    (default chosen in bench/README.md, "Trainer: divergence") times its running minimum (worst:
    the largest such ratio so far, the maximum over ranks so that all ranks decide alike); or when,
    after twice the warmup (the first steps at the peak may overshoot), the val loss of the
    training mixture sum_k w_k L_k is worse than the uniform guess (or not finite at all)."""
    worst = torch.nan_to_num(worst.detach().clone(), nan=math.inf)
    if ddp:
        torch.distributed.all_reduce(worst, op=torch.distributed.ReduceOp.MAX)
    ratio = worst.item()
    if not math.isfinite(ratio) or (cfg.spike_factor and ratio > cfg.spike_factor):
        rose = f"rose to {ratio:.2f}x its minimum" if math.isfinite(ratio) else "is not finite"
        raise Diverged(f"diverged by step {steps_done}: smoothed training loss {rose}; lower --lr")
    mixed = float(np.dot(w, [*losses.values()])) if losses else 0.0
    if not math.isfinite(mixed) or (steps_done > 2 * schedule(cfg)[1] and mixed > UNIFORM_LOSS):
        raise Diverged(f"diverged by step {steps_done}: val loss on the training mixture "
                       f"{mixed:.3f} nats/byte, worse than the uniform guess {UNIFORM_LOSS:.3f}; "
                       "lower --lr")


def train(corpus_dir, weights, cfg, log=None):
    """Train one model on one mixture; return the run dict (the CLI's --result JSON): loss,
    domain_losses, checkpoints [{steps, loss, domain_losses}] (one per eval step, ascending), cost
    (simulate.flops_cost), scale, tokens, epochs {domain: bytes read / its train bytes},
    tokens_per_s and mfu over the training steps after the first, evaluation left out (mfu None
    where no GPU peak is known), seconds, threads. Raises ValueError on bad input, Diverged when the
    run blows up; log(line) gets the --log-every lines. Runs on cfg.threads CPU threads."""
    domains, data = load_corpus(corpus_dir)
    w = mixture_array(weights, domains)
    check_config(cfg, domains)
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or before)
    try:
        return _train(data, domains, w, cfg, log or (lambda line: None))
    finally:
        torch.set_num_threads(before)


def _train(data, domains, w, cfg, log):
    rank, world, device, ddp = start_distributed(cfg.device)
    per_rank = cfg.batch_size // world                       # rows of the global batch on this rank
    micro = cfg.micro_batch or per_rank
    if cfg.batch_size % world or per_rank % micro:
        raise ValueError(f"batch_size {cfg.batch_size} must split into {world} rank(s) x {micro}")
    n_micro, cuda = per_rank // micro, device.startswith("cuda")
    tokens_per_step = cfg.batch_size * cfg.block_size
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    ctx = torch.autocast("cuda", torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    torch.manual_seed(cfg.seed)                               # same init on every rank
    model = GPT(size_config(cfg.size, cfg.block_size)).to(device)
    opt = make_optimizer(model, cfg, cuda)
    identity = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in HOW_TO_RUN}
    identity.update(zip(("lr", "warmup", "lr_horizon"), schedule(cfg)), size=size_name(cfg.size),
                    weights=w.tolist(), domains=list(domains))
    start, checkpoints = resume(cfg, model, opt, identity, device)
    fwd = torch.compile(model) if (cuda and cfg.compile) else model   # compile, then wrap (nanoGPT)
    if ddp:
        fwd = torch.nn.parallel.DistributedDataParallel(fwd, device_ids=[device] if cuda else None)
    counts = domain_counts(w, cfg.batch_size, cfg.steps)     # (steps, K), identical on every rank
    # epochs: bytes read (T + 1 a window) / the domain's train bytes; above one, a warning
    epochs = {d: float(counts[:, k].sum() * (cfg.block_size + 1) / len(data[d, "train"]))
              for k, d in enumerate(domains)}
    if rank == 0 and max(epochs.values()) > 1:
        warnings.warn(f"the run reads a domain more than once (epochs {epochs}); repetition "
                      "confounds the mixture effect: use a larger corpus", RuntimeWarning)
    val = {d: val_windows(data[d, "val"], cfg.block_size, cfg.val_windows) for d in domains}
    eval_at = sorted(set(cfg.eval_steps) | {cfg.steps})

    def load_batch(step):             # this rank's rows (B/W, T); on CUDA pinned, copied async
        x, y, _ = get_batch(data, domains, counts[step], cfg.block_size, cfg.seed, step, cfg.stream)
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        if cuda:
            return [t[rows].pin_memory().to(device, non_blocking=True) for t in (x, y)]
        return x[rows], y[rows]

    def clock():                      # seconds, once the device has finished its queued work
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter()

    t0, first, eval_s, ema, low, worst = time.perf_counter(), None, 0.0, None, None, None
    batch = load_batch(start) if start < cfg.steps else None
    for step in range(start, cfg.steps):
        lr = get_lr(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = batch
        step_loss = torch.zeros((), device=device)
        for m in range(n_micro):
            if ddp:                          # all-reduce gradients on the last micro-step only
                fwd.require_backward_grad_sync = m == n_micro - 1
            with ctx:
                loss = fwd(x[m * micro:(m + 1) * micro], y[m * micro:(m + 1) * micro]) / n_micro
            loss.backward()                  # DDP averages over ranks: the global-batch mean
            step_loss += loss.detach()       # the mean over this rank's micro-batches
        if step + 1 < cfg.steps:             # prefetch: the host builds the next batch meanwhile
            batch = load_batch(step + 1)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        # smoothed training loss and its largest rise over its running minimum, kept on the device
        ema = step_loss if ema is None else 0.9 * ema + 0.1 * step_loss
        low = ema if low is None else torch.minimum(low, ema)
        worst = ema / low if worst is None else torch.maximum(worst, ema / low)
        done, first = step + 1, clock() if step == start else first   # the first step isn't timed
        if cfg.log_every and done % cfg.log_every == 0:
            check_divergence(worst, {}, w, done, cfg, ddp)
            rate = (done - start - 1) * tokens_per_step / max(1e-9, clock() - first - eval_s)
            if rank == 0:
                log(f"step {done}/{cfg.steps} loss {step_loss.item():.4f} lr {lr:.2e} "
                    f"{rate:,.0f} tokens/s")
        if done in eval_at:
            t_eval = clock()
            losses = evaluate(model, val, ctx, device)
            check_divergence(worst, losses, w, done, cfg, ddp)
            loss = np.mean([*losses.values()]) if cfg.objective == "mean" else losses[cfg.objective]
            checkpoints.append({"steps": done, "loss": float(loss), "domain_losses": losses})
            if cfg.ckpt and rank == 0:                           # atomic save: write, then rename
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                            "step": done, "checkpoints": checkpoints, "identity": identity},
                           cfg.ckpt + ".tmp")
                os.replace(cfg.ckpt + ".tmp", cfg.ckpt)
            eval_s += clock() - t_eval

    timed, scale, B_T = cfg.steps - start - 1, non_embedding_params(model), tokens_per_step
    tokens_per_s = timed * tokens_per_step / (clock() - first - eval_s) if timed > 0 else None
    peak = 1e12 * (cfg.peak_tflops or PEAK_BF16_TFLOPS.get(torch.cuda.get_device_name(device), 0)) \
        if cuda else 0
    mfu = flops_per_token(model) * tokens_per_s / (world * peak) if tokens_per_s and peak else None
    return {"loss": checkpoints[-1]["loss"], "domain_losses": checkpoints[-1]["domain_losses"],
            "checkpoints": checkpoints, "cost": simulate.flops_cost(scale, cfg.steps, B_T),
            "scale": scale, "tokens": cfg.steps * B_T, "epochs": epochs, "mfu": mfu,
            "tokens_per_s": tokens_per_s, "seconds": time.perf_counter() - t0,
            "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- mixbo objective
def make_objective(corpus_dir, sizes=("0.1M", "0.3M", "0.8M"), steps=(30, 60, 120, 240),
                   target=None, **config):
    """A simulate.Objective that trains a real model per call; by default data/runs_cpu.csv's grid.
    sizes: names in SIZES (scale: non-embedding parameters). steps: checkpoint steps; every run
    follows the cosine of the largest, so a shorter run is a prefix of a longer one. target: (scale,
    steps), default the largest of each. config: TrainConfig fields; size, steps, eval_steps,
    lr_horizon and seed are set per run. run(weights, scale, steps, seed) returns train's run dict
    or raises Diverged (mixbo records a failed trial). cost: simulate.flops_cost."""
    base = TrainConfig(**config)
    domains, _ = load_corpus(corpus_dir)
    steps = tuple(sorted(int(s) for s in steps))
    by_scale = {float(size_params(size_name(s))): size_name(s) for s in sizes}
    scales = tuple(sorted(by_scale))
    target = target or (scales[-1], steps[-1])
    if target[0] not in by_scale or target[1] not in steps:
        raise ValueError(f"target {target} must be one of the scales {scales} x steps {steps}")

    def cost(scale, n_steps):
        return simulate.flops_cost(scale, n_steps, base.batch_size * base.block_size)

    def run(weights, scale, n_steps, seed=0):
        if float(scale) not in by_scale or int(n_steps) not in steps:
            raise ValueError(f"(scale, steps) = ({scale}, {n_steps}) is not in {scales} x {steps}")
        cfg = replace(base, size=by_scale[float(scale)], steps=int(n_steps), lr_horizon=steps[-1],
                      eval_steps=tuple(s for s in steps if s <= int(n_steps)), seed=int(seed))
        return train(corpus_dir, np.asarray(weights, dtype=np.float64), cfg)

    return simulate.Objective(name=f"train_lm:{Path(corpus_dir).name}:{base.objective}",
                              domains=domains, scales=scales, steps=steps,
                              target=(float(target[0]), int(target[1])), run=run, cost=cost)


# ----------------------------------------------------------------------------- CLI
def parse_weights(text):
    """'code=0.5,books=0.5' or a JSON object -> {domain: weight}; '0.5,0.5,...' or a JSON list ->
    one weight per domain in corpus order."""
    try:
        parts = json.loads(text) if text.lstrip()[:1] in "{[" else \
            dict(p.split("=", 1) for p in text.split(",")) if "=" in text else text.split(",")
        if isinstance(parts, dict):
            return {str(k).strip(): float(v) for k, v in parts.items()}
        return [float(v) for v in parts]
    except (ValueError, TypeError):
        raise ValueError(f"cannot read --weights {text!r}; write domain=weight,..., a JSON object "
                         "or one number per domain") from None


class Parser(argparse.ArgumentParser):
    def error(self, message):                # a one-line ValueError, not usage + exit
        raise ValueError(message)


def build_parser():
    """--corpus, --weights, --result, then one flag per TrainConfig field with its help text."""
    ap = Parser(prog="train_lm.py", description="Train a byte-level GPT on a data mixture; print "
                "its run dict (loss, domain_losses, checkpoints, epochs, mfu, ...) as JSON.",
                epilog="Exit 0: done. Exit 2: bad input. Exit 1: a failed run (Diverged when the "
                "loss blows up, or another error): one line on stderr and no --result file.")
    ap.add_argument("--corpus", default="data/corpus", help="folder made by data/build_corpus.py")
    ap.add_argument("--weights", required=True, help="domain=weight,..., a JSON object "
                    "{domain: weight}, or one weight per domain in corpus order")
    ap.add_argument("--result", default="", help="also write the run dict as JSON to this file")
    for f in fields(TrainConfig):
        kind = {bool: dict(action=argparse.BooleanOptionalAction),
                tuple: dict(type=lambda text: tuple(int(s) for s in text.split(",") if s))}
        ap.add_argument("--" + f.name.replace("_", "-"), default=f.default,
                        help=f.metadata["help"] + " (default: %(default)s)",
                        **kind.get(f.type, dict(type=f.type)))
    return ap


def main(argv=None):
    """Parse, train, print the run dict; bad input exits 2, a failed run 1, each with one line."""
    warnings.formatwarning = lambda message, *args, **kwargs: f"train_lm: warning: {message}\n"
    say, code = (lambda line: print(line, file=sys.stderr, flush=True)), 0
    try:
        args = build_parser().parse_args(argv)
        cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
        out = train(args.corpus, parse_weights(args.weights), cfg, log=say)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(out))
            mfu = "- (CPU, or GPU peak unknown)" if out["mfu"] is None else f"{out['mfu']:.1%}"
            say(f"train_lm: {size_name(cfg.size)} on {cfg.device}, {out['threads']} thread(s), "
                f"{cfg.steps} steps: loss {out['loss']:.4f}, {out['tokens_per_s'] or 0:,.0f} "
                f"tokens/s over training steps, MFU {mfu}")
            if args.result:                                   # atomic: write, then rename
                Path(args.result + ".tmp").write_text(json.dumps(out) + "\n")
                os.replace(args.result + ".tmp", args.result)
    except (Exception, KeyboardInterrupt) as e:   # Diverged, Ctrl-C, CUDA out of memory: one line
        kind = "error" if isinstance(e, ValueError) else "failed" if isinstance(e, Diverged) \
            else f"failed: {type(e).__name__}"
        say(f"train_lm: {kind}: {(str(e).strip() or '-').splitlines()[0]}")
        code = 2 if isinstance(e, ValueError) else 130 if isinstance(e, KeyboardInterrupt) else 1
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
