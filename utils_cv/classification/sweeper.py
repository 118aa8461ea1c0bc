"""Grid search over training parameters: ``ParameterSweeper`` and helpers to read its results.

A sweep trains one model per combination of parameter values ("permutation"), dataset and
repetition, and measures validation accuracy (fraction, 0..1) and training duration (seconds).
Each finished run is appended to ``<out_dir>/sweep_results.csv`` at once, so a sweep that is
interrupted resumes where it stopped when run again with the same ``out_dir``.

Training schedules (``epochs`` is the ``epochs`` parameter; see ``schedule_epochs``):

- ``head_only``: the pretrained body stays frozen; the head trains for ``epochs``.
- ``body_only``: the whole network is unfrozen from the start and trains for ``epochs``.
- ``head_first_then_body``: the library's recipe, ``fit(learn, epochs, lr, epochs_head=1)``:
  one epoch of the head alone, then ``epochs`` of the whole network (``epochs + 1`` in all).
"""

from __future__ import annotations

import csv
import difflib
import gc
import itertools
import numbers
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from utils_cv.classification.backbones import (
    WeightsUnavailableError,
    get_backbone,
    weights_available,
)

TRAINING_SCHEDULES = ("head_only", "body_only", "head_first_then_body")
RESULTS_FILE = "sweep_results.csv"
DATACHECK_DIR = "datacheck"
METRICS = ("accuracy", "duration")
INDEX_LEVELS = ("rep", "parameters", "dataset")
BODY_LR_RATIO = 10.0  # body learning rate = lr / 10 when discriminative_lr is on

# Default value of every parameter; the grid varies those given as lists.
DEFAULT_PARAMS = {
    "learning_rate": 1e-3,
    "epochs": 5,
    "batch_size": 16,
    "im_size": 224,
    "architecture": "efficientnet_lite0",
    "transform": True,
    "dropout": 0.5,
    "weight_decay": 0.01,
    "training_schedule": "head_first_then_body",
    "discriminative_lr": True,
    "one_cycle_policy": True,
    "freeze_bn_stats": True,
}

# --- checking parameter values ---------------------------------------------------------------


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_float(value) -> float:
    if not _is_real(value) or not value > 0:
        raise ValueError("must be a number > 0")
    return float(value)


def _non_negative_float(value) -> float:
    if not _is_real(value) or not value >= 0:
        raise ValueError("must be a number >= 0")
    return float(value)


def _positive_int(value) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError("must be a whole number >= 1")
    return int(value)


def _dropout(value) -> float:
    if not _is_real(value) or not 0 <= value < 1:
        raise ValueError("must be a number with 0 <= dropout < 1")
    return float(value)


def _flag(value) -> bool:
    if type(value).__name__ not in ("bool", "bool_"):
        raise ValueError("must be True or False")
    return bool(value)


def _architecture(value) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a backbone name (str)")
    return get_backbone(value).name


def _training_schedule(value) -> str:
    if value not in TRAINING_SCHEDULES:
        raise ValueError(f"must be one of {', '.join(TRAINING_SCHEDULES)}")
    return value


# One checker per parameter: returns the value in its canonical type or raises ValueError.
PARAM_CHECKS: dict[str, Callable] = {
    "learning_rate": _positive_float,
    "epochs": _positive_int,
    "batch_size": _positive_int,
    "im_size": _positive_int,
    "architecture": _architecture,
    "transform": _flag,
    "dropout": _dropout,
    "weight_decay": _non_negative_float,
    "training_schedule": _training_schedule,
    "discriminative_lr": _flag,
    "one_cycle_policy": _flag,
    "freeze_bn_stats": _flag,
}


def check_parameter(name: str, values) -> list:
    """The values of parameter ``name`` as a list in canonical types, duplicates removed.

    Parameters
    ----------
    name : str
        A key of ``DEFAULT_PARAMS``.
    values : value or sequence of values
        A single value is treated as a list of one.

    Returns
    -------
    list
        The checked values, in the order given.

    Raises
    ------
    ValueError
        Unknown name (with the closest valid names), empty list, or a value of the wrong type
        or range.
    """
    if name not in PARAM_CHECKS:
        close = difflib.get_close_matches(name, PARAM_CHECKS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(
            f"Unknown sweep parameter '{name}'.{hint} Valid names: {', '.join(PARAM_CHECKS)}."
        )
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        values = [values]
    if len(values) == 0:
        raise ValueError(f"Sweep parameter '{name}' needs at least one value.")
    checked = []
    for value in values:
        try:
            value = PARAM_CHECKS[name](value)
        except ValueError as err:
            raise ValueError(f"Sweep parameter '{name}': {value!r} {err}.") from None
        if value not in checked:
            checked.append(value)
    return checked


def schedule_epochs(training_schedule: str, epochs: int) -> tuple[int, int]:
    """How many epochs the head alone and then the whole network train.

    Returns
    -------
    (epochs_head, epochs_body) : tuple of int
        head_only -> (epochs, 0); body_only -> (0, epochs);
        head_first_then_body -> (1, epochs).
    """
    training_schedule = _training_schedule(training_schedule)
    if training_schedule == "head_only":
        return epochs, 0
    if training_schedule == "body_only":
        return 0, epochs
    return 1, epochs


# --- one training run --------------------------------------------------------------------------


def _train_phase(learn, epochs: int, lr, one_cycle: bool, cbs=None) -> None:
    if epochs > 0:
        fit_fn = learn.fit_one_cycle if one_cycle else learn.fit
        fit_fn(epochs, lr, cbs=cbs)


def train_one_setting(
    data_path: str | Path,
    params: dict,
    files: Sequence[Path] | None = None,
    early_stopping: bool = False,
    patience: int = 3,
    seed: int = 42,
) -> tuple[float, float]:
    """Train one model with ``params`` on ``data_path`` and measure it.

    Parameters
    ----------
    data_path : str or Path
        A dataset folder, as ``get_dls`` reads it.
    params : dict
        One value for every key of ``DEFAULT_PARAMS``.
    files : sequence of Path, optional
        Train and validate on these images only (the good files of a data check).
    early_stopping : bool
        Stop the body phase when the validation loss has not improved for ``patience`` epochs.
    seed : int
        Seeds the data split, shuffling and head initialisation.

    Returns
    -------
    (accuracy, duration) : tuple of float
        Validation accuracy (fraction, 0..1) and training wall time (seconds).
    """
    import torch
    from fastai.callback.tracker import EarlyStoppingCallback

    from utils_cv.classification.data import get_dls
    from utils_cv.classification.model import (
        FreezeBatchNormStats,
        create_learner,
        validation_accuracy,
    )
    from utils_cv.common.misc import set_random_seed

    set_random_seed(seed)
    backbone = get_backbone(params["architecture"])
    dls = get_dls(
        data_path,
        im_size=params["im_size"],
        batch_size=params["batch_size"],
        mean=backbone.mean,
        std=backbone.std,
        seed=seed,
        transform=params["transform"],
        files=files,
    )
    learn = create_learner(
        dls,
        backbone.name,
        dropout=params["dropout"],
        weight_decay=params["weight_decay"],
        record_train_metrics=False,
    )
    epochs_head, epochs_body = schedule_epochs(params["training_schedule"], params["epochs"])
    lr = params["learning_rate"]
    ratio = BODY_LR_RATIO if params["discriminative_lr"] else 1.0
    body_lr = slice(lr / ratio, lr) if ratio != 1 else lr
    stopper = [EarlyStoppingCallback(monitor="valid_loss", patience=patience)]
    if params["freeze_bn_stats"]:
        learn.add_cb(FreezeBatchNormStats())
    start = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.freeze()
        _train_phase(learn, epochs_head, lr, params["one_cycle_policy"])
        learn.unfreeze()
        _train_phase(
            learn,
            epochs_body,
            body_lr,
            params["one_cycle_policy"],
            stopper if early_stopping else None,
        )
        duration = time.perf_counter() - start
        accuracy = validation_accuracy(learn)
    del learn, dls
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return accuracy, duration


# --- results file ----------------------------------------------------------------------------


def _text(value) -> str:
    """A value as written to and compared with the results CSV."""
    return str(value)


def results_columns() -> list[str]:
    """Columns of the results CSV: rep, dataset, every parameter, accuracy, duration."""
    return ["rep", "dataset", *DEFAULT_PARAMS, *METRICS]


def run_key(rep: int, dataset: str, params: dict) -> tuple[str, ...]:
    """What identifies a run in the results CSV: rep, dataset name, parameter values (as text)."""
    return (_text(rep), dataset, *(_text(params[name]) for name in DEFAULT_PARAMS))


def _complete_lines(csv_path: Path) -> list[str]:
    """Lines of ``csv_path`` that end with a newline (a kill can leave the last one cut)."""
    with open(csv_path, newline="") as f:
        return [line for line in f.readlines() if line.endswith("\n")]


def read_finished_runs(csv_path: str | Path) -> dict[tuple, tuple[float, float]]:
    """The runs already in a results CSV: {run_key: (accuracy, duration)}.

    A missing or empty file gives ``{}``; a file with other columns raises ValueError. A last
    line cut short by a kill is ignored (that run is trained again).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file() or csv_path.stat().st_size == 0:
        return {}
    reader = csv.reader(_complete_lines(csv_path))
    header = next(reader, [])
    if header != results_columns():
        raise ValueError(
            f"{csv_path} is not a results file of this sweeper (its columns are {header}); "
            f"choose another output folder."
        )
    finished = {}
    for row in reader:
        if len(row) == len(header):
            *key, accuracy, duration = row
            finished[tuple(key)] = (float(accuracy), float(duration))
    return finished


def append_result(csv_path: str | Path, key: tuple, accuracy: float, duration: float) -> None:
    """Append one finished run to the results CSV (header first when the file is new).

    A line left unfinished by a kill is ended first, so it never merges with the new row.
    """
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    is_new = not csv_path.is_file() or csv_path.stat().st_size == 0
    cut_line = not is_new and not csv_path.read_bytes().endswith(b"\n")
    with open(csv_path, "a", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        if is_new:
            writer.writerow(results_columns())
        if cut_line:
            f.write("\n")
        writer.writerow([*key, repr(float(accuracy)), repr(float(duration))])
        f.flush()


# --- the sweeper -----------------------------------------------------------------------------


def parameters_label(params: dict) -> str:
    """A run's parameters as one string, e.g. ``'learning_rate=0.001|epochs=5|...'``."""
    return "|".join(f"{name}={params[name]}" for name in params)


def _dataset_names(datasets) -> dict[str, Path]:
    """{folder name: path} for ``datasets``; checks that they exist and their names differ."""
    if isinstance(datasets, (str, Path)):
        datasets = [datasets]
    if len(datasets) == 0:
        raise ValueError("Give at least one dataset folder.")
    named = {}
    for dataset in datasets:
        path = Path(dataset)
        if not path.is_dir():
            raise FileNotFoundError(f"Dataset folder not found: {path}")
        name = path.resolve().name
        if name in named:
            raise ValueError(
                f"Two datasets are named '{name}' ({named[name]} and {path}); results are "
                f"keyed by folder name, so give them different names."
            )
        named[name] = path
    return named


def _check_weights(architectures: Sequence[str]) -> None:
    """Load each backbone's ImageNet weights once, so a missing one fails before training."""
    for name in architectures:
        if not weights_available(name):
            try:
                get_backbone(name).load_imagenet_state()
            except WeightsUnavailableError as err:
                raise ValueError(f"Architecture '{name}': {err}") from None


def run_data_check(path: Path, out_dir: Path | None, progress: bool = True):
    """``check_dataset`` of ``path``: returns its DataReport (``good_files``, ``summary()``).

    Its ``data_issues.csv`` goes to ``out_dir`` (nothing is written when None). Raises
    DataError (a ValueError) when nothing in ``path`` can be trained on.
    """
    from utils_cv.classification.datacheck import check_dataset

    return check_dataset(path, out_dir=out_dir, progress=progress)


class ParameterSweeper:
    """Grid search: train and measure one model per combination of parameter values.

    Create with the values to try, as keyword lists (the others keep ``DEFAULT_PARAMS``)::

        sweeper = ParameterSweeper(learning_rate=[1e-4, 1e-3], im_size=[160, 224])
        df = sweeper.run(["data/a", "data/b"], reps=3, out_dir="outputs/sweep")

    Each parameter takes a value or a list of values; unknown names or bad values raise
    ValueError at once.

    Parameters
    ----------
    learning_rate : float > 0
        Peak learning rate of the head.
    epochs : int >= 1
        Training epochs, shared out by ``training_schedule`` (see the module docstring).
    batch_size, im_size : int >= 1
        Images per batch; image side in pixels (images are squished to squares).
    architecture : str
        A backbone name from ``list_backbones()``.
    transform : bool
        Data augmentation on or off.
    dropout : float, 0 <= p < 1
        Dropout of the head.
    weight_decay : float >= 0
        Weight decay (0.01 is fastai's default).
    training_schedule : str
        One of ``TRAINING_SCHEDULES``.
    discriminative_lr : bool
        The body learns at lr / 10 (True) or at lr like the head.
    one_cycle_policy : bool
        fastai's one-cycle schedule (True) or a constant learning rate.
    freeze_bn_stats : bool
        Keep the body's batch-norm statistics as pretrained while training (True, this project's
        recipe: ``model.FreezeBatchNormStats``) or let them update from the batches (fastai).
    """

    def __init__(self, **params):
        self.params = {name: [value] for name, value in DEFAULT_PARAMS.items()}
        self.data_reports = {}
        self.update_parameters(**params)

    def update_parameters(self, **params) -> ParameterSweeper:
        """Set the values to try for the given parameters (all are checked first). Returns self."""
        checked = {name: check_parameter(name, values) for name, values in params.items()}
        self.params.update(checked)
        return self

    @property
    def permutations(self) -> list[dict]:
        """Every combination of parameter values, as one dict per run."""
        names = list(self.params)
        return [dict(zip(names, values)) for values in itertools.product(*self.params.values())]

    def run(
        self,
        datasets: str | Path | Sequence[str | Path],
        reps: int = 3,
        out_dir: str | Path | None = None,
        early_stopping: bool = False,
        patience: int = 3,
        seed: int = 42,
        data_check: bool = True,
        progress: bool = True,
    ) -> pd.DataFrame:
        """Train every permutation on every dataset ``reps`` times.

        Parameters
        ----------
        datasets : folder or list of folders
            Datasets as ``get_dls`` reads them; results name them by folder name.
        reps : int
            Repetitions of each run (rep ``r`` is seeded with ``seed + r``).
        out_dir : str or Path, optional
            Folder for ``sweep_results.csv`` and the data check reports. Runs already in the
            CSV (same parameters, dataset name and rep) are not trained again, whatever
            ``seed`` and ``early_stopping`` were then. None: nothing is written or resumed.
        early_stopping : bool
            Stop the body phase when the validation loss stalls for ``patience`` epochs.
        data_check : bool
            Check each dataset with ``check_dataset`` before training and train on its good
            files only; the reports are kept in ``self.data_reports`` and their summaries
            printed.
        progress : bool
            Show a progress bar over the runs.

        Returns
        -------
        pandas.DataFrame
            Index (rep, parameters, dataset), columns accuracy (fraction) and duration (seconds).
        """
        from tqdm.auto import tqdm

        if not _is_int(reps) or reps < 1:
            raise ValueError(f"reps must be a whole number >= 1, not {reps!r}.")
        named = _dataset_names(datasets)
        csv_path = Path(out_dir) / RESULTS_FILE if out_dir is not None else None
        finished = read_finished_runs(csv_path) if csv_path is not None else {}
        runs = [
            (rep, name, params)
            for rep in range(reps)
            for name in named
            for params in self.permutations
        ]
        pending = [run for run in runs if run_key(*run) not in finished]
        _check_weights(sorted({params["architecture"] for _, _, params in pending}))
        to_check = {name for _, name, _ in pending} if data_check else set()
        files = self._check_datasets(named, to_check, out_dir, progress)

        rows = []
        bar = tqdm(total=len(runs), desc="sweep", unit="run", disable=not progress)
        bar.update(len(runs) - len(pending))
        for rep, name, params in runs:
            key = run_key(rep, name, params)
            if key not in finished:
                bar.set_postfix_str(f"rep {rep}, {name}")
                finished[key] = train_one_setting(
                    named[name], params, files.get(name), early_stopping, patience, seed + rep
                )
                if csv_path is not None:
                    append_result(csv_path, key, *finished[key])
                bar.update(1)
            rows.append((rep, parameters_label(params), name, *finished[key]))
        bar.close()
        df = pd.DataFrame(rows, columns=[*INDEX_LEVELS, *METRICS])
        return df.set_index(list(INDEX_LEVELS))

    def _check_datasets(self, named, names, out_dir, progress) -> dict[str, list[Path]]:
        """Data check of the datasets ``names`` (summaries printed); {name: good files}."""
        files = {}
        for name in sorted(names):
            report_dir = Path(out_dir) / DATACHECK_DIR / name if out_dir is not None else None
            report = run_data_check(named[name], report_dir, progress)
            self.data_reports[name] = report
            print(report.summary())
            files[name] = list(report.good_files)
        return files


# --- reading results -------------------------------------------------------------------------


def split_parameters_label(label: str) -> dict[str, str]:
    """``'a=1|b=x'`` -> ``{'a': '1', 'b': 'x'}`` (inverse of ``parameters_label``, as text)."""
    if not label:
        return {}
    return dict(part.split("=", 1) for part in label.split("|"))


def clean_sweeper_df(df: pd.DataFrame) -> pd.DataFrame:
    """Drop the parameters that have the same value in every row from the ``parameters`` labels.

    What is left in each label is what the runs differ in, e.g. ``'learning_rate=0.001'``.
    When no parameter varies, the labels are kept whole.
    """
    labels = df.index.get_level_values("parameters")
    parsed = [split_parameters_label(label) for label in labels]
    names = list(parsed[0]) if parsed else []
    varying = [n for n in names if len({p.get(n) for p in parsed}) > 1]
    if not varying:
        return df.copy()
    short = ["|".join(f"{n}={p[n]}" for n in varying) for p in parsed]
    out = df.copy()
    arrays = [
        short if level == "parameters" else df.index.get_level_values(level)
        for level in df.index.names
    ]
    out.index = pd.MultiIndex.from_arrays(arrays, names=df.index.names)
    return out


def average_sweeper_df(df: pd.DataFrame, over: str | Sequence[str] = "rep") -> pd.DataFrame:
    """Mean of accuracy and duration over the index levels ``over`` ('rep' and/or 'dataset').

    Returns a DataFrame indexed by the remaining levels, in order of first appearance.
    """
    over = [over] if isinstance(over, str) else list(over)
    unknown = [level for level in over if level not in df.index.names]
    if unknown:
        raise ValueError(f"Cannot average over {unknown}: the index levels are {df.index.names}.")
    keep = [level for level in df.index.names if level not in over]
    if not keep:
        return df.mean().to_frame().T
    return df.groupby(level=keep, sort=False).mean()


def _row_labels(index: pd.Index) -> list[str]:
    """One label per row: the index values, leaving out levels that are the same in every row."""
    frame = index.to_frame(index=False)
    varying = [level for level in frame.columns if frame[level].nunique() > 1]
    levels = varying or list(frame.columns)
    return [
        " | ".join(
            str(v) if level == "parameters" else f"{level} {v}" for level, v in zip(levels, row)
        )
        for row in frame[levels].itertuples(index=False)
    ]


def plot_sweeper_df(
    df: pd.DataFrame, metrics: Sequence[str] = METRICS, sort_by: str | None = None, figsize=None
):
    """Horizontal bar charts, one per metric, one bar per row of ``df`` with its value written on.

    Pass an averaged (``average_sweeper_df``) and cleaned (``clean_sweeper_df``) DataFrame for
    one bar per permutation. Bars are in row order from the top; sort_by : a metric to order
    them by instead (largest at the top). Accuracy is a fraction, duration in seconds.
    Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    if sort_by is not None:
        df = df.sort_values(sort_by, ascending=False)
    labels = _row_labels(df.index)
    if figsize is None:
        figsize = (6 * len(metrics), 1.0 + 0.45 * len(df))
    fig, axes = plt.subplots(1, len(metrics), figsize=figsize, sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        values = df[metric].astype(float)
        bars = ax.barh(range(len(df)), values, color="tab:blue")
        fmt = "{:.3f}" if metric == "accuracy" else "{:.1f}"
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], padding=3)
        if metric == "accuracy":
            ax.set(xlabel="accuracy (fraction)", xlim=(0, 1.15))
        else:
            unit = " (seconds)" if metric == "duration" else ""
            ax.set(xlabel=metric + unit, xlim=(0, max(1e-9, float(values.max())) * 1.2))
    axes[0, 0].set_yticks(range(len(df)), labels)
    axes[0, 0].invert_yaxis()
    fig.tight_layout()
    return fig
