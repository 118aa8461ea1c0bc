#!/usr/bin/env bash
# Create or reuse the local virtual environment .venv and install utils_cv with everything the
# notebooks and tests need. Safe to run again: it only installs what is missing.
# Needs Python 3.11 (python3.11 or python3) on Debian/Ubuntu. Set UTILS_CV_NO_AZURE=1 to skip the
# Azure ML SDK (needed only for notebooks 20-24 and their tests).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
    echo "Creating virtual environment .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pip install -q --upgrade pip wheel setuptools

# torch first, from plain pip: pinned to the releases this project is tested with.
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"

extras="dev"
if [ "${UTILS_CV_NO_AZURE:-0}" != "1" ]; then
    extras="dev,azure"
fi
python -m pip install -q -e ".[${extras}]"

# A Jupyter kernel inside the venv, so papermill runs notebooks with this environment.
python -m ipykernel install --sys-prefix --name utils_cv --display-name "Python 3 (utils_cv)" >/dev/null
echo "Environment ready: $(python --version), torch $(python -c 'import torch; print(torch.__version__)')"
