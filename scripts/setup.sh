#!/usr/bin/env bash
# Create or reuse the local virtual environment .venv and install utils_cv with everything the
# notebooks and tests need: JupyterLab 4 and Notebook 7 with the widget front ends (the
# `notebooks` extra), a Jupyter kernel named utils_cv ("Python 3 (utils_cv)", the kernel the
# notebooks ask for), and the git filter that keeps notebook outputs out of commits
# (scripts/notebook_filter.sh). Safe to run again; when nothing changed since the last run
# (same setup.py, extras and Python) it only checks, in a few seconds.
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

extras="notebooks,dev,distributed"
if [ "${UTILS_CV_NO_AZURE:-0}" != "1" ]; then
    extras="notebooks,dev,distributed,azure"
fi
# What the last run installed (.venv/.utils_cv_setup: setup.py's hash, pins and Python on line
# 1, the extras on line 2); pip runs again only when line 1 changed or an extra is missing.
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
stamp_file=.venv/.utils_cv_setup
key="$(sha256sum setup.py | cut -d' ' -f1) $TORCH_PINS $(python --version)"
installed_extras=""
if [ "$(sed -n 1p "$stamp_file" 2>/dev/null)" = "$key" ]; then
    installed_extras=$(sed -n 2p "$stamp_file")
fi
missing=0
for extra in ${extras//,/ }; do
    [[ ",$installed_extras," == *",$extra,"* ]] || missing=1
done
if [ "$missing" = 1 ] || ! python -c "import utils_cv, jupyterlab" 2>/dev/null; then
    python -m pip install -q --upgrade pip wheel setuptools
    # torch first, from plain pip: pinned to the releases this project is tested with.
    # shellcheck disable=SC2086
    python -m pip install -q $TORCH_PINS
    python -m pip install -q -e ".[${extras}]"
    printf '%s\n%s\n' "$key" "${installed_extras:+$installed_extras,}$extras" > "$stamp_file"
fi

# A Jupyter kernel inside the venv, so papermill and Jupyter run notebooks with this environment.
python -m ipykernel install --sys-prefix --name utils_cv --display-name "Python 3 (utils_cv)" >/dev/null
bash scripts/notebook_filter.sh
echo "Environment ready: $(python --version), torch $(python -c 'import torch; print(torch.__version__)'), JupyterLab $(python -c 'import jupyterlab; print(jupyterlab.__version__)')"
