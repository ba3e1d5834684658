#!/usr/bin/env bash
# The GPU check of train_lm.py: one script, at most 8 minutes on one H100 or H200 (each stage runs
# under its own time limit), then a compact summary. Stages, on a synthetic corpus made first:
#   tests     the CUDA tests of tests/test_train_lm.py: bf16 autocast, torch.compile, fused AdamW,
#             micro-batches, one-process NCCL DDP around the compiled model
#   torchrun  a 1-process torchrun run of train_lm.py with NCCL at ~25M (block 1024, batch 32,
#             every val byte); the trainer prints its own tokens/s and MFU
#   bench     bench/bench_train.py at ~25M and ~85M (block 1024, batch 32): the model's step and
#             the trainer's own step, tokens/s and MFU
#
#   bash bench/gpu_check.sh                 # on a machine with CUDA
#   bash bench/gpu_check.sh --device cpu    # a dry run of the same stages at a tiny size
# Python: $PYTHON (default python3). Logs: $GPU_CHECK_LOGS (default a new temporary folder).
# Exit status: 0 when every stage passed, else 1.
set -uo pipefail
cd "$(dirname "$0")/.."
device=cuda
if [[ "${1:-}" == "--device" ]]; then
    device=${2:?"--device needs cpu or cuda"}
fi
py=${PYTHON:-python3}
logs=${GPU_CHECK_LOGS:-$(mktemp -d)}
mkdir -p "$logs"
if [[ $device == cpu ]]; then       # dry run: the same commands, tiny sizes
    size=0.1M sizes=0.1M block=32 batch=8 steps=8 bench_steps=2 megabytes=0.2
    limits=(60 60 60 120)
else
    size=25M sizes=25M,85M block=1024 batch=32 steps=200 bench_steps=20 megabytes=8
    limits=(30 100 110 240)         # corpus, tests, torchrun, bench: 480 s in all
fi
weights='{"synthetic0": 0.5, "synthetic1": 0.3, "synthetic2": 0.2}'
names=()
declare -A status

stage() {                           # stage NAME SECONDS COMMAND...: run, log, record ok or FAILED
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    names+=("$name")
    echo "== $name (at most ${limit} s): $*"
    timeout "$limit" "$@" > "$logs/$name.log" 2>&1
    rc=$?
    if ((rc == 0)); then
        status[$name]="ok in $((SECONDS - start)) s"
    else
        status[$name]="FAILED (exit $rc$( ((rc == 124)) && echo ", over ${limit} s"))"
    fi
    tail -n 2 "$logs/$name.log" | cut -c1-160
}

stage corpus "${limits[0]}" "$py" -c "import sys; sys.path.insert(0, 'bench'); import bench_train; \
bench_train.synthetic_corpus(sys.argv[1], megabytes=float(sys.argv[2]))" "$logs/corpus" "$megabytes"
stage tests "${limits[1]}" "$py" -m pytest -q -p no:cacheprovider tests/test_train_lm.py \
    -k test_cuda
stage torchrun "${limits[2]}" "$py" -m torch.distributed.run --standalone --nproc-per-node 1 \
    train_lm.py --device "$device" --corpus "$logs/corpus" --weights "$weights" --size "$size" \
    --steps "$steps" --block-size "$block" --batch-size "$batch" --val-windows 0 --seed 0 \
    --log-every 50 --result "$logs/torchrun.json"
stage bench "${limits[3]}" "$py" bench/bench_train.py --device "$device" --sizes "$sizes" \
    --block-size "$block" --batch-size "$batch" --steps "$bench_steps" --corpus "$logs/corpus"

echo "== summary ($device; logs in $logs)"
command -v nvidia-smi > /dev/null &&
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
failed=0
for name in "${names[@]}"; do
    echo "$name: ${status[$name]}"
    [[ ${status[$name]} == ok* ]] || failed=1
done
grep -h "passed\|skipped\|failed" "$logs/tests.log" | tail -n 1
grep -h "^train_lm: " "$logs/torchrun.log" | tail -n 1
grep -hv "^==" "$logs/bench.log" | grep -h "^#\|^ *size\|M " || true
exit $failed
