#!/usr/bin/env bash
# Set up (scripts/setup.sh, quick when already done), then open the notebooks in JupyterLab.
# Extra arguments go to `jupyter lab`, e.g. on a remote machine: --no-browser --port 8888
# (README "Open the notebooks"). Notebook 7 is served too: replace /lab by /tree in the address.
set -euo pipefail
cd "$(dirname "$0")/.."
UTILS_CV_NO_AZURE=${UTILS_CV_NO_AZURE:-1} bash scripts/setup.sh
source .venv/bin/activate
allow_root=()
if [ "$(id -u)" = "0" ]; then
    allow_root=(--allow-root) # Jupyter refuses to run as root without it
fi
exec jupyter lab "${allow_root[@]}" --notebook-dir=classification/notebooks "$@"
