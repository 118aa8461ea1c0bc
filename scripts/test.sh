#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the whole test suite: unit tests, notebooks through
# papermill, and integration tests with default parameters. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
python -m pytest -ra --durations=25 "$@"
