"""Experiment records: what each training run was, how it went epoch by epoch, how long it took.

``train(..., run_dir="runs/a")`` (or a ``RunRecord`` among its listeners) writes:

- ``run.json``: the training configuration (``TrainConfig``), the model specification
  (``ModelSpec``, with the data's classes), the data folder, tags given by the caller (the
  sweeper's repetition, data set and parameters), status ("running", "finished"), start and end
  times (UTC, ISO 8601), epochs done per stage, the best epochs (``listeners.BestEpoch``), the
  learning rates the finder chose, the last epoch's metrics and the timings in seconds
  (``features_s``: extracting the cached features, ``lr_find_s``, ``head_s``, ``fine_tune_s``,
  ``total_s``) and library versions;
- ``metrics.csv``: one row per epoch: ``stage``, ``epoch`` (1-based within the stage),
  ``step`` (epochs since the start of training), ``train_loss``, ``valid_loss``, the
  learner's metrics on the validation set (fractions), ``lr`` and ``seconds``.

With ``log_to=("mlflow", "tensorboard")`` the same parameters and metrics also go to MLflow
(a local store, ``run_dir/mlruns``; view with ``mlflow ui --backend-store-uri
run_dir/mlruns``) and TensorBoard (``run_dir/tensorboard``; ``tensorboard --logdir ...``) when
those packages are installed; when one is not, a warning says so and the run folder record is
written anyway. No server is needed.

``read_run``, ``read_runs`` and ``read_metrics`` read run folders back (notebook 11 reads the
sweep's runs into its comparison table); ``plot_metrics`` draws per-epoch curves of many runs.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from datetime import datetime, timezone
from pathlib import Path

from utils_cv.classification.listeners import STAGES, TrainingListener

RUN_FILE = "run.json"
METRICS_FILE = "metrics.csv"
FORMAT_VERSION = 1
LOGGERS = ("mlflow", "tensorboard")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _versions() -> dict:
    import fastai
    import timm
    import torch

    return {"torch": torch.__version__, "fastai": fastai.__version__, "timm": timm.__version__}


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_json(path: Path, data: dict) -> None:
    from utils_cv.classification.saved import write_file

    write_file(path, json.dumps(data, indent=2, allow_nan=False).encode("utf-8"))


def check_loggers(log_to) -> list[str]:
    """``log_to`` as a list of logger names; ValueError naming an unknown one."""
    names = [log_to] if isinstance(log_to, str) else list(log_to or ())
    unknown = [name for name in names if name not in LOGGERS]
    if unknown:
        raise ValueError(
            f"log_to: unknown logger {unknown[0]!r}; choose from {', '.join(LOGGERS)}."
        )
    return names


# --- optional loggers ----------------------------------------------------------------------------


class _TensorBoardLogger:
    """Scalars to ``folder`` as TensorBoard event files (torch.utils.tensorboard, or
    tensorboardX when only that is installed)."""

    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from tensorboardX import SummaryWriter  # ImportError when neither is installed
        self.writer = SummaryWriter(log_dir=str(folder))

    def log_params(self, params: dict) -> None:
        text = "\n".join(f"{k}: {v}" for k, v in params.items())
        self.writer.add_text("parameters", text, 0)

    def log_metrics(self, metrics: dict, step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


class _MLflowLogger:
    """Parameters and metrics to a local MLflow store at ``folder`` (no server)."""

    def __init__(self, folder: Path, run_name: str):
        from mlflow.tracking import MlflowClient

        folder.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=folder.resolve().as_uri())
        experiment = self.client.get_experiment_by_name("utils_cv")
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment("utils_cv")
        )
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id

    def log_params(self, params: dict) -> None:
        for name, value in params.items():
            self.client.log_param(self.run_id, name, str(value)[:500])

    def log_metrics(self, metrics: dict, step: int) -> None:
        for name, value in metrics.items():
            self.client.log_metric(self.run_id, name, value, step=step)

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if status == "finished" else "FAILED")


def open_loggers(run_dir: Path, log_to) -> tuple[list, dict]:
    """The loggers of ``log_to`` that are installed, and {name: "ok" or why not}."""
    loggers, status = [], {}
    for name in check_loggers(log_to):
        try:
            if name == "tensorboard":
                loggers.append(_TensorBoardLogger(run_dir / "tensorboard"))
            else:
                loggers.append(_MLflowLogger(run_dir / "mlruns", run_dir.name))
            status[name] = "ok"
        except ImportError:
            package = "tensorboard" if name == "tensorboard" else "mlflow"
            status[name] = f"not installed (pip install {package})"
            warnings.warn(
                f"log_to: {name} is not installed, so this run is not logged to it "
                f"(pip install {package} to add it); the record in {run_dir} "
                f"(run.json, metrics.csv) is written anyway.",
                stacklevel=3,
            )
    return loggers, status


# --- the record ----------------------------------------------------------------------------------


class RunRecord(TrainingListener):
    """Listener: writes ``run.json`` and ``metrics.csv`` (see the module docstring) to
    ``run_dir`` as training goes, and logs to ``log_to`` ("mlflow", "tensorboard").

    spec, config : the run's specification (completed with the data's classes when training
    starts) and configuration. tags : more JSON values to keep in run.json (e.g. the sweep's
    parameters). resumed : the checkpoint being resumed (rows after it are dropped from
    metrics.csv, run.json is continued).
    """

    order = 10

    def __init__(
        self,
        run_dir: str | Path,
        data_path=None,
        spec=None,
        config=None,
        log_to=(),
        tags: dict | None = None,
        resumed: dict | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.log_to = check_loggers(log_to)
        self.data_path, self.spec, self.config = data_path, spec, config
        self.tags, self.resumed = dict(tags or {}), resumed
        self.loggers, self.info, self.columns = None, None, None
        self.steps_before = {}

    def _start(self, learn):
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config = self.config if self.config is not None else getattr(learn, "config", None)
        spec = getattr(learn, "spec", self.spec)
        path = self.run_dir / RUN_FILE
        if self.resumed is not None and path.is_file():
            self.info = json.loads(path.read_text("utf-8"))
            self.info["status"] = "running"
            self.info["resumed"] = self.info.get("resumed", []) + [_now()]
            self._truncate_metrics(self.resumed["stage"], int(self.resumed["epoch"]))
        else:
            self.info = {
                "format_version": FORMAT_VERSION,
                "status": "running",
                "started": _now(),
                "finished": None,
                "data_path": None if self.data_path is None else str(self.data_path),
                "tags": self.tags,
                "config": None if config is None else config.to_dict(),
                "spec": None if spec is None else spec.to_dict(),
                "epochs": {},
                "best_epochs": {},
                "lr_found": {},
                "last": {},
                "timings": {},
                "versions": _versions(),
            }
            (self.run_dir / METRICS_FILE).unlink(missing_ok=True)
        self.loggers, self.info["loggers"] = open_loggers(self.run_dir, self.log_to)
        params = {**(self.info["config"] or {}), **(self.info["spec"] or {}), **self.tags}
        params.pop("classes", None)
        for logger in self.loggers:
            logger.log_params(params)
        _write_json(path, self.info)

    def _truncate_metrics(self, stage: str, epoch: int) -> None:
        """Drop rows of epochs after the checkpoint (written before a crash, trained again)."""
        path = self.run_dir / METRICS_FILE
        if not path.is_file():
            return
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        rank = STAGES.index(stage)
        keep = [
            r
            for r in rows
            if STAGES.index(r["stage"]) < rank or (r["stage"] == stage and int(r["epoch"]) <= epoch)
        ]
        if keep and len(keep) < len(rows):
            self.columns = list(keep[0])
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, self.columns, lineterminator="\n")
                writer.writeheader()
                writer.writerows(keep)
        elif not keep:
            path.unlink()

    def begin_stage(self, learn, state):
        if self.info is None:
            self._start(learn)
        if state.stage == "fine_tune":
            self.steps_before["fine_tune"] = self.info["epochs"].get("head", 0)

    def after_epoch(self, learn, row, state):
        step = self.steps_before.get(state.stage, 0) + row["epoch"]
        self.info["epochs"][state.stage] = row["epoch"]
        self.info["last"] = {k: _json_value(v) for k, v in row.items()}
        out = {"stage": row["stage"], "epoch": row["epoch"], "step": step}
        out.update({k: v for k, v in row.items() if k not in out})
        path = self.run_dir / METRICS_FILE
        new = not path.is_file()
        if self.columns is None or new:
            self.columns = list(out)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore", lineterminator="\n")
            if new:
                writer.writeheader()
            writer.writerow(out)
        numbers = {
            f"{state.stage}/{k}": float(v)
            for k, v in row.items()
            if k not in ("stage", "epoch") and isinstance(v, (int, float)) and math.isfinite(v)
        }
        for logger in self.loggers:
            logger.log_metrics(numbers, step)
        _write_json(self.run_dir / RUN_FILE, self.info)

    def end_stage(self, learn, state):
        listeners = getattr(learn, "listeners", [])
        best = next((lsn for lsn in listeners if lsn.key == "best_epoch"), None)
        if best is not None:
            self.info["best_epochs"] = best.best
        _write_json(self.run_dir / RUN_FILE, self.info)

    def end_training(self, learn, seconds):
        if self.info is None:  # no epoch at all (epochs_head = epochs = 0)
            self._start(learn)
        self.info["status"] = "finished"
        self.info["finished"] = _now()
        self.info["best_epochs"] = getattr(learn, "best_epochs", self.info["best_epochs"])
        self.info["lr_found"].update(
            {k: r.suggestion for k, r in getattr(learn, "lr_finds", {}).items()}
        )
        timings = dict(getattr(learn, "timings", {}))
        timings["total_s"] = seconds
        self.info["timings"] = timings
        _write_json(self.run_dir / RUN_FILE, self.info)
        for logger in self.loggers:
            logger.log_metrics({f"time/{k}": float(v) for k, v in timings.items()}, 0)
            logger.close("finished")


# --- reading runs back ---------------------------------------------------------------------------


def read_run(run_dir: str | Path) -> dict:
    """A run folder's ``run.json`` as a dict, with its per-epoch rows under "metrics" (a pandas
    DataFrame, see ``METRICS_FILE``). FileNotFoundError naming the file when there is none."""
    import pandas as pd

    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No {RUN_FILE} in {run_dir}: not a run folder of train().")
    info = json.loads(path.read_text("utf-8"))
    metrics = run_dir / METRICS_FILE
    info["metrics"] = pd.read_csv(metrics) if metrics.is_file() else pd.DataFrame()
    return info


def run_folders(folder: str | Path) -> list[Path]:
    """Every run folder (one with ``run.json``) at or under ``folder``, sorted."""
    folder = Path(folder)
    return sorted(path.parent for path in folder.rglob(RUN_FILE))


def read_runs(folder: str | Path):
    """One row per run folder under ``folder`` (a pandas DataFrame indexed by ``run``, the
    folder relative to ``folder``): its tags, configuration and specification fields (not the
    classes), status, epochs done per stage, the last epoch's validation metrics and loss
    (``valid_<name>``), the best epochs' validation loss, and timings in seconds."""
    import pandas as pd

    folder = Path(folder)
    rows = []
    for run_dir in run_folders(folder):
        info = read_run(run_dir)
        row = {"run": str(run_dir.relative_to(folder)) or ".", **info.get("tags", {})}
        row.update(info.get("config") or {})
        row.update({k: v for k, v in (info.get("spec") or {}).items() if k != "classes"})
        row["status"] = info.get("status")
        for stage, n in info.get("epochs", {}).items():
            row[f"epochs_done_{stage}"] = n
        last = info.get("last", {})
        for name, value in last.items():
            if name not in ("stage", "epoch", "lr", "seconds", "train_loss"):
                row[f"valid_{name}" if name != "valid_loss" else name] = value
        row["train_loss"] = last.get("train_loss")
        for stage, best in (info.get("best_epochs") or {}).items():
            row[f"best_epoch_{stage}"] = best.get("epoch")
        row.update({k: v for k, v in (info.get("timings") or {}).items()})
        rows.append(row)
    return pd.DataFrame(rows).set_index("run") if rows else pd.DataFrame()


def read_metrics(folder: str | Path):
    """The per-epoch rows of every run folder under ``folder`` in one pandas DataFrame, with
    the ``run`` folder (relative to ``folder``) and the run's tags as extra columns."""
    import pandas as pd

    folder = Path(folder)
    frames = []
    for run_dir in run_folders(folder):
        info = read_run(run_dir)
        metrics = info["metrics"]
        if metrics.empty:
            continue
        metrics.insert(0, "run", str(run_dir.relative_to(folder)) or ".")
        for name, value in info.get("tags", {}).items():
            metrics[name] = value
        frames.append(metrics)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def plot_metrics(metrics, y: str = "valid_loss", by: str = "run", ax=None):
    """Per-epoch curves of ``y`` (a column of ``read_metrics``) against ``step``, one line per
    value of ``by`` (the mean over runs sharing it, e.g. the sweep's ``parameters`` over
    repetitions). Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    if y not in metrics.columns:
        raise ValueError(f"plot_metrics: no column {y!r}; columns are {list(metrics.columns)}.")
    fig, ax = plt.subplots(figsize=(7, 4)) if ax is None else (ax.figure, ax)
    for label, group in metrics.groupby(by, sort=False):
        curve = group.groupby("step")[y].mean()
        ax.plot(curve.index, curve.values, label=str(label))
    ax.set(xlabel="epoch (head, then fine-tuning)", ylabel=y)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig
