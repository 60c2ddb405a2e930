#!/usr/bin/env bash
# Recipe: MovieLens-100K with MovieLens-1M posters, the offline encoders (MiniLM text + EfficientNet-Lite0
# image), 10 % of movies held out of all training for cold start; the adaptor towers (docs/model.md)
# trained from scratch with a high epoch cap and early stopping on validation NDCG@10; beside popularity,
# content kNN (the frozen features, no training) and SASRec, each evaluated under both protocols: the
# reference one (nothing hidden) in OUT/results.json, the serving one (history hidden) in
# OUT/results-serving.json. The demo (assets/demo) is built from the seed-42 run's dtrec checkpoint.
# usage: DTREC_SEED=42 bash scripts/movielens_adaptor.sh OUTDIR
set -euo pipefail
source "$(dirname "$0")/_recipe.sh"
start_recipe "${1:?usage: bash scripts/movielens_adaptor.sh OUTDIR}"
ENC=offline
D=$OUT/data/ml100k

dtrec prepare movielens --source "$DATA/movielens-100k" --posters "$DATA/movielens-1m-posters" --out "$D" \
  --cold-fraction "${DTREC_COLD_FRACTION:-0.1}" --seed "$SEED"
# shellcheck disable=SC2046
dtrec extract "$D" --encoder $ENC $(device_flag)
# shellcheck disable=SC2046
dtrec finetune --data "$D" --encoder $ENC --out "$OUT/dtrec" --seed "$SEED" --tower adaptor \
  --d-model 128 --n-heads 2 --d-ff 256 --temperature 0.07 --epochs 200 --patience 10 --quiet \
  $(device_flag) $(extra_args FINETUNE) > /dev/null
dtrec baseline popularity --data "$D" --out "$OUT/popularity" > /dev/null
dtrec baseline content-knn --data "$D" --out "$OUT/content-knn" --encoder $ENC > /dev/null
# shellcheck disable=SC2046
dtrec baseline sasrec --data "$D" --out "$OUT/sasrec" --seed "$SEED" $(epochs_flag SASREC) $(device_flag) \
  $(extra_args SASREC) > /dev/null
mkdir -p "$OUT/eval-serving"
for m in popularity content-knn sasrec dtrec; do
  # shellcheck disable=SC2046
  dtrec evaluate --checkpoint "$OUT/$m" --data "$D" --json --quiet $(device_flag) > "$OUT/eval/$m.json"
  # shellcheck disable=SC2046
  dtrec evaluate --checkpoint "$OUT/$m" --data "$D" --json --quiet --exclude-history $(device_flag) \
    > "$OUT/eval-serving/$m.json"
done
for p in "" -serving; do
  "$DTREC_PYTHON" "$ROOT/scripts/_results.py" "$OUT/results$p.json" --recipe movielens_adaptor \
    --data "$DATA" --seed "$SEED" --commands "$OUT/commands.txt" \
    popularity="$OUT/eval$p/popularity.json" content-knn="$OUT/eval$p/content-knn.json" \
    sasrec="$OUT/eval$p/sasrec.json" dtrec-adaptor="$OUT/eval$p/dtrec.json"
done
