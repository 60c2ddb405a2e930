#!/usr/bin/env bash
# Prepare every pretraining domain as its own data set and extract its offline features:
# the seven title-only domains of seqrec-text/, MovieLens-1M with its posters (10 % of its
# movies held out for cold start, as the MovieLens-100K recipe does; DTREC_COLD_FRACTION) and
# Amazon Scientific's text (its .text file), each in OUTDIR/<domain>/. Item ids are per domain, and so is each prepared folder's item table: a
# pretraining run over several folders (`dtrec pretrain --data A --data B ...`) stacks their
# tables one after the other, so "1" of food and "1" of beauty stay two items.
# Re-running it resumes: a prepared folder is kept, and extraction skips cached features and
# continues from its last checkpoint after an interrupt.
# usage: bash scripts/prepare_domains.sh OUTDIR [DOMAIN ...]   (default: all nine)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=${DTREC_DATA:-$ROOT/../shared/data}
OUT=${1:?usage: bash scripts/prepare_domains.sh OUTDIR [DOMAIN ...]}
shift
ENC=${DTREC_ENCODER:-offline}
if [[ -z "${DTREC_PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then DTREC_PYTHON=$ROOT/.venv/bin/python; else DTREC_PYTHON=python; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
dtrec() { "$DTREC_PYTHON" -m dtrec.cli "$@"; }  # this checkout's dtrec, whether or not a venv is active
DOMAINS=("$@")
if [[ ${#DOMAINS[@]} -eq 0 ]]; then
  DOMAINS=(amazon2014-beauty amazon2014-clothing amazon2014-health amazon2014-toy
           amazon2014-book_1000000 amazon2014-electronic_1000000 food movielens-1m scientific)
fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

for d in "${DOMAINS[@]}"; do
  if [[ ! -f $OUT/$d/meta.json ]]; then
    case $d in
      scientific)
        dtrec prepare unisrec --source "$DATA/amazon-scientific" --name Scientific --out "$OUT/$d" ;;
      movielens-1m)  # its items.jsonl.gz names the posters relative to itself
        dtrec prepare jsonl --items "$DATA/movielens-1m/items.jsonl.gz" \
          --interactions "$DATA/movielens-1m/interactions.csv.gz" --out "$OUT/$d" \
          --cold-fraction "${DTREC_COLD_FRACTION:-0.1}" --seed 42 ;;
      *)
        dtrec prepare jsonl --items "$DATA/seqrec-text/$d/items.jsonl.gz" \
          --interactions "$DATA/seqrec-text/$d/interactions.csv.gz" --out "$OUT/$d" ;;
    esac
  fi
  dtrec extract "$OUT/$d" --encoder "$ENC"
done
echo "pretrain over them with: dtrec pretrain --sequences --tower adaptor --encoder $ENC --out runs/pretrain$(printf ' --data %q' "${DOMAINS[@]/#/$OUT/}")"
