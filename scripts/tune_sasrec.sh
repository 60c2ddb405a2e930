#!/usr/bin/env bash
# Tune the SASRec baseline on Amazon Scientific as RecBole's users tune it: hidden 64, 2 layers, CE loss,
# max length 50, epoch cap 200 with early stopping (patience 10) on validation NDCG@10, over a grid of
# dropout x learning rate x batch size. The winner is chosen on validation NDCG@10 only; the test split
# is reported beside it but never used to choose.
# usage: DTREC_SEED=42 bash scripts/tune_sasrec.sh OUTDIR   -> OUTDIR/results.json (one entry per config)
set -euo pipefail
source "$(dirname "$0")/_recipe.sh"
start_recipe "${1:?usage: bash scripts/tune_sasrec.sh OUTDIR}"
D=$OUT/data/scientific
dtrec prepare unisrec --source "$DATA/amazon-scientific" --name Scientific --out "$D" --seed "$SEED"
specs=()
for drop in ${DTREC_SWEEP_DROPOUT:-0.2 0.5}; do
  for lr in ${DTREC_SWEEP_LR:-0.001 0.003}; do
    for bs in ${DTREC_SWEEP_BATCH:-256 2048}; do
      name="sasrec-d${drop}-lr${lr}-b${bs}"
      # shellcheck disable=SC2046
      dtrec baseline sasrec --data "$D" --out "$OUT/$name" --seed "$SEED" --dropout "$drop" --attn-dropout "$drop" \
        --lr "$lr" --batch-size "$bs" $(device_flag) $(extra_args SASREC) > /dev/null
      # shellcheck disable=SC2046
      dtrec evaluate --checkpoint "$OUT/$name" --data "$D" --json --quiet $(device_flag) > "$OUT/eval/$name.json"
      specs+=("$name=$OUT/eval/$name.json")
    done
  done
done
"$DTREC_PYTHON" "$ROOT/scripts/_results.py" "$OUT/results.json" --recipe tune_sasrec --data "$DATA" \
  --seed "$SEED" --commands "$OUT/commands.txt" "${specs[@]}"
"$DTREC_PYTHON" - "$OUT/results.json" <<'PY'
import json, sys
res = {k: v for k, v in json.load(open(sys.argv[1])).items() if k != "meta"}
for name, r in sorted(res.items(), key=lambda kv: -kv[1]["valid"]["ndcg@10"]):
    print(f"{name:32s} valid NDCG@10 {r['valid']['ndcg@10']:.4f}  test NDCG@10 {r['test']['ndcg@10']:.4f}")
PY
