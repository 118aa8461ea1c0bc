"""A JupyterLab server and a headless Chromium for the browser tests, both always stopped.

The server runs from this test's Python environment (the project's .venv under
scripts/test.sh) on 127.0.0.1, a free port and a random token, with its own configuration,
runtime and settings folders, so nothing a user set changes what is tested. It serves both front
ends: JupyterLab (/lab) and Notebook 7 (/notebooks). Chromium is Debian's ``chromium``, driven
through ``chromium-driver`` by selenium, with a fake camera. When a test fails, a screenshot,
the page's HTML and the browser console go to test-artifacts/browser/ at the repository root.

Without chromium or chromedriver every test here is skipped with that reason (.ci/run
installs both).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER_NAMES = ("chromedriver",)
CHROMEDRIVER_PATHS = ("/usr/lib/chromium/chromedriver",)
SERVER_START_TIMEOUT_S = 90


def find_browser() -> tuple[str | None, str | None]:
    """(chromium, chromedriver) executables, each None when not installed."""
    chromium = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    driver = next(filter(None, map(shutil.which, CHROMEDRIVER_NAMES)), None)
    driver = driver or next((p for p in CHROMEDRIVER_PATHS if os.access(p, os.X_OK)), None)
    return chromium, driver


def browser_missing_reason() -> str | None:
    chromium, driver = find_browser()
    missing = [
        name for name, path in (("chromium", chromium), ("chromedriver", driver)) if not path
    ]
    if missing:
        return (
            f"needs {' and '.join(missing)} (Debian: apt-get install chromium chromium-driver; "
            ".ci/run installs them)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (pip install -e '.[dev]')"
    return None


def pytest_collection_modifyitems(config, items):
    reason = browser_missing_reason()
    if reason:
        for item in items:
            if "browser" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JupyterServer:
    """A running ``jupyter lab`` server: ``url(path)`` gives an address with the token."""

    def __init__(self, root: Path, home: Path):
        self.root, self.port, self.token = root, free_port(), secrets.token_hex(16)
        self.log_path = home / "server.log"
        config_dir = home / "config"
        (config_dir / "labconfig").mkdir(parents=True)
        # The announcements plugin asks, in a pop-up, whether to fetch news from the internet.
        (config_dir / "labconfig" / "page_config.json").write_text(
            json.dumps(
                {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}
            )
        )
        env = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(config_dir),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(home / "lab-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(home / "lab-workspaces"),
        }
        command = [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--port-retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.expose_app_in_browser=True",
            "--JupyterNotebookApp.expose_app_in_browser=True",
            "--LabApp.news_url=None",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")
        with open(self.log_path, "wb") as log:
            # Its own process group: jupyter lab runs the server as a child, stop() ends both.
            self.process = subprocess.Popen(
                command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}{sep}token={self.token}"

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"jupyter lab exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"jupyter lab not up after {SERVER_START_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        """Stop the server and its kernels (the whole process group)."""
        if self.process.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait_s)
                return
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="module")
def server_root(tmp_path_factory) -> Path:
    """The folder the server serves; tests put notebooks (copies or git clones) in it."""
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="module")
def jupyter_server(server_root, tmp_path_factory):
    server = JupyterServer(server_root, tmp_path_factory.mktemp("jupyter-home"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium with a fake camera that grants camera permission without asking."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium_path, driver_path = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_path
    for arg in (
        "--headless=new",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(arg)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses to run as root otherwise
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def browser(chromium, request):
    """The module's Chromium; on failure, its screenshot, HTML and console are kept."""
    chromium.console_seen = []
    yield chromium
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
        chromium.save_screenshot(str(ARTIFACTS / f"{name}.png"))
        (ARTIFACTS / f"{name}.html").write_text(chromium.page_source)
        entries = getattr(chromium, "console_seen", []) + chromium.get_log("browser")
        console = [f"{e['level']} {e['message']}" for e in entries]
        (ARTIFACTS / f"{name}.console.txt").write_text("\n".join(console) + "\n")
