#!/usr/bin/env bash
# Recipe: multi-domain pretraining and transfer to a domain left out of it (docs/pretraining.md).
#  1. every domain prepared with its offline features (scripts/prepare_domains.sh; resumable, kept between runs
#     when DTREC_DOMAINS points to one folder);
#  2. `dtrec pretrain --sequences` over every domain but the held-out one (skipped when PRETRAINED is given:
#     the seed then changes only the fine-tunings);
#  3. on the held-out domain: popularity, content kNN, the pretrained model zero-shot (as shipped, and adapted: its
#     feature standardisation refitted on the domain's items, `dtrec adapt`; with DTREC_CONTENT_SCALE also its
#     content term scaled by that factor, `dtrec adapt --content-scale S --keep-norm`), and dtrec fine-tuned for
#     the same number of steps from the pretrained model and from scratch (same architecture), each evaluated
#     under both protocols: OUT/results.json (reference) and OUT/results-serving.json (history hidden).
# usage: DTREC_SEED=42 bash scripts/transfer.sh OUTDIR [PRETRAINED]
# env: DTREC_DOMAINS (prepared domains, default OUTDIR/domains), DTREC_HELD_OUT (default amazon2014-toy),
#      DTREC_PRETRAIN_DOMAINS (space-separated; default every domain but the held-out one),
#      DTREC_FINETUNE_STEPS (default 200), DTREC_PRETRAIN_ARGS / DTREC_FINETUNE_ARGS (extra flags),
#      DTREC_CONTENT_SCALE (a zero-shot row with the content term scaled; chosen by scripts/content_scale.py).
set -euo pipefail
source "$(dirname "$0")/_recipe.sh"
start_recipe "${1:?usage: bash scripts/transfer.sh OUTDIR [PRETRAINED]}"
PRE=${2:-}
ENC=offline
DOMAINS=${DTREC_DOMAINS:-$OUT/domains}
HELD=${DTREC_HELD_OUT:-amazon2014-toy}
STEPS=${DTREC_FINETUNE_STEPS:-200}
ALL=(amazon2014-beauty amazon2014-clothing amazon2014-health amazon2014-toy amazon2014-book_1000000
     amazon2014-electronic_1000000 food movielens-1m scientific)
PRETRAIN_ON=()
for d in ${DTREC_PRETRAIN_DOMAINS:-${ALL[*]}}; do [[ $d == "$HELD" ]] || PRETRAIN_ON+=("$d"); done
NEEDED=("$HELD")
[[ -n $PRE ]] || NEEDED+=("${PRETRAIN_ON[@]}")
DTREC_DATA=$DATA bash "$ROOT/scripts/prepare_domains.sh" "$DOMAINS" "${NEEDED[@]}" > /dev/null
# The CPU-sized architecture of the shipped model; pretrained and scratch runs share it.
ARCH=(--tower adaptor --d-model 128 --n-heads 2 --d-ff 256 --n-experts 4 --temperature 0.07 --max-len 20)
if [[ -z $PRE ]]; then
  SOURCES=()
  for d in "${PRETRAIN_ON[@]}"; do SOURCES+=(--data "$DOMAINS/$d"); done
  # shellcheck disable=SC2046
  dtrec pretrain --sequences --encoder $ENC --out "$OUT/pretrained" "${SOURCES[@]}" "${ARCH[@]}" \
    --sequence-batch-size 128 --batch-size 256 --steps-per-epoch 100 --epochs 40 --patience 4 \
    --valid-users 500 --seed "$SEED" --quiet $(device_flag) $(extra_args PRETRAIN) > /dev/null
  PRE=$OUT/pretrained
fi
H=$DOMAINS/$HELD
dtrec adapt --checkpoint "$PRE" --data "$H" --out "$OUT/adapted" > /dev/null
MODELS=(popularity content-knn zero-shot zero-shot-adapted)
if [[ -n ${DTREC_CONTENT_SCALE:-} ]]; then
  dtrec adapt --checkpoint "$PRE" --data "$H" --content-scale "$DTREC_CONTENT_SCALE" --keep-norm \
    --out "$OUT/scaled" > /dev/null
  MODELS+=(zero-shot-scaled)
fi
MODELS+=(finetuned scratch)
dtrec baseline popularity --data "$H" --out "$OUT/popularity" > /dev/null
dtrec baseline content-knn --data "$H" --out "$OUT/content-knn" --encoder $ENC > /dev/null
FT=(--data "$H" --encoder $ENC --seed "$SEED" --max-steps "$STEPS" --epochs 1000 --quiet "${ARCH[@]}")
# shellcheck disable=SC2046
dtrec finetune "${FT[@]}" --init "$PRE" --out "$OUT/finetuned" $(device_flag) $(extra_args FINETUNE) > /dev/null
# shellcheck disable=SC2046
dtrec finetune "${FT[@]}" --init none --out "$OUT/scratch" $(device_flag) $(extra_args FINETUNE) \
  > /dev/null
mkdir -p "$OUT/eval-serving"
declare -A CKPT=([popularity]=$OUT/popularity [content-knn]=$OUT/content-knn [zero-shot]=$PRE
                 [zero-shot-adapted]=$OUT/adapted [zero-shot-scaled]=$OUT/scaled [finetuned]=$OUT/finetuned
                 [scratch]=$OUT/scratch)
for m in "${MODELS[@]}"; do
  # shellcheck disable=SC2046
  dtrec evaluate --checkpoint "${CKPT[$m]}" --data "$H" --json --quiet $(device_flag) > "$OUT/eval/$m.json"
  # shellcheck disable=SC2046
  dtrec evaluate --checkpoint "${CKPT[$m]}" --data "$H" --json --quiet --exclude-history $(device_flag) \
    > "$OUT/eval-serving/$m.json"
done
declare -A ROW=([popularity]=popularity [content-knn]=content-knn [zero-shot]=dtrec-zero-shot
                [zero-shot-adapted]=dtrec-zero-shot-adapted [zero-shot-scaled]=dtrec-zero-shot-scaled
                [finetuned]=dtrec-pretrained-finetuned [scratch]=dtrec-scratch)
for p in "" -serving; do
  ROWS=()
  for m in "${MODELS[@]}"; do ROWS+=("${ROW[$m]}=$OUT/eval$p/$m.json"); done
  "$DTREC_PYTHON" "$ROOT/scripts/_results.py" "$OUT/results$p.json" --recipe transfer \
    --data "$DATA" --seed "$SEED" --commands "$OUT/commands.txt" "${ROWS[@]}"
done
