#!/usr/bin/env bash
# `dtrec bench` on a GPU machine in one go (about 5-8 minutes on one H100): training with the
# fp32, bf16-autocast and torch.compile variants, serving up to 10^6 items (FAISS on the CPU
# cores, user tower on the GPU), the HTTP API, cold start, feature extraction and scaling.
#
#   scripts/bench_gpu.sh [OUTDIR]          (default docs/bench/gpu)
#
# Needs the prepared Scientific data (data/scientific with clip-vit-b-32 features); it is
# prepared here from $DTREC_DATA/amazon-scientific when missing. Env: DTREC_PYTHON,
# DTREC_DATA, BENCH_TRAIN_SECONDS (time budget per training run, default 45),
# BENCH_LIMIT (overall seconds before the run is stopped, default 470; the report
# written after each finished section stays).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${1:-docs/bench/gpu}
DATA=${DTREC_DATA:-$ROOT/../shared/data}
if [[ -z "${DTREC_PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then DTREC_PYTHON=$ROOT/.venv/bin/python; else DTREC_PYTHON=python; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

if ! "$DTREC_PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "bench_gpu.sh: no CUDA device visible to torch; run 'dtrec bench' for the CPU benchmark" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$DTREC_PYTHON" -c "import matplotlib, gradio_client" 2>/dev/null || "$DTREC_PYTHON" -m pip install -q matplotlib

if [[ ! -f data/scientific/items.parquet && -d "$DATA/amazon-scientific" ]]; then
  "$DTREC_PYTHON" -m dtrec.cli prepare unisrec --source "$DATA/amazon-scientific" --name Scientific \
    --out data/scientific
fi

timeout --signal=INT "${BENCH_LIMIT:-470}" "$DTREC_PYTHON" -m dtrec.cli bench --device cuda --out "$OUT" \
  --sizes 1e3,1e4,1e5,1e6 --variants fp32,bf16,compile --epochs 2 \
  --train-seconds "${BENCH_TRAIN_SECONDS:-45}" || status=$?
echo "report: $OUT/bench.md (exit status ${status:-0})"
exit "${status:-0}"
