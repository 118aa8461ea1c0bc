"""Deployment helpers without credentials: the scoring environment (pinned packages, YAML read
with a safe loader), the source folder, the real azureml-sdk objects the notebooks deploy with,
and the HTTP client against a real local HTTP server."""

from __future__ import annotations

import base64
import filecmp
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from utils_cv.classification.service import score
from utils_cv.common import deployment as dep

# --- packages and the conda specification -------------------------------------------------


def test_installed_version_drops_the_local_label(monkeypatch):
    monkeypatch.setattr(dep.importlib.metadata, "version", lambda name: "2.4.0+cpu")
    assert dep.installed_version("torch") == "2.4.0"


def test_pin_packages_uses_local_versions():
    import fastai
    import timm

    assert dep.pin_packages(["fastai", "timm"]) == [
        f"fastai=={fastai.__version__}",
        f"timm=={timm.__version__}",
    ]
    with pytest.raises(ValueError, match="not installed"):
        dep.pin_packages(["surely-not-an-installed-package"])


def test_scoring_conda_spec_has_exactly_the_script_packages():
    spec = dep.scoring_conda_spec(score.PIP_PACKAGES)
    assert spec["name"] == "utils-cv-scoring" and spec["channels"] == ["conda-forge"]
    python, pip_pkg, pip = spec["dependencies"]
    assert python == f"python={dep.python_version()}" and pip_pkg == "pip"
    assert pip["pip"][0] == f"--extra-index-url {dep.PYTORCH_CPU_INDEX}"
    assert pip["pip"][1] == dep.SERVER_PACKAGE == "azureml-defaults"
    assert pip["pip"][2:] == dep.pin_packages(score.PIP_PACKAGES)
    unpinned = dep.scoring_conda_spec(["torch"], python="3.10", pin=False, extra_index_url=None)
    assert unpinned["dependencies"] == [
        "python=3.10",
        "pip",
        {"pip": ["azureml-defaults", "torch"]},
    ]


def test_conda_yaml_round_trip(tmp_path):
    spec = dep.scoring_conda_spec(score.PIP_PACKAGES)
    path = dep.write_conda_yaml(spec, tmp_path / "env" / "scoring.yml")
    assert yaml.safe_load(path.read_text()) == spec
    read = dep.read_conda_yaml(path)
    assert read["python"] == dep.python_version()
    assert read["channels"] == ["conda-forge"] and read["conda"] == ["pip"]
    assert read["pip_options"] == [f"--extra-index-url {dep.PYTORCH_CPU_INDEX}"]
    assert read["pip"] == ["azureml-defaults", *dep.pin_packages(score.PIP_PACKAGES)]


def test_read_conda_yaml_uses_a_safe_loader(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yml"
    path.write_text(
        f"name: x\ndependencies:\n- !!python/object/apply:os.system ['touch {marker}']\n"
    )
    with pytest.raises(yaml.YAMLError):
        dep.read_conda_yaml(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "text", ["just text", "name: x\n", "dependencies: python\n", "dependencies:\n- [1, 2]\n"]
)
def test_read_conda_yaml_rejects_non_specifications(tmp_path, text):
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(ValueError):
        dep.read_conda_yaml(path)


# --- azureml-sdk objects --------------------------------------------------------------------


@pytest.fixture
def azureml_core():
    return pytest.importorskip("azureml.core", reason="needs the 'azure' extra: .[azure]")


@pytest.fixture
def conda_yaml(azureml_core, tmp_path) -> Path:
    return dep.write_conda_yaml(dep.scoring_conda_spec(score.PIP_PACKAGES), tmp_path / "env.yml")


def test_conda_dependencies_match_the_file_exactly(conda_yaml):
    deps = dep.conda_dependencies(conda_yaml)
    spec = dep.read_conda_yaml(conda_yaml)
    assert list(deps.pip_packages) == spec["pip"]
    assert list(deps.pip_options) == spec["pip_options"]
    assert list(deps.conda_channels) == ["conda-forge"]  # no AzureML default channel
    assert deps.get_python_version() == dep.python_version()
    assert sorted(deps.conda_packages) == sorted([f"python={dep.python_version()}", "pip"])


def test_build_environment(azureml_core, conda_yaml):
    env = dep.build_environment("utils-cv-scoring", conda_yaml)
    assert isinstance(env, azureml_core.Environment) and env.name == "utils-cv-scoring"
    assert env.docker.base_image == dep.DEFAULT_BASE_IMAGE
    assert not env.python.user_managed_dependencies
    pip = list(env.python.conda_dependencies.pip_packages)
    assert pip == ["azureml-defaults", *dep.pin_packages(score.PIP_PACKAGES)]
    tuned = dep.build_environment("x", conda_yaml, environment_variables={"WORKER_COUNT": 2})
    assert tuned.environment_variables["WORKER_COUNT"] == "2"


def test_prepare_source_dir_copies_script_and_package_files(tmp_path):
    source = dep.prepare_source_dir(score, tmp_path / "source")
    root = dep.package_root(score)
    assert filecmp.cmp(source / "score.py", score.__file__, shallow=False)
    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    assert files == sorted(["score.py", *score.PACKAGE_FILES])
    for rel in score.PACKAGE_FILES:
        assert filecmp.cmp(source / rel, root / rel, shallow=False)
    dep.prepare_source_dir(score, source)  # again: files replaced, nothing added


def test_inference_config(conda_yaml, tmp_path):
    from azureml.core.model import InferenceConfig
    from azureml.exceptions import WebserviceException

    env = dep.build_environment("utils-cv-scoring", conda_yaml)
    source = dep.prepare_source_dir(score, tmp_path / "source")
    config = dep.inference_config(source, env)
    assert isinstance(config, InferenceConfig)
    assert config.entry_script == "score.py"
    assert Path(config.source_directory) == source.resolve()
    assert config.environment is env
    with pytest.raises(WebserviceException):  # AzureML checks the entry script exists
        dep.inference_config(tmp_path / "empty", env)


def test_aci_deploy_config(azureml_core):
    from azureml.core.webservice import AciWebservice
    from azureml.exceptions import WebserviceException

    config = dep.aci_deploy_config(cpu_cores=2, memory_gb=4)
    assert config._webservice_type is AciWebservice
    assert (config.cpu_cores, config.memory_gb, config.auth_enabled) == (2, 4, True)
    assert config.tags == {"framework": "fastai", "task": "image classification"}
    with pytest.raises(WebserviceException):
        dep.aci_deploy_config(memory_gb=0)


def test_aks_deploy_config(azureml_core):
    from azureml.core.webservice import AksWebservice
    from azureml.exceptions import WebserviceException

    config = dep.aks_deploy_config(autoscale_max_replicas=4)
    assert config._webservice_type is AksWebservice
    assert config.autoscale_enabled and config.auth_enabled
    assert (config.autoscale_min_replicas, config.autoscale_max_replicas) == (1, 4)
    assert (config.cpu_cores, config.memory_gb, config.scoring_timeout_ms) == (1, 2, 60_000)
    with pytest.raises(WebserviceException):
        dep.aks_deploy_config(autoscale_min_replicas=3, autoscale_max_replicas=1)


# --- calling a service over HTTP ------------------------------------------------------------


def test_images_payload(tmp_path):
    files = [tmp_path / "a.jpg", tmp_path / "b.png"]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 10)
    payload = dep.images_payload(files)
    assert [base64.b64decode(s) for s in payload["data"]] == [f.read_bytes() for f in files]
    json.dumps(payload)


class FakeScoringHandler(BaseHTTPRequestHandler):
    """Answers like the scoring service: 200 with one prediction per image, 401 without the
    key 'k3y' when asked for auth, 400 with a message for an empty list."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/auth" and self.headers.get("Authorization") != "Bearer k3y":
            self._send(401, {"message": "missing or wrong key"})
        elif not body["data"]:
            self._send(400, {"message": '"data" is empty'})
        else:
            self._send(200, [[{"label": "apple", "probability": 0.9}] for _ in body["data"]])

    def _send(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_service():
    server = HTTPServer(("127.0.0.1", 0), FakeScoringHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_score_images_over_http(fake_service, tmp_path):
    im = tmp_path / "a.jpg"
    im.write_bytes(b"jpeg")
    assert (
        dep.score_images(fake_service + "/score", [im, im])
        == [[{"label": "apple", "probability": 0.9}]] * 2
    )
    assert len(dep.score_images(fake_service + "/auth", [im], key="k3y")) == 1
    with pytest.raises(dep.ScoringRequestError, match="wrong key") as err:
        dep.score_images(fake_service + "/auth", [im], key="nope")
    assert err.value.status == 401
    with pytest.raises(dep.ScoringRequestError, match="empty") as err:
        dep.score_images(fake_service + "/score", [])
    assert err.value.status == 400
