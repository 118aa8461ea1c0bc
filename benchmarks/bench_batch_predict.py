"""Batch prediction throughput: images/s of Ray Data with 1 and 2 ONNX Runtime workers against
the single-process path (``predict.predict_files`` with ``OnnxPredictor``), in one run.

    python benchmarks/bench_batch_predict.py [--images 480] [--im-size 224] [--batch-size 32]

A saved model (EfficientNet-Lite0, the head of 2 epochs on the shipped tiny set) classifies
``--images`` copies of the shipped sample photos. Every variant gets 1 ONNX Runtime thread per
worker; Ray's start-up is not timed (a cluster is already running), its scheduling and the
ONNX sessions' creation are. Needs the ``distributed`` extra. Writes
benchmarks/results/bench_batch_predict.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS_DIR, machine_info, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--im-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", default=str(RESULTS_DIR / "bench_batch_predict.json"))
    args = parser.parse_args()

    import ray

    from utils_cv.classification.batch_predict import predict_files_ray, read_predictions
    from utils_cv.classification.data import get_image_files, sample_data_path
    from utils_cv.classification.predict import OnnxPredictor, onnx_bytes, predict_files
    from utils_cv.classification.saved import load_model, save_model
    from utils_cv.classification.spec import ModelSpec
    from utils_cv.classification.train import TrainConfig, train

    tmp = Path(tempfile.mkdtemp(prefix="bench_batch_predict_"))
    try:
        learn = train(
            sample_data_path("objects_tiny"),
            ModelSpec(im_size=args.im_size),
            TrainConfig(epochs_head=2, batch_size=8),
            progress=False,
        )
        model_dir = save_model(learn, tmp / "model")
        sources = get_image_files(sample_data_path("objects"))
        images = tmp / "images"
        images.mkdir()
        for i in range(args.images):
            src = sources[i % len(sources)]
            shutil.copy(src, images / f"{i:06d}{src.suffix}")
        files = sorted(images.iterdir())

        rows = []
        torch.set_num_threads(1)
        predictor = load_model(model_dir)
        onnx = OnnxPredictor(onnx_bytes(predictor), predictor.spec, threads=1)
        start = time.perf_counter()
        df = predict_files(onnx, files, batch_size=args.batch_size, progress=False)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "variant": "single process (ONNX, 1 thread)",
                "workers": 1,
                "seconds": seconds,
                "images_per_s": len(df) / seconds,
            }
        )
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        for workers in (1, 2):
            out = tmp / f"out_{workers}"
            start = time.perf_counter()
            predict_files_ray(model_dir, [images], out, batch_size=args.batch_size, workers=workers)
            seconds = time.perf_counter() - start
            n = len(read_predictions(out))
            rows.append(
                {
                    "variant": f"Ray Data, {workers} worker(s)",
                    "workers": workers,
                    "seconds": seconds,
                    "images_per_s": n / seconds,
                }
            )
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("| variant | images | seconds | images/s |\n|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['variant']} | {args.images} | {row['seconds']:.1f} | "
            f"{row['images_per_s']:.1f} |"
        )
    loads = {"loadavg_end": os.getloadavg()}
    settings = {"images": args.images, "im_size": args.im_size, "batch_size": args.batch_size}
    write_json(
        Path(args.json),
        "bench_batch_predict",
        settings,
        rows,
        machine_info(torch.device("cpu"), 1),
        loads,
    )


if __name__ == "__main__":
    main()
