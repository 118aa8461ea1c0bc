"""Grid search over the training recipe: ``ParameterSweeper`` and helpers to read its results.

A sweep trains one model per combination of parameter values ("permutation"), dataset and
repetition, and measures validation accuracy (fraction, 0..1) and training duration (seconds).
Each finished run is appended to ``<out_dir>/sweep_results.csv`` at once, so a sweep that is
interrupted resumes where it stopped when run again with the same ``out_dir``.

The swept parameters are fields of the model specification (``SPEC_PARAMS`` of
``spec.ModelSpec``) and of the training configuration (``CONFIG_PARAMS``: every field of
``train.TrainConfig`` but ``NOT_SWEPT``), and every run trains with ``train.train``: a sweep
explores exactly the recipe the notebooks use, and its defaults are that recipe's defaults
(``DEFAULT_PARAMS``). Values are validated by ``ModelSpec`` and ``TrainConfig`` themselves.
"""

from __future__ import annotations

import csv
import difflib
import gc
import itertools
import numbers
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import pandas as pd

from utils_cv.classification.backbones import (
    WeightsUnavailableError,
    get_backbone,
    offline_backbones,
    weights_available,
)
from utils_cv.classification.spec import ModelSpec, SpecError
from utils_cv.classification.train import ConfigError, TrainConfig

RESULTS_FILE = "sweep_results.csv"
RUNS_DIR = "runs"  # one record per run (records.RunRecord), read back by records.read_runs
DATACHECK_DIR = "datacheck"
METRICS = ("accuracy", "duration")
INDEX_LEVELS = ("rep", "parameters", "dataset")

# The specification fields worth sweeping (the others describe the data or the decision).
SPEC_PARAMS = ("backbone", "im_size", "resize", "head", "dropout", "feature_stages")
# Training configuration fields that are not swept, and why.
NOT_SWEPT = {
    "seed": "repetition r is seeded with run(seed=...) + r",
    "valid_pct": "another validation set would make the accuracies incomparable",
}
CONFIG_PARAMS = tuple(f.name for f in fields(TrainConfig) if f.name not in NOT_SWEPT)

# Default value of every parameter: the recipe's (im_size and resize None: the backbone's).
DEFAULT_PARAMS = {
    **{f.name: f.default for f in fields(ModelSpec) if f.name in SPEC_PARAMS},
    **{f.name: f.default for f in fields(TrainConfig) if f.name in CONFIG_PARAMS},
}

# Parameters of the sweeper before it trained through train.train -> what replaces them.
RENAMED = {
    "learning_rate": "lr",
    "architecture": "backbone",
    "one_cycle_policy": "one_cycle",
    "discriminative_lr": "body_lr_ratio (1: the body learns at the head's rate)",
    "training_schedule": "epochs_head and epochs (head only: epochs=0)",
}

# --- checking parameter values ---------------------------------------------------------------


def _unknown_parameter(name) -> ValueError:
    if name in RENAMED:
        hint = (
            f" Use {RENAMED[name]} instead (sweep parameters are now the fields of ModelSpec "
            f"and TrainConfig)."
        )
    elif name in NOT_SWEPT:
        hint = f" It is not swept: {NOT_SWEPT[name]}."
    else:
        close = difflib.get_close_matches(str(name), DEFAULT_PARAMS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
    return ValueError(
        f"Unknown sweep parameter '{name}'.{hint} Valid names: {', '.join(DEFAULT_PARAMS)}."
    )


def _canonical(name: str, value):
    """``value`` of parameter ``name`` checked by ModelSpec or TrainConfig, in its canonical type.

    Raises ValueError naming the parameter and the accepted values.
    """
    try:
        if name in SPEC_PARAMS:
            # None (im_size, resize): the backbone's default, resolved per permutation;
            # None (feature_stages): decided by the data (multi-label or not) when training.
            return None if value is None else getattr(ModelSpec(**{name: value}), name)
        value = getattr(TrainConfig(**{name: value}), name)
    except (SpecError, ConfigError) as err:
        reason = str(err).split(": ", 1)[-1]  # drop "ModelSpec field 'x'" / "TrainConfig ..."
        raise ValueError(f"Sweep parameter '{name}': {reason}") from None
    default = DEFAULT_PARAMS[name]
    if isinstance(default, float):  # 1 and 1.0 are the same learning rate
        return float(value)
    if isinstance(default, numbers.Integral) and not isinstance(default, bool):
        return int(value)
    return value


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
        Unknown name (with the closest valid name, or the new name of a renamed one), empty
        list, or a value that ``ModelSpec`` or ``TrainConfig`` refuses (the message names the
        parameter and the accepted values).
    """
    if name not in DEFAULT_PARAMS:
        raise _unknown_parameter(name)
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        values = [values]
    if len(values) == 0:
        raise ValueError(f"Sweep parameter '{name}' needs at least one value.")
    checked = []
    for value in values:
        value = _canonical(name, value)
        if value not in checked:
            checked.append(value)
    return checked


def settings(params: dict, seed: int = 42) -> tuple[ModelSpec, TrainConfig]:
    """The model specification and training configuration of one run.

    params : values of parameters (``DEFAULT_PARAMS`` keys); missing ones take their default.
    seed : the configuration's seed.
    """
    unknown = [name for name in params if name not in DEFAULT_PARAMS]
    if unknown:
        raise _unknown_parameter(unknown[0])
    values = {**DEFAULT_PARAMS, **params}
    spec = ModelSpec(**{name: values[name] for name in SPEC_PARAMS})
    config = TrainConfig(seed=seed, **{name: values[name] for name in CONFIG_PARAMS})
    return spec, config


def resolve(params: dict) -> dict:
    """Every parameter's value as trained: defaults filled in, None replaced by the backbone's
    image size or resize method."""
    spec, config = settings(params)
    return {name: getattr(spec if name in SPEC_PARAMS else config, name) for name in DEFAULT_PARAMS}


# --- one training run --------------------------------------------------------------------------


def train_one_setting(
    data_path: str | Path,
    params: dict,
    files: Sequence[Path] | None = None,
    seed: int = 42,
    record_dir: str | Path | None = None,
    tags: dict | None = None,
) -> tuple[float, float]:
    """Train one model with ``params`` on ``data_path`` (``train.train``) and measure it.

    Parameters
    ----------
    data_path : str or Path
        A dataset folder, as ``get_dls`` reads it.
    params : dict
        Parameter values (keys of ``DEFAULT_PARAMS``; missing ones take their default).
    files : sequence of Path, optional
        Train and validate on these images only (the good files of a data check).
    seed : int
        Seeds the data split, shuffling and head initialisation.
    record_dir : str or Path, optional
        Write the run's record there (``records.RunRecord``: configuration, per-epoch metrics,
        timings), with ``tags`` (e.g. rep, dataset, parameters).

    Returns
    -------
    (accuracy, duration) : tuple of float
        Validation accuracy (fraction, 0..1; hamming accuracy for multi-label data) and
        training wall time (seconds, ``learn.training_seconds``: without building the data).
    """
    import torch

    from utils_cv.classification.records import RunRecord
    from utils_cv.classification.train import train, validation_accuracy

    spec, config = settings(params, seed)
    listeners = [] if record_dir is None else [RunRecord(record_dir, data_path, tags=tags)]
    learn = train(
        data_path,
        spec,
        config,
        files=files,
        progress=False,
        record_train_metrics=False,
        listeners=listeners,
    )
    with learn.no_bar(), learn.no_logging():
        accuracy = validation_accuracy(learn)
    duration = learn.training_seconds
    del learn
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return float(accuracy), float(duration)


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

    A missing or empty file gives ``{}``; a file with other columns (another file, or one
    written by an earlier version of the sweeper) raises ValueError. A last line cut short by a
    kill is ignored (that run is trained again).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file() or csv_path.stat().st_size == 0:
        return {}
    reader = csv.reader(_complete_lines(csv_path))
    header = next(reader, [])
    if header != results_columns():
        if {"rep", "dataset", *METRICS} <= set(header) and set(RENAMED) & set(header):
            raise ValueError(
                f"{csv_path} was written by an earlier version of the sweeper, which trained "
                f"with another recipe and named its parameters differently ("
                f"{', '.join(f'{old} -> {new}' for old, new in RENAMED.items())}); its runs "
                f"cannot be resumed. Choose another output folder (this one is left as it is)."
            )
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

    A last line left unfinished by a kill is removed first (``read_finished_runs`` ignored it,
    so that run was trained again), so it never merges with the new row.
    """
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    if csv_path.is_file():
        data = csv_path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(csv_path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    is_new = not csv_path.is_file() or csv_path.stat().st_size == 0
    with open(csv_path, "a", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        if is_new:
            writer.writerow(results_columns())
        writer.writerow([*key, repr(float(accuracy)), repr(float(duration))])
        f.flush()


# --- the sweeper -----------------------------------------------------------------------------


def parameters_label(params: dict) -> str:
    """A run's parameters as one string, e.g. ``'backbone=efficientnet_lite0|im_size=224|...'``."""
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


def _check_weights(backbones: Sequence[str]) -> None:
    """Load each backbone's ImageNet weights once, so a missing one fails before training."""
    for name in backbones:
        if weights_available(name):
            continue
        backbone = get_backbone(name)
        if backbone.load_imagenet_state is None:
            raise ValueError(
                f"Backbone '{name}': no pretrained weights are known for it, and a sweep trains "
                f"from pretrained weights. Backbones with offline weights: "
                f"{', '.join(offline_backbones())}."
            )
        try:
            backbone.load_imagenet_state()
        except WeightsUnavailableError as err:
            raise ValueError(f"Backbone '{name}': {err}") from None


def run_data_check(path: Path, out_dir: Path | None, progress: bool = True):
    """``check_dataset`` of ``path``: returns its DataReport (``good_files``, ``summary()``).

    Its ``data_issues.csv`` goes to ``out_dir`` (nothing is written when None). Raises
    DataError (a ValueError) when nothing in ``path`` can be trained on.
    """
    from utils_cv.classification.datacheck import check_dataset

    return check_dataset(path, out_dir=out_dir, progress=progress)


class ParameterSweeper:
    """Grid search: train and measure one model per combination of parameter values.

    Create with the values to try, as keyword lists (the others keep ``DEFAULT_PARAMS``, the
    recipe's defaults)::

        sweeper = ParameterSweeper(lr=[1e-3, 1e-2], im_size=[160, 224])
        df = sweeper.run(["data/a", "data/b"], reps=3, out_dir="outputs/sweep")

    Each parameter takes a value or a list of values; unknown names or bad values raise
    ValueError at once.

    Parameters
    ----------
    backbone, im_size, resize, head, dropout, feature_stages
        Fields of ``spec.ModelSpec`` (see its docstring): the backbone name, the image side in
        pixels, the resize method, the head and its dropout, and the block stages joined to the
        backbone's features. ``im_size`` and ``resize`` None (the default) take the backbone's
        value; ``feature_stages`` None is decided by the data (multi-label or not).
    epochs_head, epochs, lr, batch_size, weight_decay, aug_passes, body_lr_ratio, one_cycle, \
freeze_bn_stats, transform, patience, balance
        Fields of ``train.TrainConfig`` (see its docstring): head epochs on cached features,
        then fine-tuning epochs of the whole network, its learning rates, schedule, batch-norm
        statistics and early stopping (``patience``, 0: off), augmentation, and the answer to
        class imbalance (``balance``).
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
        """Every combination of parameter values, as trained (``resolve``): one dict per run.

        Combinations that resolve to the same settings (im_size None and the backbone's own
        size) are one run.
        """
        names = list(self.params)
        runs = []
        for values in itertools.product(*self.params.values()):
            params = resolve(dict(zip(names, values)))
            if params not in runs:
                runs.append(params)
        return runs

    def run(
        self,
        datasets: str | Path | Sequence[str | Path],
        reps: int = 3,
        out_dir: str | Path | None = None,
        seed: int = 42,
        data_check: bool = True,
        progress: bool = True,
        backend: str = "serial",
        address: str | None = None,
        workers: int | None = None,
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
            ``seed`` was then. None: nothing is written or resumed.
        data_check : bool
            Check each dataset with ``check_dataset`` before training and train on its good
            files only; the reports are kept in ``self.data_reports`` and their summaries
            printed.
        progress : bool
            Show a progress bar over the runs.
        backend : "serial" or "ray"
            "serial" trains the runs one after another in this process; "ray" runs each as a
            Ray Tune trial (``sweeper_ray``; the ``distributed`` extra), on a local Ray
            instance unless ``address`` names a cluster. Same seeds, results file and table;
            failed trials raise ``sweeper_ray.SweepTrialsFailed`` after the others finished,
            and a second run with the same ``out_dir`` trains only them.
        address : str, optional
            Ray cluster to join ("auto", "ray://host:10001"); None starts local Ray.
        workers : int, optional
            Ray trials at once (default: one per CPU).

        Returns
        -------
        pandas.DataFrame
            Index (rep, parameters, dataset), columns accuracy (fraction) and duration (seconds).
        """
        from tqdm.auto import tqdm

        if not isinstance(reps, numbers.Integral) or isinstance(reps, bool) or reps < 1:
            raise ValueError(f"reps must be a whole number >= 1, not {reps!r}.")
        if backend not in ("serial", "ray"):
            raise ValueError(f"backend must be 'serial' or 'ray', not {backend!r}.")
        named = _dataset_names(datasets)
        csv_path = Path(out_dir) / RESULTS_FILE if out_dir is not None else None
        finished = read_finished_runs(csv_path) if csv_path is not None else {}
        permutations = self.permutations
        runs = [
            (rep, name, params) for rep in range(reps) for name in named for params in permutations
        ]
        pending = [run for run in runs if run_key(*run) not in finished]
        _check_weights(sorted({params["backbone"] for _, _, params in pending}))
        to_check = {name for _, name, _ in pending} if data_check else set()
        files = self._check_datasets(named, to_check, out_dir, progress)
        if backend == "ray":
            from utils_cv.classification.sweeper_ray import run_on_ray

            run_on_ray(pending, named, files, seed, csv_path, finished, address, workers)
            pending = []

        rows = []
        bar = tqdm(total=len(runs), desc="sweep", unit="run", disable=not progress)
        bar.update(len(runs) - len(pending))
        for rep, name, params in runs:
            key = run_key(rep, name, params)
            if key not in finished:
                bar.set_postfix_str(f"rep {rep}, {name}")
                record = _record_args(out_dir, rep, name, params)
                finished[key] = train_one_setting(
                    named[name], params, files.get(name), seed + rep, **record
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


def _record_args(out_dir, rep: int, dataset: str, params: dict) -> dict:
    """Where a run's record goes (``out_dir/runs/rep<r>-<dataset>-<hash of parameters>``) and
    its tags; nothing when there is no ``out_dir``."""
    import hashlib

    if out_dir is None:
        return {}
    label = parameters_label(params)
    digest = hashlib.sha256(label.encode("utf-8")).hexdigest()[:12]
    return {
        "record_dir": Path(out_dir) / RUNS_DIR / f"rep{rep}-{dataset}-{digest}",
        "tags": {"rep": rep, "dataset": dataset, "parameters": label},
    }


# --- reading results -------------------------------------------------------------------------


def split_parameters_label(label: str) -> dict[str, str]:
    """``'a=1|b=x'`` -> ``{'a': '1', 'b': 'x'}`` (inverse of ``parameters_label``, as text)."""
    if not label:
        return {}
    return dict(part.split("=", 1) for part in label.split("|"))


def clean_sweeper_df(df: pd.DataFrame) -> pd.DataFrame:
    """Drop the parameters that have the same value in every row from the ``parameters`` labels.

    What is left in each label is what the runs differ in, e.g. ``'lr=0.001'``.
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
