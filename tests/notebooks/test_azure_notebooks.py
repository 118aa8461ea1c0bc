"""Notebooks 20-24 (Azure).

Without credentials: the notebooks are checked statically, and the local part of notebook 21
(check the data, train, then serve the model with azmlinfsrv on 127.0.0.1) runs for real.
With ``--subscription_id --resource_group --workspace_name --workspace_region`` (and a login,
see notebook 20): smoke tests run 20-24 in order through papermill. They create paid Azure
resources (ACI, an AKS DevTest cluster, a compute cluster) and delete the services, the AKS
cluster and the compute cluster at the end; the workspace is kept.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import papermill as pm
import pytest
import scrapbook as sb

from utils_cv.classification.data import sample_data_path

NOTEBOOKS = Path(__file__).resolve().parents[2] / "classification" / "notebooks"
KERNEL_NAME = "utils_cv"

AZURE_NOTEBOOKS = [
    "20_azure_workspace_setup.ipynb",
    "21_deployment_on_azure_container_instances.ipynb",
    "22_deployment_on_azure_kubernetes_service.ipynb",
    "23_aci_aks_web_service_testing.ipynb",
    "24_run_notebook_on_azureml.ipynb",
]
AZURE_PARAMETERS = ("subscription_id", "resource_group", "workspace_name", "workspace_region")
SAMPLE_CLASSES = {"apple", "citrus", "flower", "tool"}


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


# --- without credentials ----------------------------------------------------------------------


@pytest.mark.parametrize("name", AZURE_NOTEBOOKS)
def test_notebook_is_committed_clean(name):
    nb = read(name)
    assert nb.metadata["kernelspec"] == {
        "name": "utils_cv",
        "display_name": "Python 3 (utils_cv)",
        "language": "python",
    }
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert sum("parameters" in tags(c) for c in code) == 1
    for cell in code:
        assert not cell.outputs and cell.execution_count is None, "commit without outputs"
        assert "import *" not in cell.source
        ast.parse(cell.source)  # valid Python, no shell magics


@pytest.mark.parametrize("name", AZURE_NOTEBOOKS)
def test_notebook_explains_costs_cleanup_and_sdk_support(name):
    text = "\n".join(c.source for c in read(name).cells if c.cell_type == "markdown").lower()
    assert "cost" in text and "clean-up" in text and "delete" in text
    assert "2025-03-31" in text and "2026-06-30" in text  # SDK v1 deprecation and end of support


@pytest.mark.parametrize("name", AZURE_NOTEBOOKS)
def test_notebook_takes_the_azure_parameters(name):
    params = next(c for c in read(name).cells if "parameters" in tags(c))
    assigned = {
        target.id
        for node in ast.parse(params.source).body
        if isinstance(node, ast.Assign)
        for target in node.targets
    }
    assert set(AZURE_PARAMETERS) <= assigned


@pytest.mark.parametrize("name", AZURE_NOTEBOOKS)
def test_cells_using_azure_are_tagged(name):
    """Cells using the workspace are tagged 'azure' (the local run stops before the first)."""
    for cell in read(name).cells:
        if cell.cell_type == "code" and ("ws" in _names(cell.source)):
            assert "azure" in tags(cell), cell.source[:200]


def _names(source: str) -> set[str]:
    return {node.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Name)}


def local_part(name: str) -> nbformat.NotebookNode:
    """The notebook up to (without) its first cell tagged 'azure'."""
    nb = read(name)
    first_azure = next(i for i, c in enumerate(nb.cells) if "azure" in tags(c))
    nb.cells = nb.cells[:first_azure]
    return nb


def test_21_exposes_the_specification_and_trains_after_the_data_check():
    """Notebook 21 trains like notebooks 01-03: data check first, then ``train`` on the good
    files, with the specification's fields (backbone, image size, resize) as parameters."""
    nb = read(AZURE_NOTEBOOKS[1])
    params = next(c for c in nb.cells if "parameters" in tags(c))
    assert {"ARCHITECTURE", "IM_SIZE", "RESIZE", "EPOCHS_HEAD", "EPOCHS"} <= _names(params.source)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    check = code.index("check_dataset(DATA_PATH")
    assert code.index("train(DATA_PATH, spec, config, files=report.good_files)") > check
    assert "fit(" not in code and "get_dls(" not in code


def tiny_21_parameters(tmp_path: Path) -> dict:
    """Notebook 21 on objects_tiny at 64 px, cropped (not the backbone's default resize)."""
    return {
        "DATA_PATH": str(sample_data_path("objects_tiny")),
        "IM_SIZE": 64,
        "RESIZE": "crop",
        "EPOCHS_HEAD": 2,
        "EPOCHS": 0,
        "OUTPUT_DIR": str(tmp_path / "outputs"),
    }


@pytest.mark.notebooks
def test_21_local_service_section_runs_without_azure(tmp_path):
    """Notebook 21 up to its Azure part: check the data, train a tiny model, serve it with
    azmlinfsrv on 127.0.0.1, score images over HTTP (the notebook's probabilities), get a 400
    for a bad request."""
    source = tmp_path / "21_local.ipynb"
    nbformat.write(local_part(AZURE_NOTEBOOKS[1]), source)
    output = tmp_path / "21_local.output.ipynb"
    pm.execute_notebook(
        str(source),
        str(output),
        parameters=tiny_21_parameters(tmp_path),
        kernel_name=KERNEL_NAME,
        cwd=str(NOTEBOOKS),
        progress_bar=False,
    )
    scraps = sb.read_notebook(str(output)).scraps.data_dict
    assert scraps["local_bad_request_status"] == 400
    assert len(scraps["local_top_labels"]) == 4
    assert set(scraps["local_top_labels"]) <= SAMPLE_CLASSES
    assert scraps["local_max_abs_diff"] <= 1e-5
    outputs = tmp_path / "outputs"
    assert (outputs / "source" / "score.py").is_file()
    assert json.loads((outputs / "model" / "model.json").read_text())["resize"] == "crop"
    assert (outputs / "data_issues.csv").is_file()  # the data check ran


# --- with Azure credentials: smoke tests, in order -------------------------------------------


@pytest.mark.azure
def test_20_workspace_setup(azure_settings, run_notebook, tmp_path):
    scraps = run_notebook(AZURE_NOTEBOOKS[0], {**azure_settings, "CONFIG_PATH": str(tmp_path)})
    assert scraps["workspace_name"] == azure_settings["workspace_name"]
    assert scraps["config_written"]


@pytest.mark.azure
def test_21_deploy_on_aci(azure_settings, run_notebook, tmp_path):
    scraps = run_notebook(AZURE_NOTEBOOKS[1], {**azure_settings, **tiny_21_parameters(tmp_path)})
    assert scraps["aci_state"] == "Healthy"
    assert scraps["aci_top_labels"] == scraps["local_top_labels"]


@pytest.mark.azure
def test_22_deploy_on_aks(azure_settings, run_notebook, tmp_path):
    scraps = run_notebook(
        AZURE_NOTEBOOKS[2],
        {
            **azure_settings,
            "AKS_CLUSTER_PURPOSE": "DevTest",  # one node: the cheapest cluster that works
            "AKS_AGENT_COUNT": 1,
            "REPLICAS_MAX": 1,
            "OUTPUT_DIR": str(tmp_path / "outputs"),
        },
    )
    assert scraps["aks_state"] == "Healthy"
    assert scraps["aks_sdk_matches_http"]
    assert set(scraps["aks_top_labels"]) <= SAMPLE_CLASSES


@pytest.mark.azure
def test_23_test_and_tear_down_services(azure_settings, run_notebook):
    scraps = run_notebook(
        AZURE_NOTEBOOKS[3],
        {**azure_settings, "DELETE_SERVICES": True, "DELETE_AKS_CLUSTER": True},
    )
    assert set(scraps["services_tested"]) == {"utils-cv-aci", "utils-cv-aks"}
    assert set(scraps["bad_request_statuses"].values()) == {400}
    assert not {"utils-cv-aci", "utils-cv-aks"} & set(scraps["remaining_services"])


@pytest.mark.azure
def test_24_run_notebook_01_on_azureml(azure_settings, run_notebook, tmp_path):
    scraps = run_notebook(
        AZURE_NOTEBOOKS[4],
        {
            **azure_settings,
            "NOTEBOOK_PARAMETERS": {"EPOCHS": 1, "IM_SIZE": 96},
            "STAGING_DIR": str(tmp_path / "staging"),
            "DELETE_COMPUTE": True,
        },
    )
    assert scraps["run_statuses"] == ["Completed"]
    assert len(scraps["output_notebooks"]) == 1
