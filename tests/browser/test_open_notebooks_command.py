"""README "Open the notebooks": scripts/notebooks.sh starts JupyterLab on the notebooks."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_notebooks_script_serves_the_notebooks_with_the_project_kernel(tmp_path):
    port, token = free_port(), secrets.token_hex(8)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    # The remote-machine form from the README, with a port and token of the test's choosing.
    command = ["bash", "scripts/notebooks.sh", "--no-browser", f"--port={port}"]
    command += ["--ip=127.0.0.1", f"--IdentityProvider.token={token}"]
    with open(tmp_path / "log", "wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:

        def get(path):
            url = f"http://127.0.0.1:{port}/{path}?token={token}"
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)

        deadline = time.monotonic() + 180  # includes scripts/setup.sh's check
        while True:
            assert process.poll() is None, (tmp_path / "log").read_text()[-3000:]
            try:
                contents = get("api/contents")
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "log").read_text()[-3000:]
                time.sleep(0.5)
        names = {item["name"] for item in contents["content"]}
        assert {"00_webcam.ipynb", "01_training_introduction.ipynb"} <= names
        assert "utils_cv" in get("api/kernelspecs")["kernelspecs"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}") as response:
            assert b"JupyterLab" in response.read()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
