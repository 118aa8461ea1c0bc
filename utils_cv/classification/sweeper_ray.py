"""The sweeper's Ray Tune backend: ``ParameterSweeper.run(..., backend="ray")``.

Each run of the sweep (permutation x dataset x repetition) is one Ray Tune trial, which trains
with ``sweeper.train_one_setting`` exactly as the serial sweeper does, with the same seed. By
default a local Ray instance is started on this machine (and shut down afterwards);
``address="auto"`` or ``"ray://host:10001"`` joins an existing cluster instead. The driver
appends each finished trial to the same ``sweep_results.csv`` as the serial sweeper, as it
finishes, so an interrupted sweep resumes with either backend. Failed trials are not written:
``SweepTrialsFailed`` lists them after the others finished, and running the sweep again with
the same ``out_dir`` trains only them.

Needs the ``distributed`` extra (``pip install .[distributed]``: ``ray[tune]``).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


class SweepTrialsFailed(RuntimeError):
    """Some trials of a Ray sweep failed; ``failures`` holds (run_key, error text) pairs."""

    def __init__(self, message: str, failures: list[tuple[tuple, str]]):
        super().__init__(message)
        self.failures = failures


def import_ray():
    """``ray`` (with Tune), or ImportError saying which extra to install."""
    try:
        import ray
        from ray import tune  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"backend='ray' needs Ray Tune ({err}). Install the extra: "
            f"pip install -e '.[distributed]'."
        ) from None
    return ray


def start_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to Ray: the running instance when there is one in this process, else the
    cluster at ``address``, else a new local instance with ``num_cpus`` CPUs (default: all).

    Returns True when this call started or connected (the caller shuts it down), False when
    Ray was already initialised.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return True


def _trial(config, runs, paths, files, seed):
    """One trial: train run ``config["index"]`` and report its accuracy and duration."""
    from ray import tune

    from utils_cv.classification.sweeper import train_one_setting

    rep, name, params = runs[config["index"]]
    accuracy, duration = train_one_setting(paths[name], params, files.get(name), seed + rep)
    tune.report({"accuracy": accuracy, "duration": duration})


def run_on_ray(
    pending: list,
    named: dict,
    files: dict,
    seed: int,
    csv_path: Path | None,
    finished: dict,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_trial: float = 1,
    progress: bool = True,
) -> None:
    """Train the ``pending`` runs ((rep, dataset name, params) each) as Ray Tune trials.

    named : {dataset name: folder}; files : {dataset name: good files} (may lack a name);
    seed : rep r trains with seed + r; csv_path : results file to append each finished trial
    to (None: none); finished : {run_key: (accuracy, duration)}, filled in place.
    address : Ray cluster to join (None: local Ray). workers : trials at once (default: as
    many as the CPUs allow at ``cpus_per_trial`` each). Raises SweepTrialsFailed listing
    failed trials after the others have finished.
    """
    from ray import tune

    from utils_cv.classification.sweeper import append_result, run_key

    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a whole number >= 1 or None, not {workers!r}.")
    if not pending:
        return
    ray = import_ray()
    started = start_ray(address, num_cpus=None)
    keys = [run_key(*run) for run in pending]
    paths = {name: str(Path(path).resolve()) for name, path in named.items()}
    files = {name: [str(Path(f).resolve()) for f in fs] for name, fs in files.items()}

    class RecordResults(tune.Callback):
        """In the driver: write each trial's result as soon as it reports."""

        def on_trial_result(self, iteration, trials, trial, result, **info):
            key = keys[trial.config["index"]]
            if key in finished or "accuracy" not in result:
                return
            finished[key] = (float(result["accuracy"]), float(result["duration"]))
            if csv_path is not None:
                append_result(csv_path, key, *finished[key])

    storage = tempfile.mkdtemp(prefix="utils_cv_ray_tune_")
    try:
        trainable = tune.with_resources(
            tune.with_parameters(_trial, runs=pending, paths=paths, files=files, seed=seed),
            {"cpu": cpus_per_trial},
        )
        tuner = tune.Tuner(
            trainable,
            param_space={"index": tune.grid_search(list(range(len(pending))))},
            tune_config=tune.TuneConfig(max_concurrent_trials=workers, reuse_actors=False),
            run_config=tune.RunConfig(
                name="sweep",
                storage_path=storage,
                callbacks=[RecordResults()],
                verbose=1 if progress else 0,
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        grid = tuner.fit()
        failures = []
        for result in grid:
            key = keys[result.config["index"]]
            if key not in finished:
                error = result.error
                text = str(error).strip().splitlines() if error is not None else []
                failures.append((key, text[-1] if text else "no result reported"))
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if started:
            ray.shutdown()
    if failures:
        where = f"in {csv_path}" if csv_path is not None else "nowhere (out_dir=None)"
        lines = "\n".join(f"  rep {k[0]}, dataset {k[1]}, {_describe(k)}: {e}" for k, e in failures)
        raise SweepTrialsFailed(
            f"{len(failures)} of {len(pending)} trials failed:\n{lines}\nThe others are saved "
            f"{where}; run the sweep again with the same out_dir to train only the failed ones.",
            failures,
        )


def _describe(key: tuple) -> str:
    from utils_cv.classification.sweeper import DEFAULT_PARAMS

    return "|".join(f"{name}={value}" for name, value in zip(DEFAULT_PARAMS, key[2:]))
