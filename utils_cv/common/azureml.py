"""Azure Machine Learning (SDK v1): authentication, workspace, compute targets, notebook runs.

Everything here needs ``pip install -e .[azure]`` (``azureml-sdk``, ``azureml-contrib-notebook``)
and, except for the configuration builders, an Azure subscription. Creating resources costs
money: the notebooks 20-24 say what each resource costs and how to delete it.

Azure ML SDK v1 (``azureml-core``) was deprecated on 2025-03-31 and its support ended on
2026-06-30: existing workflows keep running, but get no fixes.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from utils_cv.common.deployment import DEFAULT_BASE_IMAGE, installed_version, python_version

# Service principal login, read from these environment variables when all three are set.
SERVICE_PRINCIPAL_ENV = ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET")

# AzureML requires an AKS cluster for production ("FastProd") to have at least 12 vCPUs in all.
AKS_MIN_PROD_VCPUS = 12
# vCPUs of common VM sizes (lower case), to check AKS sizes before asking Azure.
VM_VCPUS = {
    "standard_d2_v2": 2,
    "standard_d3_v2": 4,
    "standard_d4_v2": 8,
    "standard_d5_v2": 16,
    "standard_ds2_v2": 2,
    "standard_ds3_v2": 4,
    "standard_ds4_v2": 8,
    "standard_d2s_v3": 2,
    "standard_d4s_v3": 4,
    "standard_d8s_v3": 8,
    "standard_d2_v3": 2,
    "standard_d4_v3": 4,
    "standard_d8_v3": 8,
    "standard_nc6s_v3": 6,
}
GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
WORKSPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,32}$")
COMPUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,15}$")


# --- authentication and workspace ----------------------------------------------------------


def azure_cli_logged_in(timeout: float = 60) -> bool:
    """True when AzureML can use the Azure CLI login: the ``azure-cli`` package is installed in
    this Python environment (AzureML needs it) and ``az account show`` succeeds."""
    try:
        if importlib.util.find_spec("azure.cli.core") is None:
            return False
    except ModuleNotFoundError:  # no "azure" namespace package at all
        return False
    az = shutil.which("az")
    if az is None:
        return False
    try:
        done = subprocess.run(
            [az, "account", "show", "--output", "none"],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def auth_method(env: Mapping[str, str] | None = None) -> str:
    """Which login ``get_auth`` uses: "service_principal", "cli" or "interactive".

    Service principal when ``AZURE_TENANT_ID``, ``AZURE_CLIENT_ID`` and ``AZURE_CLIENT_SECRET``
    are all set (ValueError when the client id or secret is set without the others), else the
    Azure CLI login (``az login``) when ``azure_cli_logged_in()``, else an interactive (browser
    or device code) login, to the tenant ``AZURE_TENANT_ID`` when that alone is set.
    """
    env = os.environ if env is None else env
    present = [name for name in SERVICE_PRINCIPAL_ENV if env.get(name)]
    if present == ["AZURE_TENANT_ID"]:  # alone: the tenant for an interactive login
        present = []
    if present and len(present) < len(SERVICE_PRINCIPAL_ENV):
        missing = [name for name in SERVICE_PRINCIPAL_ENV if name not in present]
        raise ValueError(
            f"Service principal login needs {', '.join(SERVICE_PRINCIPAL_ENV)}; "
            f"{', '.join(missing)} not set. Set all three, or unset them to log in otherwise."
        )
    if present:
        return "service_principal"
    return "cli" if azure_cli_logged_in() else "interactive"


def get_auth(env: Mapping[str, str] | None = None):
    """AzureML authentication object: service principal, Azure CLI or interactive login.

    See ``auth_method`` for the order. The secret is read from ``env`` (default
    ``os.environ``) and never printed.
    """
    from azureml.core.authentication import (
        AzureCliAuthentication,
        InteractiveLoginAuthentication,
        ServicePrincipalAuthentication,
    )

    env = os.environ if env is None else env
    method = auth_method(env)
    if method == "service_principal":
        return ServicePrincipalAuthentication(
            tenant_id=env["AZURE_TENANT_ID"],
            service_principal_id=env["AZURE_CLIENT_ID"],
            service_principal_password=env["AZURE_CLIENT_SECRET"],
        )
    if method == "cli":
        return AzureCliAuthentication()
    return InteractiveLoginAuthentication(tenant_id=env.get("AZURE_TENANT_ID") or None)


def check_workspace_args(
    subscription_id: str, resource_group: str, workspace_name: str, workspace_region: str
) -> None:
    """ValueError, saying what to fix, unless the four workspace settings look valid."""
    problems = []
    if not isinstance(subscription_id, str) or not GUID.match(subscription_id.strip()):
        problems.append(
            f"subscription_id {subscription_id!r} should be a GUID "
            "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx; see `az account list`)"
        )
    if not isinstance(resource_group, str) or not resource_group.strip():
        problems.append("resource_group is empty")
    if not isinstance(workspace_name, str) or not WORKSPACE_NAME.match(workspace_name):
        problems.append(
            f"workspace_name {workspace_name!r} should be 3-33 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    if not isinstance(workspace_region, str) or not re.match(r"^[a-z0-9]+$", workspace_region):
        problems.append(
            f"workspace_region {workspace_region!r} should be an Azure region name like 'eastus'"
        )
    if problems:
        raise ValueError("Invalid Azure settings: " + "; ".join(problems) + ".")


def get_or_create_workspace(
    subscription_id: str,
    resource_group: str,
    workspace_name: str,
    workspace_region: str,
    auth=None,
    config_path: str | Path | None = None,
):  # pragma: no cover - needs Azure
    """The AzureML workspace ``workspace_name``, created (with its resource group) if missing.

    auth : from ``get_auth()`` by default. config_path : folder to write the workspace
    ``config.json`` to (``Workspace.from_config()`` finds it there), or None not to write it.
    Returns the ``azureml.core.Workspace``.
    """
    from azureml.core import Workspace
    from azureml.exceptions import ProjectSystemException, WorkspaceException

    check_workspace_args(subscription_id, resource_group, workspace_name, workspace_region)
    auth = auth or get_auth()
    try:
        ws = Workspace.get(
            name=workspace_name,
            auth=auth,
            subscription_id=subscription_id,
            resource_group=resource_group,
        )
    except (ProjectSystemException, WorkspaceException):
        print(f"Workspace {workspace_name} not found: creating it in {workspace_region}...")
        ws = Workspace.create(
            name=workspace_name,
            auth=auth,
            subscription_id=subscription_id,
            resource_group=resource_group,
            location=workspace_region,
            create_resource_group=True,
            exist_ok=True,
            show_output=True,
        )
    if config_path is not None:
        ws.write_config(path=str(config_path))
    return ws


def get_workspace(
    subscription_id: str | None = None,
    resource_group: str | None = None,
    workspace_name: str | None = None,
    auth=None,
    config_path: str | Path | None = None,
):  # pragma: no cover - needs Azure
    """An existing workspace: from the three settings when given, else from ``config.json``
    (written by notebook 20) found in ``config_path`` or the current folder and its parents."""
    from azureml.core import Workspace

    auth = auth or get_auth()
    if subscription_id and resource_group and workspace_name:
        return Workspace.get(
            name=workspace_name,
            auth=auth,
            subscription_id=subscription_id,
            resource_group=resource_group,
        )
    return Workspace.from_config(path=None if config_path is None else str(config_path), auth=auth)


# --- compute targets -----------------------------------------------------------------------


def check_compute_name(name: str) -> str:
    """``name`` if it is a valid compute target name (2-16 letters, digits, '-'); ValueError."""
    if not isinstance(name, str) or not COMPUTE_NAME.match(name):
        raise ValueError(
            f"Compute name {name!r} should be 2-16 letters, digits or '-', starting with a letter."
        )
    return name


def amlcompute_config(
    vm_size: str = "STANDARD_D3_V2",
    min_nodes: int = 0,
    max_nodes: int = 1,
    idle_seconds_before_scaledown: int = 1200,
    vm_priority: str = "dedicated",
):
    """Provisioning configuration of an AzureML compute cluster (for runs such as notebook 24).

    With ``min_nodes=0`` the cluster scales down to no VM (no compute cost) after
    ``idle_seconds_before_scaledown`` seconds without work. ``vm_priority="lowpriority"``
    costs less but runs can be pre-empted.
    """
    from azureml.core.compute import AmlCompute

    return AmlCompute.provisioning_configuration(
        vm_size=vm_size,
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        idle_seconds_before_scaledown=idle_seconds_before_scaledown,
        vm_priority=vm_priority,
    )


def aks_vcpus(agent_count: int, vm_size: str) -> int | None:
    """Total vCPUs of ``agent_count`` VMs of ``vm_size``, or None for a size not in VM_VCPUS."""
    per_vm = VM_VCPUS.get(vm_size.lower())
    return None if per_vm is None else agent_count * per_vm


def aks_config(
    agent_count: int = 3,
    vm_size: str = "Standard_D3_v2",
    cluster_purpose: str = "FastProd",
    location: str | None = None,
):
    """Provisioning configuration of an Azure Kubernetes Service cluster for web services.

    cluster_purpose : "FastProd" (production) needs at least 12 vCPUs in all, e.g. 3 x
        Standard_D3_v2 (4 vCPUs each); "DevTest" allows a smaller cluster (e.g. 1 node) for
        trying things out. ValueError for a FastProd size known to be too small.
    location : Azure region (default: the workspace's).
    """
    from azureml.core.compute import AksCompute

    purposes = (AksCompute.ClusterPurpose.FAST_PROD, AksCompute.ClusterPurpose.DEV_TEST)
    if cluster_purpose not in purposes:
        raise ValueError(f"cluster_purpose should be one of {purposes}, not {cluster_purpose!r}.")
    vcpus = aks_vcpus(agent_count, vm_size)
    if cluster_purpose == AksCompute.ClusterPurpose.FAST_PROD and (
        vcpus is not None and vcpus < AKS_MIN_PROD_VCPUS
    ):
        raise ValueError(
            f"{agent_count} x {vm_size} has {vcpus} vCPUs; a FastProd AKS cluster needs at least "
            f"{AKS_MIN_PROD_VCPUS}. Add nodes, pick a bigger size, or use cluster_purpose='DevTest'."
        )
    return AksCompute.provisioning_configuration(
        agent_count=agent_count,
        vm_size=vm_size,
        cluster_purpose=cluster_purpose,
        location=location,
    )


def aks_attach_config(resource_group: str, cluster_name: str, cluster_purpose: str = "FastProd"):
    """Configuration to attach the existing AKS cluster ``cluster_name`` to a workspace."""
    from azureml.core.compute import AksCompute

    return AksCompute.attach_configuration(
        resource_group=resource_group, cluster_name=cluster_name, cluster_purpose=cluster_purpose
    )


def get_compute_target(workspace, name: str):  # pragma: no cover - needs Azure
    """The compute target ``name`` of ``workspace``, or None when there is none."""
    from azureml.core.compute import ComputeTarget
    from azureml.exceptions import ComputeTargetException

    try:
        return ComputeTarget(workspace=workspace, name=name)
    except ComputeTargetException:
        return None


def get_or_create_compute(
    workspace, name: str, provisioning_config, attach_config=None
):  # pragma: no cover - needs Azure
    """The compute target ``name``: reused if it exists, else attached (with ``attach_config``)
    or created from ``provisioning_config``; waits until it is ready."""
    from azureml.core.compute import ComputeTarget

    check_compute_name(name)
    target = get_compute_target(workspace, name)
    if target is not None:
        print(f"Using the existing compute target {name} ({type(target).__name__}).")
        return target
    if attach_config is not None:
        target = ComputeTarget.attach(workspace, name, attach_config)
    else:
        target = ComputeTarget.create(workspace, name, provisioning_config)
    target.wait_for_completion(show_output=True)
    return target


# --- running notebooks on AzureML compute ---------------------------------------------------


def utils_cv_requirements(pin: bool = True) -> list[str]:
    """pip requirements of the installed utils_cv (no extras), pinned to the local versions."""
    requirements = []
    for req in importlib.metadata.requires("utils_cv") or []:
        if "extra ==" in req:
            continue
        name = re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0]
        requirements.append(f"{name}=={installed_version(name)}" if pin else req)
    return requirements


def stage_notebook_run(
    notebooks: Iterable[str | Path], source_dir: str | Path, packages: Iterable[str | Path] = ()
) -> Path:
    """Copy ``notebooks`` and local ``packages`` (folders, e.g. utils_cv) into ``source_dir``.

    AzureML uploads ``source_dir`` as the run's snapshot (keep it small: caches and
    ``__pycache__`` are left out), and the notebook runs from there, so ``import utils_cv``
    finds the copied package. Returns ``source_dir``.
    """
    source_dir = Path(source_dir)
    source_dir.mkdir(parents=True, exist_ok=True)
    for notebook in notebooks:
        shutil.copyfile(notebook, source_dir / Path(notebook).name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for package in packages:
        dst = source_dir / Path(package).name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(package, dst, ignore=ignore)
    return source_dir


def notebook_environment(
    name: str = "utils-cv-notebooks",
    pip_packages: Iterable[str] | None = None,
    base_image: str = DEFAULT_BASE_IMAGE,
    python: str | None = None,
):
    """AzureML ``Environment`` to run the notebooks: utils_cv's requirements (pinned) by default.

    For a GPU cluster pass a CUDA ``base_image`` (the default PyTorch wheels include CUDA).
    """
    from azureml.core import Environment
    from azureml.core.conda_dependencies import CondaDependencies

    packages = list(pip_packages) if pip_packages is not None else utils_cv_requirements()
    env = Environment(name)
    env.python.user_managed_dependencies = False
    env.python.conda_dependencies = CondaDependencies.create(
        pip_packages=packages, python_version=python or python_version(), pin_sdk_version=False
    )
    env.docker.base_image = base_image
    return env


def parameter_grid(grid: Mapping[str, Iterable] | None) -> list[dict]:
    """Every combination of the values in ``grid`` (name -> list of values), as parameter dicts.

    ``{"A": [1, 2], "B": ["x"]}`` -> ``[{"A": 1, "B": "x"}, {"A": 2, "B": "x"}]``; an empty or
    None grid -> ``[{}]`` (one run with the notebook's own parameters).
    """
    if not grid:
        return [{}]
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*grid.values())]


def notebook_run_config(
    source_dir: str | Path,
    notebook: str,
    compute_target,
    environment,
    parameters: dict | None = None,
    output_notebook: str | None = None,
    timeout_s: int | None = 3600,
    kernel_name: str = "python3",
):
    """``NotebookRunConfig`` to run ``source_dir/notebook`` with papermill on ``compute_target``.

    parameters : values for the notebook's ``parameters`` cell. The executed notebook is
    written to ``output_notebook`` (default ``outputs/<name>.output.ipynb``; AzureML uploads
    ``outputs/`` to the run), and values the notebook records with ``scrapbook.glue`` are
    logged as run metrics. timeout_s : per-cell time limit in seconds (None: no limit).
    compute_target : a ComputeTarget or its name.
    Note: AzureML copies its papermill handler script into ``source_dir``.
    """
    from azureml.contrib.notebook import AzureMLNotebookHandler, NotebookRunConfig
    from azureml.core.runconfig import RunConfiguration

    if not (Path(source_dir) / notebook).is_file():
        raise FileNotFoundError(f"{notebook} is not in {source_dir}; stage it first.")
    if output_notebook is None:
        output_notebook = f"outputs/{Path(notebook).stem}.output.ipynb"
    run_config = RunConfiguration()
    run_config.target = compute_target
    run_config.environment = environment
    handler = AzureMLNotebookHandler(
        history=True, timeout=timeout_s, kernel_name=kernel_name, progress_bar=False
    )
    return NotebookRunConfig(
        source_directory=str(source_dir),
        notebook=notebook,
        output_notebook=output_notebook,
        parameters=parameters or {},
        handler=handler,
        run_config=run_config,
    )
