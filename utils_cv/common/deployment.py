"""Deploying a scoring script as a web service with Azure Machine Learning (SDK v1), and calling it.

A scoring script is a module with ``init()``/``run(raw_data)`` and two tuples:
``PIP_PACKAGES`` (the pip distributions it imports) and ``PACKAGE_FILES`` (the files of local
packages it runs, relative to the folder above the package), as in
``utils_cv.classification.service.score``. From it this module builds:

- the source folder AzureML uploads (``prepare_source_dir``),
- the conda specification with exactly those packages, pinned to the local versions, plus the
  AzureML inference stack (``scoring_conda_spec``, written and read as YAML with a safe loader),
- the ``Environment``, ``InferenceConfig`` and ACI/AKS deployment configurations.

``images_payload`` and ``score_images`` call a deployed (or local) service over HTTP.

Azure ML SDK v1 (``azureml-core``) was deprecated on 2025-03-31 and its support ended on
2026-06-30: existing workflows keep running, but get no fixes.
"""

from __future__ import annotations

import base64
import importlib.metadata
import platform
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import requests
import yaml

# The AzureML inference stack; AzureML v1 expects it in every deployment environment.
SERVER_PACKAGE = "azureml-defaults"
# CPU-only PyTorch wheels: a much smaller image than the default CUDA wheels.
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
DEFAULT_BASE_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04"
CONDA_CHANNELS = ("conda-forge",)

# The inference server's concurrency: worker processes (each loads the model: about 1.1 GB
# resident for efficientnet_lite0, mostly torch and fastai) and threads per worker (gunicorn's
# gthread worker). Threads keep an idle or slow client from stalling the service: it holds a
# thread, not the worker. (How many requests a worker decodes and scores at once is the
# scoring script's own limit, e.g. SCORE_MAX_CONCURRENT.) Measured on 2 cores:
# benchmarks/README_scoring.md.
SERVER_WORKERS = 1
SERVER_THREADS = 8
# The same as the container's environment variables, read by azmlinfsrv (WORKER_COUNT) and by
# gunicorn (GUNICORN_CMD_ARGS); ``build_environment`` sets them unless given others.
SERVICE_ENVIRONMENT = {
    "WORKER_COUNT": str(SERVER_WORKERS),
    "GUNICORN_CMD_ARGS": f"--threads {SERVER_THREADS}",
}


# --- packages and the conda specification -------------------------------------------------


def installed_version(package: str) -> str:
    """Installed version of the pip distribution ``package``, without a local label (``+cpu``)."""
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(f"{package} is not installed here, so it cannot be pinned.") from None
    return version.split("+")[0]


def pin_packages(packages: Iterable[str]) -> list[str]:
    """``["name==version", ...]`` with the locally installed versions, in the order given."""
    return [f"{name}=={installed_version(name)}" for name in packages]


def python_version() -> str:
    """``"major.minor"`` of the running Python, e.g. ``"3.11"``."""
    major, minor, _ = platform.python_version_tuple()
    return f"{major}.{minor}"


def scoring_conda_spec(
    pip_packages: Sequence[str],
    name: str = "utils-cv-scoring",
    python: str | None = None,
    pin: bool = True,
    extra_index_url: str | None = PYTORCH_CPU_INDEX,
    server_package: str = SERVER_PACKAGE,
) -> dict:
    """Conda environment specification (a dict, as in environment.yml) for a scoring script.

    pip_packages : the script's pip distributions (``score.PIP_PACKAGES``).
    python : Python version (default: the local one). pin : pin to the local versions.
    extra_index_url : extra pip index (default: CPU-only PyTorch wheels; None for none).
    server_package : the AzureML inference stack, added unpinned (it tracks the service).
    """
    packages = pin_packages(pip_packages) if pin else list(pip_packages)
    pip = ([f"--extra-index-url {extra_index_url}"] if extra_index_url else []) + [
        server_package,
        *packages,
    ]
    return {
        "name": name,
        "channels": list(CONDA_CHANNELS),
        "dependencies": [f"python={python or python_version()}", "pip", {"pip": pip}],
    }


def write_conda_yaml(spec: dict, path: str | Path) -> Path:
    """Write the conda specification ``spec`` to the YAML file ``path``; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def read_conda_yaml(path: str | Path) -> dict:
    """Read a conda environment YAML file with a safe loader (no Python objects are built).

    Returns ``{"python": str, "channels": [...], "conda": [...], "pip": [...],
    "pip_options": [...]}``; ValueError for a file that is not a conda specification.
    """
    spec = yaml.safe_load(Path(path).read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("dependencies"), list):
        raise ValueError(f"{path} is not a conda environment file: no 'dependencies' list.")
    out = {"python": None, "channels": list(spec.get("channels") or []), "conda": []}
    out["pip"], out["pip_options"] = [], []
    for dep in spec["dependencies"]:
        if isinstance(dep, dict) and set(dep) == {"pip"} and isinstance(dep["pip"], list):
            for item in dep["pip"]:
                (out["pip_options"] if str(item).startswith("-") else out["pip"]).append(str(item))
        elif isinstance(dep, str) and _package_name(dep) == "python":
            out["python"] = dep.split("=", 1)[1].lstrip("=") if "=" in dep else None
        elif isinstance(dep, str):
            out["conda"].append(dep)
        else:
            raise ValueError(f"{path}: unexpected dependency entry {dep!r}.")
    return out


def conda_dependencies(conda_yaml: str | Path):
    """AzureML ``CondaDependencies`` with exactly the contents of ``conda_yaml``.

    The file is read with ``read_conda_yaml`` (safe loader); AzureML's defaults (its
    ``anaconda`` channel, ``azureml-defaults`` unless listed) are not added.
    """
    from azureml.core.conda_dependencies import CondaDependencies

    spec = read_conda_yaml(conda_yaml)
    deps = CondaDependencies()
    for package in list(deps.pip_packages):
        deps.remove_pip_package(package)
    for package in list(deps.conda_packages):
        if _package_name(package) != "python":  # AzureML keeps python; its version is set below
            deps.remove_conda_package(package)
    for channel in list(deps.conda_channels):
        deps.remove_channel(channel)
    for channel in spec["channels"]:
        deps.add_channel(channel)
    if spec["python"]:
        deps.set_python_version(spec["python"])
    for package in spec["conda"]:
        deps.add_conda_package(package)
    for option in spec["pip_options"]:
        deps.set_pip_option(option)
    for package in spec["pip"]:
        deps.add_pip_package(package)
    return deps


def _package_name(requirement: str) -> str:
    return re.split(r"[=<>!~ \[]", requirement, maxsplit=1)[0].strip().lower()


def build_environment(
    name: str,
    conda_yaml: str | Path,
    base_image: str = DEFAULT_BASE_IMAGE,
    environment_variables: dict | None = None,
):
    """AzureML ``Environment`` named ``name`` from the conda file ``conda_yaml`` on ``base_image``.

    environment_variables : set in the service's container, e.g. ``{"WORKER_COUNT": "1",
    "SCORE_TORCH_THREADS": "1"}`` (server workers, torch threads per worker, ``SCORE_*`` limits),
    on top of ``SERVICE_ENVIRONMENT`` (one worker of 8 threads), which they override.
    The environment is registered in the workspace when a deployment or run first uses it.
    """
    from azureml.core import Environment

    env = Environment(name)
    env.python.user_managed_dependencies = False
    env.python.conda_dependencies = conda_dependencies(conda_yaml)
    env.docker.base_image = base_image
    variables = {**SERVICE_ENVIRONMENT, **(environment_variables or {})}
    env.environment_variables = {k: str(v) for k, v in variables.items()}
    return env


# --- source folder and service configurations ----------------------------------------------


def package_root(module) -> Path:
    """The folder above the top-level package of ``module`` (where its ``PACKAGE_FILES`` start)."""
    top = module.__name__.split(".")[0]
    path = Path(module.__file__).resolve()
    for parent in path.parents:
        if parent.name == top and (parent / "__init__.py").is_file():
            return parent.parent
    raise ValueError(f"Cannot find the package folder '{top}' above {path}.")


def prepare_source_dir(score_module, source_dir: str | Path, entry_script: str = "score.py"):
    """Copy the scoring script and the package files it runs into ``source_dir``; return it.

    score_module : the scoring script as an imported module (``init``, ``run``,
        ``PACKAGE_FILES``), e.g. ``utils_cv.classification.service.score``.
    The folder then holds ``entry_script`` and e.g. ``utils_cv/...``: what AzureML uploads and
    what ``azmlinfsrv`` serves locally. Old copies of those files are replaced.
    """
    source_dir = Path(source_dir)
    source_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(score_module.__file__), source_dir / entry_script)
    root = package_root(score_module)
    for rel in score_module.PACKAGE_FILES:
        dst = source_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, dst)
    return source_dir


def inference_config(source_dir: str | Path, environment, entry_script: str = "score.py"):
    """AzureML ``InferenceConfig``: run ``entry_script`` from ``source_dir`` in ``environment``."""
    from azureml.core.model import InferenceConfig

    return InferenceConfig(
        entry_script=entry_script, source_directory=str(source_dir), environment=environment
    )


def aci_deploy_config(
    cpu_cores: float = 1,
    memory_gb: float = 2,
    auth_enabled: bool = True,
    description: str = "Image classifier (utils_cv)",
    tags: dict | None = None,
):
    """Azure Container Instances configuration: one container with ``cpu_cores`` and
    ``memory_gb`` GB. With ``auth_enabled`` callers need a key (``service.get_keys()``)."""
    from azureml.core.webservice import AciWebservice

    return AciWebservice.deploy_configuration(
        cpu_cores=cpu_cores,
        memory_gb=memory_gb,
        auth_enabled=auth_enabled,
        description=description,
        tags=tags or {"framework": "fastai", "task": "image classification"},
    )


def aks_deploy_config(
    cpu_cores: float = 1,
    memory_gb: float = 2,
    autoscale_min_replicas: int = 1,
    autoscale_max_replicas: int = 3,
    auth_enabled: bool = True,
    scoring_timeout_ms: int = 60_000,
    description: str = "Image classifier (utils_cv)",
    tags: dict | None = None,
):
    """Azure Kubernetes Service configuration: autoscaling replicas with ``cpu_cores`` and
    ``memory_gb`` GB each; key authentication on by default; timeout in milliseconds."""
    from azureml.core.webservice import AksWebservice

    return AksWebservice.deploy_configuration(
        autoscale_enabled=True,
        autoscale_min_replicas=autoscale_min_replicas,
        autoscale_max_replicas=autoscale_max_replicas,
        cpu_cores=cpu_cores,
        memory_gb=memory_gb,
        auth_enabled=auth_enabled,
        scoring_timeout_ms=scoring_timeout_ms,
        description=description,
        tags=tags or {"framework": "fastai", "task": "image classification"},
    )


def deploy(
    workspace, name: str, models, inference_cfg, deploy_cfg, deployment_target=None
):  # pragma: no cover - needs Azure
    """Deploy ``models`` as the web service ``name`` (replacing one of that name) and wait.

    deployment_target : None for ACI, or the AKS compute target. Prints the service logs and
    re-raises if the deployment fails. Returns the ``Webservice``.
    """
    from azureml.core import Model
    from azureml.exceptions import WebserviceException

    service = Model.deploy(
        workspace,
        name,
        models,
        inference_config=inference_cfg,
        deployment_config=deploy_cfg,
        deployment_target=deployment_target,
        overwrite=True,
    )
    try:
        service.wait_for_deployment(show_output=True)
    except WebserviceException:
        print(service.get_logs())
        raise
    return service


# --- calling a service over HTTP ---------------------------------------------------------


class ScoringRequestError(RuntimeError):
    """The service answered with an error status; ``status`` and ``message`` say which."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


def images_payload(im_paths: Iterable[str | Path]) -> dict:
    """Request body ``{"data": [base64 of each image file, ...]}`` for the scoring service."""
    return {"data": [base64.b64encode(Path(p).read_bytes()).decode("ascii") for p in im_paths]}


def score_images(
    scoring_uri: str,
    im_paths: Iterable[str | Path],
    key: str | None = None,
    timeout: float = 60,
    session: requests.Session | None = None,
) -> list[list[dict]]:
    """POST the image files to ``scoring_uri``; return per image ``[{"label", "probability"}]``.

    key : the service key (sent as ``Authorization: Bearer <key>``) for key-authenticated
    services. timeout in seconds. Raises ScoringRequestError for an error status.
    """
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    post = (session or requests).post
    response = post(scoring_uri, json=images_payload(im_paths), headers=headers, timeout=timeout)
    if response.status_code != 200:
        raise ScoringRequestError(response.status_code, _error_message(response))
    return response.json()


def _error_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    return body.get("message", str(body)) if isinstance(body, dict) else str(body)
