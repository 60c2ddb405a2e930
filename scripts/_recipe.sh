# Shared plumbing of the recipes (sourced by scripts/*.sh, not run on its own).
# Env overrides: DTREC_DATA (raw data), DTREC_PYTHON, DTREC_SEED, DTREC_DEVICE,
# DTREC_EPOCHS (all trainings) or DTREC_{PRETRAIN,FINETUNE,SASREC}_EPOCHS, and
# DTREC_{PRETRAIN,FINETUNE,SASREC}_ARGS (extra flags, e.g. "--max-steps 5" for a smoke run).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=${DTREC_DATA:-$ROOT/../shared/data}
SEED=${DTREC_SEED:-42}
if [[ -z "${DTREC_PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then DTREC_PYTHON=$ROOT/.venv/bin/python; else DTREC_PYTHON=python; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

start_recipe() {  # start_recipe OUTDIR: refuse to mix two runs in one folder
  OUT=$1
  if [[ -d "$OUT" && -n "$(ls -A "$OUT")" ]]; then
    echo "$OUT is not empty: give a new OUTDIR so results of two runs never mix" >&2
    exit 2
  fi
  mkdir -p "$OUT/eval"
  OUT=$(cd "$OUT" && pwd)
  : > "$OUT/commands.txt"
}

dtrec() {  # run one dtrec command, recording it in OUT/commands.txt
  echo "dtrec $*" >> "$OUT/commands.txt"
  echo "+ dtrec $*" >&2
  "$DTREC_PYTHON" -m dtrec.cli "$@"
}

epochs_flag() {  # epochs_flag PRETRAIN|FINETUNE|SASREC -> "--epochs N" or nothing
  local var="DTREC_$1_EPOCHS"
  local n=${!var:-${DTREC_EPOCHS:-}}
  if [[ -n "$n" ]]; then echo "--epochs $n"; fi
}

extra_args() {  # extra_args PRETRAIN|FINETUNE|SASREC -> the DTREC_<X>_ARGS words
  local var="DTREC_$1_ARGS"
  echo "${!var:-}"
}

device_flag() { if [[ -n "${DTREC_DEVICE:-}" ]]; then echo "--device $DTREC_DEVICE"; fi; }

# run_models DATA ENCODER PRETRAINED SUFFIX: finetune dtrec, train both baselines, evaluate all three
run_models() {
  local data=$1 enc=$2 pre=$3 sfx=$4
  # shellcheck disable=SC2046
  dtrec finetune --data "$data" --encoder "$enc" --init "$pre" --out "$OUT/dtrec$sfx" --seed "$SEED" \
    $(epochs_flag FINETUNE) $(device_flag) $(extra_args FINETUNE)
  dtrec baseline popularity --data "$data" --out "$OUT/popularity$sfx" > /dev/null
  # shellcheck disable=SC2046
  dtrec baseline sasrec --data "$data" --out "$OUT/sasrec$sfx" --seed "$SEED" \
    $(epochs_flag SASREC) $(device_flag) $(extra_args SASREC) > /dev/null
  for m in popularity sasrec dtrec; do
    dtrec evaluate --checkpoint "$OUT/$m$sfx" --data "$data" --json $(device_flag) > "$OUT/eval/$m$sfx.json"
  done
}

# run_adaptor_models DATA ENCODER RECIPE: the adaptor towers with the repeat term trained from scratch (high
# epoch cap, early stopping on valid NDCG@10) beside popularity, content kNN and SASRec (RecBole's, without the
# repeat term), each evaluated under both protocols:
# OUT/results.json (reference, nothing hidden) and OUT/results-serving.json (serving, history hidden).
run_adaptor_models() {
  local data=$1 enc=$2 recipe=$3
  # shellcheck disable=SC2046
  dtrec finetune --data "$data" --encoder "$enc" --out "$OUT/dtrec" --seed "$SEED" --init none --tower adaptor \
    --d-model 128 --n-heads 2 --d-ff 256 --temperature 0.07 --epochs 200 --patience 10 --repeat-bias --quiet \
    $(device_flag) $(extra_args FINETUNE) > /dev/null
  dtrec baseline popularity --data "$data" --out "$OUT/popularity" > /dev/null
  dtrec baseline content-knn --data "$data" --out "$OUT/content-knn" --encoder "$enc" > /dev/null
  # shellcheck disable=SC2046
  dtrec baseline sasrec --data "$data" --out "$OUT/sasrec" --seed "$SEED" $(epochs_flag SASREC) $(device_flag) \
    $(extra_args SASREC) > /dev/null
  mkdir -p "$OUT/eval-serving"
  for m in popularity content-knn sasrec dtrec; do
    # shellcheck disable=SC2046
    dtrec evaluate --checkpoint "$OUT/$m" --data "$data" --json --quiet $(device_flag) > "$OUT/eval/$m.json"
    # shellcheck disable=SC2046
    dtrec evaluate --checkpoint "$OUT/$m" --data "$data" --json --quiet --exclude-history $(device_flag) \
      > "$OUT/eval-serving/$m.json"
  done
  for p in "" -serving; do
    "$DTREC_PYTHON" "$ROOT/scripts/_results.py" "$OUT/results$p.json" --recipe "$recipe" \
      --data "$DATA" --seed "$SEED" --commands "$OUT/commands.txt" \
      popularity="$OUT/eval$p/popularity.json" content-knn="$OUT/eval$p/content-knn.json" \
      sasrec="$OUT/eval$p/sasrec.json" dtrec-adaptor="$OUT/eval$p/dtrec.json"
  done
}
