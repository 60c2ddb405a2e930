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
run_adaptor_models "$D" $ENC movielens_adaptor
