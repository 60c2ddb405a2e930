#!/usr/bin/env bash
# Recipe: MovieLens-100K with MovieLens-1M posters, the offline encoders (MiniLM text +
# EfficientNet-Lite0 image); 10 % of movies held out of all training for cold start.
# dtrec (pretrain -> finetune) beside popularity and SASRec, full ranking, leave-one-out.
# usage: bash scripts/movielens.sh OUTDIR   -> OUTDIR/results.json
set -euo pipefail
source "$(dirname "$0")/_recipe.sh"
start_recipe "${1:?usage: bash scripts/movielens.sh OUTDIR}"
ENC=${DTREC_ENCODER:-offline}
D=$OUT/data/ml100k

dtrec prepare movielens --source "$DATA/movielens-100k" --posters "$DATA/movielens-1m-posters" --out "$D" \
  --cold-fraction "${DTREC_COLD_FRACTION:-0.1}" --seed "$SEED"
# shellcheck disable=SC2046
dtrec extract "$D" --encoder "$ENC" $(device_flag)
# shellcheck disable=SC2046
dtrec pretrain --data "$D" --encoder "$ENC" --out "$OUT/pretrain" --seed "$SEED" \
  $(epochs_flag PRETRAIN) $(device_flag) $(extra_args PRETRAIN)
run_models "$D" "$ENC" "$OUT/pretrain" ""

"$DTREC_PYTHON" "$ROOT/scripts/_results.py" "$OUT/results.json" --recipe movielens --data "$DATA" \
  --seed "$SEED" --commands "$OUT/commands.txt" \
  popularity="$OUT/eval/popularity.json" sasrec="$OUT/eval/sasrec.json" dtrec="$OUT/eval/dtrec.json"
