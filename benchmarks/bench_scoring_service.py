"""Load benchmark of the scoring service served locally by azmlinfsrv on 127.0.0.1.

Sends ``--requests`` requests (default 300) from ``--clients`` concurrent clients (default 8)
to ``utils_cv/classification/service/score.py`` running in AzureML's inference server, mixing
valid requests (one shipped sample image each) with invalid ones (bad JSON, missing "data", bad
base64, bytes that are not an image, an empty list, too many images, an image over the size
limit). Reports requests per second, p50/p95/p99 latency, status counts, 5xx responses, dropped
connections (expected: none), answers with an unexpected status and the load average before and
after, for each combination of worker processes, threads per worker and torch threads.

    python benchmarks/bench_scoring_service.py --requests 300 --clients 8 --invalid_fraction 0 \
        --workers 1 2 --threads 1 4 --torch_threads 1

Without ``--model_dir`` it saves an efficientnet_lite0 classifier for the 4 sample classes at
``--im_size`` pixels (ImageNet body, untrained head: inference costs the same as a trained one).
This is a benchmark, not a test: results depend on the machine; see README_scoring.md.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import random
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from utils_cv.classification.data import get_image_files, sample_data_path
from utils_cv.classification.service.local import LocalScoringService
from utils_cv.common.deployment import SERVER_THREADS, SERVER_WORKERS

INVALID_KINDS = (
    "invalid_json",
    "missing_data",
    "bad_base64",
    "not_an_image",
    "empty_list",
    "too_many_images",
    "image_too_large",
)


def make_model(model_dir: Path, im_size: int) -> Path:
    """Save an efficientnet_lite0 classifier (ImageNet body, new head) for the sample classes."""
    from utils_cv.classification.data import get_dls
    from utils_cv.classification.saved import save_model
    from utils_cv.classification.spec import ModelSpec
    from utils_cv.classification.train import create_learner

    spec = ModelSpec("efficientnet_lite0", im_size=im_size)
    dls = get_dls(sample_data_path("objects_tiny"), spec, batch_size=8)
    return save_model(create_learner(dls, spec), model_dir)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def invalid_body(kind: str, jpeg: bytes) -> bytes:
    """Request body of the invalid ``kind`` (see INVALID_KINDS) with default service limits."""
    bodies = {
        "invalid_json": lambda: '{"data": [',
        "missing_data": lambda: json.dumps({"images": [b64(jpeg)]}),
        "bad_base64": lambda: json.dumps({"data": ["not base64 at all!"]}),
        "not_an_image": lambda: json.dumps({"data": [b64(b"these bytes are not an image")]}),
        "empty_list": lambda: json.dumps({"data": []}),
        "too_many_images": lambda: json.dumps({"data": [b64(jpeg)] * 65}),
        "image_too_large": lambda: json.dumps({"data": [b64(os.urandom(10 * 2**20 + 1))]}),
    }
    return bodies[kind]().encode("utf-8")


def make_requests(n: int, invalid_fraction: float, seed: int = 0) -> list[tuple[str, bytes, int]]:
    """``n`` (kind, body, expected status) in random order: valid ones score one sample image."""
    rng = random.Random(seed)
    ims = [p.read_bytes() for p in get_image_files(sample_data_path("objects") / "valid")]
    cache = {kind: invalid_body(kind, ims[0]) for kind in INVALID_KINDS}
    expected = {"too_many_images": 413, "image_too_large": 413}
    out = []
    for _ in range(n):
        if rng.random() < invalid_fraction:
            kind = rng.choice(INVALID_KINDS)
            out.append((kind, cache[kind], expected.get(kind, 400)))
        else:
            out.append(("valid", json.dumps({"data": [b64(rng.choice(ims))]}).encode(), 200))
    return out


def send_all(scoring_uri: str, reqs: list, clients: int, timeout: float = 120) -> list[dict]:
    """Send ``reqs`` from ``clients`` threads (one HTTP session each); one record per request."""
    local = threading.local()

    def send(req):
        kind, body, expected = req
        if not hasattr(local, "session"):
            local.session = requests.Session()
        start = time.perf_counter()
        try:
            response = local.session.post(
                scoring_uri,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=timeout,
            )
            status = response.status_code
        except requests.RequestException as err:  # refused, reset, timed out: dropped
            status = None
            kind = f"{kind} ({type(err).__name__})"
        return {
            "kind": kind,
            "status": status,
            "expected": expected,
            "latency_ms": (time.perf_counter() - start) * 1000,
        }

    pool = ThreadPoolExecutor(clients)
    try:
        return list(pool.map(send, reqs))
    finally:  # on Ctrl-C: drop the queued requests, let the in-flight ones finish
        pool.shutdown(wait=True, cancel_futures=True)


def summarize(records: list[dict], seconds: float) -> dict:
    """Requests per second, latency percentiles (ms), and counts of each outcome."""
    latencies = np.array([r["latency_ms"] for r in records])
    valid = np.array([r["latency_ms"] for r in records if r["expected"] == 200])
    statuses = [r["status"] for r in records]
    return {
        "requests": len(records),
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(records) / seconds, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p95_ms": round(float(np.percentile(latencies, 95)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "valid_p50_ms": round(float(np.percentile(valid, 50)), 1) if len(valid) else None,
        "valid_p95_ms": round(float(np.percentile(valid, 95)), 1) if len(valid) else None,
        "valid_p99_ms": round(float(np.percentile(valid, 99)), 1) if len(valid) else None,
        "2xx": sum(1 for s in statuses if s is not None and 200 <= s < 300),
        "4xx": sum(1 for s in statuses if s is not None and 400 <= s < 500),
        "5xx": sum(1 for s in statuses if s is not None and s >= 500),
        "dropped": sum(1 for s in statuses if s is None),
        "unexpected_status": sum(1 for r in records if r["status"] != r["expected"]),
    }


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def bench(
    model_dir, workers: int, threads: int, torch_threads: int, reqs: list, clients: int
) -> dict:
    """Start the service with ``workers`` processes of ``threads`` threads (gunicorn), each
    inference on ``torch_threads`` torch threads; load it with ``reqs``."""
    env = {"SCORE_TORCH_THREADS": str(torch_threads)}
    with LocalScoringService(model_dir, worker_count=workers, threads=threads, env=env) as service:
        warmup = [r for r in reqs if r[0] == "valid"][: 2 * workers * threads]
        send_all(service.scoring_uri, warmup, clients=workers * threads)
        load_before = load_average()
        start = time.perf_counter()
        records = send_all(service.scoring_uri, reqs, clients)
        summary = summarize(records, time.perf_counter() - start)
        load_after = load_average()
        alive = requests.get(service.url + "/", timeout=10).status_code == 200
    return {
        "workers": workers,
        "threads": threads,
        "torch_threads": torch_threads,
        **summary,
        "healthy_after": alive,
        # other work on the machine skews the figures
        "load_avg_1min_before": load_before,
        "load_avg_1min_after": load_after,
    }


def markdown_table(results: list[dict]) -> str:
    cols = ["workers", "threads", "torch_threads", "requests_per_s", "valid_p50_ms"]
    cols += ["valid_p95_ms", "valid_p99_ms", "2xx", "4xx", "5xx", "dropped", "unexpected_status"]
    cols += ["load_avg_1min_before", "load_avg_1min_after"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in results]
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", help="folder from save_model (default: make one)")
    parser.add_argument("--im_size", type=int, default=224, help="image size of a made model")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[SERVER_WORKERS], help="worker processes"
    )
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[SERVER_THREADS], help="threads per worker"
    )
    parser.add_argument(
        "--torch_threads", type=int, nargs="+", default=[1], help="torch threads per inference"
    )
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8, help="requests in flight")
    parser.add_argument("--invalid_fraction", type=float, default=0.2)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or make_model(Path(tmp) / "model", args.im_size)
        reqs = make_requests(args.requests, args.invalid_fraction)
        cores = os.cpu_count() or 1
        results = []
        settings = itertools.product(args.workers, args.threads, args.torch_threads)
        for workers, threads, torch_threads in settings:
            result = bench(model_dir, workers, threads, torch_threads, reqs, args.clients)
            print(json.dumps(result), flush=True)
            results.append(result)
    print(f"\n{args.requests} requests, {args.clients} clients, {cores} CPU cores\n")
    print(markdown_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
