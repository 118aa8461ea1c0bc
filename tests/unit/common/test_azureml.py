"""Azure ML helpers without credentials: login choice, settings checks, and the real azureml-sdk
configuration objects the notebooks 20-24 build (nothing here contacts Azure)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("azureml.core", reason="needs the 'azure' extra: pip install -e .[azure]")

import azureml.core.authentication as aml_auth  # noqa: E402
from azureml.contrib.notebook import NotebookRunConfig  # noqa: E402
from azureml.core import Environment, Workspace  # noqa: E402
from azureml.core.compute import AksCompute  # noqa: E402
from azureml.exceptions import ProjectSystemException  # noqa: E402

from utils_cv.common import azureml as aml  # noqa: E402
from utils_cv.common.deployment import installed_version  # noqa: E402

SP_ENV = {"AZURE_TENANT_ID": "tenant", "AZURE_CLIENT_ID": "client", "AZURE_CLIENT_SECRET": "s3cret"}
SETTINGS = {
    "subscription_id": "01234567-89ab-cdef-0123-456789abcdef",
    "resource_group": "utils-cv-rg",
    "workspace_name": "utils-cv-ws",
    "workspace_region": "eastus",
}


# --- authentication ---------------------------------------------------------------------------


def test_service_principal_from_environment():
    assert aml.auth_method(SP_ENV) == "service_principal"
    auth = aml.get_auth(SP_ENV)
    assert isinstance(auth, aml_auth.ServicePrincipalAuthentication)
    assert (auth._tenant_id, auth._service_principal_id) == ("tenant", "client")


@pytest.mark.parametrize("missing", sorted(SP_ENV))
def test_partial_service_principal_is_an_error(missing):
    env = {k: v for k, v in SP_ENV.items() if k != missing}
    with pytest.raises(ValueError, match=missing):
        aml.auth_method(env)


def test_cli_login_when_logged_in(monkeypatch):
    class FakeCliAuth:
        pass

    monkeypatch.setattr(aml, "azure_cli_logged_in", lambda: True)
    monkeypatch.setattr(aml_auth, "AzureCliAuthentication", FakeCliAuth)
    assert aml.auth_method({}) == "cli"
    assert isinstance(aml.get_auth({}), FakeCliAuth)


def test_interactive_login_otherwise(monkeypatch):
    calls = []

    class FakeInteractive:
        def __init__(self, tenant_id=None, **kwargs):
            calls.append(tenant_id)

    monkeypatch.setattr(aml, "azure_cli_logged_in", lambda: False)
    monkeypatch.setattr(aml_auth, "InteractiveLoginAuthentication", FakeInteractive)
    assert aml.auth_method({}) == "interactive"
    assert isinstance(aml.get_auth({}), FakeInteractive)
    aml.get_auth({"AZURE_TENANT_ID": "my-tenant"})
    assert calls == [None, "my-tenant"]


def fake_az(folder: Path, exit_code: int) -> Path:
    """An ``az`` executable that exits with ``exit_code``."""
    az = folder / "az"
    az.write_text(f"#!/bin/sh\nexit {exit_code}\n")
    az.chmod(az.stat().st_mode | stat.S_IEXEC)
    return az


@pytest.mark.parametrize("exit_code, expected", [(0, True), (1, False)])
def test_azure_cli_logged_in_runs_az(tmp_path, monkeypatch, exit_code, expected):
    monkeypatch.setattr(aml.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setenv("PATH", str(fake_az(tmp_path, exit_code).parent))
    assert aml.azure_cli_logged_in() is expected


def test_azure_cli_not_usable_without_az_or_azure_cli_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_az(tmp_path, 0).parent))
    monkeypatch.setattr(aml.importlib.util, "find_spec", lambda name: None)
    assert aml.azure_cli_logged_in() is False  # az alone is not enough for AzureML
    monkeypatch.setattr(aml.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert aml.azure_cli_logged_in() is False


# --- workspace ------------------------------------------------------------------------------


def test_check_workspace_args_accepts_valid_settings():
    aml.check_workspace_args(**SETTINGS)


@pytest.mark.parametrize(
    "field, value",
    [
        ("subscription_id", ""),
        ("subscription_id", "not-a-guid"),
        ("resource_group", " "),
        ("workspace_name", "ab"),
        ("workspace_name", "-starts-with-dash"),
        ("workspace_name", "x" * 34),
        ("workspace_region", "East US"),
        ("workspace_region", None),
    ],
)
def test_check_workspace_args_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        aml.check_workspace_args(**{**SETTINGS, field: value})


class FakeWorkspace:
    def __init__(self):
        self.config_paths = []

    def write_config(self, path=None, file_name=None):
        self.config_paths.append(path)


def test_get_or_create_workspace_creates_a_missing_one(monkeypatch, tmp_path):
    created = {}
    workspace = FakeWorkspace()

    def missing(**kwargs):
        raise ProjectSystemException("workspace not found")

    def create(**kwargs):
        created.update(kwargs)
        return workspace

    monkeypatch.setattr(Workspace, "get", staticmethod(missing))
    monkeypatch.setattr(Workspace, "create", staticmethod(create))
    auth = object()
    ws = aml.get_or_create_workspace(**SETTINGS, auth=auth, config_path=tmp_path)
    assert ws is workspace and workspace.config_paths == [str(tmp_path)]
    assert created["name"] == "utils-cv-ws" and created["location"] == "eastus"
    assert created["subscription_id"] == SETTINGS["subscription_id"]
    assert created["resource_group"] == "utils-cv-rg" and created["auth"] is auth
    assert created["create_resource_group"] and created["exist_ok"]


def test_get_or_create_workspace_reuses_an_existing_one(monkeypatch):
    workspace = FakeWorkspace()
    monkeypatch.setattr(Workspace, "get", staticmethod(lambda **kwargs: workspace))
    monkeypatch.setattr(Workspace, "create", staticmethod(lambda **kwargs: pytest.fail("created")))
    assert aml.get_or_create_workspace(**SETTINGS, auth=object()) is workspace
    assert workspace.config_paths == []


def test_get_or_create_workspace_checks_settings_first():
    with pytest.raises(ValueError, match="subscription_id"):
        aml.get_or_create_workspace(**{**SETTINGS, "subscription_id": ""}, auth=object())


# --- compute targets ------------------------------------------------------------------------


def test_amlcompute_config_scales_to_zero():
    config = aml.amlcompute_config(vm_size="STANDARD_NC6S_V3", max_nodes=2)
    assert config.vm_size == "STANDARD_NC6S_V3" and config.vm_priority == "dedicated"
    settings = config.scale_settings
    assert (settings.minimum_node_count, settings.maximum_node_count) == (0, 2)
    assert settings.idle_seconds_before_scaledown == 1200


def test_aks_config_defaults_meet_the_production_minimum():
    config = aml.aks_config()
    assert (config.agent_count, config.vm_size) == (3, "Standard_D3_v2")
    assert config.cluster_purpose == AksCompute.ClusterPurpose.FAST_PROD == "FastProd"
    assert aml.aks_vcpus(3, "Standard_D3_v2") == aml.AKS_MIN_PROD_VCPUS


def test_aks_config_rejects_a_too_small_production_cluster():
    with pytest.raises(ValueError, match="at least 12"):
        aml.aks_config(agent_count=1, vm_size="Standard_D3_v2")
    small = aml.aks_config(agent_count=1, vm_size="Standard_D3_v2", cluster_purpose="DevTest")
    assert (small.agent_count, small.cluster_purpose) == (1, "DevTest")
    unknown = aml.aks_config(agent_count=1, vm_size="Standard_Future_v9")  # Azure decides
    assert unknown.vm_size == "Standard_Future_v9"
    with pytest.raises(ValueError, match="cluster_purpose"):
        aml.aks_config(cluster_purpose="Cheap")


def test_aks_attach_config():
    config = aml.aks_attach_config("my-rg", "my-aks", cluster_purpose="DevTest")
    assert (config.resource_group, config.cluster_name) == ("my-rg", "my-aks")
    assert config.cluster_purpose == "DevTest"


@pytest.mark.parametrize("name", ["cpu-cluster", "aks1", "a2"])
def test_check_compute_name_accepts(name):
    assert aml.check_compute_name(name) == name


@pytest.mark.parametrize("name", ["c", "1cluster", "cluster_1", "x" * 17, ""])
def test_check_compute_name_rejects(name):
    with pytest.raises(ValueError, match="Compute name"):
        aml.check_compute_name(name)


# --- notebook runs ----------------------------------------------------------------------------


def test_parameter_grid():
    assert aml.parameter_grid(None) == [{}]
    assert aml.parameter_grid({"A": [1, 2], "B": ["x"]}) == [{"A": 1, "B": "x"}, {"A": 2, "B": "x"}]


def test_utils_cv_requirements_are_pinned_without_extras():
    requirements = aml.utils_cv_requirements()
    assert f"torch=={installed_version('torch')}" in requirements
    assert all("==" in r for r in requirements)
    assert not any(r.startswith(("azureml", "pytest")) for r in requirements)


def write_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("EPOCHS = 4", metadata={"tags": ["parameters"]})]
    nbformat.write(nb, path)
    return path


def test_stage_notebook_run_copies_notebook_and_package(tmp_path):
    notebook = write_notebook(tmp_path / "01_demo.ipynb")
    package = tmp_path / "pkg"
    (package / "__pycache__").mkdir(parents=True)
    (package / "__init__.py").write_text("X = 1\n")
    (package / "__pycache__" / "x.pyc").write_bytes(b"")
    source = aml.stage_notebook_run([notebook], tmp_path / "source", [package])
    assert (source / "01_demo.ipynb").read_bytes() == notebook.read_bytes()
    assert (source / "pkg" / "__init__.py").is_file()
    assert not (source / "pkg" / "__pycache__").exists()
    aml.stage_notebook_run([notebook], source, [package])  # again: replaces the copy


def test_notebook_environment():
    env = aml.notebook_environment(pip_packages=["papermill==2.7.0"], python="3.11")
    assert isinstance(env, Environment) and env.name == "utils-cv-notebooks"
    assert list(env.python.conda_dependencies.pip_packages) == ["papermill==2.7.0"]
    assert env.python.conda_dependencies.get_python_version() == "3.11"
    assert env.docker.base_image == aml.DEFAULT_BASE_IMAGE
    assert not env.python.user_managed_dependencies


def test_notebook_run_config(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    write_notebook(source / "01_training_introduction.ipynb")
    env = aml.notebook_environment(pip_packages=["papermill==2.7.0"])
    config = aml.notebook_run_config(
        source, "01_training_introduction.ipynb", "cpu-cluster", env, {"EPOCHS": 1}
    )
    assert isinstance(config, NotebookRunConfig)
    assert config.source_directory == str(source)
    assert config.script == "papermill_notebook_run_handler.py"
    assert (source / config.script).is_file()  # AzureML's handler, copied into the snapshot
    args = dict(zip(config.arguments[::2], config.arguments[1::2]))
    assert args["-i"] == "01_training_introduction.ipynb"
    assert args["-o"] == "outputs/01_training_introduction.output.ipynb"
    assert json.loads(args["-n"]) == {"EPOCHS": 1}
    assert json.loads(args["-e"]) == {"history": True, "timeout": 3600}
    papermill = json.loads(args["-p"])
    assert papermill["kernel_name"] == "python3" and papermill["engine_name"] == "azureml_engine"
    assert config.run_config.target == "cpu-cluster"
    assert config.run_config.environment is env
    pip = list(env.python.conda_dependencies.pip_packages)
    assert "papermill==2.7.0" in pip and "azureml-contrib-notebook[full]" in pip


def test_notebook_run_config_needs_the_staged_notebook(tmp_path):
    env = aml.notebook_environment(pip_packages=[])
    with pytest.raises(FileNotFoundError, match="stage it first"):
        aml.notebook_run_config(tmp_path, "missing.ipynb", "cpu-cluster", env)
