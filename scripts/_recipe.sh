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
