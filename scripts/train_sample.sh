#!/usr/bin/env bash
# Set up (scripts/setup.sh), then train and evaluate a classifier on the shipped sample data by
# running notebook 01 headless. Prints the validation accuracy and where the model and the
# executed notebook are. Extra arguments go to papermill, e.g. -p EPOCHS 2 -p DATA_PATH /my/data
# Then classify images with the saved model:
#   python -m utils_cv.classification.predict MODEL_DIR IMAGES_OR_FOLDERS... --out predictions.csv
set -euo pipefail
cd "$(dirname "$0")/.."
UTILS_CV_NO_AZURE=${UTILS_CV_NO_AZURE:-1} bash scripts/setup.sh
source .venv/bin/activate
python classification/tools/run_notebook.py 01_training_introduction.ipynb "$@"
