"""scripts/notebook_filter.sh: notebook outputs and Jupyter's additions never reach git."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "classification" / "notebooks").glob("*.ipynb"))
# What JupyterLab 4 writes into a notebook's metadata once a kernel ran it.
LANGUAGE_INFO = {
    "codemirror_mode": {"name": "ipython", "version": 3},
    "file_extension": ".py",
    "mimetype": "text/x-python",
    "name": "python",
    "nbconvert_exporter": "python",
    "pygments_lexer": "ipython3",
    "version": "3.11.7",
}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@invalid", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_stored_notebooks_have_no_outputs(path):
    import copy

    import nbformat
    from nbstripout import strip_output

    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    stripped = strip_output(copy.deepcopy(nb), False, False, keep_id=True)
    assert stripped == nb, f"{path.name} holds outputs, execution counts or widget state"
    assert nb.metadata.kernelspec.name == "utils_cv"
    assert nb.metadata.get("language_info", {"name": "python"}) == {"name": "python"}


@pytest.fixture
def repo_with_filter(tmp_path):
    """A git repository with this checkout's .gitattributes, filter script and notebook 10."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO / ".gitattributes", repo / ".gitattributes")
    shutil.copy(REPO / "scripts" / "notebook_filter.sh", repo / "scripts" / "notebook_filter.sh")
    shutil.copy(NOTEBOOKS[0].with_name("10_image_annotation.ipynb"), repo / "nb.ipynb")
    git(repo, "init", "-q")
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["bash", "scripts/notebook_filter.sh"], cwd=repo, check=True, env=env)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "notebook")
    return repo


def test_run_notebook_stages_nothing_but_an_edit_does(repo_with_filter):
    repo = repo_with_filter
    path = repo / "nb.ipynb"
    committed = path.read_text()
    # What Jupyter saves after "run all": outputs, counts, widget state, language details.
    nb = json.loads(committed)
    for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        cell["execution_count"] = i + 1
        cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["ran\n"]}]
    nb["metadata"]["language_info"] = LANGUAGE_INFO
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    path.write_text(json.dumps(nb, indent=1) + "\n")

    assert git(repo, "diff") == ""
    git(repo, "add", "--all")
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "show", "HEAD:nb.ipynb") == committed
    assert "ran" in path.read_text()  # the file on disk keeps its outputs

    # An edit to a cell is a change, staged without the outputs.
    nb["cells"][1]["source"].append("\nimport os")
    path.write_text(json.dumps(nb, indent=1) + "\n")
    git(repo, "add", "--all")
    staged = json.loads(git(repo, "show", ":nb.ipynb"))
    assert "".join(staged["cells"][1]["source"]).endswith("\nimport os")
    assert all(not c.get("outputs") for c in staged["cells"])
    assert staged["metadata"]["language_info"] == {"name": "python"}
    assert "widgets" not in staged["metadata"]
