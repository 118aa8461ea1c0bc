#!/usr/bin/env bash
# Configure this git clone to strip notebook outputs when notebooks are staged (nbstripout as a
# git "clean" filter; .gitattributes applies it to *.ipynb). Running a notebook in Jupyter then
# leaves `git status` clean: outputs, execution counts, widget state and the language details
# Jupyter fills in (Python version ...) never reach git, while edits to cells do. The notebooks
# on disk keep their outputs. Run by scripts/setup.sh; safe to run again.
# PYTHON: the interpreter with nbstripout (default: this checkout's .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    echo "Not a git work tree: notebook output filter not configured."
    exit 0
fi
PYTHON=${PYTHON:-$PWD/.venv/bin/python}
# Keep cell ids (Jupyter keeps them stable); of language_info keep only its name, as stored.
strip_keys="metadata.language_info.codemirror_mode metadata.language_info.file_extension"
strip_keys+=" metadata.language_info.mimetype metadata.language_info.nbconvert_exporter"
strip_keys+=" metadata.language_info.pygments_lexer metadata.language_info.version"
git config filter.nbstripout.clean "'$PYTHON' -m nbstripout --keep-id --extra-keys '$strip_keys'"
git config filter.nbstripout.smudge cat
