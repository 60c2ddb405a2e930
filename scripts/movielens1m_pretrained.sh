#!/usr/bin/env bash
# Recipe: MovieLens-1M with posters from a pretrained model (PRETRAINED, default `pretrained`: the shipped one, which
# the demo starts from; docs/results.md's MovieLens-1M rows start from assets/models/pretrained-no-content, the one
# shipped before the content term, with the same sources, and name it), on the split its pretraining used
# (scripts/prepare_domains.sh: seed 42, 10 % of the movies held out of all training, pretraining included).
# The pretrained model zero-shot and fine-tuned on MovieLens-1M (item views (t, vt), as the demo's recipe; at
# most 8 epochs, the best on validation NDCG@10), beside popularity, content kNN and SASRec (dropout 0.2, the SASRec
# paper's for MovieLens-1M), each under both protocols: OUT/results.json (reference, nothing hidden) and
# OUT/results-serving.json (history hidden), and the demo's catalog in OUT/data/ml1m. DTREC_SEED changes the
# trainings, not the split: the pretrained model saw this split's warm movies only, so it is a fair start here
# and on no other split.
# About 5 min per dtrec epoch and 1.5 min per SASRec epoch on one CPU core (about 1 min on two); SASRec stopped
# early at epoch 109 for seed 42. A SASRec run cut short keeps its best epoch in OUT/sasrec and continues with
# `dtrec baseline sasrec ... --resume` (the same flags). Words in DTREC_FINETUNE_ARGS / DTREC_SASREC_ARGS come last and
# win: DTREC_FINETUNE_ARGS="--epochs 26 --patience 10" DTREC_SASREC_ARGS=--repeat-bias gives both sides the same terms.
# usage: DTREC_SEED=42 bash scripts/movielens1m_pretrained.sh OUTDIR [PRETRAINED]
# env: DTREC_DOMAINS (prepared domains, default OUTDIR/domains; kept between runs when shared)
set -euo pipefail
source "$(dirname "$0")/_recipe.sh"
start_recipe "${1:?usage: bash scripts/movielens1m_pretrained.sh OUTDIR [PRETRAINED]}"
PRE=${2:-pretrained}
ENC=offline
DOMAINS=${DTREC_DOMAINS:-$OUT/domains}
D=$DOMAINS/movielens-1m
DTREC_DATA=$DATA bash "$ROOT/scripts/prepare_domains.sh" "$DOMAINS" movielens-1m > /dev/null

# shellcheck disable=SC2046
dtrec finetune --data "$D" --encoder $ENC --init "$PRE" --out "$OUT/dtrec" --seed "$SEED" --epochs 8 --patience 3 \
  --repeat-bias --temperature 0.07 --item-weight 1 --item-pairs t-vt,vt-vt --quiet $(device_flag) $(extra_args FINETUNE) \
  > /dev/null
dtrec baseline popularity --data "$D" --out "$OUT/popularity" > /dev/null
dtrec baseline content-knn --data "$D" --out "$OUT/content-knn" --encoder $ENC > /dev/null
# shellcheck disable=SC2046
dtrec baseline sasrec --data "$D" --out "$OUT/sasrec" --seed "$SEED" --dropout 0.2 $(epochs_flag SASREC) \
  $(device_flag) $(extra_args SASREC) > /dev/null
mkdir -p "$OUT/eval-serving"
declare -A CKPT=([popularity]=$OUT/popularity [content-knn]=$OUT/content-knn [sasrec]=$OUT/sasrec
                 [zero-shot]=$PRE [dtrec]=$OUT/dtrec)
for m in popularity content-knn sasrec zero-shot dtrec; do
  # shellcheck disable=SC2046
  dtrec evaluate --checkpoint "${CKPT[$m]}" --data "$D" --json --quiet $(device_flag) > "$OUT/eval/$m.json"
  # shellcheck disable=SC2046
  dtrec evaluate --checkpoint "${CKPT[$m]}" --data "$D" --json --quiet --exclude-history $(device_flag) \
    > "$OUT/eval-serving/$m.json"
done
# The demo's catalog (dtrec build-demo --data OUT/data/ml1m, docs/results.md): the same movies with their year and
# genres as fields, which the genre filter reads. Ids, texts and images are unchanged, so are the split and features.
# A jsonl catalog is named after its items file's folder, and the demo's card and notice take the data's terms from
# that name: hence the folder `movielens-1m`.
"$DTREC_PYTHON" "$ROOT/scripts/movielens1m_items.py" --items "$DATA/movielens-1m/items.jsonl.gz" \
  --movies "$DATA/movielens-1m-posters/movies.dat" --out "$OUT/data/movielens-1m/items.jsonl.gz" > /dev/null
dtrec prepare jsonl --items "$OUT/data/movielens-1m/items.jsonl.gz" --interactions "$DATA/movielens-1m/interactions.csv.gz" \
  --out "$OUT/data/ml1m" --cold-fraction "${DTREC_COLD_FRACTION:-0.1}" --seed 42 > /dev/null
# shellcheck disable=SC2046
dtrec extract "$OUT/data/ml1m" --encoder $ENC $(device_flag) > /dev/null
for p in "" -serving; do
  "$DTREC_PYTHON" "$ROOT/scripts/_results.py" "$OUT/results$p.json" --recipe movielens1m_pretrained \
    --data "$DATA" --seed "$SEED" --commands "$OUT/commands.txt" \
    popularity="$OUT/eval$p/popularity.json" content-knn="$OUT/eval$p/content-knn.json" \
    sasrec="$OUT/eval$p/sasrec.json" dtrec-pretrained-finetuned="$OUT/eval$p/dtrec.json" \
    dtrec-zero-shot="$OUT/eval$p/zero-shot.json"  # the first dtrec row is the one a model card publishes
done
