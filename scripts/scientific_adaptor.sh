#!/usr/bin/env bash
# Recipe: Amazon "Industrial & Scientific" (UniSRec/MISSRec format, precomputed CLIP ViT-B/32 text +
# image features) with the adaptor towers (docs/model.md), trained from scratch with a high epoch cap
# and early stopping on validation NDCG@10; beside popularity, content kNN (the frozen features, no
# training) and SASRec, each evaluated under both protocols: the reference one (nothing hidden) in
# OUT/results.json, the serving one (history hidden) in OUT/results-serving.json.
# usage: DTREC_SEED=42 bash scripts/scientific_adaptor.sh OUTDIR
set -euo pipefail
source "$(dirname "$0")/_recipe.sh"
start_recipe "${1:?usage: bash scripts/scientific_adaptor.sh OUTDIR}"
ENC=clip-vit-b-32
D=$OUT/data/scientific

dtrec prepare unisrec --source "$DATA/amazon-scientific" --name Scientific --out "$D" --seed "$SEED"
run_adaptor_models "$D" $ENC scientific_adaptor
