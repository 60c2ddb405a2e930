#!/usr/bin/env bash
# Assemble the dtrec demo's Hugging Face Space folder and push it when HF_TOKEN is set
# (a dry run that prints the folder otherwise). The token is read by huggingface_hub from
# the environment and never echoed here.
#
#   scripts/space.sh USER/SPACE --assets assets/demo [--out DIR]       # bundle a demo folder
#   scripts/space.sh USER/SPACE --demo USER/DEMO [--model USER/MODEL]  # load them from the Hub
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
py="${PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python3)"
exec "$py" "$here/space.py" "$@"
