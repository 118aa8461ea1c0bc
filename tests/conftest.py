"""Shared fixtures: run a notebook through papermill and read what it recorded with scrapbook."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "classification" / "notebooks"
KERNEL_NAME = "utils_cv"


def pytest_addoption(parser):
    for name in ("subscription_id", "resource_group", "workspace_name", "workspace_region"):
        parser.addoption(f"--{name}", default=None, help=f"Azure {name.replace('_', ' ')}")


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU; none found")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def execute_notebook(name: str, out_dir: Path, parameters: dict | None = None) -> dict:
    """Run ``classification/notebooks/<name>`` with papermill; return its scrapbook scraps."""
    import papermill as pm
    import scrapbook as sb

    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / name
    pm.execute_notebook(
        str(NOTEBOOKS / name),
        str(output),
        parameters=parameters or {},
        kernel_name=KERNEL_NAME,
        cwd=str(NOTEBOOKS),
        progress_bar=False,
    )
    return sb.read_notebook(str(output)).scraps.data_dict


@pytest.fixture
def run_notebook(tmp_path):
    """Call as ``run_notebook("01_training_introduction.ipynb", {"EPOCHS": 1})`` -> scraps dict."""

    def run(name: str, parameters: dict | None = None) -> dict:
        return execute_notebook(name, tmp_path / "notebooks", parameters)

    return run


# --- azure ---------------------------------------------------------------------------------


@pytest.fixture
def azure_settings(request) -> dict:
    """The --subscription_id, --resource_group, --workspace_name and --workspace_region values.

    Skips the test, naming the missing options, unless all four are given: nothing in CI can
    reach Azure, so tests that create Azure resources run only when asked to.
    """
    names = ("subscription_id", "resource_group", "workspace_name", "workspace_region")
    settings = {name: request.config.getoption(name) for name in names}
    missing = [f"--{name}" for name, value in settings.items() if not value]
    if missing:
        pytest.skip(f"needs Azure credentials and {', '.join(missing)} (creates paid resources)")
    return settings
