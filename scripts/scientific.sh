#!/usr/bin/env bash
# Recipe: Amazon "Industrial & Scientific" in the UniSRec/MISSRec format, precomputed
# CLIP ViT-B/32 features; dtrec (pretrain -> finetune) beside popularity and SASRec,
# full ranking, leave-one-out. A second copy with 10 % of items held out of all
# training measures cold start (names with the suffix "-cold"; DTREC_COLD=0 skips it).
# usage: bash scripts/scientific.sh OUTDIR   -> OUTDIR/results.json
set -euo pipefail
source "$(dirname "$0")/_recipe.sh"
start_recipe "${1:?usage: bash scripts/scientific.sh OUTDIR}"
ENC=clip-vit-b-32
COLD=${DTREC_COLD_FRACTION:-0.1}

dtrec prepare unisrec --source "$DATA/amazon-scientific" --name Scientific --out "$OUT/data/scientific" --seed "$SEED"
# shellcheck disable=SC2046
dtrec pretrain --data "$OUT/data/scientific" --encoder $ENC --out "$OUT/pretrain" --seed "$SEED" \
  $(epochs_flag PRETRAIN) $(device_flag) $(extra_args PRETRAIN)
run_models "$OUT/data/scientific" $ENC "$OUT/pretrain" ""
names=(popularity="$OUT/eval/popularity.json" sasrec="$OUT/eval/sasrec.json" dtrec="$OUT/eval/dtrec.json")

if [[ "${DTREC_COLD:-1}" != 0 ]]; then
  dtrec prepare unisrec --source "$DATA/amazon-scientific" --name Scientific --out "$OUT/data/scientific-cold" \
    --cold-fraction "$COLD" --seed "$SEED"
  # pretraining leaves cold items out, so the cold copy gets its own
  # shellcheck disable=SC2046
  dtrec pretrain --data "$OUT/data/scientific-cold" --encoder $ENC --out "$OUT/pretrain-cold" --seed "$SEED" \
    $(epochs_flag PRETRAIN) $(device_flag) $(extra_args PRETRAIN)
  run_models "$OUT/data/scientific-cold" $ENC "$OUT/pretrain-cold" "-cold"
  names+=(popularity-cold="$OUT/eval/popularity-cold.json" sasrec-cold="$OUT/eval/sasrec-cold.json"
          dtrec-cold="$OUT/eval/dtrec-cold.json")
fi

"$DTREC_PYTHON" "$ROOT/scripts/_results.py" "$OUT/results.json" --recipe scientific --data "$DATA" \
  --seed "$SEED" --commands "$OUT/commands.txt" "${names[@]}"
