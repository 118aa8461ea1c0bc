"""Batch prediction on Ray Data: the ONNX predictor mapped over many image files.

``predict_files_ray(model_dir, paths, out_dir)`` lists the image files (folders walked as the
``predict`` command walks them), exports the saved model to ONNX once, and lets Ray Data feed
``batch_size`` paths at a time to ``workers`` actors, each holding one ONNX Runtime session
(``predict.OnnxPredictor``) and classifying with ``predict.predict_files``: the output has
the single-machine command's columns (``file``, ``status``, ``predicted``, ``top_k``,
``prob_<class>``), one row per file, unreadable files reported in ``status``. It is written as
sharded CSV or Parquet files in ``out_dir`` (read them back with ``read_predictions``).

From the shell: ``python -m utils_cv.classification.predict MODEL_DIR PATH... --ray
--out OUT_DIR [--workers N] [--format csv|parquet] [--address ADDRESS]``.

On a cluster (``address=``) every node must see the image paths (a shared file system) and
have utils_cv installed. Needs the ``distributed`` extra (``ray[data]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

FORMATS = ("csv", "parquet")


class _OnnxBatchWorker:
    """A Ray Data actor: one ONNX Runtime session, ``predict_files`` on each batch of paths."""

    def __init__(self, onnx_model: bytes, spec, top_k: int, threads: int):
        from utils_cv.classification.predict import OnnxPredictor

        self.predictor = OnnxPredictor(onnx_model, spec, threads=threads)
        self.top_k = top_k

    def __call__(self, batch):
        from utils_cv.classification.predict import predict_files

        paths = [str(p) for p in batch["file"]]
        df = predict_files(self.predictor, paths, self.top_k, len(paths) or 1, progress=False)
        # one dtype per column in every batch, whatever the batch's files were
        for column in ("predicted", "top_k"):
            df[column] = df[column].astype(object).where(df[column].notna(), None)
        for column in df.columns[4:]:
            df[column] = df[column].astype("float64")
        return df


def _model_bytes(model_dir: str | Path):
    """(ONNX model bytes, spec) of the saved model (``model.onnx`` when fresh, as
    ``predict.load_predictor`` chooses)."""
    from utils_cv.classification.predict import load_predictor, onnx_bytes
    from utils_cv.classification.saved import WEIGHTS_FILE

    predictor = load_predictor(model_dir, "torch")
    onnx_file = Path(model_dir) / "model.onnx"
    weights = Path(model_dir) / WEIGHTS_FILE
    if onnx_file.is_file() and onnx_file.stat().st_mtime >= weights.stat().st_mtime:
        return onnx_file.read_bytes(), predictor.spec
    return onnx_bytes(predictor), predictor.spec


def predict_files_ray(
    model_dir: str | Path,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    top_k: int = 3,
    batch_size: int = 32,
    workers: int = 2,
    threads_per_worker: int = 1,
    fmt: str = "csv",
    address: str | None = None,
) -> list[Path]:
    """Classify the image files among ``paths`` with Ray Data; write sharded predictions.

    model_dir : a folder written by ``saved.save_model``. paths : image files or folders
    (walked recursively). out_dir : folder for the shards (created; must hold no earlier
    shards of this format). top_k : classes listed per image. batch_size : paths per batch.
    workers : ONNX Runtime actors (each ``threads_per_worker`` intra-op threads and as many
    Ray CPUs). fmt : "csv" or "parquet". address : Ray cluster to join (None: the Ray
    instance of this process, or a new local one, shut down afterwards).

    Returns the shard files written, sorted. Raises FileNotFoundError for a missing path,
    ValueError for bad arguments or when there is no image file to classify.
    """
    from utils_cv.classification.predict import image_paths
    from utils_cv.classification.sweeper_ray import import_ray, start_ray

    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    for name, value in (("top_k", top_k), ("batch_size", batch_size), ("workers", workers)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}.")
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.glob(f"*.{fmt}")):
        raise ValueError(
            f"out_dir {out_dir} already holds .{fmt} files; choose an empty folder (shards of "
            f"two runs would be read back as one)."
        )
    files = [str(Path(p).resolve()) for p in image_paths(paths)]
    if not files:
        raise ValueError(f"No image files in {', '.join(str(p) for p in paths)}.")
    model, spec = _model_bytes(model_dir)

    ray = import_ray()
    started = start_ray(address)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        blocks = max(1, min(len(files) // batch_size, workers * 4))
        ds = ray.data.from_items([{"file": f} for f in files], override_num_blocks=blocks)
        ds = ds.map_batches(
            _OnnxBatchWorker,
            fn_constructor_kwargs={
                "onnx_model": model,
                "spec": spec,
                "top_k": top_k,
                "threads": threads_per_worker,
            },
            batch_size=batch_size,
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=threads_per_worker,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":
            ds.write_csv(str(out_dir.resolve()))
        else:
            ds.write_parquet(str(out_dir.resolve()))
    finally:
        if started:
            ray.shutdown()
    return sorted(out_dir.glob(f"*.{fmt}"))


def read_predictions(out_dir: str | Path):
    """The shards in ``out_dir`` (CSV or Parquet) as one pandas DataFrame with the columns of
    the single-machine ``predict`` command (shards in name order; sort by ``file`` if needed)."""
    import pandas as pd

    out_dir = Path(out_dir)
    shards = sorted(out_dir.glob("*.parquet")) or sorted(out_dir.glob("*.csv"))
    if not shards:
        raise FileNotFoundError(f"No .csv or .parquet prediction shards in {out_dir}.")
    read = pd.read_parquet if shards[0].suffix == ".parquet" else pd.read_csv
    return pd.concat([read(s) for s in shards], ignore_index=True)


def main_ray(args, files: Sequence[Path]) -> int:
    """``predict --ray``: ``predict_files_ray`` with the command's parsed ``args`` on
    ``files``; prints a summary to stderr, returns the exit status (0: some image classified)."""
    import sys

    if getattr(args, "tta", False):
        print("predict: error: --tta is not available with --ray", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("predict: error: --workers must be >= 1", file=sys.stderr)
        return 2
    try:
        shards = predict_files_ray(
            args.model_dir,
            files,
            args.out,
            top_k=args.top_k,
            batch_size=args.batch_size,
            workers=args.workers,
            fmt=args.format,
            address=args.address,
        )
    except (ImportError, ValueError) as err:
        print(f"predict: error: {err}", file=sys.stderr)
        return 2
    df = read_predictions(args.out)
    n_ok = int((df["status"] == "ok").sum())
    for file, status in zip(df["file"], df["status"]):
        if status != "ok":
            print(f"predict: {file}: {status}", file=sys.stderr)
    print(
        f"{n_ok} of {len(df)} images classified; predictions in {len(shards)} "
        f"{args.format} shards in {args.out}",
        file=sys.stderr,
    )
    return 0 if n_ok else 1
