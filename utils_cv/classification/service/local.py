"""Run the scoring service locally, over real HTTP, with AzureML's inference server.

``LocalScoringService`` starts ``azmlinfsrv`` (package ``azureml-inference-server-http``, the
server AzureML's inference images run) on 127.0.0.1 with ``score.py``, waits until it answers,
and stops it cleanly; use it as a context manager::

    with LocalScoringService(model_dir) as service:
        score_images(service.scoring_uri, im_paths)

``azmlinfsrv`` binds 0.0.0.0; the helper starts the same server code with the host set to
127.0.0.1, so the service is not reachable from other machines.

Concurrency: by default one worker process (it loads the model: about 1.1 GB resident for
efficientnet_lite0) of 8 threads (gunicorn's ``gthread`` worker, set through
``GUNICORN_CMD_ARGS="--threads 8"``): up to 8 connections are served at once, of which the
scoring script decodes and scores 2 at a time (``SCORE_MAX_CONCURRENT``; the others wait for
their turn). The defaults are ``deployment.SERVER_WORKERS`` and ``SERVER_THREADS``, which a
deployment gets too. Threads are what keep one client from stalling the others: a gthread
worker waits for a new connection's first bytes in one thread for at most 5 s, then parks the
connection without a thread (and closes it 2 s later if it still sends nothing), while the
other threads serve. A client that sends half a request holds one thread until it finishes or
leaves (the body part at most ``SCORE_MAX_BODY_SECONDS``, see ``score.py``). With
``threads=1`` gunicorn runs its sync worker instead, which one idle connection stalls for
everyone (measured: 30 s and more). Each inference runs on ``SCORE_TORCH_THREADS`` (default
1) torch threads. The defaults were chosen by measurement
(``benchmarks/bench_scoring_service.py``, ``README_scoring.md``).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from utils_cv.classification.service import score
from utils_cv.common.deployment import SERVER_THREADS, SERVER_WORKERS, prepare_source_dir

HOST = "127.0.0.1"
# Runs azmlinfsrv's own entry point with its bind host replaced (argv[1]).
_LAUNCHER = (
    "import sys; import azureml_inference_server_http.amlserver as srv; "
    "srv.DEFAULT_HOST = sys.argv.pop(1); srv.run()"
)
# Server settings inherited from the environment that would change what is tested locally.
_CLEARED_ENV = (
    "AZUREML_CONFIG_FILE",
    "AML_APP_INSIGHTS_ENABLED",
    "AML_APP_INSIGHTS_KEY",
    "SEPERATE_HEALTH_ENDPOINT",
    "AZUREML_DEBUG_PORT",
    "GUNICORN_CMD_ARGS",
)


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _gunicorn_args() -> str:
    """Extra gunicorn options: no shared control socket (gunicorn >= 25.1 creates one)."""
    try:
        import gunicorn

        major, minor = (int(v) for v in gunicorn.__version__.split(".")[:2])
    except (ImportError, ValueError):
        return ""
    return "--no-control-socket" if (major, minor) >= (25, 1) else ""


class LocalScoringService:
    """``azmlinfsrv`` serving ``score.py`` and a saved model on 127.0.0.1.

    Parameters
    ----------
    model_dir : folder from ``save_model`` (or a folder above it, as AzureML mounts models).
    source_dir : folder with ``score.py`` and the utils_cv files it runs; default: a temporary
        copy made by ``prepare_source_dir`` (the same files AzureML would get).
    port : TCP port; default: a free one.
    worker_count : server worker processes (each loads the model: about 1.1 GB resident for
        efficientnet_lite0, more for bigger backbones).
    threads : threads per worker process, each serving one request at a time (gunicorn's
        gthread worker; 1: gunicorn's sync worker, which an idle client stalls).
    env : extra environment variables for the server, e.g. ``{"SCORE_MAX_IMAGES": "8"}``;
        a ``GUNICORN_CMD_ARGS`` given here is added to the options this class sets.
    startup_timeout : seconds to wait for the service to answer before giving up.

    ``start()`` returns when ``GET /`` answers; ``stop()`` ends the server and its workers.
    ``scoring_uri`` is the URL to POST to; ``logs()`` returns the server output so far.
    """

    def __init__(
        self,
        model_dir: str | Path,
        source_dir: str | Path | None = None,
        port: int | None = None,
        worker_count: int = SERVER_WORKERS,
        threads: int = SERVER_THREADS,
        env: dict | None = None,
        startup_timeout: float = 180,
    ):
        self.model_dir = Path(model_dir).resolve()
        self.source_dir = Path(source_dir).resolve() if source_dir else None
        self.port = port
        self._given = {"source_dir": self.source_dir, "port": port}
        if worker_count < 1 or threads < 1:
            raise ValueError(f"worker_count={worker_count} and threads={threads}: 1 or more.")
        self.worker_count, self.threads = worker_count, threads
        self.env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._log_path: Path | None = None
        self._last_logs = ""

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:5001``; ``GET`` it for the health check."""
        return f"http://{HOST}:{self.port}"

    @property
    def scoring_uri(self) -> str:
        """URL to POST ``{"data": [...]}`` to."""
        return f"{self.url}/score"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def logs(self) -> str:
        """Everything the server printed so far (start-up, requests, errors)."""
        if self._log_path is None or not self._log_path.is_file():
            return self._last_logs
        return self._log_path.read_text(errors="replace")

    def start(self) -> LocalScoringService:
        """Start the server and wait until it is healthy; RuntimeError with its log otherwise."""
        if self.running:
            return self
        self.stop()  # clean up after an earlier failed start
        self._tmp = tempfile.TemporaryDirectory(prefix="utils_cv_service_")
        tmp = Path(self._tmp.name)
        if self.source_dir is None:
            self.source_dir = prepare_source_dir(score, tmp / "source")
        if self.port is None:
            self.port = free_port()
        self._log_path = tmp / "server.log"
        with open(self._log_path, "wb") as log:
            self.process = subprocess.Popen(
                self._command(),
                cwd=self.source_dir,
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a notebook does not reach the server
            )
        atexit.register(self.stop)
        try:
            self._wait_until_healthy()
        except BaseException:
            self.stop(keep_logs=True)
            raise
        return self

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-c",
            _LAUNCHER,
            HOST,
            "--entry_script",
            str(self.source_dir / "score.py"),
            "--model_dir",
            str(self.model_dir),
            "--port",
            str(self.port),
            "--worker_count",
            str(self.worker_count),
        ]

    def _environment(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in _CLEARED_ENV}
        extra = {k: str(v) for k, v in self.env.items()}
        gunicorn_args = [
            f"--threads {self.threads}",
            _gunicorn_args(),
            extra.pop("GUNICORN_CMD_ARGS", ""),
        ]
        env.update(
            AML_APP_ROOT=str(self.source_dir),
            PYTHONUNBUFFERED="1",
            GUNICORN_CMD_ARGS=" ".join(a for a in gunicorn_args if a),
        )
        env.update(extra)
        return env

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"azmlinfsrv exited with code {self.process.returncode} while starting. "
                    f"Server log (end):\n{self.logs()[-4000:]}"
                )
            try:
                if requests.get(self.url + "/", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)
        raise RuntimeError(
            f"azmlinfsrv did not answer on {self.url} within {self.startup_timeout} s. "
            f"Server log (end):\n{self.logs()[-4000:]}"
        )

    def stop(self, timeout: float = 30, keep_logs: bool = False) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout`` seconds); idempotent.

        keep_logs : keep the temporary folder (log and source copy) for ``logs()``.
        """
        atexit.unregister(self.stop)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # gunicorn: graceful shutdown of the workers
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                # The server runs in its own session (process group): end the group we started.
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._tmp is not None and not keep_logs:
            self._last_logs = self.logs()
            self._tmp.cleanup()
            self._tmp, self._log_path = None, None
            self.source_dir, self.port = self._given["source_dir"], self._given["port"]

    def __enter__(self) -> LocalScoringService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
