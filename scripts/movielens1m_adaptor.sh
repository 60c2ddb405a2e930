#!/usr/bin/env bash
# Recipe: MovieLens-1M with its posters (titles, years and genres as text; the offline encoders, MiniLM-L6 +
# EfficientNet-Lite0), 10 % of movies held out of all training for cold start (chosen by the seed); the
# adaptor towers trained from scratch with a high epoch cap and early stopping on validation NDCG@10, beside
# popularity, content kNN and SASRec, each under both protocols: OUT/results.json (reference, nothing hidden)
# and OUT/results-serving.json (history hidden). From scratch on purpose: the shipped pretrained model saw
# the warm movies of seed 42's split, so it is no fair start for another seed's cold movies.
# About 4.5 min per dtrec epoch on 2 shared CPU cores: a GPU job (DTREC_DEVICE=cuda).
# usage: DTREC_SEED=42 bash scripts/movielens1m_adaptor.sh OUTDIR
set -euo pipefail
source "$(dirname "$0")/_recipe.sh"
start_recipe "${1:?usage: bash scripts/movielens1m_adaptor.sh OUTDIR}"
ENC=offline
D=$OUT/data/ml1m

# items.jsonl.gz names each poster relative to itself (../movielens-1m-posters/posters/ID.jpg).
dtrec prepare jsonl --items "$DATA/movielens-1m/items.jsonl.gz" --interactions "$DATA/movielens-1m/interactions.csv.gz" \
  --out "$D" --cold-fraction "${DTREC_COLD_FRACTION:-0.1}" --seed "$SEED"
# shellcheck disable=SC2046
dtrec extract "$D" --encoder $ENC $(device_flag)
run_adaptor_models "$D" $ENC movielens1m_adaptor
