"""Resumable training: a checkpoint of the recipe after every epoch, in the run folder.

``train(data, spec, config, run_dir="runs/a")`` writes ``runs/a/checkpoint/`` after each
epoch: ``state.safetensors`` (every tensor: the weights being trained, the optimizer's moments,
the best epoch's weights when ``keep_best``, the random generators) and ``state.json`` (all
the rest: stage, epoch, configuration, schedule, hyper-parameters; tensors are referenced by
name, and the SHA-256 of the tensor file is recorded). At the start of the head stage the
cached features go to ``features.safetensors``, so a resumed head trains on exactly the same
vectors. ``train(data, resume="runs/a")`` continues after the last finished epoch; the result
matches an uninterrupted run (tests/unit/classification/test_training_tools.py). Nothing is
unpickled when loading: safetensors and strict JSON only. When training finishes the
checkpoint folder is removed (the run's record stays).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from utils_cv.classification.listeners import STAGES, StageState, TrainingListener

CHECKPOINT_DIR = "checkpoint"
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
FEATURES_FILE = "features.safetensors"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, or does not fit the run it should resume."""


# --- nested state <-> (tensors, JSON) ----------------------------------------------------------


def encode_state(obj, tensors: dict | None = None) -> tuple[object, dict]:
    """Split a nested state (dicts, lists, tuples, numbers, strings, tensors, numpy arrays)
    into a JSON-able skeleton and ``{name: tensor}``; ``decode_state`` is the inverse.

    Tensors become ``{"__tensor__": name}``; tuples, dicts with non-string keys, numpy arrays
    and non-finite floats are tagged so they come back as they were. TypeError for anything
    else (a function, an object): a checkpoint never stores code.
    """
    tensors = {} if tensors is None else tensors

    def enc(value):
        if isinstance(value, torch.Tensor):
            name = f"t{len(tensors)}"
            tensors[name] = value.detach().cpu().clone().contiguous()
            return {"__tensor__": name}
        if isinstance(value, np.ndarray):
            return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real):
            value = float(value)
            return value if math.isfinite(value) else {"__float__": repr(value)}
        if isinstance(value, tuple):
            return {"__tuple__": [enc(v) for v in value]}
        if isinstance(value, list) or type(value).__name__ == "L":  # fastcore's L too
            return [enc(v) for v in value]
        if isinstance(value, dict):
            plain = all(isinstance(k, str) and not k.startswith("__") for k in value)
            if plain:
                return {k: enc(v) for k, v in value.items()}
            return {"__items__": [[enc(k), enc(v)] for k, v in value.items()]}
        raise TypeError(f"A checkpoint cannot store a {type(value).__name__} ({value!r:.80}).")

    return enc(obj), tensors


def decode_state(skeleton, tensors: dict):
    """The nested state that ``encode_state`` split into ``skeleton`` and ``tensors``."""

    def dec(value):
        if isinstance(value, list):
            return [dec(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return np.array(value["__ndarray__"], dtype=value["dtype"])
        if "__float__" in value:
            return float(value["__float__"])
        if "__tuple__" in value:
            return tuple(dec(v) for v in value["__tuple__"])
        if "__items__" in value:
            return {_hashable(dec(k)): dec(v) for k, v in value["__items__"]}
        return {k: dec(v) for k, v in value.items()}

    return dec(skeleton)


def _hashable(key):
    return tuple(key) if isinstance(key, list) else key


def _write_json(path: Path, data) -> None:
    from utils_cv.classification.saved import write_file

    write_file(path, json.dumps(data, allow_nan=False).encode("utf-8"))


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


# --- random generators -------------------------------------------------------------------------


def rng_state(data_rng: random.Random | None = None) -> dict:
    """The states of torch's, numpy's and Python's generators (and the data loader's)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if data_rng is not None:
        state["data"] = data_rng.getstate()
    return state


def set_rng_state(state: dict, data_rng: random.Random | None = None) -> None:
    """Put back generator states saved by ``rng_state``."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if data_rng is not None and "data" in state:
        data_rng.setstate(state["data"])


# --- saving and loading ----------------------------------------------------------------------


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def save_checkpoint(run_dir: str | Path, state: dict) -> Path:
    """Write ``state`` (nested, see ``encode_state``) to ``run_dir/checkpoint``; returns it.

    The tensor file is written first and the JSON (with its SHA-256) last, each through a
    temporary name, so an interrupted save leaves the previous checkpoint readable.
    """
    from safetensors.torch import save

    from utils_cv.classification.saved import write_file

    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    skeleton, tensors = encode_state(state)
    data = save(tensors)
    write_file(folder / STATE_TENSORS, data)
    meta = {
        "format_version": FORMAT_VERSION,
        "tensors_sha256": hashlib.sha256(data).hexdigest(),
        "state": skeleton,
    }
    _write_json(folder / STATE_JSON, meta)
    return folder


def load_checkpoint(run_dir: str | Path) -> dict:
    """The state saved by ``save_checkpoint`` in ``run_dir`` (features under "features" when
    the head stage saved them). CheckpointError naming the file for anything wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    folder = checkpoint_dir(run_dir)
    meta_path, tensor_path = folder / STATE_JSON, folder / STATE_TENSORS
    if not meta_path.is_file():
        raise CheckpointError(
            f"No checkpoint in {run_dir} ({meta_path} is missing): the run finished (its "
            f"checkpoint is removed then; see run.json) or was trained without run_dir."
        )
    try:
        meta = json.loads(meta_path.read_text("utf-8"), parse_constant=_refuse_constant)
        data = tensor_path.read_bytes()
    except (ValueError, UnicodeDecodeError, OSError) as err:
        raise CheckpointError(f"{meta_path} could not be read ({err}).") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path} is not a checkpoint of this version of utils_cv.")
    if hashlib.sha256(data).hexdigest() != meta.get("tensors_sha256"):
        raise CheckpointError(
            f"{tensor_path} does not match the SHA-256 in {meta_path}: the checkpoint is "
            f"damaged. Train again without resume."
        )
    try:
        state = decode_state(meta["state"], load(data))
    except (SafetensorError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{tensor_path} could not be read ({err}).") from None
    features = folder / FEATURES_FILE
    if state.get("stage") == "head" and features.is_file():
        loaded = load(features.read_bytes())
        state["features"] = tuple(loaded[k] for k in ("x_train", "y_train", "x_valid", "y_valid"))
    if state.get("stage") not in STAGES:
        raise CheckpointError(f"{meta_path}: unknown stage {state.get('stage')!r}.")
    return state


def restore_stage(state: StageState, checkpoint: dict) -> None:
    """Put a stage's checkpoint back: weights, optimizer (when built), schedule, random
    generators, epochs done and whether a listener had stopped the stage."""
    state.module.load_state_dict(checkpoint["module"])
    if state.optimizer is not None and checkpoint.get("optimizer") is not None:
        state.optimizer.load_state_dict(checkpoint["optimizer"])
    if state.scheduler is not None and checkpoint.get("scheduler") is not None:
        state.scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_state(checkpoint["rng"], getattr(state.data_loader, "rng", None))
    state.start_epoch = state.epoch = int(checkpoint["epoch"])
    state.stop = bool(checkpoint["stop"])
    state.extra.update(checkpoint.get("extra", {}))


class Checkpointer(TrainingListener):
    """Listener: writes the recipe's checkpoint to ``run_dir/checkpoint`` after every epoch.

    Last of the listeners, so the checkpoint holds their decisions and states (those with a
    ``key``), the learner's TrainMetricsRecorder rows and the learning rates the finder chose.
    The folder is removed when training ends normally.
    """

    order = 100

    def __init__(self, run_dir: str | Path, spec=None, config=None):
        self.run_dir = Path(run_dir)
        self.spec, self.config = spec, config

    def keep_features(self, x_train, y_train, x_valid, y_valid) -> None:
        """Save the head stage's cached features (once, when the stage starts)."""
        from safetensors.torch import save

        from utils_cv.classification.saved import write_file

        folder = checkpoint_dir(self.run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = dict(x_train=x_train, y_train=y_train, x_valid=x_valid, y_valid=y_valid)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        write_file(folder / FEATURES_FILE, save(tensors))

    def after_epoch(self, learn, row, state):
        from utils_cv.classification.train import TrainMetricsRecorder

        recorder = next((cb for cb in learn.cbs if isinstance(cb, TrainMetricsRecorder)), None)
        optimizer = state.optimizer.state_dict() if state.optimizer is not None else None
        keyed = [listener for listener in getattr(learn, "listeners", []) if listener.key]
        checkpoint = {
            "stage": state.stage,
            "epoch": row["epoch"],
            "epochs": state.epochs,
            "stop": state.stop,
            "config": None if self.config is None else self.config.to_dict(),
            "spec": None if self.spec is None else self.spec.to_dict(),
            "module": state.module.state_dict(),
            "optimizer": optimizer,
            "scheduler": None if state.scheduler is None else state.scheduler.state_dict(),
            "rng": rng_state(getattr(state.data_loader, "rng", None)),
            "extra": dict(state.extra),
            "listeners": {listener.key: listener.state_dict() for listener in keyed},
            "lr_found": {k: r.suggestion for k, r in getattr(learn, "lr_finds", {}).items()},
            "recorder": None
            if recorder is None or not hasattr(recorder, "names")
            else {
                "names": recorder.names,
                "train_metrics": recorder.train_metrics,
                "valid_metrics": recorder.valid_metrics,
                "losses": recorder.losses,
            },
        }
        save_checkpoint(self.run_dir, checkpoint)

    def end_training(self, learn, seconds):
        shutil.rmtree(checkpoint_dir(self.run_dir), ignore_errors=True)


def resume_settings(checkpoint: dict, spec, config, run_dir) -> tuple:
    """(spec, config) of the run being resumed: the checkpoint's; CheckpointError when a
    given ``spec`` or ``config`` differs from it (naming the fields)."""
    from utils_cv.classification.spec import ModelSpec
    from utils_cv.classification.train import TrainConfig

    saved_config = TrainConfig(**checkpoint["config"])
    saved_spec = ModelSpec(**checkpoint["spec"])
    for name, given, saved in (("config", config, saved_config), ("spec", spec, saved_spec)):
        if given is not None and given != saved:
            old, new = saved.to_dict(), given.to_dict()
            changed = [k for k in old if old[k] != new.get(k)]
            raise CheckpointError(
                f"train: the {name} differs from the one of the run in {run_dir} (fields "
                f"{', '.join(changed)}); pass {name}=None to resume that run as it was, or "
                f"train a new run in another folder."
            )
    return saved_spec, saved_config


def restore_run(learn, checkpoint: dict, listeners) -> None:
    """Before resuming: the listeners' states and the learner's recorded rows."""
    from utils_cv.classification.train import TrainMetricsRecorder

    states = checkpoint.get("listeners", {})
    for listener in listeners:
        if listener.key in states:
            listener.load_state_dict(states[listener.key])
    saved = checkpoint.get("recorder")
    recorder = next((cb for cb in learn.cbs if isinstance(cb, TrainMetricsRecorder)), None)
    if saved and recorder is not None:
        recorder.names = list(saved["names"])
        recorder.train_metrics = [list(r) for r in saved["train_metrics"]]
        recorder.valid_metrics = [list(r) for r in saved["valid_metrics"]]
        recorder.losses = list(saved["losses"])
