#!/usr/bin/env bash
# Tune the SASRec baseline as RecBole's users tune it: hidden 64, 2 layers, CE loss, max length 50, epoch cap
# 200 with early stopping (patience 10) on validation NDCG@10, over a grid of dropout x learning rate x batch
# size. The winner is chosen on validation NDCG@10 only; the test split is reported beside it but never used
# to choose. Each config is scored under both protocols: OUT/results.json (reference, nothing hidden) and
# OUT/results-serving.json (history hidden). Without PREPARED the data is Amazon Scientific, prepared here.
# A grid of one config (DTREC_SWEEP_* set to one value each) is how the winner runs for other seeds.
# usage: DTREC_SEED=42 bash scripts/tune_sasrec.sh OUTDIR [PREPARED]
# env: DTREC_SWEEP_DROPOUT, DTREC_SWEEP_LR, DTREC_SWEEP_BATCH (space-separated values; defaults below)
set -euo pipefail
source "$(dirname "$0")/_recipe.sh"
start_recipe "${1:?usage: bash scripts/tune_sasrec.sh OUTDIR [PREPARED]}"
D=${2:-}
if [[ -z $D ]]; then
  D=$OUT/data/scientific
  dtrec prepare unisrec --source "$DATA/amazon-scientific" --name Scientific --out "$D" --seed "$SEED"
fi
mkdir -p "$OUT/eval-serving"
specs=()
specs_serving=()
for drop in ${DTREC_SWEEP_DROPOUT:-0.2 0.5}; do
  for lr in ${DTREC_SWEEP_LR:-0.001 0.003}; do
    for bs in ${DTREC_SWEEP_BATCH:-256 2048}; do
      name="sasrec-d${drop}-lr${lr}-b${bs}"
      # shellcheck disable=SC2046
      dtrec baseline sasrec --data "$D" --out "$OUT/$name" --seed "$SEED" --dropout "$drop" --attn-dropout "$drop" \
        --lr "$lr" --batch-size "$bs" $(device_flag) $(extra_args SASREC) > /dev/null
      # shellcheck disable=SC2046
      dtrec evaluate --checkpoint "$OUT/$name" --data "$D" --json --quiet $(device_flag) > "$OUT/eval/$name.json"
      # shellcheck disable=SC2046
      dtrec evaluate --checkpoint "$OUT/$name" --data "$D" --json --quiet --exclude-history $(device_flag) \
        > "$OUT/eval-serving/$name.json"
      specs+=("$name=$OUT/eval/$name.json")
      specs_serving+=("$name=$OUT/eval-serving/$name.json")
    done
  done
done
"$DTREC_PYTHON" "$ROOT/scripts/_results.py" "$OUT/results.json" --recipe tune_sasrec --data "$DATA" \
  --seed "$SEED" --commands "$OUT/commands.txt" "${specs[@]}"
"$DTREC_PYTHON" "$ROOT/scripts/_results.py" "$OUT/results-serving.json" --recipe tune_sasrec --data "$DATA" \
  --seed "$SEED" --commands "$OUT/commands.txt" "${specs_serving[@]}"
"$DTREC_PYTHON" - "$OUT/results.json" <<'PY'
import json, sys
res = {k: v for k, v in json.load(open(sys.argv[1])).items() if k != "meta"}
for name, r in sorted(res.items(), key=lambda kv: -kv[1]["valid"]["ndcg@10"]):
    print(f"{name:32s} valid NDCG@10 {r['valid']['ndcg@10']:.4f}  test NDCG@10 {r['test']['ndcg@10']:.4f}")
PY
